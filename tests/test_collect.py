"""`collect` and `eval` on the bundled tasks with real sandboxes: oracle, submit-only, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from swepost.stages.evaluate import pass_at_k

pytestmark = pytest.mark.docker


@pytest.fixture
def mini(repo_root, swepost, base_image):
    swepost("tasks", "import", str(repo_root / "data" / "minicalc_tasks.jsonl"), "--name", "mini", check=0)
    return ["--repos", str(repo_root / "data" / "repos"), "--backend", "docker"]


def trajectories(store, ref: str) -> list[dict]:
    art = store.resolve(ref)
    return [json.loads(line) for line in (art.path / "trajectories.jsonl").read_text().splitlines()]


def test_oracle_resolves_every_bundled_task(mini, swepost, store):
    out = json.loads(swepost("collect", "mini", "--policy", "oracle", "--concurrency", "4", *mini, "--json",
                             check=0).stdout)
    assert out["stats"]["episodes"] == 7 and out["stats"]["resolved"] == 7, out["stats"]
    trajs = trajectories(store, out["id"])
    assert {t["exit_status"] for t in trajs} == {"submitted"}
    assert all(t["reward"] == 1.0 and t["final_diff"] and t["evidence"]["tests"] for t in trajs)
    first = trajs[0]
    assert first["policy"]["name"] == "oracle" and [m["role"] for m in first["messages"][:2]] == ["system", "user"]
    calls = [c["function"]["name"] for m in first["messages"] if m["role"] == "assistant"
             for c in m.get("tool_calls", [])]
    assert "str_replace_editor" in calls and calls[-1] == "submit"
    art = store.resolve(out["id"])
    assert art.parents == [store.resolve("mini").id] and len(list((art.path / "logs").iterdir())) == 7


def test_a_policy_that_submits_nothing_resolves_nothing(mini, swepost, store, tmp_path):
    script = tmp_path / "submit.json"
    script.write_text(json.dumps([{"tool_calls": [{"name": "submit", "arguments": {}}]}]))
    out = json.loads(swepost("collect", "mini", "--policy", "scripted", "--set", f"policy_args.path={script}",
                             "--samples", "2", *mini, "--json", check=0).stdout)
    assert out["stats"]["episodes"] == 14 and out["stats"]["resolved"] == 0
    assert {t["resolved"] for t in trajectories(store, out["id"])} == {"RESOLVED_NO"}


def test_kill_9_during_collect_then_resume_runs_each_episode_exactly_once(mini, swepost, store, home, tmp_path):
    script = tmp_path / "slow.json"
    script.write_text(json.dumps([{"content": "thinking", "tool_calls": [{"name": "bash",
                                                                          "arguments": {"command": "ls"}}]},
                                  {"tool_calls": [{"name": "submit", "arguments": {}}]}]))
    args = ["collect", "mini", "--policy", "scripted", "--set", f"policy_args.path={script}",
            "--set", "policy_args.delay=0.3", "--samples", "2", "--concurrency", "2", *mini, "--json"]
    env = {**os.environ, "SWEPOST_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "swepost", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    done = []
    while time.monotonic() < deadline:
        done = list((home / "work").glob("collect-*/episodes.jsonl"))
        if done and len(done[0].read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done, "no episode finished before the kill"
    finished_before = len(done[0].read_text().splitlines())
    assert 3 <= finished_before < 14
    assert json.loads(swepost("artifacts", "ls", "--json", "--kind", "trajectories", check=0).stdout) == []
    swepost("sandbox", "gc", check=0)
    assert not list(Path(tempfile.gettempdir()).glob(f"swepost-*:{proc.pid}-*"))  # gc took the killed run's dirs
    out = json.loads(swepost(*args, check=0).stdout)
    trajs = trajectories(store, out["id"])
    ids = [t["episode_id"] for t in trajs]
    assert len(ids) == 14 and len(set(ids)) == 14
    assert {t["exit_status"] for t in trajs} == {"submitted"}
    assert not list((home / "work").glob("collect-*"))  # the work folder goes once the artifact exists


def test_eval_writes_metrics_predictions_and_summary(mini, swepost, store):
    out = json.loads(swepost("eval", "mini", "--policy", "oracle", "--samples", "2", "--limit", "3", *mini,
                             "--json", check=0).stdout)
    art = store.resolve(out["id"])
    assert art.kind == "eval"
    m = json.loads((art.path / "metrics.json").read_text())
    assert m["tasks"] == 3 and m["episodes"] == 6 and m["pass_at_k"] == {"1": 1.0, "2": 1.0}
    preds = [json.loads(line) for line in (art.path / "predictions.jsonl").read_text().splitlines()]
    assert [p["instance_id"] for p in preds] == ["swepost__minicalc-1", "swepost__minicalc-2", "swepost__minicalc-3"]
    assert all(set(p) == {"instance_id", "model_name_or_path", "model_patch"} and p["model_patch"] for p in preds)
    assert "pass@1 = 1.000" in (art.path / "summary.md").read_text()


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 4) == 1.0  # fewer than k failures: some draw of k always holds a success


def test_the_tiny_hf_model_produces_well_formed_trajectories(mini, swepost, store):
    out = json.loads(swepost("model", "tiny", "--name", "tiny", "--json", check=0).stdout)
    r = swepost("eval", "mini", "--policy", "hf", "--model", out["id"], "--limit", "2", "--concurrency", "1",
                "--set", "policy_args.max_new_tokens=24", "--set", "limits.max_turns=3", *mini, "--json", check=0)
    art = store.resolve(json.loads(r.stdout)["id"])
    assert art.parents == sorted([store.resolve("mini").id, out["id"]])  # lineage reaches the model
    for t in trajectories(store, art.id):
        assert t["exit_status"] in ("max_turns", "format_error", "submitted"), t["exit_status"]
        assert t["turns"] >= 1 and t["policy"]["name"] == "hf" and t["policy"]["model"]
        roles = [m["role"] for m in t["messages"]]
        assert roles[:3] == ["system", "user", "assistant"]
        assert all(isinstance(m["content"], str) for m in t["messages"])
        assert t["resolved"] == "RESOLVED_NO" and t["completion_tokens"] > 0


FUZZ_SEED = 7


def random_call(rng):
    """One tool call as a broken model might write it: rng is a random.Random."""
    names = ["bash", "str_replace_editor", "submit", "nope", "", None, 3]
    junk = [None, True, -(10**12), 3.5, "x" * rng.choice([0, 10, 300_000]), [1, "a"], {"command": {"nested": 1}}]
    kind = rng.randrange(5)
    if kind == 0:
        arguments = "{not json" + "]" * rng.randrange(5)
    elif kind == 1:
        arguments = json.dumps(rng.choice(junk))
    elif kind == 2:
        arguments = json.dumps({k: rng.choice(junk) for k in rng.sample(
            ["command", "path", "old_str", "new_str", "insert_line", "view_range", "file_text", "zzz"], 3)})
    elif kind == 3:
        arguments = rng.choice(junk)
    else:
        arguments = json.dumps({"command": rng.choice(["view", "create", "undo_edit", "ls", "echo hi"]),
                                "path": rng.choice(["/etc/passwd", "nope.py", "", "/testbed", "a" * 5000])})
    call = {"id": f"c{rng.randrange(1000)}", "type": "function",
            "function": {"name": rng.choice(names), "arguments": arguments}}
    return rng.choice([call, call, call, {"function": "broken"}, "not a dict", {"id": "x"}])


def test_fuzzed_tool_calls_never_crash_an_episode(repo_root, base_image):
    import random

    from swepost.agent import AgentLimits, run_episode
    from swepost.envs.swe import SweEnvironment
    from swepost.policies.base import PolicyReply
    from swepost.stages.tasks import read_task_file

    class FuzzPolicy:
        name = "fuzz"

        def __init__(self, seed):
            self.rng = random.Random(seed)

        def describe(self):
            return {"name": "fuzz"}

        def start(self, task):
            pass

        def reply(self, messages, tools):
            calls = [random_call(self.rng) for _ in range(self.rng.randrange(0, 4))]
            return PolicyReply({"role": "assistant", "content": self.rng.choice([None, "", "hm"]),
                                "tool_calls": calls})

    task = read_task_file(repo_root / "data" / "minicalc_tasks.jsonl")[0]
    statuses = set()
    for seed in range(FUZZ_SEED):
        env = SweEnvironment(repos=repo_root / "data" / "repos", backend="docker")
        traj = run_episode(FuzzPolicy(seed), env, task, limits=AgentLimits(max_turns=15, max_consecutive_errors=50),
                           grade=False)
        statuses.add(traj.exit_status)
        assert traj.exit_status in ("max_turns", "submitted"), (seed, traj.exit_status, traj.error)
        assert traj.tool_errors > 0 and traj.messages[-1]["role"] in ("tool", "user")
    assert "max_turns" in statuses
