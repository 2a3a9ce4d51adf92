"""Code question answering (SWE-QA style): a question about a repo at a pinned commit, judged against a
reference answer and rubric.

Rows import in swepost's columns or in SWE-QA-Pro's released ones (`commit_id`, `answer`, a git URL for
`repo`, `cluster` as "top.sub" or {"id": "top.sub", ...}); a row without `instance_id` gets
`<owner>__<name>-qa-<first 8 hex of sha256(question)>`, the same on every import.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from swepost.errors import BadInput
from swepost.records import Task
from swepost.taskkinds import TaskKind
from swepost.taskkinds.columns import listed_commands, listed_strings, optional_str, repo_name, required_str

# a source row's columns this kind reads; the rest go to `metadata`
COLUMNS = {"kind", "instance_id", "repo", "base_commit", "commit_id", "question", "problem_statement",
           "reference_answer", "answer", "rubric", "qa_type", "cluster", "image_name", "install", "version",
           "created_at"}


def from_row(row: dict[str, Any]) -> dict[str, Any]:
    image = optional_str(row, "image_name")
    repo, repo_url = repo_name(row, "repo")
    if repo is None and not image:
        raise BadInput("required field missing (owner/name or a git URL; or give an image_name)", key="repo")
    base_commit = _one_of(row, "base_commit", "commit_id")
    if base_commit is None and not image:
        raise BadInput("required field missing (base_commit or commit_id; or give an image_name)",
                       key="base_commit")
    question = _one_of(row, "question", "problem_statement")
    if question is None:
        raise BadInput("required field missing (question or problem_statement)", key="question")
    instance_id = (required_str(row, "instance_id") if row.get("instance_id") is not None
                   else _derived_id(repo, image, question))
    metadata = {k: v for k, v in row.items() if k not in COLUMNS}
    qa_type = optional_str(row, "qa_type")
    if qa_type is not None:
        metadata["qa_type"] = qa_type.strip()
    metadata.update(_cluster(row))
    if repo_url is not None:
        metadata["repo_url"] = repo_url
    return {
        "instance_id": instance_id,
        "problem_statement": question,
        "repo": repo,
        "base_commit": base_commit,
        "version": optional_str(row, "version", numbers=True),
        "created_at": optional_str(row, "created_at"),
        "env": {"image": image, "install": listed_commands(row, "install")},
        "verify": {"reference_answer": _one_of(row, "reference_answer", "answer", blank_ok=True),
                   "rubric": listed_strings(row, "rubric", what="rubric points")},
        "metadata": metadata,
    }


def unusable(task: Task) -> dict[str, str]:
    """No reference answer for the judge to score against; no repo to read (neither a mirror's repo and commit,
    nor an image)."""
    problems = {}
    if not (task.verify.reference_answer or "").strip():
        problems["reference_answer"] = "missing: the judge scores answers against it"
    if not task.env.image:
        if not task.repo:
            problems["repo"] = "missing, and no image: nowhere to read the code from"
        if not task.base_commit:
            problems["base_commit"] = "missing, and no image: no pinned version of the code to ask about"
    return problems


def _one_of(row: dict, key: str, alias: str, blank_ok: bool = False) -> str | None:
    """Column `key`, or its other name `alias`; both given must agree. The error names the column given."""
    given = [k for k in (key, alias) if row.get(k) is not None]
    for k in given:
        value = optional_str(row, k)
        if not blank_ok and not value.strip():
            raise BadInput("expected a non-empty string", key=k)
    if len(given) == 2 and row[key] != row[alias]:
        raise BadInput(f"{key} and {alias} are both given and differ: give one", key=alias)
    return row[given[0]] if given else None


def _cluster(row: dict) -> dict[str, Any]:
    """SWE-QA-Pro's two-level topic id ("top.sub") under `cluster`; a nested {"id": ..., ...} keeps its other
    keys under `cluster_info`."""
    value = row.get("cluster")
    if value is None:
        return {}
    extra = {}
    if isinstance(value, dict):
        if value.get("id") is None:
            raise BadInput(f"expected a cluster id or {{\"id\": ...}}, got {value!r:.60}", key="cluster")
        extra = {k: v for k, v in value.items() if k != "id"}
        value = value["id"]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        why = " (a number drops trailing zeros: give \"3.10\", not 3.10)" if isinstance(value, float) else ""
        raise BadInput(f"expected a cluster id as a string such as \"3.2\", got {value!r:.60}{why}", key="cluster")
    return {"cluster": value.strip(), **({"cluster_info": extra} if extra else {})}


def _derived_id(repo: str | None, image: str | None, question: str) -> str:
    prefix = repo.replace("/", "__") if repo else re.sub(r"[^A-Za-z0-9_.-]+", "_", image or "")
    return f"{prefix}-qa-{hashlib.sha256(question.encode()).hexdigest()[:8]}"


CODEQA = TaskKind(name="codeqa", from_row=from_row, unusable=unusable, environment="codeqa")
