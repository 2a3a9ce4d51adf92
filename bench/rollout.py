"""Rollout throughput: episodes per minute at concurrency 1 vs 8, as JSON.

A scripted policy waits a fixed time per turn (200 ms, like a model server) and runs the same 4 tool calls
on each bundled task (bash, editor view, bash, submit) in fresh docker sandboxes, ungraded.
Goals: >= 5x more episodes per minute at concurrency 8 than at 1 on a 2-core machine; orchestration
overhead per turn (episode time minus policy, tool, sandbox start/stop time) <= 10 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from report import emit

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = [
    {"tool_calls": [{"name": "bash", "arguments": {"command": "git status --short | head -5; ls"}}]},
    {"tool_calls": [{"name": "str_replace_editor", "arguments": {"command": "view", "path": "README.md"}}]},
    {"tool_calls": [{"name": "bash", "arguments": {"command": "python3 -c 'print(1 + 1)'"}}]},
    {"tool_calls": [{"name": "submit", "arguments": {}}]},
]


def run(concurrency: int, episodes: int, delay: float, backend: str) -> dict:
    from swepost.artifacts import ArtifactStore
    from swepost.stages.collect import CollectConfig, run_episodes
    from swepost.stages.tasks import TasksImportConfig, run_import

    with tempfile.TemporaryDirectory() as home:
        store = ArtifactStore(home)
        tasks = run_import(TasksImportConfig(source=ROOT / "data" / "minicalc_tasks.jsonl", name="mini"), store)
        samples = -(-episodes // tasks.stats["tasks"])
        config = CollectConfig(tasks=tasks.id, policy="scripted", policy_args={"turns": SCRIPT, "delay": delay},
                               repos=ROOT / "data" / "repos", backend=backend, samples=samples,
                               concurrency=concurrency, grade=False)
        started = time.perf_counter()
        _, _, trajs, _ = run_episodes(config, store, "bench")
        wall = time.perf_counter() - started
    overhead = [(t.seconds["total"] - t.seconds["policy"] - t.seconds["env"] - t.seconds.get("reset", 0)
                 - t.seconds.get("close", 0)) / max(t.turns, 1) for t in trajs]
    return {"concurrency": concurrency, "episodes": len(trajs), "wall_s": round(wall, 2),
            "episodes_per_min": round(len(trajs) / wall * 60, 1),
            "exit_status": sorted({t.exit_status for t in trajs}),
            "overhead_per_turn_ms": {"p50": round(statistics.median(overhead) * 1000, 2),
                                     "max": round(max(overhead) * 1000, 2)},
            "sandbox_start_s": round(statistics.median(t.seconds.get("reset", 0) for t in trajs), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=56, help="episodes at concurrency 8 (half at 1)")
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--backend", default="docker")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    one = run(1, args.episodes // 2, args.delay, args.backend)
    eight = run(8, args.episodes, args.delay, args.backend)
    out = {"benchmark": "rollout", "python": platform.python_version(), "cpus": os.cpu_count(),
           "policy_delay_s": args.delay, "concurrency_1": one, "concurrency_8": eight,
           "speedup": round(eight["episodes_per_min"] / one["episodes_per_min"], 2)}
    out["goals"] = {"speedup_ge_5": out["speedup"] >= 5,
                    "overhead_per_turn_le_10ms": max(one["overhead_per_turn_ms"]["p50"],
                                                     eight["overhead_per_turn_ms"]["p50"]) <= 10}
    emit(out, args.out)


if __name__ == "__main__":
    main()
