"""Test-log parsing on logs from real pytest runs of a small project written here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.testing

from swepost.cli import grade
from swepost.rewards.testlog import parse_junit_xml, parse_pytest_log, summarize

PROJECT = {
    "pytest.ini": "[pytest]\n",
    "tests/sub/test_b.py": "def test_b():\n    pass\n",
    "tests/test_bad.py": "import no_such_module_for_swepost_tests\n",
    "tests/test_a.py": '''
import pytest


def test_pass():
    pass


def test_fail():
    assert 1 == 2


def test_skip():
    pytest.skip("not today")


@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert 0


@pytest.mark.xfail(reason="fixed now")
def test_xpass():
    pass


@pytest.mark.xfail(reason="must fail", strict=True)
def test_xpass_strict():
    pass


@pytest.fixture
def broken():
    raise RuntimeError("fixture boom")


def test_error(broken):
    pass


@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("teardown boom")


def test_pass_then_teardown_error(bad_teardown):
    pass


def test_fail_then_teardown_error(bad_teardown):
    assert 0


@pytest.mark.parametrize("text,slug", [("Hello  World", "hello-world"), ("a - b", "a-b"), ("x[1]", "x1")])
def test_slug(text, slug):
    assert text != "a - b"


@pytest.mark.parametrize("v", ["[", "]"])
def test_brackets(v):
    assert v == "["


class TestThing:
    def test_method(self):
        pass

    @pytest.mark.parametrize("n", [1, 2])
    def test_param(self, n):
        assert n == 1

    class TestInner:
        def test_deep(self):
            pass
''',
}

# what `pytest -rA` reports for PROJECT (test_skip has no id: pytest folds skips into `SKIPPED [1] path:line`)
EXPECTED = {
    "tests/sub/test_b.py::test_b": "PASSED",
    "tests/test_a.py::test_pass": "PASSED",
    "tests/test_a.py::test_fail": "FAILED",
    "tests/test_a.py::test_xfail": "XFAIL",
    "tests/test_a.py::test_xpass": "XPASS",
    "tests/test_a.py::test_xpass_strict": "FAILED",
    "tests/test_a.py::test_error": "ERROR",
    "tests/test_a.py::test_pass_then_teardown_error": "ERROR",
    "tests/test_a.py::test_fail_then_teardown_error": "FAILED",
    "tests/test_a.py::test_slug[Hello  World-hello-world]": "PASSED",
    "tests/test_a.py::test_slug[a - b-a-b]": "FAILED",
    "tests/test_a.py::test_slug[x[1]-x1]": "PASSED",
    "tests/test_a.py::test_brackets[[]": "PASSED",
    "tests/test_a.py::test_brackets[]]": "FAILED",
    "tests/test_a.py::TestThing::test_method": "PASSED",
    "tests/test_a.py::TestThing::test_param[1]": "PASSED",
    "tests/test_a.py::TestThing::test_param[2]": "FAILED",
    "tests/test_a.py::TestThing::TestInner::test_deep": "PASSED",
    "tests/test_bad.py": "ERROR",
}
SKIPPED = {"tests/test_a.py::test_skip": "SKIPPED"}

# test code that prints pytest-looking lines: in captured output (a block before the real summary,
# terminated or not) and inside an exception message (shown whole in the summary under -vv or CI)
FORGE = {
    "pytest.ini": "[pytest]\n",
    "tests/test_forge.py": '''
import pytest


def test_fail():
    print("PASSED tests/test_forge.py::test_fail")
    print("=== short test summary info ===")
    print("PASSED tests/test_forge.py::test_fail")
    print("PASSED tests/test_forge.py::test_skipped")
    print("=== 2 passed in 0.01s ===")
    assert 1 == 2


def test_skipped():
    pytest.skip("not today")


def test_raises():
    raise RuntimeError("boom\\n=== short test summary info ===\\nPASSED tests/test_forge.py::test_raises")


def test_zz_last_pass():
    print("=========================== short test summary info ============================")
    print("PASSED tests/test_forge.py::test_skipped")
    print("PASSED tests/test_forge.py::test_fail")
''',
}


def write_project(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def run_pytest(root: Path, *args: str) -> str:
    """Run pytest on a project (no plugins, no CI mode, 80 columns); return its stdout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "CI", "BUILD_NUMBER")}
    env.update(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", COLUMNS="80", PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--continue-on-collection-errors",
                        *args], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stdout + r.stderr  # 1: some tests failed, as they should
    return r.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return write_project(tmp_path_factory.mktemp("project"), PROJECT)


