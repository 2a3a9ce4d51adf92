"""Grading overhead per task beyond the test run itself, as JSON (goal: p50 <= 1 s).

`--baseline-ref REF` also runs this benchmark on swepost as it was at git REF (a temporary worktree, its own
package on PYTHONPATH) in the same invocation, and reports both side by side.

Grades the gold patch of every bundled example task (data/minicalc_tasks.jsonl, repo built by
data/example_repo/build.py) `--rounds` times in fresh sandboxes. Overhead = total grading time minus the
time pytest itself ran: sandbox start, checkout, patch application, restoring tests, report, teardown.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import emit, pct

ROOT = Path(__file__).resolve().parents[1]



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="docker")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--baseline-ref", help="also measure swepost at this git ref, side by side")
    args = parser.parse_args()
    baseline = measure_at(args.baseline_ref, args) if args.baseline_ref else None
    from swepost.rewards.grading import grade_patch
    from swepost.stages.tasks import read_task_file

    tasks = read_task_file(ROOT / "data" / "minicalc_tasks.jsonl")
    with tempfile.TemporaryDirectory() as repos:
        subprocess.run([sys.executable, str(ROOT / "data" / "example_repo" / "build.py"), "--out", repos],
                       check=True, capture_output=True)
        overhead, tests, total, resolved = [], [], [], 0
        for _ in range(args.rounds):
            for task in tasks:
                started = time.perf_counter()
                result = grade_patch(task, task.patch, repos=repos, backend=args.backend)
                wall = time.perf_counter() - started
                total.append(wall)
                tests.append(result.seconds.get("tests", 0.0))
                overhead.append(wall - result.seconds.get("tests", 0.0))
                resolved += result.resolved == "RESOLVED_FULL"
    out = {
        "benchmark": "grading", "backend": args.backend, "python": platform.python_version(),
        "cpus": os.cpu_count(), "gradings": len(total), "resolved": resolved,
        "overhead_s": {"p50": round(pct(overhead, 0.5), 3), "p90": round(pct(overhead, 0.9), 3),
                       "mean": round(statistics.fmean(overhead), 3)},
        "test_run_s": {"p50": round(pct(tests, 0.5), 3)},
        "total_s": {"p50": round(pct(total, 0.5), 3)},
    }
    out["goal"] = {"overhead_p50_le_1s": out["overhead_s"]["p50"] <= 1.0}
    if baseline is not None:
        out["baseline"] = {"ref": args.baseline_ref, **baseline}
    emit(out, args.out)


def measure_at(ref: str, args) -> dict:
    """This benchmark run on the code of git `ref`, from a throwaway worktree."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), ref], check=True)
        try:
            env = {**os.environ, "PYTHONPATH": str(tree / "src")}
            r = subprocess.run([sys.executable, str(ROOT / "bench" / "grading.py"), "--rounds", str(args.rounds),
                                "--backend", args.backend], env=env, cwd=tree, capture_output=True, text=True,
                               check=True)
            data = json.loads(r.stdout[r.stdout.index("{"):])
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    return {k: data[k] for k in ("gradings", "resolved", "overhead_s", "test_run_s", "total_s")}


if __name__ == "__main__":
    main()
