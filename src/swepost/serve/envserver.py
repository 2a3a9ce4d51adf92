"""The environment server: swepost's environments behind VerlTool's stateful HTTP protocol.

`POST /get_observation` `{"trajectory_ids": [str], "actions": [str], "extra_fields": [dict]?, "finish": [bool]?,
"is_last_step": [bool]?}` (equal lengths; any other top-level key is copied into every extra_fields[i]) answers
`{"observations": [str | {"obs", "reward", "metrics"}], "dones": [bool], "valids": [bool], "processing_time_ms",
"queue_time_ms"}`. The first request of a trajectory id opens the environment for the task its extra_fields name;
the episode's last observation (a submit, an answer, finish or is_last_step) carries the reward. `GET /health` and
`GET /metrics` (Prometheus text) tell how it is doing.

The front (this module: one process, asyncio) validates requests, keeps the registry of live and ended trajectory
ids, answers 503 with Retry-After at the cap on live environments, closes idle environments after a TTL, bounds
each call, logs requests as JSONL and hands the actions to a backend that runs the environments: threads of this
process, N worker processes with sticky routing (`crc32(trajectory_id) % N`, as VerlTool routes), or one Ray actor
per live environment (`swepost.serve.envray`). A backend's worker that dies takes its trajectories with it; they
get a clear error observation, the others go on, and the server clears the dead worker's sandboxes.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint's annotations at runtime
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import signal
import threading
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swepost.errors import BadInput, WorkFailed
from swepost.records import Task
from swepost.sandbox.gc import sweep_dead_owners
from swepost.serve.envsession import EnvSpec, SessionPool, WorkerDied, error_reply
from swepost.serve.http import BackgroundServer

MAX_BATCH = 4096  # trajectories in one request (a rollout batch)
MAX_BODY_BYTES = 64 << 20
MAX_ID_CHARS = 512
ENDED_MEMORY = 100_000  # ended trajectory ids remembered (their final observation is answered again)


@dataclass
class ServerOptions:
    max_envs: int = 512  # live environments at once (VerlTool's SWE fork: 512); more is a 503
    idle_ttl: float = 1200.0  # an environment nobody acted on for this long is closed (VerlTool's SWE fork: 20 min)
    call_timeout: float = 300.0  # the longest one action may run (the environment's own tool_timeout cuts sooner)
    grading_timeout: float = 600.0  # the longest grading may run (in the session; ungraded past it)
    concurrency: int = 64  # actions running at once per process
    retry_after: int = 5  # seconds, the 503's Retry-After
    log_path: Path | None = None  # the JSONL request log


def worker_of(trajectory_id: str, workers: int) -> int:
    """The worker that owns a trajectory: crc32 of its id modulo the workers, as VerlTool routes."""
    return zlib.crc32(trajectory_id.encode("utf-8")) % workers


# --- backends --------------------------------------------------------------------------------------------------

class ThreadBackend:
    """Environments in threads of the server's own process: the least overhead, for one machine's worth."""

    kind = "threads"

    def __init__(self, spec: EnvSpec, concurrency: int = 64):
        self.pool = SessionPool(spec)
        self.concurrency = concurrency
        self.executor = ThreadPoolExecutor(concurrency, thread_name_prefix="env")
        self.closer = ThreadPoolExecutor(4, thread_name_prefix="env-close")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "workers": 1, "concurrency": self.concurrency}

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.closer, self.pool.make_env_factory)

    async def call(self, tid: str, task: Task | None, action: str, finish: bool, extra: dict) -> dict:
        submitted = time.monotonic()

        def run() -> dict:
            started = time.monotonic()
            result = self.pool.handle(tid, task, action, finish, extra)
            result["queue_s"] = started - submitted
            return result

        return await asyncio.get_running_loop().run_in_executor(self.executor, run)

    async def close(self, tid: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(self.closer, self.pool.close, tid)

    async def shutdown(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.closer, self.pool.close_all)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.closer.shutdown(wait=False)


def _worker_main(conn, spec: EnvSpec, concurrency: int) -> None:
    """A worker process: reads (request id, op, args) from the front, runs each in a thread, answers (request id,
    result). When the front goes away (its end of the pipe closes) every environment is closed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the front stops us
    pool = SessionPool(spec)
    try:
        pool.make_env_factory()
    except BaseException as e:  # noqa: BLE001 - reported to the front, which refuses to start
        conn.send((0, {"__error__": str(e) if isinstance(e, BadInput | WorkFailed) else f"{type(e).__name__}: {e}"}))
        return
    conn.send((0, {"ready": os.getpid()}))
    executor = ThreadPoolExecutor(concurrency, thread_name_prefix="env")
    send_lock = threading.Lock()

    def run(request_id: int, op: str, args: tuple, received: float) -> None:
        started = time.monotonic()
        try:
            if op == "act":
                result: Any = pool.handle(*args)
                result["queue_s"] = started - received
            elif op == "close":
                pool.close(args[0])
                result = None
            else:
                result = {"__error__": f"unknown op {op!r}"}
        except BaseException as e:  # noqa: BLE001 - the front must get an answer for every request
            result = {"__error__": f"{type(e).__name__}: {e}"}
        try:
            with send_lock:
                conn.send((request_id, result))
        except (OSError, ValueError):
            pass  # the front is gone

    try:
        while True:
            try:
                request_id, op, args = conn.recv()
            except (EOFError, OSError):
                break
            if op == "shutdown":
                break
            executor.submit(run, request_id, op, args, time.monotonic())
    finally:
        pool.close_all()
        executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(OSError):
            conn.close()


