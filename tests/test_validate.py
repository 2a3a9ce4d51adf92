"""`tasks validate` on the bundled tasks and on tasks broken on purpose, in real containers."""

from __future__ import annotations

import json
import subprocess

import pytest

from swepost.records import Task, TaskVerify
from swepost.stages.tasks import load_tasks, read_task_file
from swepost.stages.validate import TasksValidateConfig, validate_task

pytestmark = pytest.mark.docker


def test_bundled_tasks_all_pass_validation(repo_root, swepost, store, base_image):
    r = swepost("tasks", "import", str(repo_root / "data" / "minicalc_tasks.jsonl"), "--name", "mini", check=0)
    r = swepost("tasks", "validate", "mini", "--repos", str(repo_root / "data" / "repos"), "--backend", "docker",
                "--json", check=0)
    out = json.loads(r.stdout)
    assert out["stats"] == {"tasks": 7, "dropped": 0, "tests_removed": 0}
    art = store.resolve(out["id"])
    assert art.parents == [store.resolve("mini").id]
    report = json.loads((art.path / "validation.json").read_text())
    assert all(t["kept"] and t["gold"] == ["RESOLVED_FULL"] and t["without_patch"] == ["RESOLVED_NO"]
               for t in report)
    assert [t.verify for t in load_tasks(art)] == [t.verify for t in load_tasks(store.resolve("mini"))]


def test_bad_tests_are_removed_and_hopeless_tasks_dropped(repo_root, base_image):
    tasks = read_task_file(repo_root / "data" / "minicalc_tasks.jsonl")
    config = TasksValidateConfig(tasks="unused", repos=repo_root / "data" / "repos", backend="docker")
    # a PASS_TO_PASS test listed as FAIL_TO_PASS as well: it passes without the fix
    t1 = tasks[0]
    passing = t1.verify.pass_to_pass[0]
    wrong = t1.model_copy(update={"verify": t1.verify.model_copy(
        update={"fail_to_pass": [*t1.verify.fail_to_pass, passing]})})
    kept, report = validate_task(wrong, config)
    assert kept is not None and kept.verify.fail_to_pass == t1.verify.fail_to_pass
    assert report["removed"] == [{"test": passing, "list": "FAIL_TO_PASS", "reason": "passes without the fix"}]
    # a gold patch that fixes nothing: no FAIL_TO_PASS test survives, the task goes
    t2 = tasks[1]
    kept, report = validate_task(t2.model_copy(update={"patch": ""}), config)
    assert kept is None and report["reason"] == "no FAIL_TO_PASS test left"
    assert {r["reason"] for r in report["removed"]} == {"does not pass with the gold patch (FAILED)"}


FLAKY_TEST = "import random\n\n\ndef test_coin():\n    assert random.random() < 0.5\n\n\ndef test_ok():\n    pass\n"


def _one_file_task(tmp_path, name: str, files: dict[str, str], hidden: str,
                   test_file: str = "tests/test_x.py") -> Task:
    """A one-repo mirror holding `files`; the task's test patch turns `test_file` into `hidden`."""
    repo = tmp_path / "repos" / f"acme__{name}"
    for path, text in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                              capture_output=True, text=True).stdout

    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    base = git("rev-parse", "HEAD").strip()
    (repo / test_file).write_text(hidden)
    test_patch = git("diff")
    git("checkout", "-q", "--", ".")
    return Task(instance_id=f"acme__{name}-1", repo=f"acme/{name}", base_commit=base, problem_statement=name,
                test_patch=test_patch, verify=TaskVerify(fail_to_pass=[f"{test_file}::check_new"]))


def test_a_test_that_flips_over_repeats_is_flaky(tmp_path, base_image):
    task = _one_file_task(tmp_path, "coin", {"tests/test_coin.py": "def test_ok():\n    pass\n"}, FLAKY_TEST,
                          test_file="tests/test_coin.py")
    task = task.model_copy(update={"verify": TaskVerify(fail_to_pass=["tests/test_coin.py::test_coin"],
                                                        pass_to_pass=["tests/test_coin.py::test_ok"])})
    config = TasksValidateConfig(tasks="unused", repos=tmp_path / "repos", backend="docker", runs=6)
    kept, report = validate_task(task, config)
    # 12 coin flips all alike has probability 2 / 4096
    assert kept is None and report["removed"][0]["reason"].startswith("flaky"), report


