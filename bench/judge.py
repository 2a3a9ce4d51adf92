"""LLM judge throughput at concurrency 1 vs 16, and the cost of a cached re-run, as JSON.

A loopback chat-completions server answers every request after `--latency` seconds (default 0.2, a judge
model's time for a short verdict) with a fixed verdict. The same `--items` distinct answers are judged at
concurrency 1 (no cache), then at concurrency 16 into an empty cache, then again from that cache.
Goals: concurrency 16 at least 10x the items per second of concurrency 1; the cached re-run sends no request.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from report import emit

VERDICT = json.dumps({"rationale": "bench", "correctness": 7, "completeness": 6, "relevance": 8, "clarity": 7,
                      "reasoning": 6})


class _Server(ThreadingHTTPServer):
    # a listen backlog of 5 (socketserver's default) drops the SYNs of a burst of 16 connections: the client's
    # reconnect a second later would measure this server, not the judge
    request_queue_size = 128
    daemon_threads = True


class SlowJudgeServer:
    """Answers every chat completion with VERDICT after `latency` seconds; counts requests."""

    def __init__(self, latency: float):
        self.latency, self.requests = latency, 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as vLLM and hosted APIs: no new connection per request
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, format, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server._lock:
                    server.requests += 1
                time.sleep(server.latency)
                data = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "created": 0,
                                   "model": "bench-judge", "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": VERDICT}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


def run(server: SlowJudgeServer, items: list, concurrency: int, cache: Path | None) -> dict:
    from swepost.rewards.judge import OpenAIJudge, summarize

    judge = OpenAIJudge(base_url=server.base_url, model="bench-judge", api_key="EMPTY", concurrency=concurrency,
                        cache=cache)
    before = server.requests
    started = time.perf_counter()
    judgements = judge.judge_many(items)
    wall = time.perf_counter() - started
    judge.close()
    summary = summarize(judgements)
    return {"concurrency": concurrency, "items": len(items), "requests": server.requests - before,
            "wall_s": round(wall, 3), "items_per_s": round(len(items) / wall, 2), "judge_failed":
            summary["judge_failed"], "cached": summary["cached"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per request")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from swepost.rewards.judge import JudgeItem

    items = [JudgeItem(f"Where is feature {i} implemented?", f"In module_{i}.py, function handle_{i}.",
                       f"module_{i}.py: handle_{i}() implements it.", ("names the module", "names the function"))
             for i in range(args.items)]
    server = SlowJudgeServer(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            serial = run(server, items, 1, None)
            parallel = run(server, items, 16, Path(tmp))
            cached = run(server, items, 16, Path(tmp))
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    speedup = round(parallel["items_per_s"] / serial["items_per_s"], 2)
    out = {
        "benchmark": "judge", "python": platform.python_version(), "cpus": os.cpu_count(),
        "latency_s": args.latency, "items": args.items,
        "concurrency_1": serial, "concurrency_16": parallel, "cached_rerun": cached,
        "speedup_16_vs_1": speedup,
        "goal": {"speedup_ge_10x": speedup >= 10, "cached_rerun_sends_no_request": cached["requests"] == 0},
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()
