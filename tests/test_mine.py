"""`swepost tasks mine` on histories whose every commit has a known verdict (data/repos/*.expected.json, built by
data/example_repo/build_history.py): planted fixes found with their FAIL_TO_PASS, regressions, test-only, docs-only,
flaky, no-improvement and oversized commits turned down with their reason, and the tasks accepted by `tasks
validate`. The mining runs are the expensive part (docker sandboxes), so each runs once per module and its artifact
serves every assert: plantedlib on a private local Ray, killed with SIGKILL mid-way and run again (each candidate
executed once overall); minicalc's fixes on a Ray cluster of our own (`ray start --head`, then `--ray auto`)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require_or_skip

from swepost.mining.execute import decide
from swepost.mining.history import file_kind, skip_reason

REPOS = REPO_ROOT / "data" / "repos"
# the expected.json vocabulary -> the miner's (verdict, reasons)
EXPECT = {"fix": ("kept", {""}), "regression": ("rejected", {"regression"}), "flaky": ("rejected", {"flaky"}),
          "no_improvement": ("rejected", {"no_improvement"}), "docs_only": ("skipped", {"docs_only"}),
          "test_only": ("skipped", {"test_only"}), "no_tests": ("skipped", {"no_tests"}),
          "not_python": ("skipped", {"not_python"}), "no_parent": ("skipped", {"root_commit"}),
          "too_large": ("skipped", {"too_many_files", "too_many_lines"})}
MINICALC_SINCE = "2025-02-01"  # the 7 task fixes and the commits between them (the feature commits come before)


def expected(name: str) -> dict[str, dict]:
    return {c["sha"]: c for c in json.loads((REPOS / f"swepost__{name}.expected.json").read_text())["commits"]}


def cli(home: Path, *args, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full = {**os.environ, "SWEPOST_HOME": str(home), **(env or {})}
    return subprocess.run([sys.executable, "-m", "swepost", *map(str, args)], env=full, cwd=REPO_ROOT, text=True,
                          capture_output=True, timeout=timeout)


def artifact(home: Path, r: subprocess.CompletedProcess) -> tuple[Path, dict, list[dict]]:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    path = Path(json.loads(r.stdout)["path"])
    tasks = [json.loads(line) for line in (path / "tasks.jsonl").read_text().splitlines() if line.strip()]
    return path, json.loads((path / "report.json").read_text()), tasks


def work_log(home: Path) -> list[dict]:
    logs = list((home / "work").glob("tasks-mine-*/log.jsonl"))
    assert len(logs) == 1, logs
    return [json.loads(line) for line in logs[0].read_text().splitlines() if line.strip()]


def need_docker_and_ray():
    from swepost.errors import WorkFailed
    from swepost.sandbox.images import DEFAULT_BASE_IMAGE, docker_client, image_id

    if importlib.util.find_spec("ray") is None:
        require_or_skip("ray is not installed (pip install 'swepost[ray]')")
    try:
        client = docker_client()
    except WorkFailed as e:
        require_or_skip(f"docker engine not running: {e}")
    try:
        if image_id(client, DEFAULT_BASE_IMAGE) is None:
            require_or_skip(f"no {DEFAULT_BASE_IMAGE} image (swepost sandbox build-base)")
    finally:
        client.close()
    if not (REPOS / "swepost__plantedlib.bundle").exists():
        pytest.fail("data/repos/swepost__plantedlib.bundle is missing (data/example_repo/build_history.py)")


# --- no docker ----------------------------------------------------------------------------------------------------

def test_file_kinds_and_skip_reasons():
    assert [file_kind(p) for p in ("pkg/a.py", "tests/test_a.py", "pkg/tests/data.json", "conftest.py",
                                   "docs/x.rst", "README.md", ".github/workflows/ci.yml", "pyproject.toml")] == [
        "source", "test", "test", "test", "docs", "docs", "ci", "other"]
    reason = lambda kinds, **kw: skip_reason(kinds, kw.get("binary", False), kw.get("lines", 10), 10, 500,  # noqa: E731
                                             kw.get("runnable", ["tests/test_a.py"]))
    assert reason({"docs": ["README.md"], "ci": [".github/x.yml"]}) == "docs_only"
    assert reason({"ci": [".github/x.yml"]}) == "ci_only"
    assert reason({"other": ["pyproject.toml"]}) == "not_python"
    assert reason({"test": ["tests/test_a.py"]}) == "test_only"
    assert reason({"source": ["a.py"], "docs": ["README.md"]}) == "no_tests"
    assert reason({"source": ["a.py"], "test": ["tests/test_a.py"]}, lines=501) == "too_many_lines"
    assert reason({"source": [f"{n}.py" for n in range(6)], "test": [f"tests/test_{n}.py" for n in range(5)]}) \
        == "too_many_files"
    assert reason({"source": ["a.py"], "test": ["tests/data.txt"]}, runnable=[]) == "no_runnable_tests"
    assert reason({"source": ["a.py"], "test": ["tests/test_a.py"]}, binary=True) == "binary_change"
    assert reason({"source": ["a.py"], "test": ["tests/test_a.py"]}) is None


def run(tests: dict[str, str], resolved: str = "RESOLVED_FULL", **extra) -> dict:
    return {"resolved": resolved, "tests": tests, "reason": "", "apply": {"ok": True}, **extra}


def test_decide_keeps_strict_improvements_only():
    a, b, c = "t.py::a", "t.py::b", "t.py::c"
    kept = decide([run({a: "FAILED", b: "PASSED"})] * 2, [run({a: "PASSED", b: "PASSED", c: "PASSED"})] * 2)
    assert kept == ("kept", "", "", [a, c], [b])  # c is absent before: FAIL_TO_PASS too
    assert decide([run({a: "FAILED", b: "PASSED"})], [run({a: "PASSED", b: "FAILED"})])[1] == "regression"
    assert decide([run({a: "FAILED", b: "PASSED"})], [run({a: "PASSED"})])[1] == "regression"  # b went missing
    assert decide([run({a: "PASSED"})], [run({a: "PASSED"})])[1] == "no_improvement"
    assert decide([run({a: "FAILED"})], [run({a: "SKIPPED"})])[1] == "no_improvement"  # skipped is not passing
    assert decide([run({a: "FAILED"})] * 2, [run({a: "PASSED"}), run({a: "FAILED"})])[1] == "flaky"
    assert decide([run({a: "FAILED"}), run({a: "ERROR"})], [run({a: "PASSED"})] * 2)[1] == "flaky"
    timed_out = run({}, "UNGRADED", reason="the test run timed out after 5 s")
    assert decide([timed_out], [run({a: "PASSED"})])[1] == "timeout"
    missing = run({}, "RESOLVED_NO", tampering=["must-fail canary t.py::x came out MISSING"])
    assert decide([missing], [run({a: "PASSED"})])[1] == "uncollectable_before"
    assert decide([run({a: "FAILED"})], [run({a: "PASSED"}, apply={"ok": False})])[1] == "patch_does_not_apply"


def test_bad_specs_name_file_line_and_key(tmp_path):
    specs = tmp_path / "specs.yaml"
    specs.write_text("swepost/plantedlib:\n  install: [pip install -e .]\n  instal: [oops]\n")
    r = cli(tmp_path / "home", "tasks", "mine", "--repos", REPOS, "--repo", "swepost/plantedlib", "--specs", specs)
    assert r.returncode == 2, r.stderr
    assert f"{specs}:3: swepost/plantedlib.instal: unknown key" in r.stderr and "Traceback" not in r.stderr
    specs.write_text("swepost/plantedlib:\n  install: pip\n  test_cmd: make test\n")
    r = cli(tmp_path / "home", "tasks", "mine", "--repos", REPOS, "--repo", "swepost/plantedlib", "--specs", specs)
    assert r.returncode == 2 and f"{specs}:2: swepost/plantedlib.install" in r.stderr, r.stderr
    specs.write_text("swepost/plantedlib:\n  test_cmd: make test\n")
    r = cli(tmp_path / "home", "tasks", "mine", "--repos", REPOS, "--repo", "swepost/plantedlib", "--specs", specs)
    assert r.returncode == 2 and f"{specs}:2: swepost/plantedlib.test_cmd: " in r.stderr, r.stderr
    specs.write_text("swepost/other: {}\n")
    r = cli(tmp_path / "home", "tasks", "mine", "--repos", REPOS, "--repo", "swepost/plantedlib", "--specs", specs)
    assert r.returncode == 2 and f"{specs}: swepost/plantedlib: no entry for swepost/plantedlib" in r.stderr, r.stderr
    r = cli(tmp_path / "home", "tasks", "mine", "--repos", REPOS, "--repo", "plantedlib", "--since", "March")
    assert r.returncode == 2 and "repo" in r.stderr and "since" in r.stderr, r.stderr


# --- plantedlib: local Ray, kill -9, resume -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """plantedlib mined on a private local Ray (the default), SIGKILLed once a candidate is logged, then the
    same command again: (home, artifact path, report, tasks, work log records, what the killed run had logged)."""
    need_docker_and_ray()
    home = tmp_path_factory.mktemp("mine-planted") / "home"
    args = ["tasks", "mine", "--repos", REPOS, "--repo", "swepost/plantedlib", "--runs", "4", "--workers", "2",
            "--name", "planted", "--json"]
    env = {**os.environ, "SWEPOST_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "swepost", *map(str, args)], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    logged: list[dict] = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            logs = list((home / "work").glob("tasks-mine-*/log.jsonl"))
            if logs:
                logged = [json.loads(x) for x in logs[0].read_text().splitlines() if x.strip()]
                if sum(x["event"] == "executed" for x in logged) >= 1:
                    break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the command, its local Ray and its workers, as a kill -9 of the job
        proc.wait(30)
    before = [x for x in logged if x["event"] == "executed"]
    assert before, "the first run logged no candidate before the deadline"
    r = cli(home, *args)
    path, report, tasks = artifact(home, r)
    yield home, path, report, tasks, work_log(home), before
    subprocess.run([sys.executable, "-m", "swepost", "sandbox", "gc"], env=env, capture_output=True)


@pytest.mark.slow
def test_planted_verdicts(planted):
    _, _, report, tasks, _, _ = planted
    expect = expected("plantedlib")
    got = {v["commit"]: v for v in report["verdicts"]}
    assert set(got) == set(expect)  # every commit HEAD reaches, the pull request's branch commits included
    for sha, e in expect.items():
        verdict, reasons = EXPECT[e["expect"]]
        assert (got[sha]["verdict"], got[sha]["reason"]) in {(verdict, r) for r in reasons}, (e, got[sha])
        if verdict == "kept":
            assert sorted(got[sha]["fail_to_pass"]) == sorted(e["FAIL_TO_PASS"]), e["subject"]
    by_commit = {t["metadata"]["mining"]["commit"]: t for t in tasks}
    assert set(by_commit) == {sha for sha, e in expect.items() if e["expect"] == "fix"}
    for sha, t in by_commit.items():
        assert sorted(t["verify"]["pass_to_pass"]) == sorted(expect[sha]["PASS_TO_PASS"])
        assert t["base_commit"] == t["metadata"]["mining"]["parent"] and t["patch"] and t["test_patch"]
        assert "tests/" not in t["patch"] and "plantedlib/" not in t["test_patch"]
        mining = t["metadata"]["mining"]
        assert mining["problem_statement_source"] == "commit_message" and t["problem_statement"]
        assert len(mining["before"]) == len(mining["after"]) == 4  # the raw runs of both sides, kept
    merge = next(sha for sha, e in expect.items() if e["subject"].startswith("Merge pull request"))
    assert by_commit[merge]["metadata"]["mining"]["merge"] is True
    assert report["skipped"]["test_only"] == 3 and report["rejected"] == {"regression": 2, "no_improvement": 1,
                                                                         "flaky": 1}
    assert report["profiles"]["used"] == len(report["per_window"]) and report["profiles"]["reuse_ratio"] == round(
        report["executed"] / report["profiles"]["used"], 3)
    assert report["per_repo"]["swepost/plantedlib"]["kept"] == 5


@pytest.mark.slow
def test_kill_9_then_the_same_command_executes_each_candidate_once(planted):
    _, _, report, _, log, before = planted
    executed = Counter(x["id"] for x in log if x["event"] == "executed")
    assert set(executed.values()) == {1} and len(executed) == report["candidates"] == report["executed"]
    assert report["resumed"] == len(before)  # what the killed run finished was not run again
    assert {x["id"] for x in before} <= set(executed)


@pytest.mark.slow
def test_planted_tasks_pass_validate(planted):
    home, path, _, tasks, _, _ = planted
    r = cli(home, "tasks", "validate", path, "--repos", REPOS, "--jobs", "2", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["stats"]["tasks"] == len(tasks) == 5 and out["stats"]["dropped"] == 0, r.stderr
    assert out["stats"]["tests_removed"] == 0, r.stderr


@pytest.mark.slow
def test_problem_statements_from_an_endpoint(planted, tmp_path):
    """The same command with an LLM endpoint: nothing is executed again, each kept task gets the LLM's issue; a
    reply that names a failing test is asked again with the reminder."""
    from openai_server import ScriptedChatServer

    home, _, _, _, _, _ = planted
    clean = "merge() and friends misbehave\n\nCalling the library with these inputs gives the wrong result."
    leaky = "These fail: " + ", ".join(t for e in expected("plantedlib").values() for t in e["FAIL_TO_PASS"])
    with ScriptedChatServer([{"content": leaky}], default={"content": clean}) as server:
        r = cli(home, "tasks", "mine", "--repos", REPOS, "--repo", "swepost/plantedlib", "--runs", "4",
                "--name", "planted-llm", "--model", "scripted-model", "--base-url", server.base_url, "--json")
        _, report, tasks = artifact(home, r)
    assert report["resumed"] == report["candidates"]  # the statements are new; no candidate ran again
    assert {t["problem_statement"] for t in tasks} == {clean}
    assert {t["metadata"]["mining"]["problem_statement_source"] for t in tasks} == {"llm"}
    assert len(server.requests) == len(tasks) + 1
    asked_again = [q for q in server.requests if len(q["messages"]) == 3]
    assert len(asked_again) == 1 and "never name tests" in asked_again[0]["messages"][2]["content"]
    prompt = server.requests[0]["messages"][0]["content"]
    assert "Never name or quote the tests" in prompt and "```diff" in prompt


# --- minicalc's fixes on a Ray cluster of our own -------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """`ray start --head` of our own, on ports of our own, in its own session: stopping it (SIGTERM to --block)
    stops this cluster only, where `ray stop --force` would stop every cluster on the machine."""
    need_docker_and_ray()
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        require_or_skip("no ray command beside the interpreter")
    folder = tmp_path_factory.mktemp("ray")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    log = folder / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--num-cpus", "2", "--disable-usage-stats",
                                 "--include-dashboard=false", f"--port={port}", f"--dashboard-port={free_port()}",
                                 f"--dashboard-agent-listen-port={free_port()}"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 90
    while "Ray runtime started" not in log.read_text():
        if head.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the Ray head did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(10)


@pytest.fixture(scope="module")
def minicalc(ray_cluster, tmp_path_factory):
    home = tmp_path_factory.mktemp("mine-minicalc") / "home"
    r = cli(home, "tasks", "mine", "--repos", REPOS, "--repo", "swepost/minicalc-history", "--since", MINICALC_SINCE,
            "--runs", "1", "--ray", "auto", "--name", "minicalc-mined", "--json", env=ray_cluster)
    path, report, tasks = artifact(home, r)
    return home, path, report, tasks


@pytest.mark.slow
def test_minicalc_fixes_are_the_bundled_tasks(minicalc):
    _, _, report, tasks = minicalc
    expect = {sha: e for sha, e in expected("minicalc-history").items() if e["date"][:10] >= MINICALC_SINCE}
    got = {v["commit"]: v for v in report["verdicts"]}
    assert set(got) == set(expect)
    for sha, e in expect.items():
        verdict, reasons = EXPECT[e["expect"]]
        assert (got[sha]["verdict"], got[sha]["reason"]) in {(verdict, r) for r in reasons}, (e, got[sha])
    bundled = [json.loads(line) for line in (REPO_ROOT / "data" / "minicalc_tasks.jsonl").read_text().splitlines()]
    for b in bundled:  # SWE-bench ships the lists as JSON strings
        b["FAIL_TO_PASS"] = json.loads(b["FAIL_TO_PASS"]) if isinstance(b["FAIL_TO_PASS"], str) else b["FAIL_TO_PASS"]
    assert sorted(sorted(t["verify"]["fail_to_pass"]) for t in tasks) == sorted(
        sorted(b["FAIL_TO_PASS"]) for b in bundled)
    for t in tasks:  # the gold patch and the hidden tests are the bundled task's, line for line
        twin = next(b for b in bundled if sorted(b["FAIL_TO_PASS"]) == sorted(t["verify"]["fail_to_pass"]))
        assert _changed_lines(t["patch"]) == _changed_lines(twin["patch"])
        assert _changed_lines(t["test_patch"]) == _changed_lines(twin["test_patch"])
        assert t["repo"] == "swepost/minicalc-history" and f"{t['repo']}:{t['version']}" in report["per_window"]
    assert report["profiles"]["used"] == 2 and report["profiles"]["reuse_ratio"] == 3.5  # 2025Q1 and 2025Q2


def _changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]


@pytest.mark.slow
def test_minicalc_tasks_pass_validate(minicalc):
    home, path, _, tasks = minicalc
    r = cli(home, "tasks", "validate", path, "--repos", REPOS, "--jobs", "2", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["stats"]["tasks"] == len(tasks) == 7 and out["stats"]["dropped"] == 0, r.stderr


# --- what goes wrong is recorded per candidate, and mining goes on ---------------------------------------------------

@pytest.mark.slow
def test_a_failed_environment_and_a_timeout_are_verdicts(tmp_path):
    """Two repos (the same history under two names): one whose install command fails, one whose test runs time
    out. Each candidate is rejected with its reason; the run itself succeeds."""
    need_docker_and_ray()
    mirrors = tmp_path / "repos"
    mirrors.mkdir()
    for name in ("acme__broken", "acme__slow"):
        shutil.copyfile(REPOS / "swepost__plantedlib.bundle", mirrors / f"{name}.bundle")
    specs = tmp_path / "specs.yaml"
    specs.write_text("acme/broken:\n  install: ['echo no such package >&2; exit 3']\nacme/slow: {}\n")
    home = tmp_path / "home"
    r = cli(home, "tasks", "mine", "--repos", mirrors, "--specs", specs, "--since", "2025-02-21", "--until",
            "2025-02-21", "--runs", "1", "--set", "timeout=0.05", "--json")
    _, report, tasks = artifact(home, r)
    assert tasks == [] and report["candidates"] == 2
    verdicts = {v["repo"]: v for v in report["verdicts"]}
    assert verdicts["acme/broken"]["reason"] == "environment_failed"
    assert "exit 3" in verdicts["acme/broken"]["detail"] and "no such package" in verdicts["acme/broken"]["detail"]
    assert verdicts["acme/slow"]["reason"] == "timeout"
    assert report["rejected"] == {"environment_failed": 1, "timeout": 1} and report["profiles"]["failed"] == 1
