"""The judge's vocabulary: five axes scored 1-10, the Judgement record, reading a judge's JSON reply, and the two
scores made from the axes: the eval total (their sum, 5-50, as SWE-QA-Pro reports it) and the RL reward (weighted,
in [0, 1])."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

AXES = ("correctness", "completeness", "relevance", "clarity", "reasoning")
MIN_SCORE, MAX_SCORE = 1, 10
DEFAULT_WEIGHTS = {"correctness": 0.3, "completeness": 0.2, "relevance": 0.2, "clarity": 0.1, "reasoning": 0.2}
ON_FAILURE = ("group_mean", "mask")

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


class MalformedReply(ValueError):
    """The judge answered, but not with the five scores: asked again, then a judge failure."""


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """All five axes with their weights (an axis not named weighs 0); unknown axes, negative or all-zero
    weights are errors."""
    unknown = sorted(set(weights) - set(AXES))
    if unknown:
        raise ValueError(f"unknown axis {', '.join(unknown)} (axes: {', '.join(AXES)})")
    out = {axis: float(weights.get(axis, 0.0)) for axis in AXES}
    if any(w < 0 for w in out.values()) or sum(out.values()) <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, not {dict(weights)}")
    return out


def weighted_reward(scores: Mapping[str, int], weights: Mapping[str, float]) -> float:
    """sum(weight * score) / (10 * sum(weights)): SWE-QA-Pro's reward for weights summing to 1 (0.1 to 1.0)."""
    return round(sum(weights[a] * scores[a] for a in AXES) / (MAX_SCORE * sum(weights.values())), 6)


class Judgement(BaseModel):
    """One answer judged. A failure is not a score: `failed` is set, `cause` says why, and scores, total and
    reward are None, so no caller can mistake it for a 0."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    judge: str  # "openai" or "lexical"
    model: str | None = None  # the judge model, for an endpoint
    scores: dict[str, int] | None = None  # axis -> 1..10
    total: int | None = None  # the eval score: the sum of the axes, 5..50
    reward: float | None = None  # the RL reward: the weighted axes / 10, in [0, 1]
    failed: bool = False
    cause: str | None = None  # why it failed (secrets cut out)
    missing_answer: bool = False  # no answer: reward is `missing_answer_reward`, every axis the floor, no request
    truncated: bool = False  # the answer was cut to `max_answer_chars` before the judge saw it
    cached: bool = False
    requests: int = 0  # requests sent for it (0: cached, missing, lexical)
    rationale: str | None = None

    @classmethod
    def scored(cls, judge: str, scores: Mapping[str, int], weights: Mapping[str, float], **extra: Any) -> Judgement:
        scores = {a: int(scores[a]) for a in AXES}
        return cls(judge=judge, scores=scores, total=sum(scores.values()), reward=weighted_reward(scores, weights),
                   **extra)

    @classmethod
    def failure(cls, judge: str, cause: str, **extra: Any) -> Judgement:
        return cls(judge=judge, failed=True, cause=cause, **extra)

    @classmethod
    def missing(cls, judge: str, reward: float, **extra: Any) -> Judgement:
        scores = dict.fromkeys(AXES, MIN_SCORE)
        return cls(judge=judge, scores=scores, total=sum(scores.values()), reward=reward, missing_answer=True,
                   rationale="no answer", **extra)


def parse_reply(text: str | None) -> tuple[dict[str, int], str | None]:
    """(scores, rationale) from a judge's reply: a JSON object with the five axes, bare, inside ```json fences or
    surrounded by prose (a reasoning model's <think> block is skipped). Scores may sit under a "scores" key.
    MalformedReply when no object holds all five as whole numbers 1-10."""
    if not text or not text.strip():
        raise MalformedReply("empty reply")
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    chunks = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    problems = []
    for chunk in chunks:
        for obj in _json_objects(chunk):
            try:
                return read_scores(obj)
            except MalformedReply as e:
                problems.append(str(e))
    if problems:
        raise MalformedReply(problems[0])
    raise MalformedReply(f"no JSON object in the reply: {' '.join(text.split())[:200]!r}")


def _json_objects(text: str) -> Iterator[dict]:
    """Every top-level JSON object in `text`, in order, skipping what does not decode."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            obj, end = decoder.raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        if isinstance(obj, dict):
            yield obj
        start = text.find("{", end)


def read_scores(obj: dict) -> tuple[dict[str, int], str | None]:
    """(scores, rationale) from one decoded object; MalformedReply when an axis is missing or out of range."""
    found = {str(k).strip().lower(): v for k, v in obj.items()}
    if not any(a in found for a in AXES) and isinstance(found.get("scores"), dict):
        found = {**found, **{str(k).strip().lower(): v for k, v in found["scores"].items()}}
    missing = [a for a in AXES if a not in found]
    if missing:
        raise MalformedReply(f"no score for {', '.join(missing)}")
    scores = {}
    for axis in AXES:
        value = found[axis]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not MIN_SCORE <= value <= MAX_SCORE:
            raise MalformedReply(f"{axis}: {value!r} is not a whole number {MIN_SCORE}-{MAX_SCORE}")
        scores[axis] = value
    rationale = found.get("rationale", found.get("explanation"))
    return scores, rationale if isinstance(rationale, str) else None


@dataclass(frozen=True)
class GroupRewards:
    rewards: list[float | None]  # None: ungraded, left out of the loss
    judge_failed: int


def group_rewards(judgements: Sequence[Judgement],
                  on_failure: Literal["group_mean", "mask"] = "group_mean") -> GroupRewards:
    """The rewards of one group of answers to the same question (a GRPO group), with judge failures filled in.

    group_mean: a failed judgement gets the mean reward of the group's others, so it carries no advantage
    (SWE-QA-Pro). When the whole group failed every reward is None, not SWE-QA-Pro's 1.0: the gradient is the same
    (no advantage either way) but no made-up 1.0 reaches the reward logs. mask: a failed judgement is None.
    A missing answer is not a failure: its reward (missing_answer_reward) counts, in the mean too."""
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {', '.join(ON_FAILURE)}, not {on_failure!r}")
    graded = [j.reward for j in judgements if not j.failed and j.reward is not None]
    fill = round(fmean(graded), 6) if graded and on_failure == "group_mean" else None
    return GroupRewards(rewards=[fill if j.failed else j.reward for j in judgements],
                        judge_failed=sum(j.failed for j in judgements))


def summarize(judgements: Sequence[Judgement]) -> dict[str, Any]:
    """What an eval reports: counts, and the means over judged answers (missing answers count at the floor;
    failures are left out and counted) of each axis, of the total (5-50) and of the reward."""
    graded = [j for j in judgements if not j.failed and j.scores is not None]

    def mean(values: list[float]) -> float | None:
        return round(fmean(values), 4) if values else None

    return {
        "n": len(judgements), "graded": len(graded), "judge_failed": sum(j.failed for j in judgements),
        "missing_answer": sum(j.missing_answer for j in judgements),
        "truncated": sum(j.truncated for j in judgements), "cached": sum(j.cached for j in judgements),
        "axes": {a: mean([j.scores[a] for j in graded]) for a in AXES},
        "total": mean([j.total for j in graded]), "reward": mean([j.reward for j in graded]),
    }
