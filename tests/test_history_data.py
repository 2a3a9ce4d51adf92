"""The planted histories `swepost tasks mine` is checked against (data/example_repo/build_history.py): the build is
deterministic and matches the committed bundles, and every executed verdict of the manifests holds when pytest
really runs at the parent (with the commit's test files) and at the commit, through swepost's own test runner."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from swepost.records import Task
from swepost.sandbox.repos import checkout

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "data" / "example_repo" / "build_history.py"
BUNDLES = ROOT / "data" / "repos"
RUNNER = ROOT / "src" / "swepost" / "rewards" / "test_runner.py"
NAMES = ("swepost__minicalc-history", "swepost__plantedlib")
EXECUTED = ("fix", "regression", "flaky", "no_improvement", "too_large")
FLAKY_RUNS = 10


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def build(*outs: Path) -> None:
    """The build script run into each of `outs` at the same time."""
    runs = [subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(out)], stdout=subprocess.DEVNULL)
            for out in outs]
    assert [run.wait(timeout=60) for run in runs] == [0] * len(outs)


def refs(repo: Path) -> str:
    return git("for-each-ref", "--format=%(objectname) %(refname)", cwd=repo)


def manifest(name: str) -> list[dict]:
    return json.loads((BUNDLES / f"{name}.expected.json").read_text())["commits"]


def is_test_file(path: str) -> bool:
    parts = path.split("/")
    return "tests" in parts[:-1] or parts[-1].startswith("test_")


@pytest.fixture(scope="module")
def clones(tmp_path_factory) -> dict[str, Path]:
    top = tmp_path_factory.mktemp("history")
    for name in NAMES:
        git("clone", "-q", str(BUNDLES / f"{name}.bundle"), str(top / name), cwd=top)
    return {name: top / name for name in NAMES}


def tree(repo: Path, sha: str, dest: Path, tests_from: str | None = None) -> Path:
    """`sha`'s files in `dest`; with `tests_from`, that commit's changed test files applied on top."""
    data = subprocess.run(["git", "archive", "--format=tar", sha], cwd=repo, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    if tests_from:
        for line in git("diff", "--name-status", "--no-renames", sha, tests_from, cwd=repo).splitlines():
            status, path = line.split("\t")
            if is_test_file(path):
                target = dest / path
                if status == "D":
                    target.unlink()
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(subprocess.run(["git", "show", f"{tests_from}:{path}"], cwd=repo,
                                                      check=True, capture_output=True).stdout)
    return dest


# Imports pytest once, then runs each checkout's suite in a forked child (a fresh interpreter per run would cost
# most of the time budget); statuses by report.nodeid, as swepost's runner records them (checked below).
DRIVER = r"""
import json, os, sys
import pytest

from swepost.records import Task
from swepost.sandbox.repos import checkout

class Record:
    def __init__(self):
        self.tests = {}

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.tests[report.nodeid] = "FAILED"
        elif report.skipped or report.when == "call":
            self.tests.setdefault(report.nodeid, report.outcome.upper())

null = os.open(os.devnull, os.O_WRONLY)
saved = os.dup(1)
os.dup2(null, 1)
pytest.main(["-q", "-p", "no:cacheprovider", "--collect-only", sys.argv[2]])  # imports what every run needs
os.dup2(saved, 1)
running = set()
for number, (checkout, args) in enumerate(json.loads(sys.argv[1])):
    if len(running) >= os.cpu_count():
        running.discard(os.wait()[0])
    pid = os.fork()
    if pid == 0:
        os.dup2(null, 1), os.dup2(null, 2)
        os.chdir(checkout)
        sys.path.insert(0, checkout)
        record = Record()
        pytest.main(["-q", "-p", "no:cacheprovider", "--assert=plain", *args], plugins=[record])
        with open(f"{sys.argv[2]}/{number}.json", "w") as f:
            json.dump(record.tests, f)
        os._exit(0)
    running.add(pid)
while running:
    running.discard(os.wait()[0])
