"""`environment: remote`: collect (and so eval, rft and rl) running its episodes in a real `swepost serve env`
subprocess. The same tasks collected here and through the server give the same trajectories, search tasks and the
bundled swe tasks alike; a server that is not there is an infrastructure failure (exit 1, no artifact), never a
score; and the config is checked before any episode (exit 2 naming env_url)."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from openai_server import free_port

from swepost.errors import BadInput

READY = re.compile(r"ready on (http://\S+)")
START_TIMEOUT_S = 120


@contextmanager
def env_server(home: Path, log: Path, *args: str) -> Iterator[str]:
    """`swepost serve env ARGS --port 0` against the test's store; its URL once it says it is ready. Terminated
    (then killed) on the way out; its stderr is in `log`."""
    env = {**os.environ, "SWEPOST_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "swepost", "serve", "env", *args, "--port", "0"], env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # read stdout to its end, so the server never blocks on a full pipe
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        url, deadline = None, time.monotonic() + START_TIMEOUT_S
        while url is None:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                pytest.fail(f"the env server did not say it was ready in {START_TIMEOUT_S} s:\n{log.read_text()}")
            if line is None:
                pytest.fail(f"the env server exited ({proc.wait()}) before it was ready:\n{log.read_text()}")
            found = READY.search(line)
            url = found.group(1) if found else None
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def trajectories(store, ref: str) -> list[dict]:
    return [json.loads(line) for line in (store.resolve(ref).path / "trajectories.jsonl").read_text().splitlines()]


def form(t: dict) -> dict:
    """What a trajectory looks like, apart from what a run's clock, sandbox or ids make differ."""
    return {"environment": t["environment"], "exit_status": t["exit_status"], "resolved": t["resolved"],
            "reward": t["reward"], "answer": t["answer"], "turns": t["turns"], "tool_calls": t["tool_calls"],
            "tool_errors": t["tool_errors"], "tools": t["tools"], "error": t["error"],
            "messages": [(m["role"], sorted(m)) for m in t["messages"]]}


def same_episodes(local: list[dict], remote: list[dict]) -> None:
    assert [t["episode_id"] for t in remote] == [t["episode_id"] for t in local]
    for a, b in zip(local, remote, strict=True):
        assert form(b) == form(a), a["episode_id"]


# --- search tasks: no docker -------------------------------------------------------------------------------------

@pytest.fixture
def pydocs(repo_root, swepost) -> list[str]:
    """The bundled corpus indexed and the bundled questions imported as search tasks, named pyidx and pyq."""
    swepost("corpus", "index", repo_root / "data" / "pydocs_corpus.jsonl", "--name", "pyidx", check=0)
    swepost("tasks", "import", repo_root / "data" / "pydocs_questions.jsonl", "--kind", "search", "--name", "pyq",
            check=0)
    return ["--env", "search", "--tasks", "pyq", "--index", "pyidx"]


def collect(swepost, *args: str, check: int = 0) -> dict:
    return json.loads(swepost("collect", "pyq", "--limit", "6", "--json", *args, check=check).stdout)


def test_oracle_collect_in_the_server_is_the_local_collect(pydocs, swepost, store, home, tmp_path):
    local = collect(swepost, "--policy", "oracle", "--index", "pyidx", "--name", "local")
    with env_server(home, tmp_path / "server.log", *pydocs) as url:
        remote = collect(swepost, "--policy", "oracle", "--name", "remote", "--set", "environment=remote",
                         "--set", f"env_url={url}")
    assert local["stats"]["resolved"] == 6 and remote["stats"]["resolved_rate"] == local["stats"]["resolved_rate"]
    assert remote["stats"]["exit_status"] == local["stats"]["exit_status"] == {"submitted": 6}
    a, b = trajectories(store, "local"), trajectories(store, "remote")
    same_episodes(a, b)
    for x, y in zip(a, b, strict=True):  # a search environment is deterministic: the very same conversation and grade
        assert y["environment"] == "search" and y["messages"] == x["messages"]
        assert (y["final_diff"], y["evidence"]) == (x["final_diff"], x["evidence"])