class _Worker:
    """The front's side of one worker process: a pipe, the requests waiting on it, and a thread reading replies."""

    def __init__(self, index: int, spec: EnvSpec, concurrency: int, loop: asyncio.AbstractEventLoop,
                 on_death: Callable[[int, int], None]):
        self.index, self.spec, self.concurrency, self.loop, self.on_death = index, spec, concurrency, loop, on_death
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = itertools.count(1)
        self.process = None
        self.conn = None
        self.generation = 0
        self.ready = asyncio.Event()

    def spawn(self) -> None:
        """Start the process and wait for its ready message (blocking: run in an executor)."""
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe(duplex=True)
        process = ctx.Process(target=_worker_main, args=(theirs, self.spec, self.concurrency),
                              name=f"swepost-env-worker-{self.index}", daemon=True)
        process.start()
        theirs.close()  # so that the worker's death is an EOF here
        try:
            if not ours.poll(300):
                raise WorkFailed(f"environment worker {self.index} did not start within 300 s")
            _, hello = ours.recv()
        except (EOFError, OSError):
            raise WorkFailed(f"environment worker {self.index} died while starting (exit code "
                             f"{process.exitcode})") from None
        if "__error__" in hello:
            process.join(5)
            raise BadInput(f"the environment cannot be built: {hello['__error__']}")
        self.process, self.conn = process, ours
        self.generation += 1
        threading.Thread(target=self._read, args=(ours, self.generation), name=f"env-worker-{self.index}-reader",
                         daemon=True).start()

    def _read(self, conn, generation: int) -> None:
        while True:
            try:
                request_id, result = conn.recv()
            except (EOFError, OSError):
                break
            self.loop.call_soon_threadsafe(self._resolve, request_id, result)
        self.loop.call_soon_threadsafe(self._died, generation)

    def _resolve(self, request_id: int, result: Any) -> None:
        future = self.pending.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(result)

    def _died(self, generation: int) -> None:
        if generation != self.generation or not self.ready.is_set():
            return
        self.ready.clear()
        code = self.process.exitcode if self.process is not None else None
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(WorkerDied(f"environment worker {self.index} died (exit code {code}) while "
                                                "running this trajectory's action"))
        self.on_death(self.index, generation)

    async def request(self, op: str, *args: Any, generation: int | None = None) -> tuple[Any, int]:
        """Send one request and await its answer: (result, the worker generation that ran it). With
        `generation`, a worker restarted since then is WorkerDied (the trajectory's environment died with it)."""
        await self.ready.wait()
        if generation is not None and generation != self.generation:
            raise WorkerDied(f"environment worker {self.index} died and was restarted since this trajectory opened")
        generation = self.generation
        request_id = next(self.ids)
        future = self.loop.create_future()
        self.pending[request_id] = future
        try:
            self.conn.send((request_id, op, args))
        except (OSError, ValueError):
            self.pending.pop(request_id, None)
            raise WorkerDied(f"environment worker {self.index} died (its pipe is closed)") from None
        result = await future
        if isinstance(result, dict) and "__error__" in result:
            raise WorkFailed(f"environment worker {self.index}: {result['__error__']}")
        return result, generation

    def stop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self.conn.send((0, "shutdown", ()))
        if self.process is not None:
            self.process.join(30)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)


