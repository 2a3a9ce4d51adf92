"""Short-answer rewards: exact match and F1 against gold answers, as the SQuAD and HotpotQA evaluation scripts
compute them, and the answer taken from a model's response.

Normalisation (SQuAD's, kept by HotpotQA and Search-R1): lower-case, delete ASCII punctuation (not replace it:
"1,000" is "1000", "don't" is "dont"), drop the words a / an / the, collapse whitespace. EM is 1 when the
normalised answer equals a normalised gold; F1 is the token overlap's harmonic mean of precision and recall. Both
take the best gold. HotpotQA's rule for yes / no / noanswer: when either side normalises to one of them and the two
differ, F1 is 0 (a "yes" gets no partial credit against "yes it is", nor "no" against "no one").

The answer is read from the model's response only: the `answer` tool's argument, or the last
`<answer>...</answer>` of a response (`extract_answer`), never the prompt, whose worked example Search-R1's own
scorer has to skip. Spamming answers is penalised as VerlTool does: past MAX_ANSWER_TAGS answers in an episode,
the reward is divided by SPAM_DIVISOR.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Literal

MAX_ANSWER_TAGS = 10
SPAM_DIVISOR = 4.0
SPECIAL = ("yes", "no", "noanswer")  # HotpotQA: no partial credit when either side is one of these and they differ

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower-case, punctuation deleted, articles dropped, whitespace collapsed."""
    text = str(text).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(golds: str | list[str]) -> list[str]:
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("no gold answers to score against")
    return golds


def exact_match(prediction: str, golds: str | list[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golds)))


def f1_parts(prediction: str, gold: str) -> tuple[float, float, float]:
    """(F1, precision, recall) of one prediction against one gold, HotpotQA's way."""
    pred, truth = normalize_answer(prediction), normalize_answer(gold)
    if (pred in SPECIAL or truth in SPECIAL) and pred != truth:
        return 0.0, 0.0, 0.0
    pred_tokens, truth_tokens = pred.split(), truth.split()
    same = sum((Counter(pred_tokens) & Counter(truth_tokens)).values())
    if same == 0:
        return 0.0, 0.0, 0.0
    precision, recall = same / len(pred_tokens), same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall), precision, recall


def f1_score(prediction: str, golds: str | list[str]) -> float:
    """The best F1 over the gold answers."""
    return max(f1_parts(prediction, g)[0] for g in _golds(golds))


def extract_answer(text: str | None) -> str | None:
    """The last `<answer>...</answer>` in `text` (stripped), or None when it has none."""
    if not text:
        return None
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


def count_answer_tags(text: str | None) -> int:
    return len(_ANSWER_TAG.findall(text or ""))


def score_answer(prediction: str | None, golds: str | list[str], *, answer_count: int = 1,
                 metric: Literal["em", "f1"] = "em") -> dict[str, Any]:
    """EM, F1 and the reward (EM or F1 by `metric`) of an episode's answer. `answer_count` is how many answers the
    model gave in the episode (answer calls and tags): past MAX_ANSWER_TAGS the reward is divided by SPAM_DIVISOR.
    No answer (None or blank) scores 0 with missing_answer set."""
    golds = _golds(golds)
    if prediction is None or not prediction.strip():
        return {"em": 0.0, "f1": 0.0, "reward": 0.0, "missing_answer": True, "spam": False}
    em, f1 = exact_match(prediction, golds), f1_score(prediction, golds)
    reward = em if metric == "em" else f1
    spam = answer_count > MAX_ANSWER_TAGS
    if spam:
        reward /= SPAM_DIVISOR
    return {"em": em, "f1": f1, "reward": reward, "missing_answer": False, "spam": spam}
