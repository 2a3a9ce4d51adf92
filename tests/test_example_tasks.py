"""The bundled offline example tasks (data/minicalc_tasks.jsonl): built reproducibly, and each one real.

For every task, in a clone of the built mirror at base_commit with the test_patch applied, the FAIL_TO_PASS
tests fail and the PASS_TO_PASS tests pass; with the gold patch applied too, all of them pass. Real git, real
pytest runs of the example project.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from swepost.stages.tasks import read_task_file

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD = REPO_ROOT / "data" / "example_repo" / "build.py"
TASKS_FILE = REPO_ROOT / "data" / "minicalc_tasks.jsonl"
ROWS = [json.loads(line) for line in TASKS_FILE.read_text().splitlines() if line.strip()]
# git and pytest as on a bare machine: no user git config, no inherited GIT_* or pytest options
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "PYTEST_"))},
       "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def run(cmd: list, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def git(cwd: Path, *args: str) -> str:
    return run(["git", "-c", "advice.detachedHead=false", *args], cwd=cwd).stdout


def build(out: Path) -> tuple[Path, str]:
    """Build the mirror into `out`; the mirror's path and the task file the build wrote."""
    tasks = out / "tasks.jsonl"
    run([sys.executable, BUILD, "--out", out, "--write-tasks", tasks])
    return out / "swepost__minicalc", tasks.read_text()


def all_refs(repo: Path) -> list[str]:
    return git(repo, "rev-list", "--all", "--topo-order").split()


def touched_files(diff: str) -> set[str]:
    return {path for pair in re.findall(r"^diff --git a/(\S+) b/(\S+)$", diff, re.M) for path in pair}


def pytest_outcomes(checkout: Path, files: list[str], report: Path) -> dict[str, str]:
    """Run the whole test files the way the grader does; node id -> passed / failed / skipped."""
    r = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *files],
            cwd=checkout, check=False)
    assert r.returncode in (0, 1), f"pytest exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        # these test modules hold no classes, so classname is the module path: tests.test_x -> tests/test_x.py
        nodeid = f"{case.get('classname').replace('.', '/')}.py::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[nodeid] = ("failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds
                            else "passed")
    return outcomes


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> tuple[Path, str]:
    return build(tmp_path_factory.mktemp("mirror"))


def test_build_is_reproducible_and_matches_the_committed_tasks(mirror, tmp_path):
    repo, tasks = mirror
    again, tasks_again = build(tmp_path)
    assert all_refs(repo) == all_refs(again)
    assert len(all_refs(repo)) > 1
    assert tasks == tasks_again
    assert tasks == TASKS_FILE.read_text(), "data/minicalc_tasks.jsonl is stale: rerun data/example_repo/build.py"
    assert git(repo, "status", "--porcelain") == ""


def test_task_rows_are_swe_bench_rows(mirror):
    repo, _ = mirror
    commits = set(all_refs(repo))
    assert len(ROWS) >= 6
    assert len({row["instance_id"] for row in ROWS}) == len(ROWS)
    assert len({row["base_commit"] for row in ROWS}) == len(ROWS)
    for row in ROWS:
        assert re.fullmatch(r"swepost__minicalc-\d+", row["instance_id"])
        assert row["repo"] == "swepost/minicalc" and row["version"] == "0.1" and row["hints_text"] == ""
        assert re.fullmatch(r"[0-9a-f]{40}", row["base_commit"]) and row["base_commit"] in commits
        assert row["environment_setup_commit"] == row["base_commit"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["created_at"])
        for key in ("FAIL_TO_PASS", "PASS_TO_PASS"):
            assert isinstance(row[key], str) and all(isinstance(t, str) for t in json.loads(row[key]))
        assert json.loads(row["FAIL_TO_PASS"]) and len(json.loads(row["PASS_TO_PASS"])) >= 2
        assert not set(json.loads(row["FAIL_TO_PASS"])) & set(json.loads(row["PASS_TO_PASS"]))
        assert not any(f.startswith("tests/") for f in touched_files(row["patch"])), row["instance_id"]
        assert touched_files(row["patch"]) and touched_files(row["test_patch"])
        assert all(f.startswith("tests/") for f in touched_files(row["test_patch"])), row["instance_id"]
    # the awkward id shapes a grader has to match verbatim
    ids = [t for row in ROWS for t in json.loads(row["FAIL_TO_PASS"])]
    assert "tests/test_text.py::test_slug[Hello  World-hello-world]" in ids
    assert any("--" in t and "[" in t for t in ids)  # a negative parameter


def test_task_rows_import_into_swepost():
    tasks = read_task_file(TASKS_FILE)
    assert [t.instance_id for t in tasks] == [row["instance_id"] for row in ROWS]
    for task, row in zip(tasks, ROWS, strict=True):
        assert task.repo == "swepost/minicalc" and task.base_commit == row["base_commit"]
        assert task.verify.fail_to_pass == json.loads(row["FAIL_TO_PASS"])
        assert task.verify.pass_to_pass == json.loads(row["PASS_TO_PASS"])


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS, ids=[row["instance_id"] for row in ROWS])
def test_task_fails_at_base_and_passes_with_the_gold_patch(mirror, tmp_path, row):
    repo, _ = mirror
    fail_to_pass, pass_to_pass = json.loads(row["FAIL_TO_PASS"]), json.loads(row["PASS_TO_PASS"])
    files = sorted({t.split("::", 1)[0] for t in fail_to_pass + pass_to_pass})
    checkout = tmp_path / "checkout"
    git(tmp_path, "clone", "-q", "--no-checkout", str(repo), str(checkout))
    git(checkout, "checkout", "-q", "--detach", row["base_commit"])
    (tmp_path / "test.diff").write_text(row["test_patch"])
    (tmp_path / "gold.diff").write_text(row["patch"])

    git(checkout, "apply", str(tmp_path / "test.diff"))
    before = pytest_outcomes(checkout, files, tmp_path / "before.xml")
    # every test in the graded files is listed, so the ids are exactly pytest's own node ids
    assert sorted(before) == sorted(fail_to_pass + pass_to_pass)
    assert {t: before[t] for t in fail_to_pass} == dict.fromkeys(fail_to_pass, "failed")
    assert {t: before[t] for t in pass_to_pass} == dict.fromkeys(pass_to_pass, "passed")

    git(checkout, "apply", str(tmp_path / "gold.diff"))
    after = pytest_outcomes(checkout, files, tmp_path / "after.xml")
    assert after == dict.fromkeys(fail_to_pass + pass_to_pass, "passed")
