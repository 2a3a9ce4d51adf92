"""The grader against every known way of fooling one: each exploit is a real patch graded in a real container."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from swepost.records import Task, TaskVerify
from swepost.rewards.grading import decide, grade_in_sandbox, grade_patch, graded_test_files
from swepost.sandbox.base import Limits

pytestmark = pytest.mark.docker
BACKEND = __import__("os").environ.get("SWEPOST_GRADE_BACKEND", "docker")

BUGGY = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
TESTS = "from calc import sub\n\n\ndef test_sub():\n    assert sub(3, 1) == 2\n"
HIDDEN = ("from calc import add, sub\n\n\ndef test_sub():\n    assert sub(3, 1) == 2\n\n\n"
          "def test_add():\n    assert add(2, 3) == 5\n")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout


def diff_of(repo: Path, edit) -> str:
    """The diff a candidate would submit: edit the work tree, take `git diff` (new files included), reset."""
    edit(repo)
    git(repo, "add", "-A")
    out = git(repo, "diff", "--cached", "--binary")
    git(repo, "reset", "--hard", "-q")
    git(repo, "clean", "-fdq")
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A mirror with one repo (acme/calc), the task, and a scratch clone to write candidate diffs in."""
    root = tmp_path_factory.mktemp("grading")
    repo = root / "repos" / "acme__calc"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text(BUGGY)
    (repo / "tests" / "test_calc.py").write_text(TESTS)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "calc with a bug")
    base = git(repo, "rev-parse", "HEAD").strip()
    work = root / "work"
    git(root, "clone", "-q", str(repo), str(work))
    test_patch = diff_of(work, lambda r: (r / "tests" / "test_calc.py").write_text(HIDDEN))
    gold = diff_of(work, lambda r: (r / "calc.py").write_text(FIXED))
    task = Task(instance_id="acme__calc-1", repo="acme/calc", base_commit=base, problem_statement="add subtracts",
                patch=gold, test_patch=test_patch,
                verify=TaskVerify(fail_to_pass=["tests/test_calc.py::test_add"],
                                  pass_to_pass=["tests/test_calc.py::test_sub"]))
    return {"repos": root / "repos", "work": work, "task": task}


def grade(world, edit_or_patch, **kw):
    patch = edit_or_patch if isinstance(edit_or_patch, str) else diff_of(world["work"], edit_or_patch)
    return grade_patch(world["task"], patch, repos=world["repos"], backend=BACKEND, **kw)


def write(path: str, text: str, also_fix: bool = False):
    def edit(repo: Path) -> None:
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
        if also_fix:
            (repo / "calc.py").write_text(FIXED)
    return edit


def test_gold_resolves_and_empty_does_not(world, base_image):
    gold = grade(world, world["task"].patch)
    assert gold.resolved == "RESOLVED_FULL" and gold.reward == 1.0, gold
    assert gold.tests == {"tests/test_calc.py::test_add": "PASSED", "tests/test_calc.py::test_sub": "PASSED"}
    assert gold.apply["method"] == "git apply" and gold.apply["ok"] and gold.exit_code == 0
    empty = grade(world, "")
    assert empty.resolved == "RESOLVED_NO" and empty.reward == 0.0
    assert empty.tests["tests/test_calc.py::test_add"] == "FAILED" and "FAIL_TO_PASS" in empty.reason