class ProcessBackend:
    """N worker processes, each holding the environments of the trajectories it owns (crc32(id) % N). A worker
    that dies is started again; its trajectories are lost (the front tells their clients) and its sandboxes
    cleared."""

    kind = "processes"

    def __init__(self, spec: EnvSpec, workers: int, concurrency: int = 64):
        self.spec, self.n, self.concurrency = spec, workers, concurrency
        self.workers: list[_Worker] = []
        self.on_worker_died: Callable[[int], None] = lambda index: None
        self.restarts = 0
        self.generation_of: dict[str, int] = {}  # trajectory id -> the generation of the worker that opened it
        self._stopping = False

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "workers": self.n, "concurrency": self.concurrency * self.n,
                "worker_restarts": self.restarts,
                "worker_pids": [w.process.pid if w.process is not None else None for w in self.workers]}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.workers = [_Worker(i, self.spec, self.concurrency, loop, self._died) for i in range(self.n)]
        with ThreadPoolExecutor(self.n) as starter:
            await asyncio.gather(*(loop.run_in_executor(starter, w.spawn) for w in self.workers))
        for w in self.workers:
            w.ready.set()

    def _died(self, index: int, generation: int) -> None:
        if self._stopping:
            return
        self.restarts += 1
        for tid in [t for t in self.generation_of if worker_of(t, self.n) == index]:
            del self.generation_of[tid]
        self.on_worker_died(index)
        asyncio.get_running_loop().create_task(self._restart(self.workers[index]))

    async def _restart(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        pid = worker.process.pid if worker.process is not None else None
        with contextlib.suppress(Exception):  # reaped first (gc also takes a zombie owner for dead)
            await loop.run_in_executor(None, worker.process.join, 1)
        await loop.run_in_executor(None, sweep_dead_owners, [pid] if pid else [], 10.0)
        while not self._stopping:
            try:
                await loop.run_in_executor(None, worker.spawn)
                worker.ready.set()
                return
            except Exception:  # noqa: BLE001 - keep trying: the other workers serve meanwhile
                await asyncio.sleep(5)

    async def call(self, tid: str, task: Task | None, action: str, finish: bool, extra: dict) -> dict:
        worker = self.workers[worker_of(tid, self.n)]
        # an action waiting while its worker restarts must not reach the new worker, which never held it
        expected = None if task is not None else self.generation_of.get(tid)
        try:
            result, generation = await worker.request("act", tid, task, action, finish, extra, generation=expected)
        except WorkerDied:
            self.generation_of.pop(tid, None)
            raise
        if result.get("done"):
            self.generation_of.pop(tid, None)
        elif task is not None:
            self.generation_of[tid] = generation
        return result

    async def close(self, tid: str) -> None:
        generation = self.generation_of.pop(tid, None)
        with contextlib.suppress(Exception):
            await self.workers[worker_of(tid, self.n)].request("close", tid, generation=generation)

    async def shutdown(self) -> None:
        self._stopping = True
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, w.stop) for w in self.workers))


# --- the front ---------------------------------------------------------------------------------------------------

class CapacityFull(Exception):
    pass


