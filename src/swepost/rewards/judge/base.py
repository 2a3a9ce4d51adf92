"""What every judge shares: the item judged, missing and over-long answers, and judging many items at once,
`concurrency` at a time, in order, each distinct item once."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from swepost.rewards.judge.scores import DEFAULT_WEIGHTS, Judgement, check_weights

DEFAULT_MAX_ANSWER_CHARS = 16_000


@dataclass(frozen=True)
class JudgeItem:
    question: str
    answer: str | None  # None or blank: a missing answer
    reference: str
    rubric: tuple[str, ...] = ()  # the points a good answer makes

    @classmethod
    def of(cls, item: JudgeItem | Mapping[str, Any]) -> JudgeItem:
        """An item from itself or a mapping with question, answer, reference (or reference_answer), rubric."""
        if isinstance(item, JudgeItem):
            return item
        reference = item.get("reference", item.get("reference_answer"))
        if not isinstance(item.get("question"), str) or not isinstance(reference, str):
            raise ValueError("a judge item needs a question and a reference (strings)")
        answer = item.get("answer")
        if answer is not None and not isinstance(answer, str):
            raise ValueError(f"a judge item's answer must be a string or None, not {type(answer).__name__}")
        return cls(item["question"], answer, reference, rubric_points(item.get("rubric")))


def rubric_points(rubric: str | Sequence[str] | None) -> tuple[str, ...]:
    """A rubric as a tuple of non-blank points (a string is one point)."""
    if rubric is None:
        return ()
    points = [rubric] if isinstance(rubric, str) else list(rubric)
    return tuple(str(p).strip() for p in points if str(p).strip())


def cap_answer(answer: str, limit: int) -> tuple[str, bool]:
    """The answer as the judge sees it, cut to `limit` characters with a note saying so; and whether it was cut."""
    if len(answer) <= limit:
        return answer, False
    return (answer[:limit] + f"\n\n[... answer truncated by swepost: the first {limit:,} of {len(answer):,} "
                             "characters are shown]"), True


class Judge:
    """A judge: `judge_many(items)` -> one Judgement per item, in order. A subclass implements `_grade(item)` for a
    present answer already capped to `max_answer_chars`; missing answers never reach it."""

    name = "judge"
    model: str | None = None

    def __init__(self, *, weights: Mapping[str, float] | None = None, missing_answer_reward: float = 0.0,
                 max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS, concurrency: int = 1):
        if not 0.0 <= missing_answer_reward <= 1.0:
            raise ValueError(f"missing_answer_reward must be in [0, 1], not {missing_answer_reward!r}")
        if max_answer_chars < 1 or concurrency < 1:
            raise ValueError("max_answer_chars and concurrency must be >= 1")
        self.weights = check_weights(DEFAULT_WEIGHTS if weights is None else weights)
        self.missing_answer_reward = missing_answer_reward
        self.max_answer_chars = max_answer_chars
        self.concurrency = concurrency

    def judge(self, question: str, answer: str | None, reference: str,
              rubric: str | Sequence[str] | None = None) -> Judgement:
        return self.judge_many([JudgeItem(question, answer, reference, rubric_points(rubric))])[0]

    def judge_many(self, items: Iterable[JudgeItem | Mapping[str, Any]]) -> list[Judgement]:
        """One Judgement per item, in order; up to `concurrency` items judged at once, identical items once."""
        out: list[Judgement | None] = []
        todo: dict[JudgeItem, list[int]] = {}
        for i, raw in enumerate(items):
            item = JudgeItem.of(raw)
            if item.answer is None or not item.answer.strip():
                out.append(Judgement.missing(self.name, self.missing_answer_reward, model=self.model))
                continue
            out.append(None)
            todo.setdefault(item, []).append(i)
        if todo:
            unique = list(todo)
            if self.concurrency == 1 or len(unique) == 1:
                results = [self._capped(item) for item in unique]
            else:
                with ThreadPoolExecutor(min(self.concurrency, len(unique)), thread_name_prefix="judge") as pool:
                    results = list(pool.map(self._capped, unique))
            for item, judgement in zip(unique, results, strict=True):
                for i in todo[item]:
                    out[i] = judgement
        return out  # type: ignore[return-value]  # every slot is filled

    def _capped(self, item: JudgeItem) -> Judgement:
        answer, truncated = cap_answer(item.answer or "", self.max_answer_chars)
        judgement = self._grade(JudgeItem(item.question, answer, item.reference, item.rubric))
        return judgement.model_copy(update={"truncated": True}) if truncated else judgement

    def _grade(self, item: JudgeItem) -> Judgement:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"judge": self.name, "model": self.model, "weights": dict(self.weights),
                "missing_answer_reward": self.missing_answer_reward, "max_answer_chars": self.max_answer_chars,
                "concurrency": self.concurrency}

    def close(self) -> None:
        pass

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
