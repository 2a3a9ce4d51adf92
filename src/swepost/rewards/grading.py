"""The test grader: is a candidate diff a fix? Judged in a fresh sandbox, from the diff alone.

The grading policy, in order (each step is recorded in the evidence):
1. A fresh sandbox from the task's image or mirror, at `base_commit`; never the agent's live sandbox.
2. The candidate diff is applied with `git apply`, else `patch --fuzz=3`; a diff that applies neither
   way is unresolved, with the reason and the apply log.
3. Test infrastructure the candidate touched is put back to its base state: any `conftest.py`,
   `pytest.ini`, `.pytest.ini`, `tox.ini`, `sitecustomize.py`, `usercustomize.py` and `*.pth` (added files
   are deleted), and `setup.cfg` / `pyproject.toml` when the candidate changed their pytest sections
   (`[tool:pytest]`, `[pytest]`, `[tool.pytest...]`; other edits to those files are kept).
4. Every test file named by the task's test patch or its FAIL_TO_PASS / PASS_TO_PASS ids is restored to
   its base state (edited or deleted tests come back), then the test patch is applied over it.
5. The test files run under pytest with PYTEST_ADDOPTS / PYTEST_PLUGINS unset and swepost's report
   plugin loaded: statuses come from pytest's own report objects, written as JSON to a path the code
   under test is not told. Stdout is kept as evidence only, never parsed.
6. A FAIL_TO_PASS or PASS_TO_PASS test that is skipped, xfailed, errored or missing counts as not passing;
   a run that leaves no report (crash, os._exit) or collects nothing grades as unresolved.
Result: RESOLVED_FULL (all pass), RESOLVED_PARTIAL (all PASS_TO_PASS and some FAIL_TO_PASS pass) or
RESOLVED_NO; the reward is 1.0 only for RESOLVED_FULL.
"""

from __future__ import annotations

import json
import re
import shlex
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from swepost.records import Task

PASSING = ("PASSED", "XPASS")
INFRA_FILES = {"conftest.py", "pytest.ini", ".pytest.ini", "tox.ini", "sitecustomize.py", "usercustomize.py"}
PYTEST_SECTIONS = {"setup.cfg": re.compile(r"^\[(tool:pytest|pytest)\]"),
                   "pyproject.toml": re.compile(r"^\[tool\.pytest")}
PLUGIN = (Path(__file__).parent / "pytest_report.py").read_text()
GRADER_DIR = "/tmp/.swepost-grade"


@dataclass
class GradeResult:
    instance_id: str
    resolved: str  # RESOLVED_FULL | RESOLVED_PARTIAL | RESOLVED_NO
    reward: float
    reason: str = ""
    tests: dict[str, str] = field(default_factory=dict)  # every FAIL_TO_PASS / PASS_TO_PASS id -> status
    fail_to_pass: dict[str, list[str]] = field(default_factory=dict)  # {"passed": [...], "failed": [...]}
    pass_to_pass: dict[str, list[str]] = field(default_factory=dict)
    apply: dict = field(default_factory=dict)  # method, ok, log
    neutralised: list[str] = field(default_factory=list)
    exit_code: int | None = None
    collected: int = 0
    output_tail: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.resolved == "RESOLVED_FULL"

    def to_dict(self) -> dict:
        return asdict(self)


def split_status(ids: list[str], statuses: dict[str, str]) -> dict[str, list[str]]:
    return {"passed": [t for t in ids if statuses.get(t) in PASSING],
            "failed": [t for t in ids if statuses.get(t) not in PASSING]}


