"""Code question answering (SWE-QA style). For now a SWE-bench-style row with no tests; no environment yet."""

from __future__ import annotations

from swepost.taskkinds import TaskKind
from swepost.taskkinds.columns import swe_bench_fields

CODEQA = TaskKind(name="codeqa", from_row=swe_bench_fields)