class EnvServer:
    """The registry of trajectories and the protocol's logic over a backend; the FastAPI app calls `observe`."""

    def __init__(self, backend: Any, spec: EnvSpec, tasks: list[Task], options: ServerOptions | None = None, *,
                 allow_task_rows: bool = True):
        self.backend, self.spec, self.options = backend, spec, options or ServerOptions()
        self.tasks = {t.instance_id: t for t in tasks}
        self.allow_task_rows = allow_task_rows
        self.live: OrderedDict[str, float] = OrderedDict()  # trajectory id -> last use (monotonic), oldest first
        self.busy: Counter[str] = Counter()
        self.ended: OrderedDict[str, dict] = OrderedDict()
        self.counters: Counter[str] = Counter()
        self.request_seconds = 0.0
        self.started = time.monotonic()
        self._reaper: asyncio.Task | None = None
        self._log = None
        self._log_lock = threading.Lock()
        if hasattr(backend, "on_worker_died"):
            backend.on_worker_died = self._worker_died

    # lifecycle
    async def start(self) -> None:
        await self.backend.start()
        if self.options.log_path is not None:
            self.options.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.options.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        await self.backend.shutdown()
        self.live.clear()
        if self._log is not None:
            self._log.close()
            self._log = None

    async def _reap(self) -> None:
        """Close environments idle for longer than the TTL (one that is running an action is not idle)."""
        period = max(0.05, min(5.0, self.options.idle_ttl / 4))
        while True:
            await asyncio.sleep(period)
            cutoff = time.monotonic() - self.options.idle_ttl
            stale = [tid for tid, last in self.live.items() if last < cutoff and not self.busy[tid]]
            for tid in stale:
                self.live.pop(tid, None)
                self._remember(tid, error_reply(
                    "expired", f"the environment of trajectory {tid} was closed after {self.options.idle_ttl:g} s "
                    "without an action (the server's --idle-ttl)", details=True))
                self.counters["expired"] += 1
                await self.backend.close(tid)

    def _worker_died(self, index: int) -> None:
        workers = getattr(self.backend, "n", 1)
        for tid in [t for t in self.live if worker_of(t, workers) == index]:
            self.live.pop(tid, None)
            self._remember(tid, error_reply("worker_died", f"the worker process that held trajectory {tid} died; "
                                            "its environment is gone", details=True))
        self.counters["worker_deaths"] += 1

    def _remember(self, tid: str, result: dict) -> None:
        self.ended[tid] = result
        self.ended.move_to_end(tid)
        while len(self.ended) > ENDED_MEMORY:
            self.ended.popitem(last=False)

    # the protocol
    async def observe(self, ids: list[str], actions: list[str], extras: list[dict], finishes: list[bool]) -> dict:
        t0 = time.monotonic()
        new = {tid for tid in ids if tid not in self.live and tid not in self.ended}
        opened = len(new)
        if new and len(self.live) + len(new) > self.options.max_envs:
            self.counters["rejected"] += 1
            raise CapacityFull(f"{len(self.live)} environments are live and this request opens {len(new)} more; "
                               f"the server's cap is {self.options.max_envs}")
        now = time.monotonic()
        for tid in new:  # reserved now, so that concurrent requests count them
            self.live[tid] = now
        order: dict[str, list[int]] = {}
        for i, tid in enumerate(ids):
            order.setdefault(tid, []).append(i)
        results: list[dict | None] = [None] * len(ids)

        async def one_trajectory(tid: str, positions: list[int]) -> None:
            for i in positions:  # one trajectory's actions in the order sent
                results[i] = await self._one(tid, actions[i], finishes[i], extras[i], opening=tid in new)
                new.discard(tid)

        await asyncio.gather(*(one_trajectory(tid, positions) for tid, positions in order.items()))
        waited = max((r.get("queue_s", 0.0) for r in results), default=0.0)
        elapsed = time.monotonic() - t0
        self.counters["requests"] += 1
        self.counters["actions"] += len(ids)
        self.request_seconds += elapsed
        body = {"observations": [r["observation"] for r in results], "dones": [bool(r["done"]) for r in results],
                "valids": [bool(r["valid"]) for r in results], "processing_time_ms": round(elapsed * 1000, 3),
                "queue_time_ms": round(waited * 1000, 3)}
        self._write_log({"time": round(time.time(), 3), "trajectories": len(order), "actions": len(ids),
                         "opened": opened, "finish": sum(finishes), "dones": sum(body["dones"]),
                         "processing_ms": body["processing_time_ms"], "queue_ms": body["queue_time_ms"],
                         "ids": list(order)[:64]})
        return body

    async def _one(self, tid: str, action: str, finish: bool, extra: dict, *, opening: bool) -> dict:
        details = extra.get("details") is True
        if tid in self.ended:
            previous = self.ended[tid]
            self.counters["repeats"] += 1
            observation = previous["observation"]
            if not details and isinstance(observation, dict):  # the protocol's keys only, for a plain client
                observation = {k: v for k, v in observation.items() if k in ("obs", "reward", "metrics", "cause")}
            return {**previous, "observation": observation, "valid": not action.strip(), "queue_s": 0.0}
        task = None
        if opening:
            task, problem = self._task(extra)
            if task is None:
                self.live.pop(tid, None)
                self._remember(tid, error_reply("bad_task", problem, details=True))
                result = error_reply("bad_task", problem, details=details)
                self.counters["bad_task"] += 1
                return result
            self.counters["opened"] += 1
        elif tid not in self.live:  # closed meanwhile (a dead worker): remembered in ended
            return self.ended.get(tid) or error_reply("expired", f"trajectory {tid} is not open", details=details)
        self.busy[tid] += 1
        try:
            result = await asyncio.wait_for(self.backend.call(tid, task, action, finish, extra),
                                            self.options.call_timeout + self.options.grading_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            self.counters["timeouts"] += 1
            await self.backend.close(tid)
            result = error_reply("timeout", f"the action did not finish within "
                                 f"{self.options.call_timeout + self.options.grading_timeout:g} s; the environment "
                                 "was closed", details=details)
        except WorkerDied as e:
            result = error_reply("worker_died", f"{e}; the environment of trajectory {tid} is gone", details=details)
        except WorkFailed as e:
            await self.backend.close(tid)
            result = error_reply("sandbox", str(e), details=details)
        finally:
            self.busy[tid] -= 1
            if not self.busy[tid]:
                del self.busy[tid]
        if result["done"]:
            self.live.pop(tid, None)
            self._remember(tid, {k: v for k, v in result.items() if k != "queue_s"})
            self.counters["ended"] += 1
            observation = result["observation"]
            if isinstance(observation, dict) and observation.get("reward") is None:
                self.counters["ungraded"] += 1
        elif tid in self.live:
            self.live[tid] = time.monotonic()
            self.live.move_to_end(tid)
        return result

    def _task(self, extra: dict) -> tuple[Task | None, str]:
        """The task a new trajectory runs: extra_fields' instance_id (one of the served tasks), else its `task` row,
        else the one task when the server has just one."""
        iid = extra.get("instance_id")
        if isinstance(iid, str) and iid in self.tasks:
            return self.tasks[iid], ""
        row = extra.get("task")
        if isinstance(row, dict):
            if not self.allow_task_rows:
                return None, ("this server runs only its own tasks (started with --no-task-rows): name one by "
                              "instance_id")
            from pydantic import ValidationError

            try:
                return Task.model_validate(row), ""
            except ValidationError as e:
                where = "; ".join(f"task.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
                return None, f"extra_fields.task is not a valid task row ({where[:1000]})"
        if iid is not None:
            return None, (f"unknown instance_id {str(iid)[:200]!r}: the server has {len(self.tasks)} tasks "
                          "(GET /health lists how many; send the whole row as extra_fields.task to run another)")
        if len(self.tasks) == 1:
            return next(iter(self.tasks.values())), ""
        return None, ("no task named: put the task's instance_id (or the whole task row as `task`) in extra_fields; "
                      f"the server has {len(self.tasks)} tasks")

    def _write_log(self, row: dict) -> None:
        if self._log is None:
            return
        with self._log_lock:
            self._log.write(json.dumps(row) + "\n")
            self._log.flush()

    def health(self) -> dict:
        return {"status": "ok", "environment": self.spec.name, "tasks": len(self.tasks),
                "live_environments": len(self.live), "max_envs": self.options.max_envs,
                "busy": len(self.busy), "idle_ttl_s": self.options.idle_ttl,
                "uptime_s": round(time.monotonic() - self.started, 3), **self.backend.describe()}

    def metrics(self) -> str:
        lines = []

        def metric(name: str, kind: str, value: float, help_text: str) -> None:
            lines.extend([f"# HELP swepost_env_{name} {help_text}", f"# TYPE swepost_env_{name} {kind}",
                          f"swepost_env_{name} {value:g}"])

        metric("live_environments", "gauge", len(self.live), "Environments open now.")
        metric("busy_trajectories", "gauge", len(self.busy), "Trajectories with an action running now.")
        metric("max_environments", "gauge", self.options.max_envs, "The cap on live environments.")
        metric("requests_total", "counter", self.counters["requests"], "POST /get_observation requests answered.")
        metric("actions_total", "counter", self.counters["actions"], "Actions (batch items) answered.")
        metric("request_seconds_total", "counter", self.request_seconds, "Time spent answering requests.")
        metric("opened_total", "counter", self.counters["opened"], "Trajectories opened.")
        metric("ended_total", "counter", self.counters["ended"], "Trajectories ended (graded or not).")
        metric("ungraded_total", "counter", self.counters["ungraded"], "Ended trajectories without a reward.")
        metric("rejected_total", "counter", self.counters["rejected"], "Requests refused at the cap (503).")
        metric("expired_total", "counter", self.counters["expired"], "Environments closed after the idle TTL.")
        metric("timeouts_total", "counter", self.counters["timeouts"], "Actions cut at the call timeout.")
        metric("bad_task_total", "counter", self.counters["bad_task"], "Trajectories whose task was unknown.")
        metric("worker_deaths_total", "counter", self.counters["worker_deaths"], "Worker processes that died.")
        metric("uptime_seconds", "gauge", time.monotonic() - self.started, "Seconds since the server started.")
        return "\n".join(lines) + "\n"


def create_app(server: EnvServer, *, max_batch: int = MAX_BATCH, max_body_bytes: int = MAX_BODY_BYTES):
    """The FastAPI app over an EnvServer; its lifespan starts and stops the backend (closing every sandbox)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

    from swepost.serve.retriever import BodySizeLimit

    class ObservationRequest(BaseModel):
        model_config = ConfigDict(extra="allow")  # VerlTool: any other top-level key goes into every extra_fields
        trajectory_ids: list[StrictStr] = Field(min_length=1, max_length=max_batch)
        actions: list[StrictStr] = Field(min_length=1, max_length=max_batch)
        extra_fields: list[dict[str, Any]] | None = None
        finish: list[StrictBool] | None = None
        is_last_step: list[StrictBool] | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(title="swepost environment server (VerlTool protocol)", docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    def unprocessable(loc: list, msg: str, kind: str = "value_error") -> JSONResponse:
        return JSONResponse({"detail": [{"type": kind, "loc": loc, "msg": msg}],
                             "message": f"{'.'.join(str(p) for p in loc)}: {msg}"}, status_code=422)

    @app.exception_handler(RequestValidationError)
    def _invalid(request, exc: RequestValidationError):
        detail = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]
        for e in detail:
            if e.get("type") == "json_invalid":
                e["msg"], e["loc"] = f"the body is not JSON (at character {e['loc'][-1]})", ["body"]
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in detail)
        return JSONResponse({"detail": detail, "message": message}, status_code=422)

    @app.post("/get_observation")
    async def get_observation(request: ObservationRequest):
        n = len(request.trajectory_ids)
        for name in ("actions", "extra_fields", "finish", "is_last_step"):
            value = getattr(request, name)
            if value is not None and len(value) != n:
                return unprocessable(["body", name], f"has {len(value)} items; trajectory_ids has {n} (one each)")
        for i, tid in enumerate(request.trajectory_ids):
            if not tid or len(tid) > MAX_ID_CHARS:
                return unprocessable(["body", "trajectory_ids", i], f"must be 1 to {MAX_ID_CHARS} characters")
        shared = dict(request.model_extra or {})
        extras = [{**shared, **e} for e in (request.extra_fields or [{}] * n)]
        finish = request.finish or [False] * n
        last = request.is_last_step or [False] * n
        try:
            body = await server.observe(request.trajectory_ids, request.actions, extras,
                                        [a or b for a, b in zip(finish, last, strict=True)])
        except CapacityFull as e:
            return JSONResponse({"detail": [{"type": "capacity", "loc": ["body", "trajectory_ids"], "msg": str(e)}],
                                 "message": str(e)}, status_code=503,
                                headers={"Retry-After": str(server.options.retry_after)})
        return JSONResponse(body)

    @app.get("/health")
    async def health():
        return server.health()

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(server.metrics(), media_type="text/plain; version=0.0.4")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):  # a bug of ours: a 500 that says what, never a hang
        return JSONResponse({"detail": [{"type": "internal", "loc": [], "msg": f"{type(exc).__name__}: {exc}"}]},
                            status_code=500)

    return app


def make_backend(spec: EnvSpec, *, workers: int = 1, ray: str | None = None, concurrency: int = 64,
                 ray_options: dict | None = None):
    """Threads of this process (workers 1), N worker processes, or Ray actors (ray: a cluster address)."""
    if ray:
        from swepost.serve.envray import RayBackend

        return RayBackend(spec, ray, **(ray_options or {}))
    if workers < 1:
        raise BadInput(f"must be at least 1, not {workers}", key="--workers")
    if workers == 1:
        return ThreadBackend(spec, concurrency)
    return ProcessBackend(spec, workers, concurrency)


def serve_env(server: EnvServer, host: str = "127.0.0.1", port: int = 8000, *,
              on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then close every environment and return normally."""
    from swepost.serve.http import serve_foreground

    if not serve_foreground(create_app(server), host, port, lifespan=True, on_ready=on_ready):
        raise WorkFailed("the environment server did not start (see the messages above)")


class BackgroundEnvServer(BackgroundServer):
    """The environment server on a thread of this process (tests, benchmarks, the demo):
    `with BackgroundEnvServer(server) as s: ... s.url`."""

    name = "environment server"

    def __init__(self, server: EnvServer, *, host: str = "127.0.0.1", port: int = 0):
        super().__init__(create_app(server), host=host, port=port, lifespan=True)
        self.server = server
