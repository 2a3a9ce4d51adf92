"""The environment server's Ray backend: one Ray actor per live trajectory, placed by Ray across its cluster.

Each actor is a Ray worker process holding a `SessionPool` with its one trajectory; the front awaits the actor's
replies on its event loop. An actor is killed when its episode ends (the pool has closed the environment by then)
or when the front closes the trajectory (closed first, then killed). An actor that dies takes only its trajectory
with it (`WorkerDied`); the sandboxes it opened carry its pid as owner, so the cleanup `swepost sandbox gc` runs
clears them once the process is gone, on the actor's own node. Ray is an optional extra (`swepost[ray]`): this
module imports it only when the backend starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from typing import Any

from swepost.errors import BadInput, WorkFailed
from swepost.records import Task
from swepost.sandbox.gc import sweep_dead_owners
from swepost.serve.envsession import EnvSpec, SessionPool, WorkerDied, error_reply

CONNECT_TIMEOUT_S = 60.0  # ray.init retries an address nobody answers for minutes
CLOSE_WAIT_S = 10.0  # how long a closing actor may take before it is killed anyway
DEATH_WAIT_S = 10.0  # how long the cleanup waits for a killed actor's process to be gone

log = logging.getLogger(__name__)


@functools.cache
def actor_class():
    """The remote actor class, made on first use so that importing this module does not import Ray."""
    import ray

    class EnvironmentActor:
        """One trajectory's environment in its own Ray worker process."""

        def __init__(self, spec: EnvSpec):
            self.pool = SessionPool(spec)

        def where(self) -> tuple[str, str, int]:
            """(node id, host name, pid): where the cleanup runs if this actor dies."""
            return ray.get_runtime_context().get_node_id(), socket.gethostname(), os.getpid()

        def handle(self, tid: str, task: Task | None, action: str, finish: bool, extra: dict,
                   sent: float) -> dict:
            queued = max(0.0, time.time() - sent)
            result = self.pool.handle(tid, task, action, finish, extra)
            result["queue_s"] = queued
            return result

        def close(self, tid: str) -> None:
            self.pool.close(tid)

    # two threads: `close` (the front's timeout, TTL) must run beside an action that is stuck
    return ray.remote(max_concurrency=2, max_restarts=0, max_task_retries=0)(EnvironmentActor)


@functools.cache
def remote_sweep():
    """`sweep_dead_owners` as a Ray task, to run on the node where a dead actor ran."""
    import ray

    return ray.remote(num_cpus=0, max_retries=0)(sweep_dead_owners)


