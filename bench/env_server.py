"""The environment server (`swepost serve env`, VerlTool's protocol): per-call overhead and throughput, as JSON.

The search environment over the bundled pydocs index (built in a temporary folder) and its 24 questions. An
action is a `search` tool call in Hermes form, on queries cut from the questions; an episode opens with an empty
action (`extra_fields: [{"instance_id": ...}]`), makes 3 searches and ends with `<answer>x</answer>` (graded).

Overhead: the same actions through `SessionPool.handle` in this process (the baseline, no HTTP), through a bare
`env.step("search", ...)` (for reference), and through the server over loopback HTTP on one keep-alive
`http.client.HTTPConnection`, for the thread backend (workers 1) and the process backend (workers 2). Throughput:
actions/s with 1, 16, 64 and 256 concurrent trajectories (a client thread each, its own connection) beside the
same concurrency run directly on SessionPool with threads, and one request carrying 256 trajectories' actions at
once (VerlTool's batch form). Every request counts as an action (opens and answers too).

The server runs on a thread of this process (BackgroundEnvServer); its HTTP clients run in a child process, so
that their work does not take the server's GIL. Both share the machine's cores.

If the server's accepted connections lack TCP_NODELAY (`swepost.serve.http.bind` makes its listening socket
with proto 0, so asyncio does not set it), each keep-alive response waits about 40 ms on Nagle and the client's
delayed ACK. The bench then also runs each backend with a listening socket made with IPPROTO_TCP (`nodelay_patched`,
a diagnostic of what the one-line fix gives), and skips that once bind is fixed.

Goal (issue 16): server overhead over the direct call p50 <= 2 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

from report import emit, pct

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "data" / "pydocs_questions.jsonl"
CORPUS = ROOT / "data" / "pydocs_corpus.jsonl"
SEARCHES = 3  # per episode, between the opening and the answer
ANSWER = "<answer>x</answer>"
ACTIONS_PER_TRAJECTORY = 20  # in the overhead runs: a fresh trajectory every 20 searches


def queries() -> list[str]:
    """Each question whole, then its 6-word windows: 24 questions give a few hundred different queries."""
    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text().splitlines() if line.strip()]
    out = list(questions)
    for q in questions:
        words = q.split()
        out += [" ".join(words[i:i + 6]) for i in range(0, max(1, len(words) - 5), 3)]
    return out


def search_action(query: str) -> str:
    return f'<tool_call>{json.dumps({"name": "search", "arguments": {"query": query}})}</tool_call>'


def latency(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(pct(ms, 0.5), 3), "p99_ms": round(pct(ms, 0.99), 3),
            "mean_ms": round(sum(ms) / len(ms), 3)}


def run_episodes(act, task_ids: list[str], qs: list[str], concurrency: int, seconds: float, tag: str) -> dict:
    """`concurrency` threads, each running episodes back to back through `act(slot, tid, action, extra)` (which
    returns done) for `seconds`; actions answered inside the window are counted. A thread closes its open episode
    after the window (not counted). `act`'s slot is the thread's index (its connection)."""
    barrier = threading.Barrier(concurrency + 1)
    counts = [0] * concurrency
    episodes = [0] * concurrency
    errors: list[str] = []
    window: dict[str, float] = {}

    def worker(slot: int) -> None:
        barrier.wait()
        n, k = 0, slot
        try:
            while True:
                tid = f"{tag}-{slot}-{n}"
                iid = task_ids[(slot + n) % len(task_ids)]
                act(slot, tid, "", {"instance_id": iid})
                if time.perf_counter() < window["end"]:
                    counts[slot] += 1
                for _ in range(SEARCHES):
                    act(slot, tid, search_action(qs[k % len(qs)]), {})
                    k += 7
                    if time.perf_counter() < window["end"]:
                        counts[slot] += 1
                act(slot, tid, ANSWER, {})
                if time.perf_counter() >= window["end"]:
                    return
                counts[slot] += 1
                episodes[slot] += 1
                n += 1
        except Exception as e:  # noqa: BLE001 - reported in the result, the other threads go on
            errors.append(f"{type(e).__name__}: {e}"[:300])

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    window["start"] = time.perf_counter()
    window["end"] = window["start"] + seconds
    barrier.wait()
    for t in threads:
        t.join()
    return {"concurrency": concurrency, "seconds": seconds, "actions": sum(counts), "episodes": sum(episodes),
            "actions_per_s": round(sum(counts) / seconds, 1), "errors": len(errors), "error_examples": errors[:3]}


# --- the HTTP client: a child process ----------------------------------------------------------------------------

class Connection:
    """One keep-alive connection to the server; bodies go as bytes so that http.client sends them with the headers
    in one segment."""

    def __init__(self, url: str):
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)

    def post(self, body: dict) -> dict:
        self.conn.request("POST", "/get_observation", json.dumps(body).encode(),
                          {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
        return json.loads(data)

    def act(self, tid: str, action: str, extra: dict) -> dict:
        return self.post({"trajectory_ids": [tid], "actions": [action], "extra_fields": [extra]})


def client_overhead(url: str, task_ids: list[str], qs: list[str], n: int, tag: str) -> dict:
    conn = Connection(url)
    rtt, processing = [], []
    tid = ""
    for i in range(n + 20):  # the first 20 warm up
        if i % ACTIONS_PER_TRAJECTORY == 0:
            if tid:
                conn.act(tid, ANSWER, {})
            tid = f"{tag}-lat-{i}"
            conn.act(tid, "", {"instance_id": task_ids[i // ACTIONS_PER_TRAJECTORY % len(task_ids)]})
        started = time.perf_counter()
        body = conn.act(tid, search_action(qs[i % len(qs)]), {})
        if i >= 20:
            rtt.append(time.perf_counter() - started)
            processing.append(body["processing_time_ms"] / 1000)
    conn.act(tid, ANSWER, {})
    return {"round_trip": latency(rtt), "server_processing_time": latency(processing)}


def client_throughput(url: str, task_ids: list[str], qs: list[str], concurrency: int, seconds: float,
                      tag: str) -> dict:
    conns = [Connection(url) for _ in range(concurrency)]

    def act(slot: int, tid: str, action: str, extra: dict) -> bool:
        return conns[slot].act(tid, action, extra)["dones"][0]

    return run_episodes(act, task_ids, qs, concurrency, seconds, f"{tag}-c{concurrency}")


def client_batch(url: str, task_ids: list[str], qs: list[str], size: int, rounds: int, tag: str) -> dict:
    """`rounds` batched episodes: every request carries one action of each of `size` trajectories."""
    conn = Connection(url)
    times: dict[str, list[float]] = {"open": [], "search": [], "answer": []}
    k = 0
    started = time.perf_counter()
    for r in range(rounds):
        ids = [f"{tag}-batch-{r}-{i}" for i in range(size)]
        steps = [("open", [""] * size, [{"instance_id": task_ids[i % len(task_ids)]} for i in range(size)])]
        for _ in range(SEARCHES):
            steps.append(("search", [search_action(qs[(k + i) % len(qs)]) for i in range(size)], [{}] * size))
            k += size
        steps.append(("answer", [ANSWER] * size, [{}] * size))
        for kind, actions, extras in steps:
            t = time.perf_counter()
            body = conn.post({"trajectory_ids": ids, "actions": actions, "extra_fields": extras})
            times[kind].append(time.perf_counter() - t)
            if kind == "answer" and not all(body["dones"]):
                raise RuntimeError("a batched answer did not end its episode")
    wall = time.perf_counter() - started
    actions = rounds * size * (SEARCHES + 2)
    return {"trajectories_per_request": size, "rounds": rounds, "actions": actions,
            "actions_per_s": round(actions / wall, 1),
            "request_ms_p50": {kind: round(pct(v, 0.5) * 1000, 1) for kind, v in times.items()}}


def client_main(plan_file: str) -> None:
    plan = json.loads(Path(plan_file).read_text())
    url, ids, qs, tag = plan["url"], plan["task_ids"], plan["queries"], plan["tag"]
    out: dict = {"overhead": client_overhead(url, ids, qs, plan["overhead_n"], tag), "throughput": []}
    for c in plan["concurrency"]:
        out["throughput"].append(client_throughput(url, ids, qs, c, plan["seconds"], tag))
    out["batched"] = client_batch(url, ids, qs, plan["batch"], plan["batch_rounds"], tag)
    print(json.dumps(out))


# --- the baselines: in this process ------------------------------------------------------------------------------

def direct_overhead(pool, tasks: dict, qs: list[str], n: int) -> dict:
    task_ids = list(tasks)
    times = []
    tid = ""
    for i in range(n + 20):
        if i % ACTIONS_PER_TRAJECTORY == 0:
            if tid:
                pool.handle(tid, None, ANSWER, False, {})
            tid = f"direct-lat-{i}"
            pool.handle(tid, tasks[task_ids[i // ACTIONS_PER_TRAJECTORY % len(task_ids)]], "", False, {})
        started = time.perf_counter()
        pool.handle(tid, None, search_action(qs[i % len(qs)]), False, {})
        if i >= 20:
            times.append(time.perf_counter() - started)
    pool.handle(tid, None, ANSWER, False, {})
    return latency(times)


def bare_step(spec, task, qs: list[str], n: int) -> dict:
    env = spec.factory()()
    env.reset(task)
    times = []
    for i in range(n + 20):
        started = time.perf_counter()
        env.step("search", {"query": qs[i % len(qs)]})
        if i >= 20:
            times.append(time.perf_counter() - started)
    env.close()
    return latency(times)


def direct_throughput(pool, tasks: dict, qs: list[str], concurrency: int, seconds: float) -> dict:
    def act(slot: int, tid: str, action: str, extra: dict) -> bool:
        task = tasks[extra["instance_id"]] if "instance_id" in extra else None
        return pool.handle(tid, task, action, False, extra)["done"]

    return run_episodes(act, list(tasks), qs, concurrency, seconds, f"direct-c{concurrency}")


def direct_batch(pool, tasks: dict, qs: list[str], size: int) -> dict:
    """One thread running each step of `size` trajectories one after another: the environment's serial cost of
    what one batched request carries."""
    ids = [f"direct-batch-{i}" for i in range(size)]
    task_ids = list(tasks)
    started = time.perf_counter()
    for i, tid in enumerate(ids):
        pool.handle(tid, tasks[task_ids[i % len(task_ids)]], "", False, {})
    for s in range(SEARCHES):
        for i, tid in enumerate(ids):
            pool.handle(tid, None, search_action(qs[(s * size + i) % len(qs)]), False, {})
    for tid in ids:
        pool.handle(tid, None, ANSWER, False, {})
    wall = time.perf_counter() - started
    return {"trajectories": size, "actions": size * (SEARCHES + 2),
            "actions_per_s": round(size * (SEARCHES + 2) / wall, 1)}


# --- the server ----------------------------------------------------------------------------------------------------

def nodelay_bind(host: str, port: int) -> socket.socket:
    """swepost.serve.http.bind's socket, made with proto IPPROTO_TCP: asyncio then sets TCP_NODELAY on every
    connection it accepts (it checks the socket's proto)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def accepted_sockets_nodelay() -> bool:
    """Whether a connection accepted on the server's socket gets TCP_NODELAY from asyncio."""
    from swepost.serve.http import bind

    sock = bind("127.0.0.1", 0)
    try:
        return sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


@contextlib.contextmanager
def serving(backend: str, spec, tasks: list, patched: bool):
    from swepost.serve.envserver import BackgroundEnvServer, EnvServer, ProcessBackend, ServerOptions, ThreadBackend

    engine = ThreadBackend(spec) if backend == "threads" else ProcessBackend(spec, 2)
    server = EnvServer(engine, spec, tasks, ServerOptions(max_envs=1024))
    patch = mock.patch("swepost.serve.http.bind", nodelay_bind) if patched else contextlib.nullcontext()
    with patch:  # needed only while the server binds
        running = BackgroundEnvServer(server).__enter__()
    try:
        yield running.url, server
    finally:
        running.__exit__(None, None, None)


def run_client(plan: dict, work: Path) -> dict:
    plan_file = work / f"plan-{plan['tag']}.json"
    plan_file.write_text(json.dumps(plan))
    r = subprocess.run([sys.executable, __file__, "--client", str(plan_file)], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"the client failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--overhead-n", type=int, default=300, help="timed search actions per overhead run")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each throughput window")
    ap.add_argument("--batch", type=int, default=256, help="trajectories in the batched request")
    ap.add_argument("--batch-rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client_main(args.client)
        return

    from swepost.retrieval.index import build_index
    from swepost.serve.envsession import EnvSpec, SessionPool
    from swepost.stages.tasks import read_located_tasks

    started = time.perf_counter()
    qs = queries()
    task_list = [t for _, t in read_located_tasks(QUESTIONS, kind="search")]
    tasks = {t.instance_id: t for t in task_list}
    nodelay = accepted_sockets_nodelay()
    variants = [False] if nodelay else [False, True]
    with tempfile.TemporaryDirectory(prefix="env-server-bench-") as tmp:
        work = Path(tmp)
        build_index(CORPUS, work / "idx" / "index")
        spec = EnvSpec("search", settings={"index": str(work / "idx")})

        print("direct baselines ...", file=sys.stderr)
        pool = SessionPool(spec)
        pool.make_env_factory()
        direct = {"bare_env_step": bare_step(spec, task_list[0], qs, args.overhead_n),
                  "session_pool_handle": direct_overhead(pool, tasks, qs, args.overhead_n),
                  "throughput": [direct_throughput(pool, tasks, qs, c, args.seconds) for c in args.concurrency],
                  "serial_batch": direct_batch(pool, tasks, qs, args.batch)}
        pool.close_all()

        served: dict = {}
        for patched in variants:
            for backend in ("threads", "processes"):
                name = f"{backend}{'_nodelay_patched' if patched else ''}"
                print(f"server: {name} ...", file=sys.stderr)
                with serving(backend, spec, task_list, patched) as (url, server):
                    plan = {"url": url, "task_ids": list(tasks), "queries": qs, "tag": name,
                            "overhead_n": args.overhead_n, "concurrency": args.concurrency,
                            "seconds": args.seconds, "batch": args.batch, "batch_rounds": args.batch_rounds}
                    result = run_client(plan, work)
                    result["backend"] = server.backend.describe()
                    result["live_environments_after"] = len(server.live)
                served[name] = result

    base = direct["session_pool_handle"]
    overhead = {name: {"p50_ms": round(r["overhead"]["round_trip"]["p50_ms"] - base["p50_ms"], 3),
                       "p99_ms": round(r["overhead"]["round_trip"]["p99_ms"] - base["p99_ms"], 3)}
                for name, r in served.items()}
    throughput = []
    for i, c in enumerate(args.concurrency):
        row = {"concurrency": c, "direct_threads": direct["throughput"][i]["actions_per_s"]}
        for name, r in served.items():
            row[name] = r["throughput"][i]["actions_per_s"]
        throughput.append(row)
    batched = {"direct_one_thread": direct["serial_batch"]["actions_per_s"],
               **{name: r["batched"]["actions_per_s"] for name, r in served.items()}}
    result = {
        "bench": "env_server", "python": platform.python_version(), "cpus": os.cpu_count(),
        "note": (f"{os.cpu_count()} cores shared by the server (a thread of this process, plus its worker processes) "
                 "and the HTTP client (a child process)"),
        "environment": "search over the bundled pydocs index (3,242 passages), 24 questions",
        "episode": f"open (empty action), {SEARCHES} searches, <answer>x</answer> (graded)",
        "accepted_sockets_nodelay": nodelay,
        "direct": direct, "server": served,
        "overhead_over_session_pool": overhead, "throughput_actions_per_s": throughput,
        "batched_actions_per_s": batched,
        "goals": {"overhead_p50_le_2ms": {name: o["p50_ms"] <= 2 for name, o in overhead.items()}},
        "seconds": round(time.perf_counter() - started, 1),
    }
    emit(result, args.out)
    summary(result)


def summary(result: dict) -> None:
    """A short table on stderr (the JSON is on stdout)."""
    d = result["direct"]
    lines = [f"environment server, {result['cpus']} cores ({result['note']})",
             f"bare env.step p50 {d['bare_env_step']['p50_ms']} ms; SessionPool.handle p50 "
             f"{d['session_pool_handle']['p50_ms']} ms, p99 {d['session_pool_handle']['p99_ms']} ms"]
    for name, r in result["server"].items():
        rt, o = r["overhead"]["round_trip"], result["overhead_over_session_pool"][name]
        lines.append(f"{name:>27}: HTTP p50 {rt['p50_ms']} ms, p99 {rt['p99_ms']} ms; overhead p50 {o['p50_ms']} ms, "
                     f"p99 {o['p99_ms']} ms")
    names = ["direct_threads", *result["server"]]
    lines.append("actions/s: " + " | ".join(["concurrency", *names]))
    for row in result["throughput_actions_per_s"]:
        lines.append(f"  {row['concurrency']:>4}: " + " | ".join(str(row[n]) for n in names))
    batched = result["batched_actions_per_s"].items()
    lines.append("batched (one request per step): " + ", ".join(f"{k} {v}" for k, v in batched))
    lines.append(f"took {result['seconds']} s")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
