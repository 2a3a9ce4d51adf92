"""The test grader: is a candidate diff a fix? Judged in a fresh sandbox, from the diff alone, trusting nothing
the code under test can touch.

The grading policy, in order (each step is recorded in the evidence):
1. A fresh sandbox from the task's image or mirror, at `base_commit`; never the agent's live sandbox. The
   grader's files live in a private folder with a random name (made for this grading, removed after it), so
   concurrent gradings on one host never share state. Every grader command is a fresh process with a clean
   environment (`Sandbox.exec`), and every git command runs with hooks, fsmonitor, external diff and global /
   system config off.
2. The candidate diff is refused outright if any path in it reaches into `.git/`, is absolute or climbs out
   with `..` (a fuzzy `patch` would write hooks or config there). Otherwise it is applied with `git apply`,
   else `patch --fuzz=3`; a diff that applies neither way is unresolved, with the reason and the apply log.
3. Test infrastructure the candidate touched, at any depth, is put back as it was in the fresh sandbox (from
   a copy taken before the diff went in, so files dirty at base and files git ignores count too): any
   `conftest.py`, `pytest.ini`, `.pytest.ini`, `pytest.toml`, `.pytest.toml`, `sitecustomize.py`,
   `usercustomize.py`, `*.pth`, anything in `*.egg-info/` or `*.dist-info/` (entry points load plugins), and
   `setup.cfg` / `tox.ini` / `pyproject.toml` when the candidate changed their pytest sections. Touched means
   named anywhere in the diff's headers or changed in `git status --ignored` after applying.
4. Whole test folders are put back the same way: the folder (`tests/`, `testing/`, `pkg/tests/` ...) of every
   test file the task's test patch or its test ids name, helpers, fixtures, data and `__init__.py` included;
   then the test patch is applied over them.
5. Canary tests (`rewards/canaries.py`) are appended to the graded test files.
6. The tests run under `rewards/test_runner.py`: pytest taken from the interpreter's own packages before the
   repository is importable, the report plugin handed in as an object, integrity checks on pytest's internals,
   the tests as the sandbox's unprivileged uid, results over a pipe to a parent process that writes the report
   and prints its hash behind a nonce. Stdout is evidence only, never parsed.
7. Verdict. UNGRADED (reward None, never a wrong answer) when the sandbox failed, the run timed out or hit the
   memory limit. RESOLVED_NO with reason `runner tampering` when the report's hash does not match, a test was
   reported twice, an integrity check tripped or a canary came out wrong; RESOLVED_NO when the test process
   died before the session finished or collected nothing. Otherwise SWE-bench's definitions: a
   FAIL_TO_PASS or PASS_TO_PASS test that is skipped, xfailed, errored or missing counts as not passing.
Result: RESOLVED_FULL (all pass), RESOLVED_PARTIAL (all PASS_TO_PASS and some FAIL_TO_PASS pass), RESOLVED_NO
or UNGRADED; the reward is 1.0 only for RESOLVED_FULL, None for UNGRADED, else 0.0.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from swepost.records import Task

PASSING = ("PASSED", "XPASS")
GRADE_TIMEOUT = 1800.0  # seconds for the graded test run when the task sets no verify.timeout (SWE-bench's)
INFRA_FILES = {"conftest.py", "pytest.ini", ".pytest.ini", "pytest.toml", ".pytest.toml", "sitecustomize.py",
               "usercustomize.py"}
PYTEST_SECTIONS = {"setup.cfg": re.compile(r"^\[(tool:pytest|pytest)\]"),
                   "tox.ini": re.compile(r"^\[pytest\]"),
                   "pyproject.toml": re.compile(r"^\[tool\.pytest")}
TEST_DIR_NAMES = {"test", "tests", "testing"}
# The grader's defences, each named so the tests can switch one off and watch the attack it stops succeed
# (tests/test_grader_attacks.py). Production code never changes this set.
DEFENCES = frozenset({"refuse_git_paths", "change_detection", "config_anywhere", "restore_test_dirs", "canaries",
                      "integrity", "safe_path", "drop_uid", "report_hash"})
_active: frozenset[str] = DEFENCES
RUNNER = (Path(__file__).parent / "test_runner.py").read_text()
# every git command the grader runs: no hooks (post-checkout would run at our checkout), no fsmonitor command,
# no external diff, no global or system config; the repository is the sandbox user's, root may still read it
GIT = ("GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_TERMINAL_PROMPT=0 git -c core.hooksPath=/dev/null "
       "-c core.fsmonitor=false -c core.untrackedCache=false -c diff.external= -c core.attributesFile=/dev/null "
       "-c 'safe.directory=*' -c advice.detachedHead=false")

@dataclass
class GradeResult:
    instance_id: str
    resolved: str  # RESOLVED_FULL | RESOLVED_PARTIAL | RESOLVED_NO | UNGRADED
    reward: float | None  # None: UNGRADED, an infrastructure failure, never a wrong answer
    reason: str = ""
    tests: dict[str, str] = field(default_factory=dict)  # every FAIL_TO_PASS / PASS_TO_PASS id -> status
    fail_to_pass: dict[str, list[str]] = field(default_factory=dict)  # {"passed": [...], "failed": [...]}
    pass_to_pass: dict[str, list[str]] = field(default_factory=dict)
    apply: dict = field(default_factory=dict)  # method, ok, log
    neutralised: list[str] = field(default_factory=list)
    tampering: list[str] = field(default_factory=list)  # what gave the runner away, when something did
    canaries: dict[str, str] = field(default_factory=dict)  # canary id -> status
    test_uid: int | None = None
    exit_code: int | None = None
    collected: int = 0
    output_tail: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    all_tests: dict[str, str] = field(default_factory=dict)  # every test run, canaries left out: a run of given
    # test_files only (mining), where no FAIL_TO_PASS / PASS_TO_PASS list exists yet

    @property
    def ok(self) -> bool:
        return self.resolved == "RESOLVED_FULL"

    @property
    def ungraded(self) -> bool:
        return self.resolved == "UNGRADED"

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


def folders_to_restore(files: list[str]) -> tuple[list[str], list[str]]:
    """(folders, files) to put back whole: the test folder (`tests/`, `pkg/tests/`, `testing/` ...) holding each
    graded file, or the file alone when it lives beside source code (its folder may hold the fix)."""
    folders, singles = set(), set()
    for path in files:
        parts = path.split("/")[:-1]
        cut = next((i for i, part in enumerate(parts) if part.lower() in TEST_DIR_NAMES
                    or part.lower().startswith("test")), None)
        if cut is None:
            singles.add(path)
        else:
            folders.add("/".join(parts[:cut + 1]))
    folders = {f for f in folders if not any(f.startswith(g + "/") for g in folders)}
    singles = {s for s in singles if not any(s.startswith(g + "/") for g in folders)}
    return sorted(folders), sorted(singles)


_HEADER = re.compile(r"^(?:diff --git (?P<a>\S+) (?P<b>\S+)|--- (?P<minus>[^\t\n]+)|\+\+\+ (?P<plus>[^\t\n]+)"
                     r"|\*\*\* (?P<ctx>[^\t\n]+?)(?:\t.*)?|Index: (?P<index>\S+)|(?:rename|copy) (?:from|to) (?P<mv>.+)"
                     r")$", re.M)


def diff_paths(patch: str) -> tuple[set[str], list[str]]:
    """Every path a diff names in any header form git or GNU patch reads (prefix stripped as -p1 does), and
    the ones the grader refuses: into `.git/`, absolute, or climbing out with `..`."""
    paths, refused = set(), []
    for m in _HEADER.finditer(patch):
        for key, raw in m.groupdict().items():
            if raw is None:
                continue
            raw = raw.strip().strip('"')
            if raw in ("/dev/null", "") or (key == "ctx" and raw.startswith("*")):
                continue
            path = raw.split("/", 1)[1] if key in ("a", "b", "minus", "plus", "ctx") and "/" in raw else raw
            parts = [p for p in re.split(r"[\\/]+", path)]
            if raw.startswith("/") or ".." in parts or any(p.lower().rstrip(". ") == ".git" for p in parts) or any(
                    p.lower().rstrip(". ") == ".git" for p in re.split(r"[\\/]+", raw)):
                refused.append(raw)
            else:
                paths.add(path.strip("/"))
    return paths, sorted(set(refused))


def _is_infra(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    parts = path.split("/")
    if "config_anywhere" not in _active and "/" in path and name != "conftest.py":
        return False
    return (name in INFRA_FILES or name.endswith(".pth")
            or any(p.endswith((".egg-info", ".dist-info")) for p in parts[:-1]))


def _has_sections(path: str) -> bool:
    return path.rsplit("/", 1)[-1] in PYTEST_SECTIONS and ("config_anywhere" in _active or "/" not in path)


def pytest_command(task: Task) -> tuple[str, list[str], dict[str, str]]:
    """(python, extra pytest args, extra env) from the task's test command, which must be a pytest invocation:
    `[VAR=x ...] PYTHON -m pytest [args]` or `[VAR=x ...] pytest [args]` (the interpreter is then the script's)."""
    from swepost.errors import BadInput

    words = shlex.split(task.env.test_cmd or "python3 -m pytest")
    env = {}
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if len(words) >= 3 and words[1] == "-m" and words[2] in ("pytest", "py.test"):
        return words[0], words[3:], env
    if words and words[0].rsplit("/", 1)[-1] in ("pytest", "py.test"):
        return "@" + words[0], words[1:], env  # resolved inside the sandbox from the script's shebang
    raise BadInput(f"{task.instance_id}: test_cmd {task.env.test_cmd!r} is not a pytest invocation "
                   "(`python -m pytest ...` or `pytest ...`): the grader runs pytest itself", key="env.test_cmd")


class _Grading:
    """One grading's state: the sandbox, its private folders, the environment its processes get."""

    def __init__(self, box, task: Task, timeout: float):
        self.box, self.task, self.timeout = box, task, timeout
        self.repo = shlex.quote(box.workdir)
        token = uuid.uuid4().hex
        self.private = f"/tmp/.swepost-grade-{token}"  # runner, config, report: the sandbox user cannot enter
        self.shared = f"/tmp/.swepost-grade-{token}-in"  # diffs and snapshots the sandbox user's git reads
        self.has_exec = callable(getattr(box, "exec", None))
        self.env = box.image_env()

    def sh(self, command: str, limit: float = 300.0, user: str = "sandbox"):
        """A fresh process in the repository (never the persistent shell, whose state a candidate could shape)."""
        if self.has_exec:
            return self.box.exec(f"cd {self.repo} && {command}", timeout=limit, env=self.env, user=user)
        return self.box.run(f"cd {self.repo} && {command}", timeout=limit)

    def root(self, command: str, limit: float = 120.0):
        if self.has_exec:
            return self.box.exec(command, timeout=limit, env=self.env, user="root")
        return self.box.run(command, timeout=limit)

    def git(self, args: str, limit: float = 300.0):
        return self.sh(f"{GIT} {args}", limit)

    def status(self) -> set[str]:
        """Every path git sees as changed, new or ignored-but-present (porcelain v1, NUL separated)."""
        ignored = " --ignored=matching" if "change_detection" in _active else ""
        out = self.git(f"status --porcelain=v1 -z --untracked-files=all{ignored}").output
        entries, parts = set(), out.split("\0")
        i = 0
        while i < len(parts):
            entry = parts[i]
            if len(entry) > 3:
                entries.add(entry)
                if entry[0] in "RC":  # a rename/copy carries its source next
                    i += 1
            i += 1
        return entries

    def snapshot(self, paths: list[str]) -> dict[str, bool]:
        """Copy each path (file or folder) aside as it is now; path -> whether it existed."""
        existed = {}
        for path in paths:
            q = shlex.quote(path)
            r = self.sh(f"if [ -e {q} ] || [ -L {q} ]; then mkdir -p {self.shared}/snap/$(dirname {q}) && "
                        f"cp -a {q} {self.shared}/snap/{q} && echo yes; else echo no; fi")
            existed[path] = r.output.strip().endswith("yes")
        return existed

    def put_back(self, path: str, existed: bool) -> None:
        q = shlex.quote(path)
        restore = f" && mkdir -p $(dirname {q}) && cp -a {self.shared}/snap/{q} {q}" if existed else ""
        self.sh(f"rm -rf -- {q}{restore}")


def grade_in_sandbox(box, task: Task, patch: str, *, timeout: float = GRADE_TIMEOUT,
                     test_files: list[str] | None = None) -> GradeResult:
    """Grade `patch` for `task` in `box`, a fresh sandbox holding the repo at base_commit (see module doc).
    `test_files`: run these files instead of those the task's test ids name, and keep every test's status in
    `all_tests` (task mining: the ids are what the run finds out)."""
    from swepost.sandbox.base import SandboxError

    started = time.monotonic()
    result = GradeResult(task.instance_id, "RESOLVED_NO", 0.0)
    g = None
    try:
        g = _Grading(box, task, timeout)
        _grade(g, task, patch, result, test_files)
    except SandboxError as e:
        result.resolved, result.reward = "UNGRADED", None
        result.reason = f"the grading sandbox failed: {e}"
    finally:
        if g is not None and not box.closed:
            try:
                g.root(f"rm -rf {g.private} {g.shared}", 60)
            except SandboxError:
                pass
    if result.resolved == "UNGRADED":
        result.reward = None
    elif result.resolved != "RESOLVED_FULL":
        result.reward = 0.0
    else:
        result.reward = 1.0
    result.seconds["total"] = round(time.monotonic() - started, 3)
    return result


def _grade(g: _Grading, task: Task, patch: str, result: GradeResult, test_files: list[str] | None = None) -> None:
    from swepost.rewards.canaries import Canaries, make_canaries

    started = time.monotonic()
    box = g.box
    g.root(f"mkdir -m 700 {g.private} && mkdir -m 755 {g.shared}")
    if g.has_exec:  # the sandbox user's git must read what goes in here
        g.root(f"chown {box.info.get('shell_uid', 0)}:{box.info.get('shell_gid', box.info.get('shell_uid', 0))} "
               f"{g.shared} 2>/dev/null || chmod 777 {g.shared}")

    # 2. the candidate: refused if it reaches into .git/, else applied
    touched, refused = diff_paths(patch)
    if "change_detection" not in _active:
        touched = set()
    if refused and "refuse_git_paths" in _active:
        result.reason = f"the candidate diff writes into .git/ or outside the repository: {', '.join(refused[:5])}"
        result.apply = {"method": None, "ok": False, "log": "refused before applying"}
        return
    folders, singles = folders_to_restore(graded_test_files(task))
    if "restore_test_dirs" not in _active:
        folders, singles = [], graded_test_files(task)
    infra_touched = sorted(p for p in touched if _is_infra(p) or _has_sections(p))
    keep = sorted(set(folders) | set(singles) | set(infra_touched))
    existed = g.snapshot(keep)
    before = g.status()
    if patch.strip():
        box.write_file(f"{g.shared}/candidate.diff", patch if patch.endswith("\n") else patch + "\n", mode=0o644)
        applied = g.git(f"apply --verbose {g.shared}/candidate.diff")
        result.apply = {"method": "git apply", "ok": applied.exit_code == 0, "log": applied.output[-4000:]}
        if applied.exit_code != 0:
            fuzzy = g.sh(f"patch --batch --forward --fuzz=3 -p1 --no-backup-if-mismatch -r - "
                         f"-i {g.shared}/candidate.diff")
            result.apply = {"method": "patch --fuzz=3", "ok": fuzzy.exit_code == 0,
                            "log": (applied.output + "\n--- fallback ---\n" + fuzzy.output)[-4000:]}
            if fuzzy.exit_code != 0:
                result.reason = "the candidate diff does not apply"
                return
    else:
        result.apply = {"method": None, "ok": True, "log": "empty patch"}

    # 3. test infrastructure back as it was, wherever it is, tracked, ignored or dirty at base
    changed = {entry[3:].strip('"') for entry in g.status() - before}
    for path in sorted(changed - set(keep)):
        # what the headers did not show (fuzzy patch, odd header forms): new, since it was not there before
        if _is_infra(path) or (_has_sections(path) and _pytest_section_changed(g, path, False)):
            g.put_back(path, False)
            result.neutralised.append(path)
    for path in infra_touched:
        if _has_sections(path) and not _is_infra(path) and not _pytest_section_changed(g, path, existed[path]):
            continue
        g.put_back(path, existed[path])
        result.neutralised.append(path)

    # 4. whole test folders as they were, then the task's test patch
    for path in keep:
        if path in folders or path in singles:
            g.put_back(path, existed[path])
    if task.test_patch.strip():
        box.write_file(f"{g.shared}/test.diff", task.test_patch, mode=0o644)
        applied = g.git(f"apply {g.shared}/test.diff")
        if applied.exit_code != 0:
            result.resolved, result.reason = "UNGRADED", (
                f"the task's test patch does not apply (broken task): {applied.output[-500:]}")
            return

    # 5. canaries into the graded test files
    files = sorted({t.split("::", 1)[0] for t in task.verify.fail_to_pass + task.verify.pass_to_pass}
                   if test_files is None else set(test_files))
    home = folders[0] if folders else (files[0].rsplit("/", 1)[0] if files and "/" in files[0] else "")
    canaries = make_canaries(files, home)
    if "canaries" not in _active:
        canaries = Canaries(token="")
    for path, text in canaries.texts.items():
        q = shlex.quote(path)
        box.write_file(f"{g.shared}/canary.py", text, mode=0o644)
        if path in canaries.new_files:
            g.sh(f"cp {g.shared}/canary.py {q}")
        else:
            g.sh(f"[ -z \"$(tail -c1 {q})\" ] || echo >> {q}; cat {g.shared}/canary.py >> {q}")
    result.seconds["prepare"] = round(time.monotonic() - started, 3)

    # 6. run
    python, extra, extra_env = pytest_command(task)
    if python.startswith("@"):  # `pytest`: the interpreter its script names
        r = g.sh(f"head -n1 \"$(command -v {shlex.quote(python[1:])})\"")
        line = r.output.strip().splitlines()[0] if r.output.strip() else ""
        words = line[2:].split() if line.startswith("#!") else []
        python = (words[1] if len(words) > 1 and words[0].endswith("/env") else words[0]) if words else "python3"
    nonce = uuid.uuid4().hex
    report_path = f"{g.private}/report-{uuid.uuid4().hex}.json"
    # --rootdir pinned: an ini file the candidate left between the repository and the tests cannot move the ids
    config = {"nonce": nonce, "report": report_path, "args": [*extra, f"--rootdir={box.workdir}", "-p",
                                                              "no:cacheprovider", *files,
                                                              *canaries.new_files],
              "watch": canaries.must_fail, "integrity": "integrity" in _active, "safe_path": "safe_path" in _active,
              "uid": box.info.get("shell_uid") if "drop_uid" in _active else None,
              "gid": box.info.get("shell_gid")}
    runner, config_path = f"{g.private}/run_{nonce[:12]}.py", f"{g.private}/config-{uuid.uuid4().hex}.json"
    box.write_file(runner, RUNNER, mode=0o600)
    box.write_file(config_path, json.dumps(config), mode=0o600)
    run_env = {**g.env, **extra_env}
    command = f"cd {g.repo} && {shlex.quote(python)} {runner} {config_path}"
    run_started = time.monotonic()
    if g.has_exec:
        ran = box.exec(command, timeout=g.timeout, env=run_env, user="root")
    else:
        ran = box.run(command, timeout=g.timeout)
    result.seconds["tests"] = round(time.monotonic() - run_started, 3)
    result.exit_code = ran.exit_code

    # 7. verdict
    if ran.timed_out:
        result.resolved, result.reason = "UNGRADED", f"the test run timed out after {g.timeout:g} s"
        return
    if ran.oom_killed:
        result.resolved, result.reason = "UNGRADED", "the test run hit the sandbox's memory limit"
        return
    frames = re.findall(rf"^{nonce}:([0-9a-f]{{64}}):{nonce}$", ran.output, flags=re.M)
    try:
        raw = box.read_file(report_path)
    except Exception:  # noqa: BLE001 - judged below
        raw = None
    if not frames:
        result.output_tail = ran.output[-4000:]
        if ran.exit_code is not None and ran.exit_code > 128:
            result.reason = f"runner tampering: the grader's runner was killed (signal {ran.exit_code - 128})"
            result.tampering.append(result.reason)
        else:
            result.resolved, result.reason = "UNGRADED", (
                f"the grader's runner left no report (exit code {ran.exit_code}): {ran.output[-300:]}")
        return
    if raw is None or len(frames) != 1 or (hashlib.sha256(raw).hexdigest() != frames[0] and "report_hash" in _active):
        result.tampering.append("the report is not the one the runner wrote")
        result.reason = "runner tampering: the report is not the one the runner wrote"
        return
    data = json.loads(raw)
    statuses = data.get("tests", {})
    graded = task.verify.fail_to_pass + task.verify.pass_to_pass
    result.tests = {t: statuses.get(t, "MISSING") for t in graded}
    result.fail_to_pass = split_status(task.verify.fail_to_pass, statuses)
    result.pass_to_pass = split_status(task.verify.pass_to_pass, statuses)
    result.canaries = {c: statuses.get(c, "MISSING") for c in canaries.ids}
    if test_files is not None:
        result.all_tests = {t: s for t, s in statuses.items() if t not in result.canaries}
    result.collected = data.get("collected") or 0
    result.test_uid = data.get("uid")
    result.output_tail = data.get("output_tail", "")[-4000:]
    tampering = [f"reported twice: {d}" for d in data.get("duplicates", [])[:5]]
    tampering += [f"integrity: {p}" for p in data.get("problems", [])[:10]]
    if data.get("garbage"):
        tampering.append(f"{data['garbage']} records on the results pipe were not the plugin's")
    tampering += canaries.problems(statuses, data.get("texts", {}))
    result.tampering = tampering
    if tampering:
        result.reason = "runner tampering: " + "; ".join(tampering[:3])
    elif not data.get("finished"):
        result.reason = (f"the test process exited before the session finished (exit code {data.get('child_exit')})")
    elif result.collected == 0:
        result.reason = "the test run collected no tests"
    else:
        result.resolved, result.reason = decide(task, statuses)


def _pytest_section_changed(g: _Grading, path: str, existed: bool) -> bool:
    old = g.sh(f"cat {g.shared}/snap/{shlex.quote(path)}").output if existed else ""
    new = g.sh(f"cat {shlex.quote(path)} 2>/dev/null").output
    header = PYTEST_SECTIONS[path.rsplit("/", 1)[-1]]
    return _section(old, header) != _section(new, header)


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
                timeout: float = GRADE_TIMEOUT, limits=None) -> GradeResult:
    """Grade one diff for one task in a fresh sandbox made for this grading alone."""
    from swepost.sandbox.task_sandbox import open_task_sandbox

    with open_task_sandbox(task, repos=repos, backend=backend, limits=limits) as box:
        return grade_in_sandbox(box, task, patch, timeout=timeout)