class RayBackend:
    """One Ray actor per live environment on the Ray cluster at `address` ("auto": the cluster `ray start --head`
    started on this machine; "local": a private one for this process)."""

    kind = "ray"

    def __init__(self, spec: EnvSpec, address: str, *, num_cpus: float = 1.0, actor_options: dict | None = None):
        if not address:
            raise BadInput("give a Ray cluster's address (host:port), auto or local", key="--ray")
        if num_cpus < 0:
            raise BadInput(f"must be at least 0, not {num_cpus}", key="num_cpus")
        self.spec, self.address, self.num_cpus = spec, address, float(num_cpus)
        self.actor_options = dict(actor_options or {})
        self.actors: dict[str, Any] = {}  # trajectory id -> actor handle
        self.where: dict[str, Any] = {}  # trajectory id -> ObjectRef of the actor's (node id, host, pid)
        self.deaths = 0
        self.cluster: dict[str, Any] = {}
        self._ray = None
        self._owned = False  # this backend ran ray.init (so it runs ray.shutdown)
        self._dead_pids: dict[tuple[str, str], list[int]] = {}  # (host, node id) -> pids to sweep after
        self._sweepers: dict[tuple[str, str], asyncio.Task] = {}
        self._background: set[asyncio.Task] = set()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "workers": len(self.actors), "address": self.address,
                "num_cpus_per_env": self.num_cpus, "actor_deaths": self.deaths, **self.cluster}

    # --- start ---------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            import ray
        except ImportError:
            raise BadInput("the Ray backend needs Ray, an optional extra: pip install 'swepost[ray]'",
                           key="--ray") from None
        loop = asyncio.get_running_loop()
        # the environment's settings (an index that is not there) fail here, once, not in every actor
        await loop.run_in_executor(None, SessionPool(self.spec).make_env_factory)
        if ray.is_initialized():  # this process is already a Ray driver (a test, a notebook): share it
            self._ray = ray
        else:
            await loop.run_in_executor(None, self._check_reachable)
            try:
                await asyncio.wait_for(loop.run_in_executor(None, self._connect, ray), CONNECT_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise WorkFailed(f"no Ray cluster answered at {self.address} within {CONNECT_TIMEOUT_S:g} s") \
                    from None
            self._ray, self._owned = ray, True
        resources = await loop.run_in_executor(None, ray.cluster_resources)
        self.cluster = {"nodes": sum(1 for k in resources if k.startswith("node:") and "__internal" not in k),
                        "cluster_cpus": resources.get("CPU", 0.0)}
        if self.num_cpus > 0 and self.cluster["cluster_cpus"] < self.num_cpus:
            await self.shutdown()
            raise WorkFailed(f"the Ray cluster at {self.address} has {self.cluster['cluster_cpus']:g} CPUs; one "
                             f"environment asks for {self.num_cpus:g}")

    def _check_reachable(self) -> None:
        """A host:port nobody listens on is an error now: ray.init would retry it for minutes."""
        address = self.address
        if address in ("auto", "local") or "://" in address:
            return
        host, _, port = address.rpartition(":")
        if not port.isdigit() or not host:
            raise BadInput(f"expected host:port, auto or local, not {address!r}", key="--ray")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        except OSError as e:
            raise WorkFailed(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                             "`ray start --head` or give --ray local") from None

    def _connect(self, ray) -> None:
        # "local" always starts a private cluster (no address would join one found on this machine)
        kwargs: dict[str, Any] = {"address": self.address, "log_to_driver": False,
                                  "logging_level": logging.WARNING, "configure_logging": False}
        if self.address == "local":
            kwargs["include_dashboard"] = False
        quiet = _Unless("SIGTERM handler is not set")  # on purpose: signals stay the front's (uvicorn's) own
        logging.getLogger("ray._private.worker").addFilter(quiet)
        try:
            ray.init(**kwargs)
        except ConnectionError as e:
            hint = ("; if it uses token authentication (Ray turns it on where ~/.ray/auth_token exists), set "
                    "RAY_AUTH_MODE=token or give --ray auto" if self.address not in ("auto", "local") else "")
            raise WorkFailed(f"cannot connect to a Ray cluster at {self.address}: {e}{hint}; start one with "
                             "`ray start --head` or give --ray local") from None
        except (ValueError, RuntimeError) as e:
            raise BadInput(f"Ray cannot connect to {self.address!r}: {e}", key="--ray") from None
        finally:
            logging.getLogger("ray._private.worker").removeFilter(quiet)

    # --- trajectories --------------------------------------------------------------------------------------------

    async def call(self, tid: str, task: Task | None, action: str, finish: bool, extra: dict) -> dict:
        ray = self._ray
        if ray is None:
            raise WorkFailed("the Ray backend has not started")
        actor = self.actors.get(tid)
        if actor is None:
            if task is None:
                return error_reply("expired", f"no environment is open for trajectory {tid}",
                                   details=extra.get("details") is True)
            actor = self._spawn(tid)
        try:
            result = await actor.handle.remote(tid, task, action, finish, extra, time.time())
        except ray.exceptions.RayTaskError as e:  # the pool itself raised (a bug): the front closes tid
            cause = e.cause if isinstance(e.cause, BaseException) else e
            raise WorkFailed(f"the Ray actor of trajectory {tid} failed: {type(cause).__name__}: {cause}"[:2000]) \
                from None
        except ray.exceptions.RayError as e:  # the actor died (killed, out of memory, its node gone)
            if self.actors.get(tid) is actor:
                self.actors.pop(tid, None)
                self.deaths += 1
                await self._died(tid, actor)
            raise WorkerDied(f"the Ray actor that held trajectory {tid} died ({_reason(e)})") from None
        if result.get("done") and self.actors.get(tid) is actor:
            self.actors.pop(tid, None)
            self.where.pop(tid, None)
            self._kill(actor)  # the pool has closed the environment with the episode's end
        return result

    def _spawn(self, tid: str):
        options = {"num_cpus": self.num_cpus, **self.actor_options}
        actor = actor_class().options(**options).remote(self.spec)
        self.actors[tid] = actor
        self.where[tid] = actor.where.remote()
        return actor

    async def close(self, tid: str) -> None:
        actor = self.actors.pop(tid, None)
        if actor is None:
            return
        try:
            await asyncio.wait_for(_awaitable(actor.close.remote(tid)), CLOSE_WAIT_S)
            clean = True
        except Exception:  # noqa: BLE001 - stuck or dead: killed below, its leftovers swept
            clean = False
        self._kill(actor)
        if clean:
            self.where.pop(tid, None)
        else:
            await self._died(tid, actor)

    async def shutdown(self) -> None:
        if self._ray is None:
            return
        await asyncio.gather(*(self.close(tid) for tid in list(self.actors)), return_exceptions=True)
        if self._background:
            await asyncio.wait(self._background, timeout=2 * DEATH_WAIT_S)
        for task in list(self._background):
            task.cancel()
        if self._owned:
            await asyncio.get_running_loop().run_in_executor(None, self._ray.shutdown)
        self._ray = None

    # --- dead actors ---------------------------------------------------------------------------------------------

    def _kill(self, actor) -> None:
        with contextlib.suppress(Exception):  # already dead
            self._ray.kill(actor, no_restart=True)

    async def _died(self, tid: str, actor) -> None:
        """An actor is dead or was killed unclosed: sweep its sandboxes, once its process is gone, on its node."""
        self._kill(actor)
        where_ref = self.where.pop(tid, None)
        node, host, pid = "", socket.gethostname(), None
        if where_ref is not None:
            with contextlib.suppress(Exception):  # it died before saying where: sweep this machine
                node, host, pid = await asyncio.wait_for(_awaitable(where_ref), 1.0)
        key = (host, node)
        self._dead_pids.setdefault(key, [])
        if pid is not None:
            self._dead_pids[key].append(pid)
        sweeper = self._sweepers.get(key)
        if sweeper is None or sweeper.done():  # one sweep at a time per node; deaths meanwhile join the next
            self._sweepers[key] = self._background_task(self._sweep(key))

    async def _sweep(self, key: tuple[str, str]) -> None:
        host, node = key
        while (pids := self._dead_pids.pop(key, None)) is not None:
            try:
                if host == socket.gethostname():
                    loop = asyncio.get_running_loop()
                    removed = await loop.run_in_executor(None, sweep_dead_owners, pids, DEATH_WAIT_S)
                else:
                    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                    strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
                    removed = await remote_sweep().options(scheduling_strategy=strategy).remote(pids)
                if removed:
                    log.info("removed %d leftover sandbox(es) of dead Ray actors on %s", removed, host)
            except Exception as e:  # noqa: BLE001 - a node that is gone has nothing left to sweep
                log.warning("could not sweep the sandboxes of dead Ray actors on %s: %s", host, e)

    def _background_task(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


class _Unless(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


async def _awaitable(ref) -> Any:
    return await ref


def _reason(e: Exception) -> str:
    """Ray's multi-line death notice in one line: its cause, without the actor's ids."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    cause = [line for line in lines if line.startswith("The actor is dead because")]
    text = cause[0] if cause else (lines[0] if lines else type(e).__name__)
    return text.removeprefix("The actor is dead because ").rstrip(".")[:500]
