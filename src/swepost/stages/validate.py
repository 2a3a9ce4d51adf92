"""Stage `tasks-validate`: keep only tasks whose tests really tell a fix from no fix, reproducibly.

For each task, in fresh sandboxes: with no patch every FAIL_TO_PASS test must fail; with the gold patch
every FAIL_TO_PASS and PASS_TO_PASS test must pass; over `runs` repeats, a test whose status flips is flaky.
Tests that break a rule are removed (with the reason); a task left with no FAIL_TO_PASS test is dropped.
Writes a validated `tasks` artifact whose `validation.json` reports every removal and drop.

Code-QA tasks (kind codeqa) run no tests: a task is kept when its repo and commit exist (in its mirror under
`repos`, or in its image) and it has a reference answer for the judge; else it is dropped with the reason.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from pydantic import Field

from swepost.artifacts import Artifact, ArtifactStore, producer_record
from swepost.config import ArtifactInput, PathInput, StageConfig
from swepost.errors import BadInput, WorkFailed
from swepost.progress import StageBar
from swepost.records import SandboxLimits, Task
from swepost.stages.tasks import TASKS_FILE, load_tasks
from swepost.taskkinds.codeqa import CODEQA

REPORT_FILE = "validation.json"


class TasksValidateConfig(StageConfig):
    NOT_IN_KEY = frozenset({"jobs"})  # speed, not results: a recipe's validation is reused under another -j

    tasks: str = ArtifactInput(description="the tasks artifact to validate")
    repos: Path | None = PathInput(description="mirror folder of owner__name repos (for tasks without an image)")
    name: str = Field("tasks-validated", description="output artifact name")
    runs: int = Field(1, ge=1, le=20, description="repeats of each check; a test that flips is flaky")
    backend: str = Field("auto", description="sandbox backend: auto, docker, bwrap, local")
    jobs: int = Field(2, ge=1, le=64, description="tasks validated at once")
    timeout: float = Field(1800.0, gt=0, description="seconds for one test run (a task's verify.timeout wins)")
    sandbox_limits: SandboxLimits = Field(default_factory=SandboxLimits, description="sandbox limits over every "
                                          "task's own (cpus, memory_mb, pids, disk_mb, timeout_s, network_allow)")


def validate_task(task: Task, config: TasksValidateConfig) -> tuple[Task | None, dict]:
    """The task with its bad tests removed (None if dropped) and the report of what happened and why."""
    from swepost.errors import WorkFailed
    from swepost.rewards.grading import GradeResult, grade_patch

    def grade(patch: str):
        try:
            return grade_patch(task, patch, repos=config.repos, backend=config.backend,
                               timeout=task.verify.timeout or config.timeout, limits=config.sandbox_limits)
        except WorkFailed as e:  # this task's sandbox could not be set up (its install failed): drop it, go on
            return GradeResult(task.instance_id, "UNGRADED", None, reason=str(e)[:1000])

    without = [grade("") for _ in range(config.runs)]
    gold = [grade(task.patch) for _ in range(config.runs)]
    report: dict = {"instance_id": task.instance_id, "removed": [], "runs": config.runs,
                    "gold": [g.resolved for g in gold], "without_patch": [g.resolved for g in without]}
    if any(g.apply.get("ok") is False for g in gold) or "test patch does not apply" in (gold[0].reason or ""):
        report.update(kept=False, reason=f"gold patch or test patch does not apply: {gold[0].reason}")
        return None, report

    ungraded = [g for g in without + gold if g.resolved == "UNGRADED"]
    if ungraded:  # an infrastructure failure says nothing about the tests: no test is removed for it
        report.update(kept=False, reason=f"could not be graded: {ungraded[0].reason}")
        return None, report
    tampered = [g for g in without + gold if g.tampering]
    if tampered:  # the grader's canaries or integrity checks do not hold in this repo: its rewards can't be trusted
        report.update(kept=False, reason=f"the grader cannot trust this task's test runs: {tampered[0].reason}")
        return None, report

    def statuses(results, test_id):
        return [r.tests.get(test_id, "MISSING") for r in results]

    keep_f2p, keep_p2p = [], []
    for test_id in task.verify.fail_to_pass:
        before, after = statuses(without, test_id), statuses(gold, test_id)
        if len(set(before)) > 1 or len(set(after)) > 1:
            report["removed"].append({"test": test_id, "list": "FAIL_TO_PASS", "reason": f"flaky: {before} / {after}"})
        elif before[0] in ("PASSED", "XPASS"):
            report["removed"].append({"test": test_id, "list": "FAIL_TO_PASS", "reason": "passes without the fix"})
        elif after[0] not in ("PASSED", "XPASS"):
            report["removed"].append({"test": test_id, "list": "FAIL_TO_PASS",
                                      "reason": f"does not pass with the gold patch ({after[0]})"})
        else:
            keep_f2p.append(test_id)
    for test_id in task.verify.pass_to_pass:
        after = statuses(gold, test_id)
        if len(set(after)) > 1:
            report["removed"].append({"test": test_id, "list": "PASS_TO_PASS", "reason": f"flaky: {after}"})
        elif after[0] not in ("PASSED", "XPASS"):
            report["removed"].append({"test": test_id, "list": "PASS_TO_PASS",
                                      "reason": f"does not pass with the gold patch ({after[0]})"})
        else:
            keep_p2p.append(test_id)
    if not keep_f2p:
        report.update(kept=False, reason="no FAIL_TO_PASS test left")
        return None, report
    report.update(kept=True, reason="")
    verify = task.verify.model_copy(update={"fail_to_pass": keep_f2p, "pass_to_pass": keep_p2p})
    return task.model_copy(update={"verify": verify}), report


def run_validate(config: TasksValidateConfig, store: ArtifactStore, progress: bool | None = None) -> Artifact:
    """`progress`: a live bar on stderr (default: when stderr is a terminal)."""
    source = store.resolve(config.tasks)
    tasks = load_tasks(source)
    results: list = [None] * len(tasks)
    with CodeqaChecks(config, tasks) as codeqa, \
            _Progress(len(tasks), sys.stderr.isatty() if progress is None else progress) as bar, \
            ThreadPoolExecutor(config.jobs) as pool:
        futures = {pool.submit(codeqa.validate if t.kind == CODEQA.name else validate_task, t, config): n
                   for n, t in enumerate(tasks)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update(kept=results[futures[future]][0] is not None)
    kept = [t for t, _ in results if t is not None]
    reports = [r for _, r in results]
    data = config.model_dump(mode="json")
    data["tasks"] = source.id
    producer = producer_record("tasks-validate", data)
    with store.write(config.name, "tasks", producer=producer, parents=[source.id]) as w:
        with open(w.path / TASKS_FILE, "w") as f:
            for task in kept:
                f.write(json.dumps(task.model_dump(mode="json"), ensure_ascii=False) + "\n")
        (w.path / REPORT_FILE).write_text(json.dumps(reports, indent=2) + "\n")
        w.stats.update({"tasks": len(kept), "dropped": len(tasks) - len(kept),
                        "tests_removed": sum(len(r["removed"]) for r in reports)})
    return w.artifact


# --- code-QA tasks: the repo and commit exist, no tests run -----------------------------------------------------

class CodeqaChecks:
    """Validates codeqa tasks: usable (a reference answer), and the repo at the commit is there to read, in its
    mirror or its image. A bundle mirror is unbundled once per run, whatever the number of tasks on it."""

    def __init__(self, config: TasksValidateConfig, tasks: list[Task]):
        need_mirror = [t for t in tasks if t.kind == CODEQA.name and not t.env.image and t.repo and t.base_commit]
        if need_mirror and config.repos is None:
            raise BadInput(f"{need_mirror[0].instance_id} (codeqa) has no image: give --repos DIR, a folder of "
                           "owner__name repos, to check its repo and commit")
        self.repos = config.repos
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._unbundled: dict[Path, Path] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> CodeqaChecks:
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def validate(self, task: Task, config: TasksValidateConfig) -> tuple[Task | None, dict]:
        report: dict = {"instance_id": task.instance_id, "kind": task.kind, "removed": []}
        problems = CODEQA.unusable(task)
        if (task.base_commit or "").startswith("-"):
            problems["base_commit"] = f"{task.base_commit!r} is not a commit"
        if problems:
            report.update(kept=False, reason="; ".join(f"{key}: {why}" for key, why in problems.items()))
            return None, report
        try:
            if task.env.image:
                commit, source = _commit_in_image(task, config), f"image {task.env.image}"
            else:
                mirror, git_dir = self._mirror(task.repo or "")
                commit, source = _commit_in_mirror(task, mirror, git_dir), f"mirror {mirror}"
        except _Missing as e:
            report.update(kept=False, reason=str(e))
            return None, report
        report.update(kept=True, reason="", commit=commit, source=source)
        return task, report

    def _mirror(self, repo: str) -> tuple[Path, Path]:
        """The mirror and its git folder: a bundle is cloned bare into this run's scratch folder first."""
        from swepost.sandbox.repos import git, mirror_path

        try:
            path = mirror_path(self.repos, repo)
        except BadInput as e:
            raise _Missing(f"no mirror: {e.detail}") from None
        if not path.is_file():
            return path, path
        with self._lock:
            if path not in self._unbundled:
                if self._tmp is None:
                    self._tmp = tempfile.TemporaryDirectory(prefix="swepost-validate-")
                dest = Path(self._tmp.name) / f"{len(self._unbundled)}.git"
                try:
                    git("clone", "--quiet", "--bare", str(path), str(dest))
                except WorkFailed as e:
                    raise _Missing(f"mirror {path} cannot be read: {e}") from None
                self._unbundled[path] = dest
            return path, self._unbundled[path]