def test_every_kind_of_turn_is_the_same_through_the_server(pydocs, swepost, store, home, tmp_path):
    """A tool's result, a tool's refusal, a call the environment's schema rejects, a call the loop cannot parse, a
    reply without a tool call (the environment's own nudge), an empty reply, a Search-R1 text search, and an
    answer in tags: turn for turn what the environment run here gives."""
    script = tmp_path / "turns.json"
    script.write_text(json.dumps([
        {"tool_calls": [{"name": "search", "arguments": {"query": "CalledProcessError cmd attribute"}}]},
        {"tool_calls": [{"name": "open", "arguments": {"doc_id": "no-such-document"}}]},
        {"tool_calls": [{"name": "answer", "arguments": {}}]},
        "Let me think about it.",
        "",
        "<search>sched scheduler timefunc</search>",
        {"tool_calls": [{"name": "find", "arguments": "{not json"}]},
        "<answer>cmd</answer>",
    ]))
    args = ["--policy", "scripted", "--set", f"policy_args.path={script}", "--limit", "2"]
    local = collect(swepost, *args, "--index", "pyidx", "--name", "local")
    with env_server(home, tmp_path / "server.log", *pydocs) as url:
        remote = collect(swepost, *args, "--name", "remote", "--set", "environment=remote", "--set",
                         f"env_url={url}")
    assert remote["stats"] == {**local["stats"], "tokens": remote["stats"]["tokens"]}
    a, b = trajectories(store, "local"), trajectories(store, "remote")
    same_episodes(a, b)
    for x, y in zip(a, b, strict=True):
        assert y["messages"] == x["messages"]
        assert [m.get("error") for m in y["messages"]] == [m.get("error") for m in x["messages"]]
    marks = [m.get("error") for m in a[0]["messages"] if m.get("error")]
    assert marks == ["tool", "format", "format", "format", "format"], marks  # every kind was exercised
    assert a[0]["resolved"] == "RESOLVED_FULL" and a[1]["resolved"] == "RESOLVED_NO"


def test_the_environment_directly_speaks_the_protocol(pydocs, store, home, tmp_path):
    from swepost.envs.base import EnvironmentBroken, MalformedCall, ToolError
    from swepost.envs.remote import RemoteEnvironment
    from swepost.stages.tasks import load_tasks

    tasks = load_tasks(store.resolve("pyq"))
    with env_server(home, tmp_path / "server.log", *pydocs, "--max-envs", "1") as url:
        env = RemoteEnvironment(env_url=url + "/", repos=None, backend="auto", index="ignored")
        messages = env.reset(tasks[0])
        assert env.name == "search" and [m["role"] for m in messages] == ["system", "user"]
        assert {t["function"]["name"] for t in env.tools()} == {"search", "open", "find", "answer"}
        assert "<answer>" in env.no_tool_call
        found = env.step("search", {"query": "subprocess CalledProcessError"})
        assert found.content and not found.done
        with pytest.raises(ToolError) as e:
            env.step("open", {"doc_id": "no-such-document"})
        assert type(e.value) is ToolError
        with pytest.raises(MalformedCall):
            env.step("answer", {})
        assert env.text_reply("no tags here") is None

        # the server's cap on live environments: a second episode waits, then gives up as infrastructure
        other = RemoteEnvironment(env_url=url, connect_retry_s=1.5)
        t0 = time.monotonic()
        with pytest.raises(EnvironmentBroken, match="503"):
            other.reset(tasks[1])
        assert time.monotonic() - t0 >= 1.0
        other.close()

        done = env.step("answer", {"text": tasks[0].verify.gold_answers[0]})
        assert done.done and done.answer == tasks[0].verify.gold_answers[0]
        assert env.final_diff() == ""  # the final came with the answer: no request
        scored = env.score()
        assert (scored["reward"], scored["resolved"]) == (1.0, "RESOLVED_FULL"), scored
        env.close()

        # the first episode's end freed the one slot: the second opens now; closed unfinished, it is freed again
        other.reset(tasks[1])
        other.close()
        third = RemoteEnvironment(env_url=url, connect_retry_s=5)
        third.reset(tasks[2])
        assert third.final_diff() == "" and third.score()["resolved"] == "RESOLVED_NO"  # finished unanswered
        third.close()


