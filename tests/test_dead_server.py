"""`eval --policy openai` against a real loopback server that is down, failing, answering HTML or hung: exit 1
with the cause, no artifact; then against a healthy server at the same address the same command finishes."""

from __future__ import annotations

import json

import pytest
from openai_server import ScriptedChatServer, free_port

pytestmark = pytest.mark.docker

SUBMIT = {"tool_calls": [{"name": "submit", "arguments": {}}]}


@pytest.fixture
def mini(repo_root, swepost, base_image):
    swepost("tasks", "import", str(repo_root / "data" / "minicalc_tasks.jsonl"), "--name", "mini", check=0)
    return ["--repos", str(repo_root / "data" / "repos"), "--backend", "docker"]


def eval_args(mini, port: int, limit: int, concurrency: int, *extra: str) -> list[str]:
    return ["eval", "mini", "--policy", "openai", "--model", "m", "--limit", str(limit), "--concurrency",
            str(concurrency), "--set", f"policy_args.base_url=http://127.0.0.1:{port}/v1",
            "--set", "policy_args.max_retries=1", "--set", "policy_args.backoff=0.01", *extra, *mini, "--json"]


def evals(swepost) -> list:
    return json.loads(swepost("artifacts", "ls", "--json", "--kind", "eval", check=0).stdout)


def work_episodes(home) -> list[dict]:
    logs = list((home / "work").glob("eval-*/episodes.jsonl"))
    assert len(logs) == 1, logs
    return [json.loads(line) for line in logs[0].read_text().splitlines()]


def test_500s_fail_the_eval_then_a_healthy_server_reruns_only_the_failed_episodes(mini, swepost, store, home):
    port = free_port()
    args = eval_args(mini, port, 3, 1)  # one at a time: the first episode gets the one good answer
    with ScriptedChatServer([SUBMIT], default={"status": 500, "error": "engine dead"}, port=port) as server:
        r = swepost(*args, check=1)
        assert len(server.requests) == 5  # 1 + 2 episodes x 2 attempts
    assert "2 of 3 episodes failed for infrastructure reasons" in r.stderr, r.stderr
    assert "2 x policy_error" in r.stderr and "engine dead" in r.stderr, r.stderr
    assert evals(swepost) == [] and not r.stdout.strip()
    done = work_episodes(home)
    assert [t["exit_status"] for t in done] == ["submitted", "policy_error", "policy_error"]
    assert done[0]["resolved"] == "RESOLVED_NO"  # a wrong answer: kept, not run again
    assert all(t["reward"] is None and t["resolved"] is None for t in done[1:])  # policy errors: never graded

    with ScriptedChatServer([], default=SUBMIT, port=port) as server:
        out = json.loads(swepost(*args, check=0).stdout)
        assert len(server.requests) == 2  # only the two failed episodes ran again
    m = json.loads((store.resolve(out["id"]).path / "metrics.json").read_text())
    assert m["episodes"] == 3 and m["ungraded"] == 0 and m["exit_status"] == {"submitted": 3}
    assert not list((home / "work").glob("eval-*"))


@pytest.mark.parametrize("kind", ["refused", "html", "hang"])
def test_a_dead_server_is_not_a_score(kind, mini, swepost, home):
    port = free_port()
    args = eval_args(mini, port, 2, 2, "--set", "policy_args.episode_timeout=2", "--set", "policy_args.timeout=30")
    entry = {"html": {"html": "<html><body>Sign in to continue</body></html>"}, "hang": {"hang": True}}.get(kind)
    if entry is None:
        r = swepost(*args, check=1)
    else:
        with ScriptedChatServer([], default=entry, port=port):
            r = swepost(*args, check=1)
    cause = {"refused": "APIConnectionError", "html": "Sign in to continue", "hang": "episode_timeout 2 s"}[kind]
    assert "2 of 2 episodes failed" in r.stderr and "2 x policy_error" in r.stderr and cause in r.stderr, r.stderr
    assert evals(swepost) == []
    done = work_episodes(home)
    assert {t["exit_status"] for t in done} == {"policy_error"}
    assert all(t["seconds"]["policy"] < 3.5 for t in done), [t["seconds"] for t in done]  # within the budget

    if kind == "refused":  # the server comes up: the same command completes
        with ScriptedChatServer([], default=SUBMIT, port=port):
            out = json.loads(swepost(*args, check=0).stdout)
        assert out["stats"]["episodes"] == 2 and out["stats"]["ungraded"] == 0


BASH_LS = {"tool_calls": [{"name": "bash", "arguments": {"command": "ls"}}]}


def test_a_task_the_server_fails_on_is_quarantined_but_a_dead_server_blames_no_task(mini, swepost, store, home):
    """One task's conversation makes the server answer 500 from its second turn on (the others are answered): it
    is quarantined on the third run where the server answered, and a run against a server that is down for
    everyone in between does not count."""
    port = free_port()
    args = eval_args(mini, port, 3, 1, "--set", "max_infra_failure_rate=0")  # one at a time: the script's order
    crash = {"status": 500, "error": "engine crashed on this prompt"}
    failing = [BASH_LS, crash, crash]  # max_retries 1: two attempts, then policy_error after one answered turn
    with ScriptedChatServer([SUBMIT, *failing, SUBMIT], port=port):
        r = swepost(*args, check=1)
    assert "1 of 3 episodes failed" in r.stderr and "engine crashed" in r.stderr, r.stderr

    r = swepost(*args, check=1)  # the server is down: refused for every request, so no task is to blame
    assert "APIConnectionError" in r.stderr and "quarantined" not in r.stderr, r.stderr
    with ScriptedChatServer(list(failing), port=port) as server:
        r = swepost(*args, check=1)
        assert len(server.requests) == 3 and "quarantined" not in r.stderr  # only the failing task ran again
    with ScriptedChatServer(list(failing), port=port) as server:
        r = swepost(*args, check=0)  # its third failure where the server answered: quarantined, and published
        assert len(server.requests) == 3
    assert "quarantined 1 task(s)" in r.stderr and "swepost__minicalc-2: 3 runs" in r.stderr, r.stderr
    out = json.loads(r.stdout)
    art = store.resolve(out["id"])
    (q,) = [json.loads(line) for line in (art.path / "quarantined.jsonl").read_text().splitlines()]
    assert q["instance_id"] == "swepost__minicalc-2" and q["failures"] == 3 and "engine crashed" in q["last_cause"]
    m = json.loads((art.path / "metrics.json").read_text())
    assert out["stats"]["quarantined"] == 1 and m["episodes"] == 3 and m["ungraded"] == 1
    assert m["exit_status"] == {"submitted": 2, "policy_error": 1}


def test_runs_against_a_dead_server_quarantine_nothing(mini, swepost, home):
    port = free_port()
    args = eval_args(mini, port, 2, 2)
    for _ in range(4):  # more runs than quarantine_after (3)
        r = swepost(*args, check=1)
        assert "2 of 2 episodes failed" in r.stderr and "quarantined" not in r.stderr, r.stderr
    with ScriptedChatServer([], default=SUBMIT, port=port):
        out = json.loads(swepost(*args, check=0).stdout)
    assert out["stats"]["episodes"] == 2 and out["stats"]["ungraded"] == 0 and out["stats"]["quarantined"] == 0
