"""Quarantine of tasks that fail for infrastructure reasons in N runs of collect/eval.

The counting rules on a real work folder file (kill -9 torn line included), then real runs: a task whose install
command fails in a real docker sandbox is quarantined on the third run of the same command, listed in the
artifact and on the terminal, while the other tasks run once and are scored as usual.
"""

from __future__ import annotations

import json

import pytest

from swepost.records import Trajectory
from swepost.stages.collect import FailureLog


def episode(task: str, status: str | None, *, turns: int = 1, resolved: str | None = None, sample: int = 0):
    return Trajectory(episode_id=f"{task}#{sample}", instance_id=task, sample=sample, exit_status=status, turns=turns,
                      resolved=resolved, error=None if status == "submitted" else f"{status} in {task}")


def test_failures_are_counted_per_run_and_only_when_the_task_is_to_blame(tmp_path):
    def run(*episodes: Trajectory) -> FailureLog:
        log = FailureLog(tmp_path)
        for t in episodes:
            log.record(t)
        return log

    run(episode("install", "sandbox_error", turns=0), episode("install", "sandbox_error", turns=0, sample=1),
        episode("ok", "submitted", resolved="RESOLVED_FULL"), episode("wrong", "submitted", resolved="RESOLVED_NO"),
        episode("long", "context_overflow", resolved="RESOLVED_NO"), episode("crash", "policy_error", turns=3),
        episode("flaky", "submitted", resolved="UNGRADED"))
    # a run where the server was down for everyone: no request answered, so its policy errors blame no task
    run(episode("install", "sandbox_error", turns=0), episode("crash", "policy_error", turns=0),
        episode("ok", "policy_error", turns=0))
    log = run(episode("install", "sandbox_error", turns=0), episode("crash", "policy_error", turns=2))
    q = log.quarantined(2, any_verdict=True)
    # two samples failing in one run are one run; the dead-server run counts only the sandbox failure
    assert q == {"install": {"instance_id": "install", "failures": 3, "last_cause": "sandbox_error: sandbox_error "
                             "in install"},
                 "crash": {"instance_id": "crash", "failures": 2, "last_cause": "policy_error: policy_error in crash"}}
    assert set(log.quarantined(3, any_verdict=True)) == {"install"}
    assert log.quarantined(1, any_verdict=True).keys() == {"install", "crash", "flaky"}  # never wrong answers
    assert log.quarantined(0, any_verdict=True) == {}  # 0: never
    assert log.quarantined(1, any_verdict=False) == {}  # nothing ever worked: the setup is broken, not the tasks

    with open(tmp_path / "failures.jsonl", "ab") as f:  # a kill -9 mid-append leaves a torn line
        f.write(b'{"run": "x", "instance_id": "ok", "exit_st')
    assert FailureLog(tmp_path).quarantined(2, any_verdict=True) == q
    lines = (tmp_path / "failures.jsonl").read_bytes().splitlines()
    assert all(json.loads(line)["run"] for line in lines[:-1])



@pytest.fixture
def tasks_with_a_broken_install(repo_root, swepost, base_image, tmp_path):
    rows = [json.loads(line) for line in (repo_root / "data" / "minicalc_tasks.jsonl").read_text().splitlines()][:2]
    broken = {**rows[0], "instance_id": "broken-install", "install": "echo the package mirror is down >&2; exit 3"}
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [rows[0], broken, rows[1]]))
    swepost("tasks", "import", str(path), "--name", "three", check=0)
    return ["--repos", str(repo_root / "data" / "repos"), "--backend", "docker"]


def work_counts(home) -> dict[str, int]:
    logs = list((home / "work").glob("collect-*/episodes.jsonl"))
    assert len(logs) == 1, logs
    counts: dict[str, int] = {}
    for line in logs[0].read_text().splitlines():
        task = json.loads(line)["instance_id"]
        counts[task] = counts.get(task, 0) + 1
    return counts


@pytest.mark.docker
def test_a_task_whose_install_fails_is_quarantined_on_the_third_run(tasks_with_a_broken_install, swepost, store,
                                                                    home):
    # max_infra_failure_rate 0: any failed episode fails the run, so the same command is run again
    args = ["collect", "three", "--policy", "oracle", "--concurrency", "3", "--set", "max_infra_failure_rate=0",
            *tasks_with_a_broken_install, "--json"]
    for n in (1, 2):
        r = swepost(*args, check=1)
        assert "1 of 3 episodes failed" in r.stderr and "install command failed (3)" in r.stderr, r.stderr
        assert "quarantined" not in r.stderr and not r.stdout.strip()
        # the other tasks ran once and were kept; only the broken one ran again
        assert work_counts(home) == {"swepost__minicalc-1": 1, "swepost__minicalc-2": 1, "broken-install": n}

    r = swepost(*args, check=0)
    assert "quarantined 1 task(s)" in r.stderr and "broken-install: 3 runs" in r.stderr, r.stderr
    out = json.loads(r.stdout)
    assert out["stats"]["quarantined"] == 1 and out["stats"]["episodes"] == 3 and out["stats"]["resolved"] == 2
    art = store.resolve(out["id"])
    (q,) = [json.loads(line) for line in (art.path / "quarantined.jsonl").read_text().splitlines()]
    assert q["instance_id"] == "broken-install" and q["failures"] == 3
    assert q["last_cause"].startswith("sandbox_error: the task could not be set up") and "mirror is down" in \
        q["last_cause"]
    trajs = {json.loads(line)["instance_id"]: json.loads(line)
             for line in (art.path / "trajectories.jsonl").read_text().splitlines()}
    assert trajs["broken-install"]["exit_status"] == "sandbox_error"  # its last episode stays on record, ungraded
    assert {trajs[t]["resolved"] for t in ("swepost__minicalc-1", "swepost__minicalc-2")} == {"RESOLVED_FULL"}
    assert not list((home / "work").glob("collect-*"))


@pytest.mark.docker
def test_quarantine_after_zero_never_quarantines(tasks_with_a_broken_install, swepost, home):
    args = ["collect", "three", "--policy", "oracle", "--concurrency", "3", "--set", "max_infra_failure_rate=0",
            "--set", "quarantine_after=1", *tasks_with_a_broken_install, "--json"]
    r = swepost(*args, check=0)  # 1: the first failure quarantines it, and the run publishes
    assert json.loads(r.stdout)["stats"]["quarantined"] == 1
    args[args.index("quarantine_after=1")] = "quarantine_after=0"
    for _ in range(2):
        r = swepost(*args, check=1)
        assert "quarantined" not in r.stderr


def test_a_run_whose_tasks_are_all_quarantined_fails_and_bad_settings_exit_2(tmp_path, swepost, repo_root):
    from swepost.errors import WorkFailed
    from swepost.stages.collect import check_verdicts

    with pytest.raises(WorkFailed, match="every task is quarantined"):  # never an empty artifact
        check_verdicts("eval", [], 0.5, tmp_path, quarantined=2)
    check_verdicts("eval", [episode("a", "submitted", resolved="RESOLVED_NO")], 0.0, tmp_path, quarantined=2)

    swepost("tasks", "import", str(repo_root / "data" / "minicalc_tasks.jsonl"), "--name", "mini", check=0)
    r = swepost("collect", "mini", "--set", "quarantine_after=-1", check=2)
    assert "quarantine_after" in r.stderr and "Traceback" not in r.stderr, r.stderr