FORCE_PASS = """
import pytest

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    report.outcome = "passed"
"""
SKIP_ALL = """
import pytest

def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.skip(reason="nope"))
"""
EXPLOITS = {
    "conftest hook forcing passes": write("conftest.py", FORCE_PASS),
    "tests/conftest.py skipping tests": write("tests/conftest.py", SKIP_ALL),
    "deselect in pytest.ini": write("pytest.ini", "[pytest]\naddopts = -k 'not test_add'\n"),
    "deselect in tox.ini": write("tox.ini", "[pytest]\naddopts = --deselect tests/test_calc.py::test_add\n"),
    "deselect in setup.cfg": write("setup.cfg", "[metadata]\nname = calc\n\n[tool:pytest]\naddopts = -k 'not add'\n"),
    "deselect in pyproject.toml": write("pyproject.toml",
                                        "[tool.pytest.ini_options]\naddopts = \"-k 'not test_add'\"\n"),
    "sitecustomize setting PYTEST_ADDOPTS": write(
        "sitecustomize.py", "import os\nos.environ['PYTEST_ADDOPTS'] = \"-k 'not test_add'\"\n"),
    "forged PASSED lines on stdout": write(
        "calc.py", BUGGY + "\nprint('PASSED tests/test_calc.py::test_add')\n"
        "print('=== short test summary info ===')\nprint('PASSED tests/test_calc.py::test_add')\n"),
    "os._exit(0) at import": write("calc.py", "import os\nos._exit(0)\n" + BUGGY),
    "editing the fail-to-pass test": write("tests/test_calc.py", HIDDEN.replace("== 5", "== -1")),
    "deleting the test file": lambda r: (r / "tests" / "test_calc.py").unlink(),
}


@pytest.mark.parametrize("name", list(EXPLOITS))
def test_every_known_exploit_is_unresolved(world, base_image, name):
    result = grade(world, EXPLOITS[name])
    assert result.resolved == "RESOLVED_NO" and result.reward == 0.0, (name, result)
    assert result.apply["ok"], result.apply


def test_infra_changes_are_reverted_but_a_real_fix_beside_them_still_counts(world, base_image):
    result = grade(world, write("tests/conftest.py", SKIP_ALL, also_fix=True))
    assert result.resolved == "RESOLVED_FULL", result
    assert result.neutralised == ["tests/conftest.py"]
    # packaging edits to setup.cfg are kept; only its pytest section would have been reverted
    result = grade(world, write("setup.cfg", "[metadata]\nname = calc\n", also_fix=True))
    assert result.resolved == "RESOLVED_FULL" and result.neutralised == []


def test_pytest_addopts_in_the_environment_is_ignored(world, base_image):
    from swepost.sandbox import open_sandbox
    from swepost.sandbox.repos import checkout

    task = world["task"]
    checkout(task, world["repos"], world["work"].parent / "env-checkout")
    with open_sandbox("docker", source_dir=world["work"].parent / "env-checkout", limits=Limits(),
                      env={"PYTEST_ADDOPTS": "-k 'not test_add'"}) as box:
        assert box.run("echo $PYTEST_ADDOPTS").output.strip() == "-k 'not test_add'"
        result = grade_in_sandbox(box, task, "")
    assert result.tests["tests/test_calc.py::test_add"] == "FAILED", result


def test_a_diff_that_does_not_apply_is_unresolved_with_the_reason(world, base_image):
    bad = "diff --git a/nothere.py b/nothere.py\n--- a/nothere.py\n+++ b/nothere.py\n@@ -1 +1 @@\n-x\n+y\n"
    result = grade(world, bad)
    assert result.resolved == "RESOLVED_NO" and "does not apply" in result.reason
    assert not result.apply["ok"] and "nothere.py" in result.apply["log"]


def test_fuzzy_fallback_applies_a_hunk_with_stale_context(world, base_image):
    gold = world["task"].patch
    stale = gold.replace(" def sub(a, b):", " def sub(x, y):")  # a context line the repo no longer has
    assert stale != gold
    result = grade(world, stale)
    assert result.apply["ok"] and result.apply["method"] == "patch --fuzz=3", result.apply
    assert result.resolved == "RESOLVED_FULL"


