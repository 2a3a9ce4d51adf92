"""Stage `tasks-select`: the subset of a task set that earlier attempts found hard (tasks).

A curriculum's next phase trains on what the last one could not yet do: Golubev et al. (2025) ran DAPO at 65k
context and 40 turns, then again at 131k / 80 turns on the 2,028 tasks that were still hard. This stage reads the
attempts an earlier stage made (an `rl` checkpoint's `rollouts.jsonl`, or the trajectories of `collect` / `eval`
/ `rft`), computes each task's solve rate over its graded attempts, and keeps the tasks whose rate lies in
[min_solve_rate, max_solve_rate]. Attempts without a verdict (ungraded, infrastructure failures, episodes cut at
a deadline) say nothing about difficulty and are not counted; a task with fewer than `min_attempts` graded
attempts is kept or left out by `unseen`. The output is a tasks artifact whose parents are both inputs.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from swepost.artifacts import Artifact, ArtifactStore, producer_record
from swepost.config import ArtifactInput, StageConfig
from swepost.errors import BadInput
from swepost.stages.tasks import TASKS_FILE, load_tasks

RESOLVED_FULL = "RESOLVED_FULL"


class TasksSelectConfig(StageConfig):
    tasks: str = ArtifactInput(description="the task set to select from")
    attempts: str = ArtifactInput(description="earlier attempts at those tasks: an rl checkpoint (rollouts.jsonl) "
                                  "or a trajectories / eval artifact (trajectories.jsonl); rft checkpoints carry "
                                  "their rounds' trajectories too")
    name: str = Field("tasks-hard", description="output artifact name")
    max_solve_rate: float = Field(0.5, ge=0, le=1, description="keep tasks solved in at most this share of their "
                                  "graded attempts")
    min_solve_rate: float = Field(0.0, ge=0, le=1, description="and in at least this share (e.g. > 0 keeps only "
                                  "tasks the policy has solved at least once: some learning signal at 0/1 reward)")
    min_attempts: int = Field(1, ge=1, description="graded attempts a task needs for its rate to count")
    unseen: Literal["keep", "drop"] = Field("keep", description="tasks with fewer than min_attempts graded attempts "
                                            "(never tried, or only ungraded tries): keep or drop")

    @model_validator(mode="after")
    def _range(self) -> TasksSelectConfig:
        if self.min_solve_rate > self.max_solve_rate:
            raise ValueError(f"min_solve_rate {self.min_solve_rate} is above max_solve_rate {self.max_solve_rate}")
        return self


def _verdicts_from_rollouts(path: Path) -> list[tuple[str, bool | None]]:
    from swepost.train.rl import read_rollout_rows

    out = []
    for row in read_rollout_rows(path.parent):
        ungraded = row.get("reward") is None or row.get("masked") in ("ungraded", "deadline")
        out.append((row["instance_id"], None if ungraded else row.get("resolved") == RESOLVED_FULL))
    return out


def _verdicts_from_trajectories(paths: list[Path]) -> list[tuple[str, bool | None]]:
    from swepost.records import ExitStatus, Trajectory
    from swepost.rewards.filters import is_ungraded

    out = []
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                t = Trajectory.model_validate_json(line)
            except ValueError as e:
                raise BadInput(f"not a trajectory record: {str(e).splitlines()[0]}", file=f"{path}:{n}") from None
            graded = t.exit_status is not None and not is_ungraded(t) and t.exit_status != ExitStatus.DEADLINE
            out.append((t.instance_id, (t.resolved == RESOLVED_FULL) if graded else None))
    return out


def attempt_verdicts(art: Artifact) -> list[tuple[str, bool | None]]:
    """(instance_id, solved or None when ungraded) for every attempt the artifact records."""
    if (art.path / "rollouts.jsonl").is_file():
        return _verdicts_from_rollouts(art.path / "rollouts.jsonl")
    files = sorted(art.path.rglob("trajectories.jsonl"))
    if not files:
        raise BadInput(f"artifact {art.id} ({art.kind}) holds no rollouts.jsonl or trajectories.jsonl: nothing "
                       "says how hard its tasks were", key="attempts")
    return _verdicts_from_trajectories(files)


def run_select(config: TasksSelectConfig, store: ArtifactStore) -> Artifact:
    source = store.resolve(config.tasks)
    if source.kind != "tasks":
        raise BadInput(f"artifact {source.id} is a {source.kind!r} artifact, not tasks", key="tasks")
    attempts = store.resolve(config.attempts)
    tasks = load_tasks(source)
    solved: Counter[str] = Counter()
    graded: Counter[str] = Counter()
    ungraded = 0
    for instance_id, verdict in attempt_verdicts(attempts):
        if verdict is None:
            ungraded += 1
            continue
        graded[instance_id] += 1
        solved[instance_id] += verdict
    kept, reasons = [], Counter()
    for task in tasks:
        n = graded[task.instance_id]
        if n < config.min_attempts:
            keep = config.unseen == "keep"
            reasons["unseen_kept" if keep else "unseen_dropped"] += 1
        else:
            rate = solved[task.instance_id] / n
            keep = config.min_solve_rate <= rate <= config.max_solve_rate
            reasons["in_range" if keep else ("too_easy" if rate > config.max_solve_rate else "too_hard")] += 1
        if keep:
            kept.append(task)
    if not kept:
        raise BadInput(f"no task of {source.id} has a solve rate in [{config.min_solve_rate}, "
                       f"{config.max_solve_rate}] over at least {config.min_attempts} graded attempts in "
                       f"{attempts.id} ({dict(reasons)})", key="max_solve_rate")
    producer = producer_record("tasks-select", config.model_dump(mode="json"),
                               inputs={"tasks": source.id, "attempts": attempts.id})
    with store.write(config.name, "tasks", producer=producer, parents=[source.id, attempts.id]) as w:
        with open(w.path / TASKS_FILE, "w") as f:
            for task in kept:
                f.write(json.dumps(task.model_dump(mode="json"), ensure_ascii=False) + "\n")
        w.stats.update({"tasks": len(kept), "of": len(tasks), "graded_attempts": sum(graded.values()),
                        "ungraded_attempts": ungraded, "decisions": dict(reasons)})
    return w.artifact


run = run_select
