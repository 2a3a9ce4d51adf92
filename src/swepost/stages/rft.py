"""Stage `rft`: rejection fine-tuning, the self-improvement loop: collect -> filter -> sft, round after round.

Each round samples with the current model, keeps what passed, and fine-tunes the current model on it; its
trajectories, data and checkpoint are artifacts of their own (`<name>-r<N>-trajectories`, `-r<N>-data`,
`-r<N>`). The loop stops early when a round resolves no task that earlier rounds had not. The stage's
artifact is the last round's checkpoint; `artifacts lineage` walks back through every round.

Which episodes a round trains on is the `filter` block's: for BrowserAgent-style RFT on retrieval tasks, sample k
per question at a temperature (samples, policy_args.temperature), keep the questions solved only partly
(max_solve_rate < 1, min_solve_rate) and one trajectory per question (max_per_task: 1, prefer: longest or
shortest); a search environment verifies answers strictly by exact match, or with the judge
(environment_args.verify: judge).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from swepost.agent import EnvironmentFields
from swepost.artifacts import Artifact, ArtifactStore
from swepost.config import ArtifactInput, ModelInput, StageConfig, validate
from swepost.errors import WorkFailed
from swepost.policies.args import check_policy_args
from swepost.stages import get_stage
from swepost.stages.collect import EpisodeLimits  # collect's config vocabulary, shared by rft's `limits`


class RftConfig(StageConfig, EnvironmentFields):
    NOT_IN_KEY = frozenset({"concurrency"})  # speed, not results: a recipe's rft is reused under another -j

    tasks: str = ArtifactInput(description="the tasks to sample on")
    model: str = ModelInput(description="the starting model: a checkpoint artifact, a local folder or a hub id")
    name: str = Field("rft", description="prefix of every round's artifacts; the last checkpoint's name")
    rounds: int = Field(2, ge=1, le=100)
    samples: int = Field(4, ge=1, le=1024, description="episodes per task per round")
    policy: str = Field("hf", description="hf (the current checkpoint, locally) or openai (a server that "
                        "serves the current checkpoint, e.g. vLLM; set policy_args.base_url)")
    policy_args: dict[str, Any] = Field(default_factory=dict, description="the policy's arguments (sampling "
                                        "etc.; see the policy_args tables); `model` is set per round")
    concurrency: int = Field(1, ge=1, le=512)
    limit: int | None = Field(None, ge=1, description="only the first N tasks")
    limits: EpisodeLimits = Field(default_factory=EpisodeLimits)
    filter: dict[str, Any] = Field(default_factory=dict, description="filter stage settings (see swepost filter)")
    sft: dict[str, Any] = Field(default_factory=dict, description="sft stage settings (see swepost sft)")
    seed: int = 0

    @field_validator("policy_args")
    @classmethod
    def _typed_policy_args(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """A wrong key or type is found now, not when round 1 builds the policy; `model` comes from each round."""
        return check_policy_args(info.data.get("policy"), value, later=("model",))

    @field_validator("filter", "sft")
    @classmethod
    def _known_keys(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """A typo in a round's filter or sft settings is found now, not after the first round's sampling."""
        known = get_stage(info.field_name).config_model().model_fields
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"unknown key {', '.join(map(repr, unknown))} for the {info.field_name} stage "
                             f"(expected one of: {', '.join(sorted(known))})")
        return value


def run_rft(config: RftConfig, store: ArtifactStore) -> Artifact:
    # every round runs the stages through the registry, like `swepost run`: their configs and run functions
    collect_stage, filter_stage, sft_stage = get_stage("collect"), get_stage("filter"), get_stage("sft")
    current, last, solved = config.model, None, set()
    rounds: list[dict] = []
    for r in range(1, config.rounds + 1):
        collected = collect_stage.runner()(validate(collect_stage.config_model(), {
            "tasks": config.tasks, "name": f"{config.name}-r{r}-trajectories", "policy": config.policy,
            "policy_args": {**config.policy_args, "model": current}, **environment_fields(config),
            "samples": config.samples, "concurrency": config.concurrency,
            "limits": config.limits, "limit": config.limit, "seed": config.seed + r}, prefix=("collect",)), store)
        resolved = _resolved_tasks(collected)
        new = resolved - solved
        rounds.append({"round": r, "trajectories": collected.id, "resolved_tasks": len(resolved),
                       "new": sorted(new)})
        print(f"rft round {r}: {len(resolved)} task(s) resolved, {len(new)} new", file=sys.stderr)
        if not new:
            rounds[-1]["stopped"] = "no new successes"
            print(f"rft: stopping after round {r}: no new successes", file=sys.stderr)
            break
        solved |= resolved
        data = filter_stage.runner()(validate(filter_stage.config_model(), {
            "trajectories": collected.id, "name": f"{config.name}-r{r}-data", **config.filter},
            prefix=("filter",)), store)
        last = sft_stage.runner()(validate(sft_stage.config_model(), {
            "data": data.id, "model": current, "name": f"{config.name}-r{r}", "seed": config.seed, **config.sft},
            prefix=("sft",)), store)
        rounds[-1].update(data=data.id, checkpoint=last.id)
        current = last.id
    if last is None:
        raise WorkFailed(f"rft: round 1 resolved no task with {config.model}: nothing to train on "
                         f"(rounds: {json.dumps(rounds)})")
    return last


def environment_fields(config: EnvironmentFields) -> dict[str, Any]:
    """Where a round's episodes run (environment, its args, judge, index, repos, backend), as collect takes them."""
    return {k: getattr(config, k) for k in EnvironmentFields.model_fields}


def _resolved_tasks(trajectories: Artifact) -> set[str]:
    out = set()
    for line in (trajectories.path / "trajectories.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("resolved") == "RESOLVED_FULL":
            out.add(row["instance_id"])
    return out
