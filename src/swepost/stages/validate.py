"""Stage `tasks-validate`: keep only tasks whose tests really tell a fix from no fix, reproducibly.

For each task, in fresh sandboxes: with no patch every FAIL_TO_PASS test must fail; with the gold patch
every FAIL_TO_PASS and PASS_TO_PASS test must pass; over `runs` repeats, a test whose status flips is flaky.
Tests that break a rule are removed (with the reason); a task left with no FAIL_TO_PASS test is dropped.
Writes a validated `tasks` artifact whose `validation.json` reports every removal and drop.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from pydantic import Field

from swepost.artifacts import Artifact, ArtifactStore, producer_record
from swepost.config import ArtifactInput, PathInput, StageConfig
from swepost.progress import StageBar
from swepost.records import SandboxLimits, Task
from swepost.stages.tasks import TASKS_FILE, load_tasks

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
    with _Progress(len(tasks), sys.stderr.isatty() if progress is None else progress) as bar, \
            ThreadPoolExecutor(config.jobs) as pool:
        futures = {pool.submit(validate_task, t, config): n for n, t in enumerate(tasks)}
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
