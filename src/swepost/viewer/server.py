"""Serve a built viewer site on loopback: 127.0.0.1 only, GET and HEAD only, files inside the site folder only.

A request path is decoded once and refused (403) if any part is `..`, holds a NUL or a backslash, or resolves (a
symlink included) outside the folder; a Host header other than 127.0.0.1 / localhost is refused too, so a page
on another site cannot reach the viewer through DNS rebinding.
"""

from __future__ import annotations

import mimetypes
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

HOST = "127.0.0.1"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css",
          ".json": "application/json", ".png": "image/png", ".svg": "image/svg+xml"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def site_file(root: Path, raw_path: str) -> Path | None:
    """The file a request path names inside `root` (resolved), or None when it must be refused."""
    path = unquote(urlsplit(raw_path).path, errors="strict")
    if "\x00" in path or "\\" in path or not path.startswith("/"):
        return None
    parts = [p for p in path.split("/") if p]
    if any(p in ("..", ".") for p in parts):
        return None
    target = root.joinpath(*parts) if parts else root
    try:
        resolved = target.resolve(strict=True)
    except (OSError, RuntimeError):
        return target  # nothing there (a dangling link included): the caller answers 404
    if resolved.is_dir():
        resolved = (resolved / "index.html").resolve()
    if resolved != root and root not in resolved.parents:
        return None  # a symlink out of the site
    return resolved


class _Handler(BaseHTTPRequestHandler):
    server_version = "swepost-view"
    sys_version = ""
    root: Path
    ports: tuple[str, ...]

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass  # quiet: the command prints the address once

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").strip().lower()
        return host in self.ports

    def _send(self, status: HTTPStatus, body: bytes = b"", ctype: str = "text/plain; charset=utf-8",
              head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in _HEADERS.items():
            self.send_header(k, v)
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        if not self._host_ok():
            return self._send(HTTPStatus.FORBIDDEN, b"forbidden host\n", head=head)
        try:
            found = site_file(self.root, self.path)
        except UnicodeDecodeError:
            found = None
        if found is None:
            return self._send(HTTPStatus.FORBIDDEN, b"forbidden\n", head=head)
        if not found.is_file():
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n", head=head)
        ctype = _TYPES.get(found.suffix) or mimetypes.guess_type(found.name)[0] or "application/octet-stream"
        try:
            body = found.read_bytes()
        except OSError:
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n", head=head)
        self._send(HTTPStatus.OK, body, ctype, head=head)

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def _refuse(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD\n")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse


def make_server(root: str | Path, port: int = 0) -> ThreadingHTTPServer:
    """A server for the site in `root` on 127.0.0.1:port (0: a free port); call serve_forever() on it."""
    root = Path(root).resolve()
    server = ThreadingHTTPServer((HOST, port), _Handler)
    bound = server.server_address[1]
    handler = type("SiteHandler", (_Handler,), {
        "root": root, "ports": (f"127.0.0.1:{bound}", f"localhost:{bound}")})
    server.RequestHandlerClass = handler
    server.daemon_threads = True
    return server
