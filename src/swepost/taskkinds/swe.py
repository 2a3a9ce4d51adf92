"""Repository bug fixing (SWE-bench style): graded by hidden tests, FAIL_TO_PASS and PASS_TO_PASS."""

from __future__ import annotations

from typing import Any

from swepost.records import Task
from swepost.taskkinds import TaskKind
from swepost.taskkinds.columns import listed_tests, swe_bench_fields


def from_row(row: dict[str, Any]) -> dict[str, Any]:
    fields = swe_bench_fields(row)
    fields["verify"] = {"fail_to_pass": listed_tests(row, "FAIL_TO_PASS", required=True),
                        "pass_to_pass": listed_tests(row, "PASS_TO_PASS", required=False)}
    return fields


def unusable(task: Task) -> dict[str, str]:
    """No hidden tests to grade with (test_patch), no gold fix for the oracle and `tasks validate` (patch),
    nothing that tells a fix from no fix (FAIL_TO_PASS)."""
    problems = {}
    if not task.patch.strip():
        problems["patch"] = "missing: the gold fix the oracle and tasks validate need"
    if not task.test_patch.strip():
        problems["test_patch"] = "missing: the hidden tests graders apply"
    if not task.verify.fail_to_pass:
        problems["FAIL_TO_PASS"] = "empty: no test tells a fix from no fix"
    return problems


SWE = TaskKind(name="swe", from_row=from_row, unusable=unusable, environment="swe")
