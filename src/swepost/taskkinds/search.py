"""Information retrieval over the web or a corpus. For now a SWE-bench-style row with no tests; no environment
yet."""

from __future__ import annotations

from swepost.taskkinds import TaskKind
from swepost.taskkinds.columns import swe_bench_fields

SEARCH = TaskKind(name="search", from_row=swe_bench_fields)
