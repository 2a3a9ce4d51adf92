"""Stage `eval`: the collect engine on a task split, k samples per task, summarised as metrics.

Writes an `eval` artifact: metrics.json (resolved rate over graded episodes, ungraded count and rate, unbiased
pass@k over graded samples, exit statuses, mean turns and tokens), predictions.jsonl in SWE-bench's format
(instance_id, model_name_or_path, model_patch), a Markdown summary, the trajectories themselves, and
quarantined.jsonl when tasks were quarantined (their episodes stay in the trajectories, ungraded).
"""

from __future__ import annotations

import json
import shutil
from math import comb

from pydantic import Field

from swepost.artifacts import Artifact, ArtifactStore, producer_record, redact_secrets
from swepost.records import Trajectory
from swepost.rewards.filters import is_ungraded
from swepost.stages.collect import (
    CollectConfig,
    episode_stats,
    input_parents,
    publish_quarantine,
    run_episodes,
    write_trajectories,
)


class EvalConfig(CollectConfig):
    name: str = Field("eval", description="output artifact name")
    policy: str = Field("hf", description="openai | hf | scripted | oracle | module:Class")
    model_name: str | None = Field(None, description="model_name_or_path written in predictions.jsonl "
                                   "(default: the policy's model)")


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def metrics(trajectories: list[Trajectory], samples: int) -> dict:
    by_task: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        by_task.setdefault(t.instance_id, []).append(t)
    out = episode_stats(trajectories)
    out["tasks"] = len(by_task)
    out["pass_at_k"] = {}
    # ungraded samples are left out: n counts a task's graded samples; a task with none has no estimate, and
    # one with fewer than k is estimated at k = n (no better is known)
    graded = [[t for t in ts if not is_ungraded(t)] for ts in by_task.values()]
    for k in sorted({1, samples} | ({5} if samples >= 5 else set())):
        scores = [pass_at_k(len(ts), sum(t.resolved == "RESOLVED_FULL" for t in ts), min(k, len(ts)))
                  for ts in graded if ts]
        out["pass_at_k"][str(k)] = round(sum(scores) / len(scores), 4) if scores else 0.0
    out["resolved_tasks"] = sorted(i for i, ts in by_task.items() if any(t.resolved == "RESOLVED_FULL" for t in ts))
    return out


def summary_markdown(name: str, config: EvalConfig, m: dict) -> str:
    rows = "\n".join(f"| {status} | {count} |" for status, count in sorted(m["exit_status"].items()))
    passes = ", ".join(f"pass@{k} = {v:.3f}" for k, v in m["pass_at_k"].items())
    policy_args = json.dumps(redact_secrets(config.policy_args))
    return (f"# {name}\n\npolicy `{config.policy}` {policy_args} on {m['tasks']} tasks x {config.samples} samples"
            f"\n\n- resolved: {m['resolved']} / {m['episodes'] - m['ungraded']} graded "
            f"episodes ({m['resolved_rate']:.1%})\n- ungraded: {m['ungraded']} / {m['episodes']} episodes "
            f"({m['ungraded_rate']:.1%}; the grader could not judge them: not counted as wrong)\n- {passes}"
            f"\n- mean turns: {m['mean_turns']}, tokens: {m['tokens']}, "
            f"tool errors: {m['tool_errors']}\n\n| exit status | episodes |\n|---|---|\n{rows}\n")


def run_eval(config: EvalConfig, store: ArtifactStore) -> Artifact:
    source, _, trajectories, work = run_episodes(config, store, "eval")
    m = metrics(trajectories, config.samples)
    model_name = config.model_name or str(config.policy_args.get("model") or config.policy)
    data = config.model_dump(mode="json")
    data["tasks"] = source.id
    producer = producer_record("eval", data, seed=config.seed)
    with store.write(config.name, "eval", producer=producer, parents=input_parents(config, store, source.id)) as w:
        write_trajectories(w.path, trajectories)
        (w.path / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
        with open(w.path / "predictions.jsonl", "w") as f:
            for t in trajectories:
                if t.sample == 0:  # SWE-bench takes one prediction per instance
                    f.write(json.dumps({"instance_id": t.instance_id, "model_name_or_path": model_name,
                                        "model_patch": t.final_diff}) + "\n")
        (w.path / "summary.md").write_text(summary_markdown(config.name, config, m))
        w.stats.update({k: m[k] for k in ("episodes", "resolved", "resolved_rate", "ungraded", "ungraded_rate",
                                          "mean_turns", "tokens")})
        w.stats["pass_at_1"] = m["pass_at_k"]["1"]
        w.stats["quarantined"] = publish_quarantine(work, w.path)
    shutil.rmtree(work, ignore_errors=True)
    return w.artifact