def test_a_repo_where_canaries_cannot_run_is_dropped_not_trusted(tmp_path, base_image):
    """pytest here only collects check_* functions, so the grader's test_* canaries never run: no grading of
    this task can tell tampering from a pass, and validation drops it saying why."""
    task = _one_file_task(tmp_path, "cfg", {"pytest.ini": "[pytest]\npython_functions = check_*\n",
                                            "tests/test_x.py": "def check_old():\n    pass\n"},
                          "def check_old():\n    pass\n\n\ndef check_new():\n    assert False\n")
    kept, report = validate_task(task, TasksValidateConfig(tasks="unused", repos=tmp_path / "repos",
                                                           backend="docker"))
    assert kept is None and "cannot trust" in report["reason"] and "canary" in report["reason"], report


def test_a_task_that_cannot_be_graded_is_dropped_without_blaming_its_tests(tmp_path, base_image):
    task = _one_file_task(tmp_path, "slow", {"tests/test_x.py": "def test_old():\n    pass\n"},
                          "import time\n\n\ndef test_old():\n    time.sleep(30)\n\n\ndef test_new():\n    pass\n")
    task = task.model_copy(update={"verify": TaskVerify(fail_to_pass=["tests/test_x.py::test_new"])})
    kept, report = validate_task(task, TasksValidateConfig(tasks="unused", repos=tmp_path / "repos",
                                                           backend="docker", timeout=3))
    assert kept is None and report["reason"].startswith("could not be graded") and report["removed"] == [], report


def _validate_in_a_terminal(args: list[str], home) -> tuple[str, str]:
    """Run `swepost tasks validate ARGS` with stderr on a pseudo-terminal (stdout a pipe); (stdout, stderr)."""
    import os
    import sys

    from conftest import REPO_ROOT

    master, slave = os.openpty()
    env = {**os.environ, "SWEPOST_HOME": str(home), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "swepost", "tasks", "validate", *args], stdout=subprocess.PIPE,
                            stderr=slave, env=env, cwd=REPO_ROOT, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out = proc.stdout.read()
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    return out, b"".join(chunks).decode(errors="replace")


def test_cli_progress_jobs_and_why_tasks_were_dropped(repo_root, swepost, home, tmp_path, base_image):
    rows = [json.loads(line) for line in (repo_root / "data" / "minicalc_tasks.jsonl").read_text().splitlines()][:3]
    rows[1]["patch"] = ""  # a gold patch that fixes nothing: the task is dropped, its tests removed
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    swepost("tasks", "import", tmp_path / "t.jsonl", "--name", "three", check=0)
    args = ["three", "--repos", str(repo_root / "data" / "repos"), "--backend", "docker", "--jobs", "3"]
    r = swepost("tasks", "validate", *args, "--json", check=0)  # not a terminal, --json: no bar
    out = json.loads(r.stdout)
    assert out["stats"] == {"tasks": 2, "dropped": 1, "tests_removed": 2}
    assert "tasks-validate" not in r.stderr and "━" not in r.stderr
    assert "dropped swepost__minicalc-2: no FAIL_TO_PASS test left" in r.stderr
    assert ("removed FAIL_TO_PASS tests/test_stats.py::test_median_even of swepost__minicalc-2: does not pass "
            "with the gold patch (FAILED)") in r.stderr
    assert swepost("tasks", "validate", *args, "--print-config", check=0).stdout.count("jobs: 3") == 1

    stdout, stderr = _validate_in_a_terminal([*args, "--name", "in-a-terminal"], home)
    assert "tasks-validate" in stderr and "3/3" in stderr and "kept 2 · dropped 1" in stderr
    assert "dropped swepost__minicalc-2" in stderr and "wrote in-a-terminal@" in stdout and "━" not in stdout