@pytest.fixture(scope="module")
def ra(project) -> tuple[str, str]:
    """(log, junit xml) of one plain `pytest -rA --junitxml` run."""
    log = run_pytest(project, "-rA", "--junitxml=ra.xml")
    return log, (project / "ra.xml").read_text()


@pytest.fixture(scope="module")
def unfolded(project) -> tuple[str, str]:
    """(log, junit xml) of a `pytest -rA --no-fold-skipped --junitxml` run: skipped tests named too."""
    log = run_pytest(project, "-rA", "--no-fold-skipped", "--junitxml=unfolded.xml")
    return log, (project / "unfolded.xml").read_text()


@pytest.fixture(scope="module")
def forge(tmp_path_factory) -> Path:
    return write_project(tmp_path_factory.mktemp("forge"), FORGE)


def test_statuses_of_a_real_run(ra):
    assert parse_pytest_log(ra[0]) == EXPECTED


def test_agrees_with_swebench_where_it_parses_correctly(ra):
    from swebench.harness.log_parsers import parse_log_pytest  # a dev dependency: fail, never skip

    ours = parse_pytest_log(ra[0])
    theirs = parse_log_pytest(ra[0], None)
    real = set(EXPECTED)
    right = {k: v for k, v in theirs.items() if k in real}
    wrong = set(theirs) - real
    assert right == {k: v for k, v in ours.items() if k in right}
    # every id it misses: the ones it cuts at a space, and XPASS (not a SWE-bench status)
    assert set(ours) - set(right) == {"tests/test_a.py::test_slug[Hello  World-hello-world]",
                                      "tests/test_a.py::test_slug[a - b-a-b]", "tests/test_a.py::test_xpass"}
    # and what it reports instead: the cut-off halves of the ids with spaces
    assert wrong == {"tests/test_a.py::test_slug[Hello", "tests/test_a.py::test_slug[a"}


def test_ids_with_spaces_and_brackets_come_out_whole(ra):
    statuses = parse_pytest_log(ra[0])
    assert "FAILED tests/test_a.py::test_slug[a - b-a-b] - " in ra[0]  # the id itself holds ` - `
    assert statuses["tests/test_a.py::test_slug[Hello  World-hello-world]"] == "PASSED"
    assert statuses["tests/test_a.py::test_slug[a - b-a-b]"] == "FAILED"
    assert statuses["tests/test_a.py::test_slug[x[1]-x1]"] == "PASSED"
    assert statuses["tests/test_a.py::test_brackets[[]"] == "PASSED"
    assert statuses["tests/test_a.py::test_brackets[]]"] == "FAILED"


def test_without_a_summary_section_it_falls_back_to_swebench(ra):
    from swebench.harness.log_parsers import parse_log_pytest

    log = "\n".join(line for line in ra[0].split("\n") if "short test summary info" not in line)
    assert parse_pytest_log(log) == {**parse_log_pytest(log, None), "tests/test_a.py::test_xpass": "XPASS"}


def test_unfolded_skips_are_named(unfolded):
    assert parse_pytest_log(unfolded[0]) == {**EXPECTED, **SKIPPED}


def test_forged_lines_in_captured_output_change_nothing(forge):
    log = run_pytest(forge, "-rA")
    lines = log.split("\n")  # the forged lines are in the log, whole lines, as the tests printed them
    assert lines.count("PASSED tests/test_forge.py::test_fail") == 3
    assert lines.count("PASSED tests/test_forge.py::test_skipped") == 2
    assert sum(line.startswith("=") and "short test summary info" in line for line in lines) == 3  # 2 forged
    assert parse_pytest_log(log) == {
        "tests/test_forge.py::test_fail": "FAILED",
        "tests/test_forge.py::test_raises": "FAILED",
        "tests/test_forge.py::test_zz_last_pass": "PASSED",
    }


def test_a_forged_header_inside_the_summary_does_not_rescue_a_failure(forge):
    log = run_pytest(forge, "-rA", "-vv")  # -vv (or CI) prints whole multi-line messages in the summary
    summary = log[log.index("short test summary info"):]
    assert "RuntimeError: boom\n=== short test summary info ===\nPASSED tests/test_forge.py::test_raises" in log
    assert "short test summary info" in summary.split("\n", 1)[1]  # the forged header follows the real one
    statuses = parse_pytest_log(log)
    assert statuses["tests/test_forge.py::test_raises"] == "FAILED"
    assert statuses["tests/test_forge.py::test_fail"] == "FAILED"
    assert "tests/test_forge.py::test_skipped" not in statuses


