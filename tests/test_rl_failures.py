"""Issue 12, "one bad task never stops a run" and "failures are not rewards", on RL's own rollout path with real
failures: a task whose install fails and a grader that times out (real docker sandboxes), a policy server that
answers 500 after retries and one that answers 400 (a real HTTP server on loopback). Each rollout ends with its
cause recorded, the batch goes on, and RL scores none of them: reward None, out of the loss and the group
baseline, counted in rl/ungraded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swepost.agent import AgentLimits
from swepost.train.rollout import CompletionsGenerator, ScriptedGenerator, run_rollouts
from swepost.train.trl_compat import logged_metrics
from tests.rl_helpers import import_echo_tasks

REPO = Path(__file__).resolve().parents[1]
SUBMIT = '<tool_call>\n{"name": "submit", "arguments": {}}\n</tool_call>'


@pytest.fixture(scope="module")
def tasks():
    from swepost.stages.tasks import read_task_file

    healthy = next(t for t in read_task_file(REPO / "data" / "minicalc_tasks.jsonl")
                   if t.instance_id == "swepost__minicalc-1")
    broken = healthy.model_copy(update={"instance_id": "broken-install", "env": healthy.env.model_copy(
        update={"install": ["echo the mirror is down >&2; exit 3"]})})
    # the graded test run cannot finish in time on any machine: the hidden tests' own conftest sleeps 30 s
    sleeper = ("diff --git a/tests/conftest.py b/tests/conftest.py\nnew file mode 100644\n--- /dev/null\n"
               "+++ b/tests/conftest.py\n@@ -0,0 +1,2 @@\n+import time\n+time.sleep(30)\n")
    slow = healthy.model_copy(update={"instance_id": "slow-grader", "test_patch": healthy.test_patch + sleeper,
                                      "verify": healthy.verify.model_copy(update={"timeout": 3.0})})
    return {"healthy": healthy, "broken": broken, "slow": slow}


def _swe_env():
    from swepost.envs.swe import SweEnvironment

    return SweEnvironment(repos=REPO / "data" / "repos", backend="docker", grade=True)


def _rollouts(tok, tasks, generator, make_env=_swe_env):
    return run_rollouts(tasks, make_env=make_env, generator=generator, tokenizer=tok,
                        limits=AgentLimits(max_turns=2, max_context_tokens=10 ** 9, max_seconds=300),
                        max_prompt_tokens=4096, max_completion_tokens=512, concurrency=4, seed="failures")


@pytest.mark.docker
def test_install_failure_and_grader_timeout_leave_the_batch_going(tok, tasks, base_image):
    batch = [tasks[k] for k in ("healthy", "healthy", "broken", "broken", "slow", "slow")]  # groups of 2
    rollouts, _ = _rollouts(tok, batch, ScriptedGenerator(tok, [SUBMIT]))
    by_id = {}
    for r in rollouts:
        by_id.setdefault(r.trajectory.instance_id, []).append(r.trajectory)
    for t in by_id["swepost__minicalc-1"]:  # graded as usual: a wrong answer is a 0, not a failure
        assert (t.exit_status, t.resolved, t.reward) == ("submitted", "RESOLVED_NO", 0.0)
    for broken in by_id["broken-install"]:
        assert broken.exit_status == "sandbox_error" and "could not be set up" in broken.error
        assert "exit" in broken.error and broken.reward is None
    for slow in by_id["slow-grader"]:
        assert slow.exit_status == "submitted" and slow.resolved == "UNGRADED" and slow.reward is None
        assert "timed out" in slow.evidence["reason"]

    # RL's scoring of that batch: the two failures are ungraded (no loss, out of the baseline), the rest scored
    out, rows, metrics = score_batch(tok, batch, rollouts, group=2)
    assert out["rl_task"] == [0.0, 0.0, None, None, None, None]
    assert [r["masked"] for r in rows] == ["zero_variance"] * 2 + ["ungraded"] * 4
    assert all(not any(m) for m in out["env_mask"][2:])
    assert metrics["rl/ungraded"] == [4.0]


@pytest.mark.parametrize("status", [500, 400])
def test_a_policy_server_answering_errors_is_a_policy_error_not_a_score(tok, status):
    """vllm_server generation against a real loopback server: a 500 after the retries, or a 400 at once (our
    request is wrong: retrying cannot help)."""
    from openai_server import ScriptedChatServer

    from swepost.records import Task

    task = Task(instance_id="echo-1", problem_statement="Answer.")
    with ScriptedChatServer([], default={"status": status, "error": "engine is sad"}) as server:
        gen = CompletionsGenerator(server.base_url, None, {"temperature": 1.0}, {tok.eos_token_id}, retries=2)
        rollouts, _ = _rollouts(tok, [task, task], gen, make_env=lambda: _echo())
        asked = len(server.requests)
    for r in rollouts:
        t = r.trajectory
        assert t.exit_status == "policy_error" and f"HTTP {status}" in t.error and t.reward is None
    assert asked == (2 * 2 if status == 500 else 2)  # 500: retried; 400: not
    out, rows, metrics = score_batch(tok, [task, task], rollouts, group=2,
                                     reward="tests.test_episode_integrity:always_one")
    assert out["rl_task"] == [None, None] and [r["masked"] for r in rows] == ["ungraded", "ungraded"]
    assert metrics["rl/ungraded"] == [2.0] and metrics["rl/exit_policy_error"] == [1.0]


def _echo():
    from tests.rl_helpers import EchoEnvironment

    return EchoEnvironment()


def score_batch(tok, tasks, rollouts, *, group: int, reward: str = "env"):
    """train/rl.RolloutFunc on a finished batch (its rollout phase replaced by `rollouts`): (what it hands TRL,
    the rows it logs, the metrics it records)."""
    import tempfile

    from test_episode_integrity import trainer_stand_in

    from swepost.stages.rl import RlConfig
    from swepost.train.rl import RolloutFunc, RolloutLog
    from swepost.train.rollout import RolloutStats

    with tempfile.TemporaryDirectory(prefix="rl-failures-") as tmp:
        folder = Path(tmp)
        cfg = RlConfig(tasks="x", model="m", reward=reward, num_generations=group)
        func = RolloutFunc(cfg, list({t.instance_id: t for t in tasks}.values()), RolloutLog(folder, False))
        func._run = lambda trainer, ids, seed: (rollouts, RolloutStats())
        trainer = trainer_stand_in(group)
        out = func([t.instance_id for t in tasks], trainer)
        rows = [json.loads(line) for line in (folder / "rollouts.jsonl").read_text().splitlines()]
    return out, rows, logged_metrics(trainer)


def test_quarantine_counts_steps_where_a_task_failed_and_skips_outages():
    from swepost.train.rl import quarantine_from_rows

    def rows(step, group, iid, failed, n=4, process=0):
        return [{"step": step, "process": process, "group": group, "instance_id": iid,
                 "exit_status": "sandbox_error" if k < failed else "submitted",
                 "resolved": None if k < failed else "RESOLVED_NO", "error": f"install failed ({step})"}
                for k in range(n)]

    log = (rows(1, 0, "bad", 4) + rows(1, 1, "ok", 0)  # a failure of bad's
           + rows(2, 0, "bad", 2) + rows(2, 1, "ok", 1)  # half its group: a failure; one in four of ok's: not
           + rows(3, 0, "bad", 4) + rows(3, 1, "ok", 4)  # every group of the step: an outage, no one's fault
           + rows(4, 0, "bad", 1, process=1) + rows(4, 1, "ok", 0, process=1))
    assert quarantine_from_rows(log, 2) == {"bad": {"failures": 2, "last_cause": "install failed (2)"}}
    assert quarantine_from_rows(log, 3) == {}
    # a grader that could not judge counts as well (its cause is the grader's reason)
    ungraded = [{**r, "exit_status": "submitted", "resolved": "UNGRADED", "error": "timed out"}
                for r in rows(5, 0, "slow", 4)]
    assert quarantine_from_rows(ungraded + rows(5, 1, "ok", 0), 1)["slow"]["last_cause"] == "timed out"


def test_rl_quarantines_a_task_whose_setup_keeps_failing(swepost, store, tmp_path):
    """A real (sandbox-free) GRPO run: broken-a cannot be set up. After its first failed group it is quarantined
    (whenever the sampler draws it again a spare task runs instead: see the next test), and the artifact lists
    it with its cause."""
    tiny = import_echo_tasks(swepost, tmp_path, ["broken-a", "mixed-b", "mixed-c"], name="t")
    r = swepost("rl", "t", "--model", tiny, "--max-steps", "3", "--tasks-per-step", "2", "-G", "2",
                "--set", "environment=tests.rl_helpers:BrokenSetupEnvironment",
                "--set", "reward=tests.rl_helpers:alternating_reward", "--set", "quarantine_after=1",
                "--set", "max_turns=1", "--set", "max_completion_tokens=16", "--set", "truncated=keep",
                "--set", "gradient_checkpointing=false", "--json", check=0)
    assert "quarantined broken-a" in r.stderr
    art = store.resolve(json.loads(r.stdout)["id"])
    log = [json.loads(line) for line in (art.path / "rollouts.jsonl").read_text().splitlines()]
    broken_steps = {row["step"] for row in log if row["instance_id"] == "broken-a"}
    assert len(broken_steps) == 1
    assert all(row["exit_status"] == "sandbox_error" and row["masked"] == "ungraded"
               for row in log if row["instance_id"] == "broken-a")
    assert len(log) == 3 * 2 * 2  # every step still trained on whole batches
    listed = [json.loads(line) for line in (art.path / "quarantined.jsonl").read_text().splitlines()]
    assert listed == [{"instance_id": "broken-a", "failures": 1, "last_cause": listed[0]["last_cause"]}]
    assert "install failed" in listed[0]["last_cause"] and art.stats["quarantined"] == listed


def test_a_quarantined_task_s_groups_run_on_spare_tasks(tmp_path):
    """RolloutFunc over three steps whose batch always names broken-a: it fails once (quarantine_after=1), then
    its group runs on a task outside the batch, whole; the other group is untouched; counts are logged."""
    from test_episode_integrity import trainer_stand_in

    from swepost.records import Task, Trajectory
    from swepost.stages.rl import RlConfig
    from swepost.train.rl import RolloutFunc, RolloutLog
    from swepost.train.rollout import Rollout, RolloutStats

    tasks = [Task(instance_id=i, problem_statement="") for i in ("broken-a", "mixed-b", "mixed-c", "mixed-d")]
    cfg = RlConfig(tasks="x", model="m", reward="tests.rl_helpers:alternating_reward", quarantine_after=1,
                   num_generations=2)
    func = RolloutFunc(cfg, tasks, RolloutLog(tmp_path, False))
    asked: list[list[str]] = []

    def run(trainer, ids, seed):
        asked.append(list(ids))
        trajs = [Trajectory(episode_id=f"{i}#{k % 2}", instance_id=i, sample=k % 2,
                            exit_status="sandbox_error" if i.startswith("broken") else "submitted",
                            error="install failed" if i.startswith("broken") else None) for k, i in enumerate(ids)]
        return [Rollout(t, [1], [2, 3], [1, 0], None) for t in trajs], RolloutStats()

    func._run = run
    trainer = trainer_stand_in(2)
    for step in range(3):
        trainer.state.global_step = step
        func(["broken-a", "broken-a", "mixed-b", "mixed-b"], trainer)
    assert asked[0] == ["broken-a", "broken-a", "mixed-b", "mixed-b"]
    for ids in asked[1:]:  # a spare outside the batch, the same for the whole group
        assert ids[0] == ids[1] and ids[0] in ("mixed-c", "mixed-d") and ids[2:] == ["mixed-b", "mixed-b"]
    assert logged_metrics(trainer)["rl/quarantine_substituted"] == [0.0, 1.0, 1.0]
    assert logged_metrics(trainer)["rl/quarantined"] == [1.0, 1.0, 1.0]
    assert func.quarantined == {"broken-a": {"failures": 1, "last_cause": "install failed"}}
