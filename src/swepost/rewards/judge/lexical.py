"""The lexical judge: word overlap with the reference and the rubric, for CPU tests and the demo where no judge
endpoint exists. It measures shared words, not meaning: never a substitute for a model judge in a real run.

Each axis is a fraction in [0, 1] mapped onto 1-10 (1 + 9x, rounded):
- correctness: token F1 of the answer against the reference (SQuAD-style: lower case, punctuation and a few
  stop words dropped, plurals folded);
- completeness: the share of rubric points the answer covers (half of a point's words present), or the
  reference's recall when there is no rubric;
- relevance: the share of the answer's words found in the question, the reference or the rubric;
- clarity: relevance, discounted for an answer over three times the reference's length;
- reasoning: the mean of correctness and completeness.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

from swepost.rewards.judge.base import DEFAULT_MAX_ANSWER_CHARS, Judge, JudgeItem
from swepost.rewards.judge.scores import MAX_SCORE, MIN_SCORE, Judgement

_WORD = re.compile(r"[a-z0-9]+")
STOP_WORDS = frozenset("a an the of to in on for and or is are was were be it its this that with as by at from "
                       "which".split())
POINT_COVERED = 0.5  # share of a rubric point's words the answer must contain
LENGTH_ALLOWANCE = 3.0  # an answer up to this many times the reference's length loses no clarity


def words(text: str) -> list[str]:
    """Lower-case words without stop words, a plural's final s dropped (tokens ~ token)."""
    return [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
            for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]


def token_f1(prediction: Sequence[str], reference: Sequence[str]) -> tuple[float, float, float]:
    """(f1, precision, recall) of two token lists."""
    common = sum((Counter(prediction) & Counter(reference)).values())
    if not common:
        return 0.0, 0.0, 0.0
    precision, recall = common / len(prediction), common / len(reference)
    return 2 * precision * recall / (precision + recall), precision, recall


def rubric_coverage(answer: set[str], rubric: Sequence[str]) -> tuple[int, int]:
    """(points covered, points with words)."""
    points = [set(words(p)) for p in rubric]
    points = [p for p in points if p]
    return sum(len(p & answer) / len(p) >= POINT_COVERED for p in points), len(points)


def band(fraction: float) -> int:
    return max(MIN_SCORE, min(MAX_SCORE, MIN_SCORE + round((MAX_SCORE - MIN_SCORE) * fraction)))


class LexicalJudge(Judge):
    name = "lexical"

    def __init__(self, *, weights: Mapping[str, float] | None = None, missing_answer_reward: float = 0.0,
                 max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS):
        super().__init__(weights=weights, missing_answer_reward=missing_answer_reward,
                         max_answer_chars=max_answer_chars, concurrency=1)

    def _grade(self, item: JudgeItem) -> Judgement:
        answer, reference = words(item.answer or ""), words(item.reference)
        f1, _, recall = token_f1(answer, reference)
        covered, points = rubric_coverage(set(answer), item.rubric)
        completeness = covered / points if points else recall
        context = set(reference) | set(words(item.question)) | {w for p in item.rubric for w in words(p)}
        relevance = sum(w in context for w in answer) / len(answer) if answer else 0.0
        brevity = min(1.0, LENGTH_ALLOWANCE * len(reference) / len(answer)) if answer else 0.0
        scores = {"correctness": band(f1), "completeness": band(completeness), "relevance": band(relevance),
                  "clarity": band(relevance * brevity), "reasoning": band((f1 + completeness) / 2)}
        rubric = f"rubric {covered}/{points} points" if points else "no rubric"
        rationale = (f"lexical overlap, not meaning: token F1 {f1:.2f} against the reference, {rubric}, "
                     f"{relevance:.0%} of the answer's words on topic")
        return Judgement.scored(self.name, scores, self.weights, rationale=rationale)
