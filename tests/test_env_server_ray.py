"""The environment server's Ray backend on a real local Ray cluster (one per module, `ray start --head`): the search
environment's episodes run to their reward, one actor per trajectory; an actor killed mid-episode loses only its
trajectory (WorkerDied) and its leftovers are swept; close and shutdown leave no actor alive; and `swepost serve env
--ray` serves VerlTool's protocol with the episodes in Ray actors."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import index_and_import_search, require_or_skip

from swepost.artifacts import ArtifactStore
from swepost.errors import BadInput, WorkFailed
from swepost.serve.envsession import EnvSpec, WorkerDied

REPO_ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = REPO_ROOT / "data" / "pydocs_questions.jsonl"
GOLD = {r["id"]: r["golden_answers"][0] for r in map(json.loads, QUESTIONS.read_text().splitlines())}
READY = re.compile(r"ready on (http://\S+)")
CPUS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def search(query: str) -> str:
    """A search tool call as a Qwen/Hermes model writes it."""
    return f'<tool_call>{json.dumps({"name": "search", "arguments": {"query": query}})}</tool_call>'


class RayCluster:
    """A Ray head node of our own: `ray start --head --block` in its own session, so that stopping it stops this
    cluster only (`ray stop` would stop every Ray cluster on the machine). Booted in the background; `address`
    waits for it."""

    def __init__(self, folder: Path):
        ray = Path(sys.executable).with_name("ray")
        port = free_port()
        self.log = folder / "ray-head.log"
        # no token authentication: Ray 2.5x turns it on for a cluster when ~/.ray/auth_token exists, and a driver
        # given an explicit address (as the server's --ray is) then needs RAY_AUTH_MODE=token to connect
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
        env["RAY_AUTH_MODE"] = "disabled"
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [str(ray), "start", "--head", "--block", f"--num-cpus={CPUS}", "--disable-usage-stats",
                 "--include-dashboard=false", f"--port={port}", f"--dashboard-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}"],
                stdout=out, stderr=subprocess.STDOUT, env={**env, "RAY_USAGE_STATS_ENABLED": "0"},
                start_new_session=True)
        self._address = f"127.0.0.1:{port}"
        self._ready = False

    @property
    def address(self) -> str:
        deadline = time.monotonic() + 90
        while not self._ready:
            if "Ray runtime started" in self.log.read_text():
                self._ready = True
            elif self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start:\n{self.log.read_text()[-3000:]}")
            else:
                time.sleep(0.2)
        return self._address

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # --block: drains and stops this cluster's processes
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if importlib.util.find_spec("ray") is None or shutil.which("ray", path=str(Path(sys.executable).parent)) is None:
        require_or_skip("ray is not installed (pip install 'swepost[ray]')")
    head = RayCluster(tmp_path_factory.mktemp("ray"))
    yield head
    head.stop()


@pytest.fixture(scope="module")
def search_home(tmp_path_factory, cluster) -> Path:
    """The bundled corpus indexed and its questions imported as search tasks (while the Ray head boots)."""
    return index_and_import_search(tmp_path_factory.mktemp("env-server-ray") / "home")


@pytest.fixture(scope="module")
def spec_and_tasks(search_home):
    from swepost.stages.tasks import load_tasks

    store = ArtifactStore(search_home)
    spec = EnvSpec(name="search", settings={"index": str(store.resolve("idx").path)})
    return spec, {t.instance_id: t for t in load_tasks(store.resolve("q"))}


def backend_on(cluster, spec):
    from swepost.serve.envray import RayBackend

    return RayBackend(spec, cluster.address)


async def pid_of(backend, tid: str) -> int:
    _node, _host, pid = await backend.where[tid]
    return pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


# --- the backend through its interface ---------------------------------------------------------------------------

def test_episodes_run_to_their_reward_one_actor_each(cluster, spec_and_tasks):
    spec, tasks = spec_and_tasks
    right, wrong, r1 = tasks["pydocs-001"], tasks["pydocs-002"], tasks["pydocs-003"]

    async def scenario():
        backend = backend_on(cluster, spec)
        await backend.start()
        assert backend.describe()["backend"] == "ray" and backend.describe()["cluster_cpus"] == CPUS
        try:
            opened = await asyncio.gather(*(backend.call(tid, task, "", False, {}) for tid, task in
                                            (("right", right), ("wrong", wrong), ("r1", r1))))
            assert [o["done"] for o in opened] == [False] * 3
            assert right.problem_statement[:40] in opened[0]["observation"]
            assert backend.describe()["workers"] == 3
            pids = await asyncio.gather(*(pid_of(backend, tid) for tid in ("right", "wrong", "r1")))
            assert len(set(pids)) == 3 and os.getpid() not in pids  # one process per trajectory

            found = await backend.call("right", None, search("CalledProcessError attribute command"), False, {})
            assert "<tool_response>" in found["observation"] and "CalledProcessError" in found["observation"]
            assert not found["done"] and found["valid"] and found["queue_s"] >= 0
            text = await backend.call("r1", None, "<search>sched scheduler timefunc</search>", False, {})
            assert "<information>" in text["observation"]

            ends = await asyncio.gather(
                backend.call("right", None, f"The attribute is <answer>{GOLD['pydocs-001']}</answer>", False, {}),
                backend.call("wrong", None, search("sched"), False, {"details": True}),
                backend.call("r1", None, f"<answer>{GOLD['pydocs-003']}</answer>", False, {}))
            assert ends[0]["done"] and ends[0]["observation"]["reward"] == 1.0
            assert ends[0]["observation"]["metrics"]["tool_calls"] == 1
            assert ends[2]["done"] and ends[2]["observation"]["reward"] == 1.0
            assert not ends[1]["done"] and ends[1]["observation"]["event"] == "tools"
            last = await backend.call("wrong", None, "<answer>sideways</answer>", False, {})
            assert last["done"] and last["observation"]["reward"] == 0.0

            # each ended episode's actor is gone
            assert backend.describe()["workers"] == 0
            assert wait_until(lambda: not any(map(alive, pids)))
            expired = await backend.call("right", None, "<answer>x</answer>", False, {})
            assert expired["done"] and expired["observation"]["reward"] is None
        finally:
            await backend.shutdown()

    asyncio.run(scenario())


def test_a_killed_actor_loses_only_its_trajectory_and_its_leftovers_are_swept(cluster, spec_and_tasks):
    import ray

    from swepost.sandbox.local import TEMP_PREFIX

    spec, tasks = spec_and_tasks

    async def scenario():
        backend = backend_on(cluster, spec)
        await backend.start()
        try:
            await asyncio.gather(backend.call("doomed", tasks["pydocs-001"], "", False, {}),
                                 backend.call("survivor", tasks["pydocs-002"], "", False, {}))
            pid = await pid_of(backend, "doomed")
            # what a local sandbox of that actor would have left: a working copy labelled with its owner
            leftover = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{socket.gethostname()}:{pid}-"))
            ray.kill(backend.actors["doomed"])
            from swepost.sandbox.gc import alive

            for _ in range(300):  # ray.kill is asynchronous: an action sent before the process is gone still runs
                if not alive(pid):
                    break
                await asyncio.sleep(0.05)
            assert not alive(pid), "ray.kill did not stop the actor's process within 15 s"
            with pytest.raises(WorkerDied, match=r"trajectory doomed died \(it was killed by `ray.kill`\)"):
                await backend.call("doomed", None, search("subprocess"), False, {})
            assert backend.describe()["actor_deaths"] == 1 and "doomed" not in backend.actors

            went_on = await backend.call("survivor", None, search("sched scheduler"), False, {})
            assert "<tool_response>" in went_on["observation"] and not went_on["done"]
            done = await backend.call("survivor", None, f"<answer>{GOLD['pydocs-002']}</answer>", False, {})
            assert done["observation"]["reward"] == 1.0

            for _ in range(200):  # the sweep runs in the background once the actor's process is gone
                if not leftover.exists():
                    break
                await asyncio.sleep(0.1)
            assert not leftover.exists(), "the dead actor's leftover was not swept"
        finally:
            await backend.shutdown()

    asyncio.run(scenario())


def test_close_and_shutdown_leave_no_actor_alive(cluster, spec_and_tasks):
    import ray

    spec, tasks = spec_and_tasks
    ids = [f"t{i}" for i in range(3)]

    async def scenario() -> list[int]:
        backend = backend_on(cluster, spec)
        await backend.start()
        try:
            await asyncio.gather(*(backend.call(tid, tasks["pydocs-001"], "", False, {}) for tid in ids))
            pids = list(await asyncio.gather(*(pid_of(backend, tid) for tid in ids)))
            await backend.close("t0")  # the front's idle TTL or timeout: closed without grading, actor killed
            assert "t0" not in backend.actors and backend.describe()["actor_deaths"] == 0
            assert wait_until(lambda: not alive(pids[0]))
            reply = await backend.call("t0", None, search("x"), False, {})
            assert reply["done"] and reply["observation"]["metrics"]["error_expired"] == 1
            await backend.close("never-opened")  # never raises
        finally:
            await backend.shutdown()
        assert backend.describe()["workers"] == 0
        return pids

    pids = asyncio.run(scenario())
    assert not ray.is_initialized()  # the backend ran ray.init, so it ran ray.shutdown
    assert wait_until(lambda: not any(map(alive, pids)))
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    try:
        assert wait_until(lambda: ray.available_resources().get("CPU") == CPUS), ray.available_resources()
    finally:
        ray.shutdown()


def test_start_says_what_is_missing(cluster, spec_and_tasks, monkeypatch):
    from swepost.serve.envray import RayBackend

    spec, _ = spec_and_tasks
    closed = free_port()  # nothing listens there now
    t0 = time.monotonic()
    with pytest.raises(WorkFailed, match=f"no Ray cluster answers at 127.0.0.1:{closed}"):
        asyncio.run(RayBackend(spec, f"127.0.0.1:{closed}").start())
    assert time.monotonic() - t0 < 30  # ray.init alone would retry it for minutes
    with pytest.raises(WorkFailed, match=f"has {CPUS} CPUs; one environment asks for 64"):
        asyncio.run(RayBackend(spec, cluster.address, num_cpus=64).start())
    import ray

    assert not ray.is_initialized()
    with pytest.raises(BadInput, match="index folder not found"):
        asyncio.run(RayBackend(EnvSpec(name="search", settings={"index": "/nonexistent"}), cluster.address).start())
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(BadInput, match=r"swepost\[ray\]"):
        asyncio.run(RayBackend(spec, "auto").start())


# --- the server, a real process, with --ray ----------------------------------------------------------------------

def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url + "/get_observation", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        assert r.status == 200
        return json.loads(r.read())


def test_serve_env_with_ray_runs_a_batch_of_episodes_to_their_rewards(cluster, search_home):
    env = {**os.environ, "SWEPOST_HOME": str(search_home), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    server = subprocess.Popen([sys.executable, "-m", "swepost", "serve", "env", "--env", "search", "--tasks", "q",
                               "--index", "idx", "--ray", cluster.address, "--port", "0"],
                              env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        line = server.stdout.readline()
        match = READY.search(line)
        assert match, f"no ready line: {line!r}\n{server.stderr.read() if server.poll() is not None else ''}"
        url = match.group(1)
        with urllib.request.urlopen(url + "/health", timeout=30) as r:
            assert json.loads(r.read())["backend"] == "ray"

        ids = ["traj-a", "traj-b", "traj-c"]
        tasks = ["pydocs-001", "pydocs-002", "pydocs-003"]
        first = post(url, {"trajectory_ids": ids, "actions": [""] * 3,
                           "extra_fields": [{"instance_id": t} for t in tasks], "finish": [False] * 3})
        assert first["dones"] == [False] * 3 and all(isinstance(o, str) and o for o in first["observations"])
        second = post(url, {"trajectory_ids": ids, "actions": [search("subprocess CalledProcessError"),
                                                               search("sched scheduler time"),
                                                               "<search>sched</search>"],
                            "extra_fields": [{"instance_id": t} for t in tasks]})
        assert second["dones"] == [False] * 3 and second["valids"] == [True] * 3
        assert "<tool_response>" in second["observations"][0] and "<information>" in second["observations"][2]
        last = post(url, {"trajectory_ids": ids,
                          "actions": [f"<answer>{GOLD['pydocs-001']}</answer>", "<answer>sideways</answer>",
                                      "I am not sure."],
                          "extra_fields": [{"instance_id": t} for t in tasks], "finish": [False, False, True]})
        assert last["dones"] == [True] * 3
        assert [o["reward"] for o in last["observations"]] == [1.0, 0.0, 0.0]
        assert last["observations"][2]["metrics"]["graded"] == 1  # finish without an answer: graded, wrong
        with urllib.request.urlopen(url + "/health", timeout=30) as r:
            assert json.loads(r.read())["workers"] == 0  # every episode's actor is gone
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            code = server.wait(10)
    assert code == 0, server.stderr.read()