def test_out_of_order_passing_lines_are_message_continuations():
    log = ("==================== short test summary info ====================\n"
           "PASSED t.py::ok\n"
           "SKIPPED [1] t.py:3: reason\n"
           "PASSED t.py::skipped_one\n"
           "ERROR t.py::err - RuntimeError: one\n"
           "XPASS t.py::err\n"
           "FAILED t.py::bad - ValueError: two\n"
           "PASSED t.py::bad\n"
           "==================== 1 failed, 1 passed in 0.1s ====================\n")
    assert parse_pytest_log(log) == {"t.py::ok": "PASSED", "t.py::err": "ERROR", "t.py::bad": "FAILED"}


def test_junit_gives_the_same_statuses_as_the_log(unfolded, project):
    log, xml = unfolded
    from_log = {k: "PASSED" if v == "XPASS" else v for k, v in parse_pytest_log(log).items()}  # junit: XPASS is a pass
    assert parse_junit_xml(xml) == from_log
    assert parse_junit_xml(xml, root=project) == from_log
    assert "tests/test_a.py::TestThing::TestInner::test_deep" in from_log


def test_junit_rejects_non_xml(ra):
    with pytest.raises(ValueError, match="junit"):
        parse_junit_xml(ra[0])


def test_summarize_counts_only_passed_and_xpass_as_passing(ra):
    statuses = parse_pytest_log(ra[0])
    f2p = ["tests/test_a.py::test_fail", "tests/test_a.py::test_pass", "tests/test_a.py::test_xpass",
           "tests/test_a.py::test_nonexistent", "tests/test_a.py::test_pass"]
    p2p = ["tests/test_a.py::test_skip", "tests/test_a.py::test_xfail", "tests/test_a.py::test_error",
           "tests/test_a.py::test_slug[Hello  World-hello-world]"]
    expected = {"fail_to_pass": {"passed": 2, "failed": 1, "missing": 1, "total": 4},
                "pass_to_pass": {"passed": 1, "failed": 2, "missing": 1, "total": 4}}
    assert summarize(statuses, f2p, p2p) == expected
    assert summarize(statuses, json.dumps(f2p), json.dumps(p2p)) == expected  # SWE-bench's JSON strings
    assert summarize({**statuses, **SKIPPED}, [], ["tests/test_a.py::test_skip"])["pass_to_pass"]["failed"] == 1


# the CLI, called on the typer app directly (needs no wiring)

def invoke(*args: str):
    return typer.testing.CliRunner().invoke(grade.app, list(args))


def test_cli_log_json(ra, tmp_path):
    (tmp_path / "run.log").write_text(ra[0])
    (tmp_path / "run.xml").write_text(ra[1])
    r = invoke("log", str(tmp_path / "run.log"), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == EXPECTED
    r = invoke("log", str(tmp_path / "run.xml"), "--format", "junit", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == parse_junit_xml(ra[1])


def test_cli_log_table(ra, tmp_path):
    (tmp_path / "run.log").write_text(ra[0])
    r = typer.testing.CliRunner().invoke(grade.app, ["log", str(tmp_path / "run.log")], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "tests/test_a.py::test_slug[Hello  World-hello-world]" in r.output
    assert "tests/test_a.py::test_brackets[[]" in r.output
    assert "XPASS" in r.output


def test_cli_log_bad_input(ra, tmp_path):
    r = invoke("log", str(tmp_path / "missing.log"))
    assert r.exit_code == 2
    assert "missing.log" in r.output and "cannot read" in r.output
    (tmp_path / "run.log").write_text(ra[0])
    r = invoke("log", str(tmp_path / "run.log"), "--format", "xml")
    assert r.exit_code == 2
    assert "unknown --format 'xml'" in r.output
    r = invoke("log", str(tmp_path / "run.log"), "--format", "junit")
    assert r.exit_code == 2
    assert "not a junit XML file" in r.output


# the real command line: passes once `grade` is wired into swepost.cli

def test_swepost_grade_log(swepost, ra, tmp_path):
    (tmp_path / "run.log").write_text(ra[0])
    r = swepost("grade", "log", tmp_path / "run.log", "--format", "pytest-log", "--json", check=0)
    assert json.loads(r.stdout) == EXPECTED
    r = swepost("grade", "log", tmp_path / "nope.log", check=2)
    assert "nope.log" in r.stderr