def decide(task: Task, statuses: dict[str, str]) -> tuple[str, str]:
    """(resolution, reason) from per-test statuses, SWE-bench's definitions."""
    f2p = split_status(task.verify.fail_to_pass, statuses)
    p2p = split_status(task.verify.pass_to_pass, statuses)
    if not f2p["failed"] and not p2p["failed"]:
        return "RESOLVED_FULL", ""
    parts = []
    for kind, bad in (("FAIL_TO_PASS", f2p["failed"]), ("PASS_TO_PASS", p2p["failed"])):
        if bad:
            shown = ", ".join(f"{t} ({statuses.get(t, 'MISSING')})" for t in bad[:5])
            parts.append(f"{kind} not passing: {shown}" + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
    reason = "; ".join(parts)
    if not p2p["failed"] and f2p["passed"]:
        return "RESOLVED_PARTIAL", reason
    return "RESOLVED_NO", reason


def graded_test_files(task: Task) -> list[str]:
    """Files the grader owns: those the test patch touches and those holding the graded tests."""
    files = set(re.findall(r"^diff --git a/(\S+) b/", task.test_patch, flags=re.M))
    files |= set(re.findall(r"^\+\+\+ b/(\S+)", task.test_patch, flags=re.M))
    for test_id in task.verify.fail_to_pass + task.verify.pass_to_pass:
        files.add(test_id.split("::", 1)[0])
    return sorted(f for f in files if f and f != "/dev/null")


def grade_in_sandbox(box, task: Task, patch: str, *, timeout: float = 1800.0) -> GradeResult:
    """Grade `patch` for `task` in `box`, a fresh sandbox holding the repo at base_commit (see module doc)."""
    started = time.monotonic()
    result = GradeResult(task.instance_id, "RESOLVED_NO", 0.0)
    repo = shlex.quote(box.workdir)

    def sh(command: str, limit: float = 300.0):
        return box.run(f"cd {repo} && {command}", timeout=limit)

    box.run(f"mkdir -p {GRADER_DIR}")
    box.write_file(f"{GRADER_DIR}/swepost_grade_report.py", PLUGIN)
    base = sh("git rev-parse HEAD").output.strip()
    before = set(sh("git status --porcelain --untracked-files=all").output.splitlines())

    # 2. the candidate
    if patch.strip():
        box.write_file(f"{GRADER_DIR}/candidate.diff", patch if patch.endswith("\n") else patch + "\n")
        applied = sh(f"git apply --verbose {GRADER_DIR}/candidate.diff")
        result.apply = {"method": "git apply", "ok": applied.exit_code == 0, "log": applied.output[-4000:]}
        if applied.exit_code != 0:
            fuzzy = sh(f"patch --batch --forward --fuzz=3 -p1 -i {GRADER_DIR}/candidate.diff")
            result.apply = {"method": "patch --fuzz=3", "ok": fuzzy.exit_code == 0,
                            "log": (applied.output + "\n--- fallback ---\n" + fuzzy.output)[-4000:]}
            if fuzzy.exit_code != 0:
                result.reason = "the candidate diff does not apply"
                result.seconds["total"] = round(time.monotonic() - started, 3)
                return result
    else:
        result.apply = {"method": None, "ok": True, "log": "empty patch"}

    # 3. test infrastructure back to base
    after = sh("git status --porcelain --untracked-files=all").output.splitlines()
    changed = sorted({line[3:].split(" -> ")[-1].strip('"') for line in after if line not in before})
    for path in changed:
        name = path.rsplit("/", 1)[-1]
        if name in INFRA_FILES or name.endswith(".pth") or (
                name in PYTEST_SECTIONS and path == name and _pytest_section_changed(box, sh, base, path)):
            _restore(sh, base, path)
            result.neutralised.append(path)

    # 4. the task's tests, as the task defines them
    for path in graded_test_files(task):
        _restore(sh, base, path)
    if task.test_patch.strip():
        box.write_file(f"{GRADER_DIR}/test.diff", task.test_patch)
        applied = sh(f"git apply {GRADER_DIR}/test.diff")
        if applied.exit_code != 0:
            result.reason = f"the task's test patch does not apply (broken task): {applied.output[-500:]}"
            return result
    result.seconds["prepare"] = round(time.monotonic() - started, 3)

    # 5. run
    report = f"{GRADER_DIR}/report-{uuid.uuid4().hex}.json"
    files = sorted({t.split("::", 1)[0] for t in task.verify.fail_to_pass + task.verify.pass_to_pass})
    runner = task.env.test_cmd or "python3 -m pytest"
    run_started = time.monotonic()
    ran = sh(f"env -u PYTEST_ADDOPTS -u PYTEST_PLUGINS PYTHONDONTWRITEBYTECODE=1 "
             f"PYTHONPATH={GRADER_DIR}${{PYTHONPATH:+:$PYTHONPATH}} {runner} -p swepost_grade_report "
             f"--swepost-report={report} -p no:cacheprovider -rA {' '.join(map(shlex.quote, files))}",
             limit=timeout)
    result.seconds["tests"] = round(time.monotonic() - run_started, 3)
    result.exit_code, result.output_tail = ran.exit_code, ran.output[-4000:]
    try:
        data = json.loads(box.read_file(report))
    except Exception:  # noqa: BLE001 - no report is itself the verdict
        data = None

    # 6. verdict
    graded = task.verify.fail_to_pass + task.verify.pass_to_pass
    statuses = (data or {}).get("tests", {})
    result.tests = {t: statuses.get(t, "MISSING") for t in graded}
    result.fail_to_pass = split_status(task.verify.fail_to_pass, statuses)
    result.pass_to_pass = split_status(task.verify.pass_to_pass, statuses)
    result.collected = (data or {}).get("collected", 0)
    if ran.timed_out:
        result.reason = f"the test run timed out after {timeout:g} s"
    elif data is None:
        result.reason = f"the test run left no report (crashed or exited early; exit code {ran.exit_code})"
    elif result.collected == 0:
        result.reason = "the test run collected no tests"
    else:
        result.resolved, result.reason = decide(task, statuses)
    result.reward = 1.0 if result.resolved == "RESOLVED_FULL" else 0.0
    result.seconds["total"] = round(time.monotonic() - started, 3)
    return result


def _restore(sh, base: str, path: str) -> None:
    """Put `path` back as it was at `base`: checked out if it existed, removed if it did not."""
    quoted = shlex.quote(path)
    if sh(f"git cat-file -e {base}:{quoted}").exit_code == 0:
        sh(f"git checkout {base} -- {quoted}")
    else:
        sh(f"rm -rf -- {quoted}")


def _pytest_section_changed(box, sh, base: str, path: str) -> bool:
    old = sh(f"git show {base}:{shlex.quote(path)}").output if sh(
        f"git cat-file -e {base}:{shlex.quote(path)}").exit_code == 0 else ""
    try:
        new = box.read_file(f"{box.workdir}/{path}").decode(errors="replace")
    except Exception:  # noqa: BLE001 - deleted: nothing of it can configure pytest any more
        new = ""
    return _section(old, PYTEST_SECTIONS[path]) != _section(new, PYTEST_SECTIONS[path])


def _section(text: str, header: re.Pattern) -> str:
    """The text of every section whose header matches, up to the next header."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("["):
            inside = bool(header.match(line))
        if inside:
            out.append(line.rstrip())
    return "\n".join(out)


def grade_patch(task: Task, patch: str, *, repos: str | Path | None = None, backend: str = "auto",
                timeout: float = 1800.0) -> GradeResult:
    """Grade one diff for one task in a fresh sandbox made for this grading alone."""
    from swepost.sandbox.task_sandbox import open_task_sandbox

    with open_task_sandbox(task, repos=repos, backend=backend) as box:
        return grade_in_sandbox(box, task, patch, timeout=timeout)
