"""Issue 16: the environment server, driven by a client that speaks only VerlTool's protocol (plain HTTP POSTs of
`{"trajectory_ids", "actions", "extra_fields", "finish", "is_last_step"}` to /get_observation), against a real
`swepost serve env` process on loopback: full episodes of the search, codeqa and swe environments with the reward in
the last observation, the batch form, bad requests, the cap, the idle TTL, load, a worker killed with SIGKILL, and
a clean shutdown that leaves no sandbox behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import index_and_import_search, swepost_in

REPO_ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = REPO_ROOT / "data" / "pydocs_questions.jsonl"
GOLD = {r["id"]: r["golden_answers"][0] for r in map(json.loads, QUESTIONS.read_text().splitlines())}
READY = re.compile(r"ready on (http://\S+)")


# --- a client that knows nothing of swepost --------------------------------------------------------------------

def post(url: str, body: object, timeout: float = 600) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + "/get_observation", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read()), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), {k.lower(): v for k, v in e.headers.items()}


def observe(url: str, ids: list[str], actions: list[str], extra_fields: list[dict] | None = None,
            **more) -> dict:
    body = {"trajectory_ids": ids, "actions": actions, **more}
    if extra_fields is not None:
        body["extra_fields"] = extra_fields
    status, reply, _ = post(url, body)
    assert status == 200, reply
    assert set(reply) >= {"observations", "dones", "valids", "processing_time_ms", "queue_time_ms"}
    assert len(reply["observations"]) == len(reply["dones"]) == len(reply["valids"]) == len(ids)
    return reply


def get(url: str, path: str) -> str:
    with urllib.request.urlopen(url + path, timeout=30) as r:
        return r.read().decode()


def call(name: str, **arguments) -> str:
    """A tool call as a Qwen/Hermes model writes it."""
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


def text_of(observation) -> str:
    return observation["obs"] if isinstance(observation, dict) else observation


# --- the server, a real process --------------------------------------------------------------------------------

class Server:
    def __init__(self, home: Path, *args: str):
        env = {**os.environ, "SWEPOST_HOME": str(home), "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "swepost", "serve", "env", "--port", "0", *args],
                                        env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, start_new_session=True)
        line = self.process.stdout.readline()
        match = READY.search(line)
        if not match:
            self.process.kill()
            raise AssertionError(f"no ready line: {line!r}\n{self.process.stderr.read()}")
        self.url = match.group(1)
        self.log = Path(line.rsplit("log ", 1)[1].rstrip(")\n"))

    def health(self) -> dict:
        return json.loads(get(self.url, "/health"))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        return self.process.returncode


@pytest.fixture(scope="module")
def search_home(tmp_path_factory) -> Path:
    return index_and_import_search(tmp_path_factory.mktemp("env-server") / "home")


@pytest.fixture(scope="module")
def search_server(search_home):
    server = Server(search_home, "--tasks", "q", "--index", "idx")
    yield server
    assert server.stop() == 0


# --- the protocol ----------------------------------------------------------------------------------------------

def test_verltool_s_example_payload_runs_a_search_episode_to_its_reward(search_server):
    url = search_server.url
    first = observe(url, ["traj_1"], [""], [{"instance_id": "pydocs-001"}])
    assert first["dones"] == [False] and first["valids"] == [True]
    assert "Which attribute of that exception" in first["observations"][0]  # the task's prompt
    step = observe(url, ["traj_1"], [call("search", query="CalledProcessError attributes cmd returncode")],
                   [{}])
    text = step["observations"][0]
    assert isinstance(text, str) and text.startswith("<tool_response>\n") and "CalledProcessError" in text
    assert step["dones"] == [False] and step["valids"] == [True]
    end = observe(url, ["traj_1"], ["It is the cmd attribute. <answer>cmd</answer>"], [{}])
    final = end["observations"][0]
    assert end["dones"] == [True] and final["reward"] == 1.0 and final["metrics"]["resolved"] == 1
    assert final["metrics"]["turns"] == 2 and final["metrics"]["tool_calls"] == 1
    # the trainer's fire-and-forget finish after the episode ended: the same final observation, not an error
    again = observe(url, ["traj_1"], [""], [{}], finish=[True], is_last_step=[True])
    assert again["dones"] == [True] and again["observations"][0] == final


def test_the_batch_form_runs_trajectories_side_by_side(search_server):
    url = search_server.url
    ids = ["b-right", "b-wrong", "b-cut", "b-nudged"]
    tasks = ["pydocs-001", "pydocs-002", "pydocs-003", "pydocs-004"]
    # a key outside the protocol's is copied into every extra_fields (here: nothing the server uses)
    first = observe(url, ids, [""] * 4, [{"instance_id": t} for t in tasks], run="batch-test")
    assert first["dones"] == [False] * 4
    second = observe(url, ids, [f"<answer>{GOLD['pydocs-001']}</answer>", "<answer>forward</answer>",
                                call("search", query="shutil move copy function metadata"), "I am thinking."],
                     [{}] * 4, finish=[False, False, False, False])
    assert second["dones"] == [True, True, False, False]
    assert [o["reward"] for o in second["observations"][:2]] == [1.0, 0.0]
    assert second["valids"][3] is False and "no tool call" in second["observations"][3].lower()
    # is_last_step ends (and grades) what the trainer cuts: no answer is a wrong answer, not an error
    third = observe(url, ids[2:], ["", "<answer>4</answer>"], [{}, {}], is_last_step=[True, False])
    assert third["dones"] == [True, True]
    cut, answered = third["observations"]
    assert cut["reward"] == 0.0 and cut["metrics"]["graded"] == 1 and answered["reward"] == 1.0
    assert search_server.health()["live_environments"] == 0


def test_an_unknown_task_or_an_id_that_ended_is_a_clear_observation_not_a_500(search_server):
    url = search_server.url
    reply = observe(url, ["u1", "u2"], ["", ""], [{"instance_id": "no-such-task"}, {}])
    for observation, done in zip(reply["observations"], reply["dones"], strict=True):
        assert done and observation["reward"] is None and observation["metrics"]["ungraded"] == 1
    assert "unknown instance_id 'no-such-task'" in reply["observations"][0]["obs"]
    assert "put the task's instance_id" in reply["observations"][1]["obs"]
    # a whole task row runs a task the server does not have
    row = {"instance_id": "row-task", "kind": "search", "problem_statement": "Which module runs subprocesses?",
           "verify": {"gold_answers": ["subprocess"]}}
    reply = observe(url, ["r1"], ["<answer>subprocess</answer>"], [{"task": row}])
    assert reply["dones"] == [True] and reply["observations"][0]["reward"] == 1.0


@pytest.mark.parametrize("body, field", [
    ({"actions": ["x"]}, "trajectory_ids"),
    ({"trajectory_ids": [], "actions": []}, "trajectory_ids"),
    ({"trajectory_ids": ["a"], "actions": ["x", "y"]}, "actions"),
    ({"trajectory_ids": ["a"], "actions": ["x"], "extra_fields": [{}, {}]}, "extra_fields"),
    ({"trajectory_ids": ["a"], "actions": ["x"], "finish": [True, False]}, "finish"),
    ({"trajectory_ids": ["a"], "actions": [3]}, "actions"),
    ({"trajectory_ids": ["a"], "actions": ["x"], "is_last_step": ["yes"]}, "is_last_step"),
    ({"trajectory_ids": [""], "actions": ["x"]}, "trajectory_ids"),
    (b'{"trajectory_ids": ["a"], "actions": [', "body"),
])
def test_a_bad_request_is_a_422_naming_the_field(search_server, body, field):
    status, reply, _ = post(search_server.url, body)
    assert status == 422, reply
    assert field in json.dumps(reply["detail"])


def test_health_metrics_and_the_request_log(search_server):
    health = search_server.health()
    assert health["status"] == "ok" and health["environment"] == "search" and health["tasks"] == 24
    assert {"live_environments", "concurrency", "uptime_s", "max_envs"} <= set(health)
    metrics = get(search_server.url, "/metrics")
    assert re.search(r"^swepost_env_requests_total \d+", metrics, re.M)
    assert "# TYPE swepost_env_live_environments gauge" in metrics
    observe(search_server.url, ["log-1"], [""], [{"instance_id": "pydocs-002"}])
    rows = [json.loads(line) for line in search_server.log.read_text().splitlines()]
    assert rows and "log-1" in rows[-1]["ids"] and rows[-1]["opened"] == 1


# --- lifecycle: the cap and the idle TTL -----------------------------------------------------------------------

def test_the_cap_is_a_503_with_retry_after_and_idle_environments_expire(search_home):
    server = Server(search_home, "--tasks", "q", "--index", "idx", "--max-envs", "2", "--idle-ttl", "1")
    try:
        url = server.url
        observe(url, ["c1", "c2"], ["", ""], [{"instance_id": "pydocs-001"}, {"instance_id": "pydocs-002"}])
        status, reply, headers = post(url, {"trajectory_ids": ["c3"], "actions": [""],
                                            "extra_fields": [{"instance_id": "pydocs-003"}]})
        assert status == 503 and int(headers["retry-after"]) > 0 and "cap is 2" in reply["message"]
        # the live ones are still served; once one ends, a new one opens
        assert observe(url, ["c1"], ["<answer>cmd</answer>"], [{}])["dones"] == [True]
        assert observe(url, ["c3"], [""], [{"instance_id": "pydocs-003"}])["dones"] == [False]
        time.sleep(3)  # c2 and c3 idle past the TTL
        assert server.health()["live_environments"] == 0
        late = observe(url, ["c2"], ["<answer>backward</answer>"], [{}])
        assert late["dones"] == [True] and late["observations"][0]["reward"] is None
        assert "without an action" in late["observations"][0]["obs"]
    finally:
        assert server.stop() == 0


# --- load on loopback -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_256_concurrent_trajectories_lose_nothing(search_home):
    server = Server(search_home, "--tasks", "q", "--index", "idx", "--workers", "2", "--concurrency", "32")
    tasks = sorted(GOLD)
    try:
        def episode(i: int) -> float:
            tid, task = f"load-{i}", tasks[i % len(tasks)]
            observe(server.url, [tid], [""], [{"instance_id": task}])
            for q in range(3):
                r = observe(server.url, [tid], [call("search", query=f"question {i} part {q}")], [{}])
                assert r["dones"] == [False] and "<tool_response>" in r["observations"][0]
            r = observe(server.url, [tid], [f"<answer>{GOLD[task]}</answer>"], [{}])
            assert r["dones"] == [True]
            return r["observations"][0]["reward"]

        with ThreadPoolExecutor(256) as pool:
            rewards = list(pool.map(episode, range(256)))
        assert rewards == [1.0] * 256
        health = server.health()
        assert health["live_environments"] == 0 and health["busy"] == 0
        metrics = get(server.url, "/metrics")
        assert re.search(r"^swepost_env_ended_total 256$", metrics, re.M)
        assert re.search(r"^swepost_env_ungraded_total 0$", metrics, re.M)
    finally:
        assert server.stop() == 0


# --- codeqa and swe: real sandboxes --------------------------------------------------------------------------

def containers_of(docker_client, pids: list[int]) -> list[str]:
    """The swepost sandboxes (containers) whose owner label names one of these processes."""
    owners = {str(p) for p in pids}
    return [c["Id"][:12] for c in docker_client.api.containers(all=True, filters={"label": "swepost.sandbox=1"})
            if (c.get("Labels") or {}).get("swepost.owner", "").rpartition(":")[2] in owners]


@pytest.fixture
def minicalc_home(tmp_path, base_image) -> Path:
    return swepost_in(tmp_path / "home",
                      ["tasks", "import", REPO_ROOT / "data" / "minicalc_tasks.jsonl", "--name", "mini"],
                      ["tasks", "import", REPO_ROOT / "data" / "minicalc_qa.jsonl", "--kind", "codeqa", "--name", "qa"])


def fix_actions(task: dict) -> list[str]:
    """The gold patch as str_replace_editor calls, one action each, then submit."""
    from tests.test_swe_env import hunks

    return [call("str_replace_editor", command="str_replace", path=path, old_str=old, new_str=new)
            for path, old, new in hunks(task["patch"])] + [call("submit")]


MINICALC = [json.loads(line) for line in (REPO_ROOT / "data" / "minicalc_tasks.jsonl").read_text().splitlines()]


@pytest.mark.docker
def test_a_codeqa_episode_is_judged_and_its_sandbox_closed(minicalc_home, docker_client):
    server = Server(minicalc_home, "--tasks", "qa", "--repos", str(REPO_ROOT / "data" / "repos"),
                    "--backend", "docker")
    try:
        qa = json.loads((REPO_ROOT / "data" / "minicalc_qa.jsonl").read_text().splitlines()[0])
        tid = "qa-1"
        observe(server.url, [tid], [""], [{"instance_id": qa["instance_id"]}])
        step = observe(server.url, [tid], [call("view_codebase", path="minicalc/stats.py")], [{}])
        assert "def mean" in step["observations"][0]
        live = containers_of(docker_client, [server.process.pid])
        assert live, "the codeqa sandbox should be up while the trajectory lives"
        end = observe(server.url, [tid], [call("finish", answer=qa["answer"])], [{}])
        final = end["observations"][0]
        assert end["dones"] == [True] and final["reward"] is not None and final["reward"] > 0.7, final
        assert containers_of(docker_client, [server.process.pid]) == []
    finally:
        assert server.stop() == 0


@pytest.mark.docker
def test_a_swe_episode_fixed_by_tool_calls_is_resolved_and_an_unfixed_one_is_not(minicalc_home, docker_client):
    server = Server(minicalc_home, "--tasks", "mini", "--repos", str(REPO_ROOT / "data" / "repos"),
                    "--backend", "docker")
    try:
        task = MINICALC[0]
        ids = ["fix", "idle"]
        first = observe(server.url, ids, ["", ""], [{"instance_id": task["instance_id"]}] * 2)
        assert first["dones"] == [False, False]
        out = observe(server.url, ["idle"], [call("bash", command="cat minicalc/stats.py | head -3")], [{}])
        assert out["observations"][0].startswith("<tool_response>")
        for action in fix_actions(task):
            reply = observe(server.url, ["fix"], [action], [{}])
        final = reply["observations"][0]
        assert reply["dones"] == [True] and final["reward"] == 1.0 and final["metrics"]["resolved"] == 1, final
        cut = observe(server.url, ["idle"], [""], [{}], finish=[True])["observations"][0]
        assert cut["reward"] == 0.0 and cut["metrics"]["graded"] == 1
        assert containers_of(docker_client, [server.process.pid]) == []
    finally:
        assert server.stop() == 0


@pytest.mark.docker
@pytest.mark.slow
def test_16_swe_trajectories_and_a_worker_killed_with_sigkill(minicalc_home, docker_client):
    """16 trajectories over 2 worker processes; one worker is killed with SIGKILL while all are open: its
    trajectories get a clear error (never a reward), the other worker's are resolved, the killed worker's
    sandboxes are cleared and it is restarted, and the lost tasks then run to their reward on it."""
    server = Server(minicalc_home, "--tasks", "mini", "--repos", str(REPO_ROOT / "data" / "repos"),
                    "--backend", "docker", "--workers", "2", "--concurrency", "8")
    try:
        ids = [f"swe-{i}" for i in range(16)]
        task_of = {tid: MINICALC[i % len(MINICALC)] for i, tid in enumerate(ids)}
        opened = observe(server.url, ids, [""] * 16, [{"instance_id": task_of[t]["instance_id"]} for t in ids])
        assert opened["dones"] == [False] * 16
        pids = server.health()["worker_pids"]
        victim = 0
        lost = [t for t in ids if zlib.crc32(t.encode()) % 2 == victim]
        assert 0 < len(lost) < 16
        assert containers_of(docker_client, [pids[victim]]), "the victim holds sandboxes"
        os.kill(pids[victim], signal.SIGKILL)

        def run(tid: str) -> dict:
            reply = {}
            for action in fix_actions(task_of[tid]):
                reply = observe(server.url, [tid], [action], [{}])
                if reply["dones"][0]:
                    break
            return reply["observations"][0]

        with ThreadPoolExecutor(16) as pool:
            finals = dict(zip(ids, pool.map(run, ids), strict=True))
        for tid, final in finals.items():
            if tid in lost:
                assert final["reward"] is None and "died" in final["obs"], final
            else:
                assert final["reward"] == 1.0, final
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (containers_of(docker_client, [pids[victim]])
                                               or server.health()["worker_restarts"] < 1):
            time.sleep(0.5)
        assert containers_of(docker_client, [pids[victim]]) == [], "the killed worker's sandboxes are cleared"
        assert server.health()["worker_restarts"] == 1
        # the restarted worker serves the lost tasks again under new ids
        again = {f"{t}-again": t for t in lost}
        observe(server.url, list(again), [""] * len(again),
                [{"instance_id": task_of[t]["instance_id"]} for t in again.values()])
        task_of.update({new: task_of[old] for new, old in again.items()})
        with ThreadPoolExecutor(len(again)) as pool:
            assert [f["reward"] for f in pool.map(run, again)] == [1.0] * len(again)
        pids = server.health()["worker_pids"]
    finally:
        assert server.stop() == 0
    assert containers_of(docker_client, [*pids, server.process.pid]) == []


@pytest.mark.docker
def test_sigterm_closes_every_live_sandbox(minicalc_home, docker_client):
    server = Server(minicalc_home, "--tasks", "mini", "--repos", str(REPO_ROOT / "data" / "repos"),
                    "--backend", "docker", "--workers", "2")
    pids = server.health()["worker_pids"]
    ids = [f"live-{i}" for i in range(4)]
    observe(server.url, ids, [""] * 4, [{"instance_id": MINICALC[i]["instance_id"]} for i in range(4)])
    assert len(containers_of(docker_client, pids)) >= 4
    assert server.stop() == 0
    assert containers_of(docker_client, pids) == []


@pytest.mark.docker
def test_what_a_server_killed_with_sigkill_left_is_cleared_by_sandbox_gc(minicalc_home, docker_client):
    server = Server(minicalc_home, "--tasks", "mini", "--repos", str(REPO_ROOT / "data" / "repos"),
                    "--backend", "docker")
    observe(server.url, ["orphan"], [""], [{"instance_id": MINICALC[0]["instance_id"]}])
    left = containers_of(docker_client, [server.process.pid])
    assert left
    os.killpg(server.process.pid, signal.SIGKILL)  # no shutdown: the sandbox outlives it
    server.process.wait(30)
    assert containers_of(docker_client, [server.process.pid]) == left
    env = {**os.environ, "SWEPOST_HOME": str(minicalc_home)}
    r = subprocess.run([sys.executable, "-m", "swepost", "sandbox", "gc"], env=env, cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert containers_of(docker_client, [server.process.pid]) == []


# --- failures are not rewards -------------------------------------------------------------------------------------

def test_a_slow_action_a_slow_or_crashing_grader_and_a_broken_start_are_never_rewards(tmp_path):
    home = tmp_path / "home"
    rows = [{"id": f"t-{how}", "question": f"Do it. {what}", "golden_answers": ["x"]}
            for how, what in (("ok", ""), ("slow", "grade=slow"), ("raise", "grade=raise"), ("start", "reset=raise"),
                              ("hang", ""), ("broken", ""))]
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "SWEPOST_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "swepost", "tasks", "import", str(tmp_path / "tasks.jsonl"), "--kind",
                    "search", "--name", "slow"], env=env, cwd=REPO_ROOT, check=True, capture_output=True, timeout=120)
    server = Server(home, "--tasks", "slow", "--env", "tests.env_server_plugins:SlowEnvironment",
                    "--call-timeout", "1", "--grading-timeout", "1")
    try:
        ids = [r["id"] for r in rows]
        opened = observe(server.url, ids, [""] * len(ids), [{"instance_id": i} for i in ids])
        assert opened["dones"] == [False, False, False, True, False, False]
        assert "setup always fails" in opened["observations"][3]["obs"]
        t0 = time.monotonic()
        actions = [call("submit")] * 3 + ["", call("sleep", seconds=6), call("break")]
        reply = observe(server.url, ids, actions, [{}] * len(ids))
        assert time.monotonic() - t0 < 5, "the slow action and the slow grader are cut, not waited for"
        finals = dict(zip(ids, reply["observations"], strict=True))
        assert reply["dones"] == [True] * len(ids)
        assert finals["t-ok"]["reward"] == 1.0
        for tid, words in (("t-slow", "grading timed out"), ("t-raise", "the grader crashed"),
                           ("t-hang", "did not finish within"), ("t-broken", "the test broke the sandbox"),
                           ("t-start", "setup always fails")):
            assert finals[tid]["reward"] is None, (tid, finals[tid])
            assert words in finals[tid]["obs"] + finals[tid].get("cause", ""), (tid, finals[tid])
            assert finals[tid]["metrics"]["ungraded"] == 1 or finals[tid]["metrics"].get("graded") == 0
        detailed = observe(server.url, ["t-slow-2"], [call("submit")], [{"instance_id": "t-slow", "details": True}])
        final = detailed["observations"][0]["final"]
        assert final["resolved"] == "UNGRADED" and "grading timed out" in final["evidence"]["reason"]
        metrics = get(server.url, "/metrics")
        assert re.search(r"^swepost_env_timeouts_total 1$", metrics, re.M)
    finally:
        assert server.stop() == 0


def test_the_listening_socket_says_tcp_so_replies_are_not_held_by_nagle():
    """asyncio turns TCP_NODELAY on only for accepted sockets whose protocol is IPPROTO_TCP; with protocol 0 every
    keep-alive reply (uvicorn writes head and body apart) waited ~40 ms for the client's delayed ACK."""
    import socket

    from swepost.serve.http import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