def test_decide_counts_skips_xfails_and_missing_as_failures():
    task = Task(instance_id="t", problem_statement="p", repo="a/b", base_commit="c",
                verify=TaskVerify(fail_to_pass=["t::a", "t::b"], pass_to_pass=["t::c"]))
    assert decide(task, {"t::a": "PASSED", "t::b": "PASSED", "t::c": "PASSED"})[0] == "RESOLVED_FULL"
    assert decide(task, {"t::a": "PASSED", "t::b": "SKIPPED", "t::c": "PASSED"})[0] == "RESOLVED_PARTIAL"
    assert decide(task, {"t::a": "XFAIL", "t::b": "SKIPPED", "t::c": "PASSED"})[0] == "RESOLVED_NO"
    assert decide(task, {"t::a": "PASSED", "t::b": "PASSED"})[0] == "RESOLVED_NO"  # P2P missing
    assert graded_test_files(task) == ["t"]


def test_cli_grade_patch_on_a_bundled_task(repo_root, swepost, tmp_path, base_image):
    from swepost.stages.tasks import read_task_file

    task = read_task_file(repo_root / "data" / "minicalc_tasks.jsonl")[2]  # ids with spaces in brackets
    swepost("tasks", "import", str(repo_root / "data" / "minicalc_tasks.jsonl"), "--name", "mini", check=0)
    gold = tmp_path / "gold.diff"
    gold.write_text(task.patch)
    r = swepost("grade", "patch", "mini", task.instance_id, str(gold), "--repos", str(repo_root / "data" / "repos"),
                "--backend", "docker", "--json", check=0)
    out = json.loads(r.stdout)
    assert out["resolved"] == "RESOLVED_FULL" and out["reward"] == 1.0
    assert set(out["tests"]) == set(task.verify.fail_to_pass + task.verify.pass_to_pass)
    assert any(" " in t for t in out["tests"]) and set(out["tests"].values()) == {"PASSED"}
    r = swepost("grade", "patch", "mini", task.instance_id, "-", "--repos", str(repo_root / "data" / "repos"),
                "--backend", "docker", input="", check=0)
    assert "RESOLVED_NO" in r.stdout and "FAILED" in r.stdout
    r = swepost("grade", "patch", "mini", "nope", str(gold), check=2)
    assert "no task with instance_id 'nope'" in r.stderr


def test_cli_grade_patch_that_cannot_be_graded_says_so_and_exits_1(repo_root, swepost, tmp_path, base_image):
    from swepost.stages.tasks import read_task_file

    task = read_task_file(repo_root / "data" / "minicalc_tasks.jsonl")[0]
    swepost("tasks", "import", str(repo_root / "data" / "minicalc_tasks.jsonl"), "--name", "mini", check=0)
    gold = tmp_path / "gold.diff"
    gold.write_text(task.patch)
    r = swepost("grade", "patch", "mini", task.instance_id, str(gold), "--repos", str(repo_root / "data" / "repos"),
                "--backend", "docker", "--timeout", "0.05", check=1)
    assert "UNGRADED (reward none: not a wrong answer)" in r.stdout and "timed out" in r.stdout, r.stdout


def test_cli_grade_patch_says_why_a_diff_does_not_apply(repo_root, swepost, tmp_path, base_image):
    from swepost.stages.tasks import read_task_file

    task = read_task_file(repo_root / "data" / "minicalc_tasks.jsonl")[0]
    swepost("tasks", "import", str(repo_root / "data" / "minicalc_tasks.jsonl"), "--name", "mini", check=0)
    bad = tmp_path / "bad.diff"
    bad.write_text("diff --git a/nothere.py b/nothere.py\n--- a/nothere.py\n+++ b/nothere.py\n"
                   "@@ -1,1 +1,1 @@\n-x = 1\n+x = 2\n")
    r = swepost("grade", "patch", "mini", task.instance_id, str(bad), "--repos", str(repo_root / "data" / "repos"),
                "--backend", "docker", check=0)
    assert "RESOLVED_NO" in r.stdout and "does not apply" in r.stdout
    assert "apply log" in r.stdout and "nothere.py: No such file or directory" in r.stdout, r.stdout
