"""What swepost's HTTP servers (the retriever, the environment server) share: the listening socket, uvicorn's
settings, serving in the foreground until SIGINT or SIGTERM, and serving on a thread of this process."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable

from swepost.errors import BadInput, WorkFailed


def bind(host: str, port: int) -> socket.socket:
    """A listening socket: port 0 picks a free one. Bound before the server starts, so its URL can be printed
    (and connections queue) as soon as it is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose protocol says TCP, and uvicorn
    # writes a response's head and body apart, so without it every keep-alive reply waits ~40 ms for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise BadInput(f"cannot listen on {host}:{port}: {e.strerror or e}", key="--port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_server(app, *, lifespan: bool = False):
    """httptools and uvloop when installed (they are dependencies); no access log: thousands of rollouts' requests
    per minute are not worth a log line each. `lifespan`: the app starts and stops something (a backend)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=30,
                            lifespan="on" if lifespan else "off", timeout_graceful_shutdown=30)
    return uvicorn.Server(config)


def _announce_when_started(uv, announce: Callable[[], None]) -> None:
    """Call `announce` once uvicorn has run the lifespan startup and is accepting."""
    original = uv.startup

    async def startup(sockets=None):
        await original(sockets=sockets)
        if uv.started:
            announce()

    uv.startup = startup


def serve_foreground(app, host: str, port: int, *, lifespan: bool = False,
                     on_ready: Callable[[str], None] | None = None) -> bool:
    """Listen, call `on_ready(url)` once accepting, serve until SIGINT or SIGTERM, then return whether the server
    started (a stopped server is not a failure: the signal ends the command with exit code 0)."""
    sock = bind(host, port)
    uv = uvicorn_server(app, lifespan=lifespan)
    if on_ready is not None:
        _announce_when_started(uv, lambda: on_ready(url_of(sock)))
    # uvicorn shuts down gracefully on these signals and then raises them again with the handlers it found:
    # leave it handlers that only note the stop
    stopped: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, f: stopped.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uv.run(sockets=[sock])
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return bool(uv.started)


class BackgroundServer:
    """An app served by uvicorn on a thread of this process (tests, benchmarks, the demo, in-process workers):
    `with BackgroundServer(app) as s: ... s.url`; entering returns once the server accepts."""

    name = "server"

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0, lifespan: bool = False):
        self.app, self.host, self.port, self.lifespan = app, host, port, lifespan
        self.url = ""
        self._uv = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    def __enter__(self):
        sock = bind(self.host, self.port)
        self.url = url_of(sock)
        self._uv = uvicorn_server(self.app, lifespan=self.lifespan)
        _announce_when_started(self._uv, self._started.set)
        self._thread = threading.Thread(target=self._run, args=(sock,), name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 300
        while not self._started.wait(0.1):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise WorkFailed(f"the {self.name} did not start")
        return self

    def _run(self, sock: socket.socket) -> None:
        try:
            self._uv.run(sockets=[sock])
        finally:
            sock.close()

    def __exit__(self, *exc) -> None:
        self._uv.should_exit = True
        self._thread.join(timeout=60)