"""
QUIET = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def run_suites(checkouts: list[Path], out: Path, args: list[list[str]] | None = None) -> list[dict[str, str]]:
    """{test id: status} in each checkout (pytest `args`: the whole suite by default), run by this interpreter."""
    out.mkdir()
    jobs = [[str(c), a] for c, a in zip(checkouts, args or [[]] * len(checkouts), strict=True)]
    subprocess.run([sys.executable, "-c", DRIVER, json.dumps(jobs), str(out)], env=QUIET, check=True, timeout=120)
    return [json.loads((out / f"{number}.json").read_text()) for number in range(len(checkouts))]


def run_with_swepost_runner(checkout: Path) -> dict[str, str]:
    config, report = (checkout.with_name(f"{checkout.name}.runner-{kind}.json") for kind in ("config", "report"))
    config.write_text(json.dumps({"nonce": "n", "report": str(report), "args": ["-q", "-p", "no:cacheprovider"]}))
    subprocess.run([sys.executable, str(RUNNER), str(config)], cwd=checkout, env=QUIET, check=True,
                   capture_output=True, timeout=60)
    return json.loads(report.read_text())["tests"]


@pytest.mark.slow  # builds real repositories / runs about 60 pytest sessions
def test_build_is_deterministic_and_matches_the_bundles(tmp_path):
    build(tmp_path / "one", tmp_path / "two")
    for name in NAMES:
        one, two = tmp_path / "one" / name, tmp_path / "two" / name
        assert refs(one) == refs(two) and refs(one).strip()
        heads = git("bundle", "list-heads", str(BUNDLES / f"{name}.bundle"), cwd=tmp_path).split("\n")
        assert f"{refs(one).split()[0]} refs/heads/main" in heads
        for out in (one, two):
            assert out.with_name(f"{name}.expected.json").read_text() == \
                (BUNDLES / f"{name}.expected.json").read_text()


def test_minicalc_history_keeps_minicalc_and_fixes_its_tasks(clones, tmp_path):
    minicalc = git("bundle", "list-heads", str(BUNDLES / "swepost__minicalc.bundle"), cwd=ROOT).split()[0]
    repo = clones["swepost__minicalc-history"]
    git("merge-base", "--is-ancestor", minicalc, "HEAD", cwd=repo)  # the same commits, the same hashes
    task = Task(instance_id="t", problem_statement="", repo="swepost/minicalc-history", base_commit=minicalc)
    assert git("rev-parse", "HEAD", cwd=checkout(task, BUNDLES, tmp_path / "task")).strip() == minicalc
    tasks = {json.loads(line)["instance_id"]: json.loads(line)
             for line in (ROOT / "data" / "minicalc_tasks.jsonl").read_text().splitlines()}
    fixes = [c for c in manifest("swepost__minicalc-history") if c["expect"] == "fix" and "task" in c]
    assert sorted(c["task"] for c in fixes) == sorted(tasks)
    for commit in fixes:
        task = tasks[commit["task"]]
        assert commit["FAIL_TO_PASS"] == json.loads(task["FAIL_TO_PASS"])
        assert set(json.loads(task["PASS_TO_PASS"])) <= set(commit["PASS_TO_PASS"])


def test_skipped_verdicts_match_the_files_changed(clones):
    for name, repo in clones.items():
        for commit in manifest(name):
            if commit["expect"] == "no_parent":
                assert not git("rev-list", "--parents", "-n1", commit["sha"], cwd=repo).split()[1:]
                continue
            files = git("diff", "--name-only", f"{commit['sha']}^1", commit["sha"], cwd=repo).split()
            tests = [f for f in files if is_test_file(f)]
            source = [f for f in files if f.endswith(".py") and f not in tests]
            docs = all(f.endswith(".md") or f.startswith(".github/") for f in files)
            kind = {"docs_only": docs, "test_only": files == tests, "no_tests": source and not tests,
                    "not_python": not docs and not any(f.endswith(".py") for f in files)}
            assert kind.get(commit["expect"], bool(source and tests)), (name, commit["subject"])


def test_ids_are_those_of_swepost_runner(clones, tmp_path):
    checkout = tree(clones["swepost__minicalc-history"], "HEAD", tmp_path / "minicalc")  # ids with ", " and " - "
    assert run_suites([checkout], tmp_path / "results")[0] == run_with_swepost_runner(checkout)


@pytest.mark.slow  # builds real repositories / runs about 60 pytest sessions
def test_executed_verdicts_hold_under_pytest(clones, tmp_path):
    jobs = {}  # (sha, side, run) -> (checkout, pytest args)
    for name, repo in clones.items():
        for commit in manifest(name):
            if commit["expect"] in EXECUTED:
                sha = commit["sha"]
                jobs[sha, "before", 0] = tree(repo, f"{sha}^1", tmp_path / f"{sha}-before", tests_from=sha), []
                jobs[sha, "after", 0] = tree(repo, sha, tmp_path / f"{sha}-after"), []
                for run in range(1, FLAKY_RUNS if commit["expect"] == "flaky" else 1):  # the flaky tests again
                    jobs[sha, "after", run] = jobs[sha, "after", 0][0], commit["flaky"]
    runs = run_suites([c for c, _ in jobs.values()], tmp_path / "results", [a for _, a in jobs.values()])
    results = dict(zip(jobs, runs, strict=True))
    checked = set()
    for name in NAMES:
        for commit in manifest(name):
            if commit["expect"] not in EXECUTED:
                continue
            sha, why = commit["sha"], (name, commit["subject"])
            before, after = results[sha, "before", 0], results[sha, "after", 0]
            flaky = set(commit.get("flaky", []))
            if flaky:
                seen = {t: {r.get(t) for key, r in results.items() if key[:2] == (sha, "after")} for t in flaky}
                assert any(len(statuses) == 2 for statuses in seen.values()), (why, seen)  # misses w.p. 2**-27
                assert not any(before.get(t) == "PASSED" for t in flaky), why
                after = {t: s for t, s in after.items() if t not in flaky}
            improved = sorted(t for t, s in after.items() if s == "PASSED" and before.get(t) != "PASSED")
            both = {t for t, s in after.items() if s == "PASSED" and before.get(t) == "PASSED"}
            broken = sorted(t for t, s in before.items() if s == "PASSED" and after.get(t) != "PASSED")
            assert improved == sorted(commit["FAIL_TO_PASS"]), why
            assert both == set(commit["PASS_TO_PASS"]) and len(both) == len(commit["PASS_TO_PASS"]), why
            assert broken == sorted(commit.get("broken", [])), why
            assert bool(improved) == (commit["expect"] not in ("no_improvement", "flaky")), why
            checked.add(commit["expect"])
    assert checked == set(EXECUTED)


KILLED_CHECKOUT = """
import sys
from pathlib import Path
from swepost.records import Task
from swepost.sandbox.repos import checkout
minicalc = sys.argv[3]
checkout(Task(instance_id="t", problem_statement="", repo="swepost/minicalc", base_commit=minicalc),
         sys.argv[1], Path(sys.argv[2]) / "repo")
