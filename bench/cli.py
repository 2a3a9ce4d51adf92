"""CLI latency: wall time of `swepost --help` and `swepost artifacts ls` (median of several runs), as JSON.

Goal: `swepost --help` under 0.5 s on a 2-core laptop. `artifacts ls` runs against a scratch store holding
--artifacts small artifacts, so the figure includes reading their manifests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import emit


def time_command(args: list[str], env: dict, runs: int) -> dict:
    samples = []
    for _ in range(runs + 1):  # the first run warms the page cache and is dropped
        start = time.perf_counter()
        subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    samples = samples[1:]
    return {"median_s": round(statistics.median(samples), 4), "min_s": round(min(samples), 4),
            "max_s": round(max(samples), 4), "runs": runs}


def fill_store(home: Path, count: int) -> None:
    from swepost.artifacts import ArtifactStore, producer_record

    store = ArtifactStore(home)
    producer = producer_record("bench", {})
    for i in range(count):
        with store.write(f"bench-{i % 10}", "tasks", producer=producer) as w:
            (w.path / "tasks.jsonl").write_text(json.dumps({"instance_id": f"t{i}"}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--artifacts", type=int, default=100)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    script = Path(sys.executable).parent / "swepost"  # the console script users run
    swepost = [str(script)] if script.exists() else [sys.executable, "-m", "swepost"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "SWEPOST_HOME": tmp}
        fill_store(Path(tmp), args.artifacts)
        result = {
            "benchmark": "cli",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "help": time_command([*swepost, "--help"], env, args.runs),
            "artifacts_ls": {**time_command([*swepost, "artifacts", "ls"], env, args.runs),
                             "artifacts": args.artifacts},
            "goal": {"help_median_s_below": 0.5},
        }
    result["goal"]["met"] = result["help"]["median_s"] < 0.5
    emit(result, args.out)


if __name__ == "__main__":
    main()