def test_an_episode_the_server_closed_as_idle_is_broken_not_wrong(pydocs, store, home, tmp_path):
    from swepost.envs.base import EnvironmentBroken
    from swepost.envs.remote import RemoteEnvironment
    from swepost.stages.tasks import load_tasks

    task = load_tasks(store.resolve("pyq"))[0]
    with env_server(home, tmp_path / "server.log", *pydocs, "--idle-ttl", "0.3") as url:
        env = RemoteEnvironment(env_url=url)
        env.reset(task)
        time.sleep(1.5)
        with pytest.raises(EnvironmentBroken, match="without an action"):
            env.step("search", {"query": "subprocess"})
        env.close()  # ended there: nothing to send


def test_a_dead_server_is_an_infrastructure_failure_not_a_score(pydocs, swepost, home):
    port = free_port()  # nothing listens there
    r = swepost("collect", "pyq", "--limit", "3", "--policy", "oracle", "--set", "environment=remote",
                "--set", f"env_url=http://127.0.0.1:{port}", check=1)
    assert "3 of 3 episodes failed for infrastructure reasons" in r.stderr, r.stderr
    assert "3 x sandbox_error" in r.stderr and "Connection refused" in r.stderr, r.stderr
    assert json.loads(swepost("artifacts", "ls", "--json", "--kind", "trajectories", check=0).stdout) == []
    (log,) = (home / "work").glob("collect-*/episodes.jsonl")
    done = [json.loads(line) for line in log.read_text().splitlines()]
    assert {t["exit_status"] for t in done} == {"sandbox_error"}
    assert all(t["reward"] is None and t["resolved"] is None for t in done)


@pytest.mark.parametrize("sets, says", [
    (["environment=remote"], "env_url: environment remote runs the episodes in an environment server"),
    (["env_url=http://127.0.0.1:8000"], "env_url: env_url is the environment server's, for environment remote"),
    (["environment=remote", "env_url=127.0.0.1:8000"], "env_url: '127.0.0.1:8000' is not an environment server"),
    (["environment=remote", "env_url=http://127.0.0.1:8000", "environment_args.topk=5"],
     "environment_args.topk: environment remote takes grading_timeout, connect_retry_s"),
    (["environment=remote", "env_url=http://127.0.0.1:8000", "environment_args.env_url=http://x:1"],
     "environment_args.env_url: env_url comes from the stage's own settings"),
])
def test_bad_config_exits_2_naming_the_key(sets, says, pydocs, swepost):
    r = swepost("collect", "pyq", "--policy", "oracle", *[x for s in sets for x in ("--set", s)], check=2)
    assert says in r.stderr, r.stderr
    assert not r.stdout.strip()


def test_remote_runs_any_kind_of_task_and_the_url_is_checked_where_the_environment_is_built():
    from swepost.agent import EnvironmentFields, pick_environment, remote_settings
    from swepost.envs.remote import RemoteEnvironment, server_url

    assert pick_environment("remote", ["swe", "codeqa", "search"]) == "remote"
    assert pick_environment(None, ["search"]) == "search"  # never chosen unasked
    assert "swepost serve env" in EnvironmentFields.model_fields["env_url"].description
    assert EnvironmentFields(environment="remote", env_url="http://h:1").env_url == "http://h:1"
    assert remote_settings("remote", "http://h:1", {"connect_retry_s": 3}) == {"env_url": "http://h:1"}
    assert remote_settings("swe", None) == {}
    for name, url in (("remote", None), ("remote", ""), ("search", "http://h:1")):
        with pytest.raises(BadInput) as e:
            remote_settings(name, url)
        assert e.value.key == "env_url"
    assert server_url("http://127.0.0.1:8000/get_observation") == server_url(" http://127.0.0.1:8000/ ") \
        == "http://127.0.0.1:8000"
    for bad in ("127.0.0.1:8000", "ftp://h:1", "http://", "http://h:notaport", "http://h:1?x=1"):
        with pytest.raises(BadInput) as e:
            RemoteEnvironment(env_url=bad)
        assert e.value.key == "env_url", bad
    env = RemoteEnvironment(env_url="http://127.0.0.1:1", repos=None, limits=None)  # no request until reset
    assert env.name == "remote" and env.tools() == [] and env.no_tool_call is None
    env.close()  # nothing opened: nothing to do


