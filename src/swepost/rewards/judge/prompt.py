"""The judge's prompt: a str.format template file with {question}, {answer}, {reference} and {rubric}, read and
checked once; the default ships in rewards/prompts/judge.md."""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

from swepost.errors import BadInput
from swepost.rewards.judge.base import JudgeItem

DEFAULT_PROMPT = Path(__file__).resolve().parents[1] / "prompts" / "judge.md"
PROMPT_FIELDS = ("question", "answer", "reference", "rubric")
NO_RUBRIC = "(no rubric: judge against the reference answer)"


@dataclass(frozen=True)
class JudgePrompt:
    text: str
    path: str
    sha256: str  # enters the cache key: an edited prompt is judged afresh

    def render(self, item: JudgeItem) -> str:
        rubric = "\n".join(f"- {point}" for point in item.rubric) or NO_RUBRIC
        return self.text.format(question=item.question, answer=item.answer, reference=item.reference, rubric=rubric)


def load_prompt(path: str | Path | None = None) -> JudgePrompt:
    """The template at `path` (default: the shipped one), checked: a field other than the four, or no {answer},
    is BadInput naming the file."""
    path = Path(path) if path is not None else DEFAULT_PROMPT
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read the judge prompt: {e}", file=str(path)) from None
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as e:
        raise BadInput(f"not a valid str.format template: {e} (write {{{{ and }}}} for braces)",
                       file=str(path)) from None
    unknown = sorted(f for f in fields if f not in PROMPT_FIELDS)
    if unknown:
        raise BadInput(f"unknown template field(s) {', '.join('{' + f + '}' for f in unknown)} (known: "
                       f"{', '.join(PROMPT_FIELDS)}; write {{{{ and }}}} for literal braces)", file=str(path))
    if "answer" not in fields:
        raise BadInput("the judge prompt never shows the answer: it needs an {answer} field", file=str(path))
    return JudgePrompt(text=text, path=str(path), sha256=hashlib.sha256(text.encode()).hexdigest())
