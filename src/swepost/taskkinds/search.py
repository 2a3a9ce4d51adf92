"""Information retrieval over a corpus or a site: a factual question with gold answers, scored by exact match / F1.

Rows import in the FlashRAG / Search-R1 format (`id`, `question`, `golden_answers`), as HotpotQA ships them (`_id`,
`answer`, `supporting_facts`, `type`, `level`, `context`) or as Search-R1's parquet rows (golds under
`reward_model.ground_truth.target`). Columns this kind does not read go to `metadata`; `metadata["hops"]` is the
question's hop count where the row says it (`hops`, HotpotQA's supporting-fact titles, MuSiQue's decomposition).
"""

from __future__ import annotations

import json
from typing import Any

from swepost.errors import BadInput
from swepost.records import Task
from swepost.taskkinds import TaskKind

# a source row's columns this kind reads; the rest go to `metadata`
COLUMNS = {"kind", "id", "_id", "instance_id", "question", "problem_statement", "golden_answers", "answer",
           "corpus", "metadata", "hops"}


def from_row(row: dict[str, Any]) -> dict[str, Any]:
    instance_id = _instance_id(row)
    question = _question(row)
    golds = _golds(row)
    metadata = {k: v for k, v in row.items() if k not in COLUMNS}
    extra = row.get("metadata")
    if extra is not None and not isinstance(extra, dict):
        raise BadInput(f"expected an object, got {type(extra).__name__}", key="metadata")
    metadata.update(extra or {})
    answer = row.get("answer")
    if row.get("golden_answers") is not None and answer is not None and answer not in golds:
        metadata["answer"] = answer  # another answer column beside golden_answers: kept, not graded against
    corpus = row.get("corpus")
    if corpus is not None:
        if not isinstance(corpus, str) or not corpus.strip():
            raise BadInput(f"expected the name of an index (a string), got {corpus!r:.60}", key="corpus")
        metadata["corpus"] = corpus
    hops = _hops(row, metadata)
    if hops is not None:
        metadata["hops"] = hops
    return {"instance_id": instance_id, "problem_statement": question, "verify": {"gold_answers": golds},
            "metadata": metadata}


def unusable(task: Task) -> dict[str, str]:
    """No gold answer to score against."""
    if not any(g.strip() for g in task.verify.gold_answers):
        return {"golden_answers": "missing: exact match and F1 score answers against them"}
    return {}


def _instance_id(row: dict[str, Any]) -> str:
    """`instance_id`, `id` or HotpotQA's `_id` (a number is taken as its digits); those given must agree."""
    given = {}
    for key in ("instance_id", "id", "_id"):
        value = row.get(key)
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise BadInput(f"expected a non-empty string, got {value!r:.60}", key=key)
        given[key] = value
    if not given:
        raise BadInput("required field missing (id or instance_id)", key="id")
    (first, value), *rest = given.items()
    for key, other in rest:
        if other != value:
            raise BadInput(f"{first} and {key} are both given and differ ({value!r:.40} vs {other!r:.40}): give one",
                           key=key)
    return value


def _question(row: dict[str, Any]) -> str:
    given = {k: row[k] for k in ("question", "problem_statement") if row.get(k) is not None}
    if not given:
        raise BadInput("required field missing (question or problem_statement)", key="question")
    for key, value in given.items():
        if not isinstance(value, str) or not value.strip():
            raise BadInput(f"expected a non-empty string, got {value!r:.60}", key=key)
    if len(set(given.values())) > 1:
        raise BadInput("question and problem_statement are both given and differ: give one", key="problem_statement")
    return next(iter(given.values()))


def _golds(row: dict[str, Any]) -> list[str]:
    """`golden_answers` (a list, a JSON string of one, or one answer), else HotpotQA's `answer`, else Search-R1's
    `reward_model.ground_truth.target`. Blank answers are dropped; none left makes the task unusable."""
    if row.get("golden_answers") is not None:
        key, value = "golden_answers", row["golden_answers"]
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # an answer that starts with a bracket
    elif row.get("answer") is not None:
        key, value = "answer", row["answer"]
    else:
        key, value = "reward_model", _search_r1_target(row.get("reward_model"))
        if value is None:
            return []
    values = value if isinstance(value, (list, tuple)) else [value]
    golds = []
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str):
            raise BadInput(f"expected answers as strings, got {json.dumps(v, default=str)[:60]}", key=key)
        if v.strip():
            golds.append(v)
    return golds


def _search_r1_target(value: Any) -> Any:
    """Search-R1's parquet rows: reward_model = {"style": "rule", "ground_truth": {"target": [...]}}."""
    if not isinstance(value, dict):
        return None
    truth = value.get("ground_truth")
    if isinstance(truth, dict):
        return truth.get("target")
    return truth


def _hops(row: dict[str, Any], metadata: dict[str, Any]) -> int | None:
    """An explicit `hops` (column, or in metadata), else the distinct titles of HotpotQA / 2Wiki
    `supporting_facts` ([[title, sentence], ...]), else the steps of MuSiQue's `question_decomposition`."""
    for where, value in (("hops", row.get("hops")), ("metadata.hops", metadata.get("hops"))):
        if value is None:
            continue
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if type(value) is not int or value < 1:
            raise BadInput(f"expected a whole number of at least 1, got {value!r:.60}", key=where)
        return value
    facts = row.get("supporting_facts")
    if isinstance(facts, dict) and isinstance(facts.get("title"), list):  # the Hub's HotpotQA: columns of lists
        titles = {t for t in facts["title"] if isinstance(t, str)}
        return len(titles) or None
    if isinstance(facts, list):
        titles = {f[0] for f in facts if isinstance(f, (list, tuple)) and f and isinstance(f[0], str)}
        return len(titles) or None
    steps = row.get("question_decomposition")
    if isinstance(steps, list) and steps:
        return len(steps)
    return None


SEARCH = TaskKind(name="search", from_row=from_row, unusable=unusable, environment="search")