@pytest.mark.slow
def test_rl_rollouts_run_in_the_server(pydocs, swepost, store, home, tmp_path):
    """One real GRPO step of the tiny model whose four rollouts each open, end and are graded in the server."""
    import urllib.request

    tiny = json.loads(swepost("model", "tiny", "--json", check=0).stdout)["id"]
    with env_server(home, tmp_path / "server.log", *pydocs) as url:
        out = json.loads(swepost("rl", "pyq", "--model", tiny, "--max-steps", "1", "--tasks-per-step", "2", "-G", "2",
                                 "--set", "environment=remote", "--set", f"env_url={url}", "--set", "max_turns=1",
                                 "--set", "max_completion_tokens=16", "--set", "truncated=keep",
                                 "--set", "gradient_checkpointing=false", "--json", check=0).stdout)
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            metrics = dict(line.split() for line in r.read().decode().splitlines() if not line.startswith("#"))
    assert out["stats"]["rollouts"] == 4 and "sandbox_error" not in out["stats"]["exit_status"], out["stats"]
    assert metrics["swepost_env_opened_total"] == metrics["swepost_env_ended_total"] == "4", metrics
    assert metrics["swepost_env_ungraded_total"] == "0" and metrics["swepost_env_live_environments"] == "0"
    steps = store.resolve(out["id"]).path / "trajectories" / "step-000001.jsonl"
    # the server's environment, learnt at reset, not `remote` (RL's gate once read the name before reset)
    assert {json.loads(line)["environment"] for line in steps.read_text().splitlines()} == {"search"}


def test_rft_hands_env_url_to_its_collect_rounds():
    from swepost.stages.rft import RftConfig, environment_fields

    config = RftConfig(tasks="t", model="m", environment="remote", env_url="http://h:1")
    assert environment_fields(config)["env_url"] == "http://h:1"


# --- the bundled swe tasks: docker ------------------------------------------------------------------------------

@pytest.mark.docker
def test_oracle_collect_of_swe_tasks_in_the_server_is_the_local_collect(repo_root, swepost, store, home, tmp_path,
                                                                         base_image):
    swepost("tasks", "import", repo_root / "data" / "minicalc_tasks.jsonl", "--name", "mini", check=0)
    sandbox = ["--repos", str(repo_root / "data" / "repos"), "--backend", "docker"]
    args = ["collect", "mini", "--policy", "oracle", "--limit", "3", "--concurrency", "3", "--json"]
    local = json.loads(swepost(*args, *sandbox, "--name", "local", check=0).stdout)
    with env_server(home, tmp_path / "server.log", "--env", "swe", "--tasks", "mini", *sandbox) as url:
        remote = json.loads(swepost(*args, "--name", "remote", "--set", "environment=remote",
                                    "--set", f"env_url={url}", check=0).stdout)
    assert local["stats"]["resolved"] == remote["stats"]["resolved"] == 3
    assert remote["stats"]["exit_status"] == local["stats"]["exit_status"] == {"submitted": 3}
    a, b = trajectories(store, "local"), trajectories(store, "remote")
    same_episodes(a, b)
    for x, y in zip(a, b, strict=True):
        assert y["environment"] == "swe" and y["final_diff"] == x["final_diff"]
        assert y["evidence"]["tests"] == x["evidence"]["tests"]