"""


def test_a_checkout_killed_mid_unbundle_leaves_its_folder_to_sandbox_gc(tmp_path, swepost):
    """checkout() unbundles the mirror into a temp folder; a kill -9 there skips its cleanup. The folder carries
    its owner (host:pid), so `swepost sandbox gc` removes it once that process is gone, and only then."""
    import signal
    import tempfile
    import time

    from swepost.sandbox.base import CHECKOUT_PREFIX

    shim = tmp_path / "bin"
    shim.mkdir()
    real_git = subprocess.run(["which", "git"], capture_output=True, text=True, check=True).stdout.strip()
    started = tmp_path / "stalled"
    # a real git, made slow where checkout unbundles: the moment to kill the process
    (shim / "git").write_text(f'#!/bin/sh\ncase "$*" in *"clone --quiet --bare"*) touch {started}; sleep 60;; esac\n'
                              f'exec {real_git} "$@"\n')
    (shim / "git").chmod(0o755)
    minicalc = git("bundle", "list-heads", str(BUNDLES / "swepost__minicalc.bundle"), cwd=ROOT).split()[0]
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CHECKOUT, str(BUNDLES), str(tmp_path), minicalc],
                            env={**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), "checkout never reached the unbundle"
        left = list(Path(tempfile.gettempdir()).glob(f"{CHECKOUT_PREFIX}*:{proc.pid}-*"))
        assert len(left) == 1, left
        assert swepost("sandbox", "gc").returncode == 0
        assert left[0].exists()  # its owner still runs: not gc's to take
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the python process and the stalled git below it
        proc.wait()
    assert left[0].exists()  # what kill -9 leaves behind
    r = swepost("sandbox", "gc")
    assert r.returncode == 0, r.stderr
    assert not left[0].exists()
