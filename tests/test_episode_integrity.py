"""Episode integrity against an adversarial policy, with real git repos and real docker sandboxes.

1. No future history: the agent's repo holds the base commit and its past, nothing from the fix onwards.
2. The graded diff is taken by swepost, not by the agent's shell or the agent's git configuration.
3. An infrastructure failure is "UNGRADED" (reward None), never a wrong answer, for every consumer.

Every security test names the defence it proves; removing that defence makes it fail.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from swepost.records import Task, TaskEnv, TaskVerify
from swepost.sandbox import open_sandbox
from swepost.sandbox.repos import future_history_leaks, git
from swepost.train.trl_compat import logged_metrics

docker = pytest.mark.docker
FIX_MARKER = "FIXED_IN_THE_FUTURE"


def commit_all(repo, message: str) -> str:
    git("add", "-A", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo).stdout.strip()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """repos/acme__gadget: two commits of history, the base, then the fix (tagged), a branch beyond it and a
    stash holding the fix too. Returns (repos, base, [commits after base], [base and its past])."""
    repos = tmp_path_factory.mktemp("integrity") / "repos"
    repo = repos / "acme__gadget"
    repo.mkdir(parents=True)
    git("init", "--quiet", cwd=repo)
    (repo / "gadget.py").write_text("def double(x):\n    return x + 2\n")
    first = commit_all(repo, "gadget")
    (repo / "test_gadget.py").write_text("from gadget import double\n\n\ndef test_double():\n"
                                         "    assert double(3) == 6\n")
    base = commit_all(repo, "tests")
    (repo / "gadget.py").write_text(f"def double(x):\n    return x * 2  # {FIX_MARKER}\n")
    fix = commit_all(repo, "fix double")
    git("tag", "-a", "v1.0", "-m", "release with the fix", cwd=repo)
    git("checkout", "--quiet", "-b", "feature", cwd=repo)
    (repo / "later.py").write_text(f"# {FIX_MARKER}\n")
    later = commit_all(repo, "later work")
    (repo / "gadget.py").write_text(f"def double(x):\n    return 2 * x  # {FIX_MARKER} stashed\n")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "stash", "--quiet", cwd=repo)
    stash = git("rev-parse", "refs/stash", cwd=repo).stdout.strip()
    return repos, base, [fix, later, stash], [base, first]


def gadget_task(base: str, instance_id: str = "acme__gadget-1", install=None) -> Task:
    return Task(instance_id=instance_id, problem_statement="double() adds 2", repo="acme/gadget",
                base_commit=base, env=TaskEnv(install=install or []),
                verify=TaskVerify(fail_to_pass=["test_gadget.py::test_double"]))


def sh(box, command: str) -> subprocess.CompletedProcess:
    r = box.run(f"cd /testbed && {command}", timeout=120)
    return subprocess.CompletedProcess(command, r.exit_code, r.output, "")


def assert_only_the_past(box, task: Task, future: list[str], past: list[str]) -> None:
    assert sh(box, "git rev-parse HEAD").stdout.strip() == task.base_commit
    assert sh(box, "git log --all --format=%H").stdout.split() == past
    for commit in future:
        assert sh(box, f"git cat-file -e {commit}").returncode != 0, f"{commit} is in the sandbox"
    assert sh(box, "git for-each-ref; git stash list; git reflog --all").stdout.strip() == ""
    assert sh(box, "test -e .git/packed-refs || test -e .git/FETCH_HEAD || test -e .git/ORIG_HEAD").returncode == 1
    assert FIX_MARKER not in sh(box, "git log --all -p; git grep -I -e FIXED $(git rev-list --all)").stdout
    assert future_history_leaks(box, task) == []


# --- 1. no future history ---------------------------------------------------------------------------------------
@docker
def test_mirror_checkout_holds_no_future_history(mirror, base_image):
    """Defence: repos.checkout builds a fresh repo by fetching only the base commit (no clone of the mirror),
    deletes every ref and expires the reflogs. With a plain clone, `git log --all` shows the fix and the tag."""
    from swepost.sandbox.task_sandbox import open_task_sandbox

    repos, base, future, past = mirror
    task = gadget_task(base)
    with open_task_sandbox(task, repos=repos, backend="docker") as box:
        assert_only_the_past(box, task, future, past)


@docker
def test_task_image_holds_no_future_history(mirror, base_image, docker_client):
    """Defence: task images are built from repos.checkout, and KEY_FORMAT 2 keeps images built from the old
    full clone from matching."""
    from swepost.sandbox.task_images import build_task_image

    repos, base, future, past = mirror
    task = gadget_task(base, "acme__gadget-image", install=["true"])
    tag = build_task_image(task, repos, base=base_image, client=docker_client)
    try:
        with open_sandbox("docker", image=tag, workdir="/testbed") as box:
            assert_only_the_past(box, task, future, past)
    finally:
        docker_client.images.remove(tag, force=True)


@docker
def test_future_history_audit_finds_a_full_clone(mirror, base_image, tmp_path):
    """The audit for images swepost did not build: a SWE-bench-style repo (a full clone reset to the base
    commit) is reported, with the branch, the tag, the stash and the objects past the base commit."""
    repos, base, future, _ = mirror
    clone = tmp_path / "testbed"
    git("clone", "--quiet", str(repos / "acme__gadget"), str(clone))
    git("fetch", "--quiet", "origin", "refs/stash:refs/stash", cwd=clone)
    git("-c", "advice.detachedHead=false", "checkout", "--quiet", base, cwd=clone)
    with open_sandbox("docker", source_dir=clone, workdir="/testbed") as box:
        leaks = "\n".join(future_history_leaks(box, gadget_task(base)))
    assert "refs/tags/v1.0" in leaks and "refs/remotes/origin/feature" in leaks and "refs/stash" in leaks
    assert "object(s) the base commit does not reach" in leaks and future[0] in leaks


# --- 2. the graded diff is swepost's ------------------------------------------------------------------------------
REAL = "return x * 2  # the real fix"
FORGED = "FORGED_BY_THE_AGENT"
DECOY = ("mkdir -p /tmp/decoy && cd /tmp/decoy && command git init -q && "
         f"printf 'def double(x):\\n    {FORGED}\\n' > gadget.py && command git add gadget.py && cd /testbed")
ATTACKS = {
    # Defence: the diff runs as a fresh process (Sandbox.exec), not in the agent's shell.
    "shell function, alias and GIT_* variables": (
        f"{DECOY}; git() {{ printf 'diff --git a/gadget.py b/gadget.py\\n+{FORGED}\\n'; }}; export -f git; "
        f"alias git='echo {FORGED}'; export GIT_DIR=/tmp/decoy/.git GIT_WORK_TREE=/tmp/decoy "
        "GIT_INDEX_FILE=/tmp/decoy/.git/index"),
    # Defence: a git dir of our own: the repo's config, with its clean filter, is never read.
    "clean filter in .git/config and .gitattributes": (
        "git show HEAD:gadget.py > /tmp/base.py && echo 'gadget.py filter=hide' > .gitattributes && "
        "git config filter.hide.clean 'cat /tmp/base.py' && git config filter.hide.required true"),
    # Defence: --no-ext-diff, --no-textconv and our info/attributes (`!diff`).
    "textconv and external diff": (
        "printf '#!/bin/sh\\necho " + FORGED + "\\n' > /tmp/ext.sh && chmod +x /tmp/ext.sh && "
        "echo '*.py diff=forge' > .gitattributes && git config diff.forge.textconv 'sed s/.*/" + FORGED + "/' && "
        "git config diff.external /tmp/ext.sh"),
    # Defence: our config has core.worktree unset; GIT_WORK_TREE is the recorded workdir.
    "core.worktree pointing at a decoy": f"{DECOY} && git config core.worktree /tmp/decoy",
}


@pytest.fixture
def gadget_env(mirror, base_image):
    from swepost.envs.swe import SweEnvironment

    repos, base, _, _ = mirror
    env = SweEnvironment(repos=repos, backend="docker", grade=False)
    env.reset(gadget_task(base))
    yield env
    env.close()


def agent_bash(env, command: str) -> str:
    return env.step("bash", {"command": command}).content


@docker
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_agent_cannot_forge_the_graded_diff(gadget_env, attack):
    """The agent's real edit is what final_diff holds, whatever it does to its shell or its git config.
    The defence each case proves is named beside it in ATTACKS."""
    env = gadget_env
    env.step("str_replace_editor", {"command": "str_replace", "path": "gadget.py", "old_str": "return x + 2",
                                    "new_str": REAL})
    agent_bash(env, ATTACKS[attack])
    diff = env.final_diff()
    assert f"+    {REAL}" in diff and "-    return x + 2" in diff, diff
    assert FORGED not in diff and FORGED[:10] not in diff, diff


@docker
def test_agent_git_config_runs_no_code_while_the_diff_is_taken(gadget_env):
    """Defence: our own config (hooksPath /dev/null, fsmonitor false): the agent's core.fsmonitor command and
    post-index-change hook would otherwise run, as root, while the diff is taken."""
    env = gadget_env
    agent_bash(env, "mkdir -p /tmp/hooks && for f in /tmp/hooks/post-index-change /tmp/fsm.sh; do "
                    "printf '#!/bin/sh\\ntouch /tmp/pwned-$(basename $0)\\n' > $f; chmod +x $f; done && "
                    "git config core.hooksPath /tmp/hooks && git config core.fsmonitor /tmp/fsm.sh && "
                    "echo '# edit' >> gadget.py")
    assert "+# edit" in env.final_diff()
    assert "pwned" not in agent_bash(env, "ls /tmp")


@docker
def test_files_the_agent_hides_from_git_are_in_the_diff(gadget_env):
    """Defence: only the base commit's ignore rules leave new files out: a conftest.py hidden by a .gitignore
    the agent wrote, or by .git/info/exclude, is in the diff. Caches (__pycache__) are not."""
    env = gadget_env
    agent_bash(env, "printf 'conftest.py\\nhelper.py\\n' > .gitignore && echo 'import os' > conftest.py && "
                    "echo 'X = 1' > helper.py && echo 'secret.py' >> .git/info/exclude && echo 'Y = 2' > secret.py && "
                    "python3 -c 'import gadget' && ls __pycache__")
    diff = env.final_diff()
    for path in ("conftest.py", "helper.py", "secret.py", ".gitignore"):
        assert f"diff --git a/{path} b/{path}" in diff, diff
    assert "__pycache__" not in diff


@docker
def test_diff_is_against_the_recorded_base(gadget_env, mirror):
    """Defence: final_diff diffs against self.base, recorded at reset: committing the change, moving HEAD or
    replacing the base commit (`git replace`) does not shrink the diff."""
    env = gadget_env
    agent_bash(env, "echo '# committed' >> gadget.py && git -c user.name=a -c user.email=a@b commit -qam x && "
                    "git replace $(git rev-parse HEAD~1) HEAD")
    assert "+# committed" in env.final_diff()


# --- 3. infrastructure failure is not a wrong answer --------------------------------------------------------------
def episode(sample: int, resolved: str | None, reward: float | None, instance_id: str = "t1"):
    from swepost.records import Trajectory

    return Trajectory(episode_id=f"{instance_id}#{sample}", instance_id=instance_id, sample=sample,
                      exit_status="submitted", resolved=resolved, reward=reward, turns=1,
                      evidence={"reason": "the test run timed out"} if resolved == "UNGRADED" else {},
                      messages=[{"role": "user", "content": "fix it"},
                                {"role": "assistant", "content": "done", "tool_calls": [
                                    {"id": "c1", "type": "function",
                                     "function": {"name": "submit", "arguments": "{}"}}]},
                                {"role": "tool", "tool_call_id": "c1", "content": "Submitted"}])


@docker
def test_grading_sandbox_failure_scores_ungraded(base_image):
    """score(): a grader whose sandbox cannot start gives reward None and UNGRADED with the reason, not a crash
    of the episode and not reward 0."""
    from swepost.envs.swe import SweEnvironment

    env = SweEnvironment(backend="docker")
    env.task = Task(instance_id="gone", problem_statement="", env=TaskEnv(image="swepost-no-such-image:gone"))
    env._diff = ""  # as after an episode whose sandbox is closed
    scored = env.score()
    assert scored["reward"] is None and scored["resolved"] == "UNGRADED"
    assert "grading failed" in scored["evidence"]["reason"] and "no-such-image" in scored["evidence"]["reason"]


def test_filter_drops_ungraded_whatever_the_settings():
    """rewards/filters + the filter stage's rules: an UNGRADED episode is dropped as `ungraded`, never kept
    (not even with require_resolved off) and never counted `unresolved`."""
    from swepost.rewards import filters
    from swepost.stages.filter import FilterConfig, select

    trajs = [episode(0, "RESOLVED_FULL", 1.0), episode(1, "UNGRADED", None), episode(2, "RESOLVED_NO", 0.0)]
    assert filters.require_resolved(trajs[1]) == "ungraded"
    assert filters.require_resolved(trajs[1], min_reward=0.0) == "ungraded"
    for config in (FilterConfig(trajectories="x", dedupe=False),
                   FilterConfig(trajectories="x", dedupe=False, require_resolved=False),
                   FilterConfig(trajectories="x", dedupe=False, require_resolved=False, min_reward=0.0)):
        reasons, kept = select(trajs, config)
        assert reasons[1] == "ungraded" and 1 not in kept
        assert 0 in kept and reasons[2] in (None, "unresolved")


def test_eval_metrics_count_ungraded_apart():
    """collect/eval statistics: the resolved rate's denominator is the graded episodes; ungraded are reported
    with their own count and rate, and pass@k is taken over graded samples."""
    from swepost.stages.evaluate import EvalConfig, metrics, summary_markdown

    trajs = [episode(0, "RESOLVED_FULL", 1.0), episode(1, "UNGRADED", None), episode(2, "RESOLVED_NO", 0.0),
             episode(3, "UNGRADED", None), episode(0, "UNGRADED", None, "t2"), episode(1, "UNGRADED", None, "t2")]
    m = metrics(trajs, samples=4)
    assert (m["episodes"], m["resolved"], m["ungraded"]) == (6, 1, 4)
    assert m["resolved_rate"] == 0.5 and m["ungraded_rate"] == round(4 / 6, 4)
    assert m["pass_at_k"]["1"] == 0.5  # t1: 1 of its 2 graded samples; t2 has none and no estimate
    assert m["pass_at_k"]["4"] == 1.0  # k beyond t1's 2 graded samples is estimated at k = 2
    text = summary_markdown("e", EvalConfig(tasks="x"), m)
    assert "resolved: 1 / 2 graded episodes (50.0%)" in text and "ungraded: 4 / 6 episodes" in text


def test_rl_masks_ungraded_rollouts_out_of_loss_and_baseline(tmp_path):
    """train/rl.RolloutFunc: an UNGRADED rollout gets reward None in every reward part (so it leaves TRL's group
    baseline), mask all 0 (no loss), `masked: ungraded`, and is logged as rl/ungraded; even a reward function
    that would score it (here: 1.0 for everything) is not asked."""
    trajs = [episode(0, "RESOLVED_FULL", 1.0), episode(1, "UNGRADED", None), episode(2, "RESOLVED_NO", 0.0)]
    out, trainer = run_rollout_func(tmp_path, "tests.test_episode_integrity:always_one", trajs)
    assert out["rl_task"] == [1.0, None, 1.0]
    assert out["rl_turn_penalty"][1] is None and out["rl_overlong_penalty"][1] is None
    assert out["env_mask"] == [[1, 1, 0], [0, 0, 0], [1, 1, 0]]
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert [r["masked"] for r in rows] == [None, "ungraded", None]
    assert logged_metrics(trainer)["rl/ungraded"] == [1.0]


def always_one(trajectory, task) -> float:
    return 1.0


def test_a_reward_function_that_raises_leaves_its_rollout_ungraded_and_the_step_going(tmp_path):
    """Issue 12: a reward function (an LLM judge, say) that raises on one rollout: that rollout is ungraded
    (out of the loss and the baseline) with the error recorded in its row, and the others are scored."""
    trajs = [episode(0, "RESOLVED_FULL", 1.0), episode(1, "RESOLVED_NO", 0.0), episode(2, "RESOLVED_NO", 0.0)]
    out, _ = run_rollout_func(tmp_path, "tests.test_episode_integrity:judge_that_fails_on_sample_1", trajs)
    assert out["rl_task"] == [0.5, None, 0.5]
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert [r["masked"] for r in rows] == [None, "ungraded", None]
    assert "the reward function raised TimeoutError: judge" in rows[1]["error"]


def judge_that_fails_on_sample_1(trajectory, task) -> float:
    if trajectory.sample == 1:
        raise TimeoutError("judge did not answer")
    return 0.5


def run_rollout_func(tmp_path, reward: str, trajs: list):
    """train/rl.RolloutFunc on one group of finished episodes (its sandbox run replaced by them), with the
    bookkeeping of a trainer it reads: (the batch it hands TRL, the trainer stand-in holding the metrics)."""
    from swepost.stages.rl import RlConfig
    from swepost.train.rl import RolloutFunc, RolloutLog
    from swepost.train.rollout import Rollout, RolloutStats

    cfg = RlConfig(tasks="x", model="m", reward=reward, dynamic_sampling="off")
    func = RolloutFunc(cfg, [Task(instance_id="t1", problem_statement="")], RolloutLog(tmp_path, False))
    rollouts = [Rollout(t, [1, 2], [3, 4, 5], [1, 1, 0], None) for t in trajs]
    func._run = lambda trainer, ids, seed: (rollouts, RolloutStats())
    trainer = trainer_stand_in(len(trajs))
    return func(["t1"] * len(trajs), trainer), trainer


def trainer_stand_in(num_generations: int):
    """What RolloutFunc reads of TRL's GRPOTrainer after its rollouts ran, for one process: the group size, the
    step, the accelerator's process index and count, the metrics dict and the completions-table hook."""
    from collections import defaultdict
    from types import SimpleNamespace

    extra: dict[str, list] = {}
    return SimpleNamespace(num_generations=num_generations, state=SimpleNamespace(global_step=0),
                           accelerator=SimpleNamespace(process_index=0, num_processes=1),
                           _metrics={"train": defaultdict(list)}, completion_extra=extra,
                           _log_completion_extra=lambda column, values: extra.__setitem__(column, values))
