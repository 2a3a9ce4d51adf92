"""Task mining throughput, as JSON: candidates executed per minute by `tasks mine` with 1 and 2 workers (Ray tasks in
flight), and the environment reuse ratio (candidates per profile image).

The histories are the bundled ones (data/repos: plantedlib and minicalc-history). A first, cold run builds the
profile images (timed and reported apart); the timed runs then start from an empty store each (nothing resumed) with
the profiles cached, so they measure execution: a fresh sandbox per side and run, the grader, the report plugin.
Each run is the stage itself (`run_mine`, a private local Ray per run, its start included in the wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from report import emit

ROOT = Path(__file__).resolve().parents[1]


def mine(repos: list[str], workers: int, runs: int) -> dict:
    from swepost.artifacts import ArtifactStore
    from swepost.stages.mine import REPORT_FILE, TasksMineConfig, run_mine

    with tempfile.TemporaryDirectory(prefix="bench-mine-") as home:
        config = TasksMineConfig(repos=ROOT / "data" / "repos", repo=repos, workers=workers, runs=runs,
                                 name="bench")
        started = time.perf_counter()
        art = run_mine(config, ArtifactStore(Path(home)), progress=False)
        wall = time.perf_counter() - started
        report = json.loads((art.path / REPORT_FILE).read_text())
    seconds = [v["seconds"] for v in report["verdicts"] if v.get("seconds") is not None]
    return {"workers": workers, "runs": runs, "wall_s": round(wall, 2), "executed": report["executed"],
            "kept": report["kept"], "candidates_per_minute": round(report["executed"] / wall * 60, 2),
            "mean_candidate_s": round(sum(seconds) / len(seconds), 2) if seconds else None,
            "profiles": report["profiles"], "rejected": report["rejected"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", action="append", help="owner/name of a bundled history (repeatable) "
                        "[default: swepost/plantedlib and swepost/minicalc-history]")
    parser.add_argument("--runs", type=int, default=1, help="executions of each side (the stage's --runs)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    repos = args.repo or ["swepost/plantedlib", "swepost/minicalc-history"]
    cold = mine(repos, 2, args.runs)  # builds whatever profile is not cached yet
    timed = [mine(repos, int(w), args.runs) for w in args.workers.split(",")]
    by = {t["workers"]: t["candidates_per_minute"] for t in timed}
    emit({"bench": "mine", "repos": repos, "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                                     "platform": platform.platform()},
          "cold": cold, "timed": timed,
          "speedup_2_over_1": round(by[2] / by[1], 2) if 1 in by and 2 in by and by[1] else None,
          "reuse_ratio": timed[-1]["profiles"]["reuse_ratio"]}, args.out)


if __name__ == "__main__":
    main()
