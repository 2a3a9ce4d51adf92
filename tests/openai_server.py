"""A real chat-completions HTTP server on loopback that answers from a script (for policy tests).

`/v1/completions` (token-id prompts, as the RL rollouts send to vLLM) answers entries
  {"token_ids": [...], "logprobs": [...]?, "finish_reason": "stop"?}, or the error entries below.

Each request takes the next script entry:
  {"content": "...", "tool_calls": [{"name": "bash", "arguments": {...} or "raw string"}]}  a normal turn
  {"status": 429, "retry_after": 0.1}, {"status": 500}, {"status": 400, "error": "message"}  an error
  {"delay": 2.0, ...}  sleep before answering the rest of the entry
  {"html": "<html>...</html>", "status": 200?}  answer an HTML page (a proxy's or a login page)
  {"hang": true}  read the request and never answer (until the server closes)
  optional "finish_reason", "usage" (a dict, or None to leave usage out)
When the script runs out, `default` is served if given, else a 410 "script exhausted".
Every request body is recorded in `requests` (with its arrival time in `times`).
`POST /tokenize` (vLLM's, at the root) answers {"count": tokenize(body)} when a `tokenize` function is given, else
404; its bodies go to `tokenize_requests`, not `requests`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedChatServer:
    def __init__(self, script: list[dict[str, Any]], *, default: dict[str, Any] | None = None,
                 model: str = "scripted-model", port: int = 0,
                 tokenize: Callable[[dict[str, Any]], int] | None = None):
        self.port = port  # 0: any free port; a fixed one lets a test bring a "dead" server back at its address
        self.closing = threading.Event()
        self.script = list(script)
        self.default = default
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.tokenize = tokenize
        self.tokenize_requests: list[dict[str, Any]] = []
        self.times: list[float] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "use ScriptedChatServer as a context manager"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedChatServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._httpd is not None
        self.closing.set()  # hung handlers return
        self._httpd.shutdown()
        self._httpd.server_close()

    def next_entry(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.requests.append(body)
            self.times.append(time.monotonic())
            if self.script:
                return self.script.pop(0)
            return self.default if self.default is not None else {"status": 410, "error": "script exhausted"}

    def completion(self, entry: dict[str, Any], n: int) -> dict[str, Any]:
        calls = [{"id": f"call_{n}_{i}", "type": "function",
                  "function": {"name": c["name"], "arguments": c["arguments"] if isinstance(c["arguments"], str)
                               else json.dumps(c["arguments"])}}
                 for i, c in enumerate(entry.get("tool_calls") or [])]
        message: dict[str, Any] = {"role": "assistant", "content": entry.get("content")}
        if calls:
            message["tool_calls"] = calls
        out: dict[str, Any] = {
            "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()), "model": self.model,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": entry.get("finish_reason", "tool_calls" if calls else "stop")}],
        }
        usage = entry.get("usage", {"prompt_tokens": 11 * n + 7, "completion_tokens": 5})
        if usage is not None:
            out["usage"] = {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
        return out


def text_completion(entry: dict[str, Any], n: int) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "text": "", "finish_reason": entry.get("finish_reason", "stop")}
    if "token_ids" in entry:
        choice["token_ids"] = entry["token_ids"]
    if "logprobs" in entry:
        choice["logprobs"] = {"token_logprobs": entry["logprobs"]}
    return {"id": f"cmpl-{n}", "object": "text_completion", "created": int(time.time()), "choices": [choice]}


def _handler_for(server: ScriptedChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # quiet
            pass

        def send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None):
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

        def send_page(self, status: int, html: str):
            data = html.encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_POST(self):
            route = self.path.rstrip("/")
            if route == "/tokenize" and server.tokenize is not None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                server.tokenize_requests.append(body)
                return self.send_json(200, {"count": server.tokenize(body), "max_model_len": 0, "tokens": []})
            if route not in ("/v1/chat/completions", "/v1/completions"):
                return self.send_json(404, {"error": {"message": f"no route {self.path}", "code": 404}})
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            entry = server.next_entry(body)
            n = len(server.requests)
            if entry.get("delay"):
                time.sleep(entry["delay"])
            if entry.get("hang"):
                server.closing.wait()
                return
            status = entry.get("status", 200)
            if "html" in entry:
                return self.send_page(status, entry["html"])
            if status != 200:
                headers = {"Retry-After": str(entry["retry_after"])} if "retry_after" in entry else {}
                error = entry.get("error", f"scripted error {status}")
                return self.send_json(status, {"error": {"message": error, "type": "ScriptedError", "param": None,
                                                         "code": status}}, headers)
            if route == "/v1/completions":
                return self.send_json(200, text_completion(entry, n))
            self.send_json(200, server.completion(entry, n))

    return Handler


def free_port() -> int:
    """A loopback port nothing listens on (connection refused), free to bind a server to later."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