class _Missing(Exception):
    """What a codeqa task needs is not there; the message says what, and the task is dropped for it."""


def _commit_in_mirror(task: Task, mirror: Path, git_dir: Path) -> str:
    from swepost.sandbox.repos import git

    base = task.base_commit or ""
    found = git("rev-parse", "--verify", "--quiet", f"{base}^{{commit}}", cwd=git_dir, check=False)
    if found.returncode != 0:
        raise _Missing(f"base_commit {base} is not in the mirror of {task.repo} ({mirror})")
    return _pinned(base, found.stdout.strip())


def _commit_in_image(task: Task, config: TasksValidateConfig) -> str:
    """The image's repo at `env.workdir` holds the base commit (or, without one, a HEAD); read in a sandbox
    without network."""
    from swepost.sandbox import open_sandbox, pick_backend
    from swepost.sandbox.task_sandbox import limits_for

    if pick_backend(config.backend) != "docker":
        raise BadInput(f"{task.instance_id}: its repo lives in image {task.env.image}, which needs --backend docker")
    base = task.base_commit or "HEAD"
    argv = ["git", "-c", "safe.directory=*", "-c", "core.fsmonitor=false", "rev-parse", "--verify", "--quiet",
            f"{base}^{{commit}}"]
    try:
        with open_sandbox("docker", image=task.env.image, limits=limits_for(task, config.sandbox_limits),
                          workdir=task.env.workdir) as box:
            found = box.exec(argv, env=box.image_env(), timeout=120)
    except WorkFailed as e:
        raise _Missing(f"image {task.env.image}: {e}") from None
    if found.exit_code == 127:
        raise _Missing(f"image {task.env.image} has no git to check the repo at {task.env.workdir} with")
    if found.exit_code != 0:
        what = f"base_commit {base} is not in the repo" if task.base_commit else "no git repo with a commit"
        raise _Missing(f"{what} at {task.env.workdir} of image {task.env.image}")
    return _pinned(task.base_commit, found.output.strip().splitlines()[-1])


def _pinned(base: str | None, commit: str) -> str:
    """A branch or tag moves, and the answer with it: base_commit must name the commit itself."""
    if base and not commit.startswith(base.lower()):
        raise _Missing(f"base_commit {base!r} names a ref (now {commit[:12]}), not a commit: pin the commit")
    return commit


def dropped_lines(reports: list[dict]) -> list[str]:
    """One line per dropped task and per removed test, with the reason: what a user reads after a run."""
    lines = []
    for r in reports:
        if not r.get("kept"):
            lines.append(f"dropped {r['instance_id']}: {r['reason']}")
        for removed in r.get("removed", []):
            lines.append(f"  removed {removed['list']} {removed['test']} of {r['instance_id']}: {removed['reason']}")
    return lines


class _Progress(StageBar):
    """The tasks-validate bar: tasks done, kept, dropped."""

    def __init__(self, total: int, show: bool):
        self.kept = self.dropped = 0
        super().__init__("tasks-validate", total, info=self._info(), show=show)

    def _info(self) -> str:
        return f"kept {self.kept} · dropped {self.dropped}"

    def update(self, kept: bool) -> None:
        self.kept += kept
        self.dropped += not kept
        self.advance(self._info())
