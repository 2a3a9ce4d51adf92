"""Reading a source row's columns: typed getters that name the column, and the SWE-bench mapping the built-in
kinds share (SWE-bench, SWE-Gym and SWE-smith style rows)."""

from __future__ import annotations

import json
from typing import Any

from swepost.errors import BadInput

SWE_BENCH_COLUMNS = {"instance_id", "repo", "base_commit", "problem_statement", "patch", "test_patch",
                     "FAIL_TO_PASS", "PASS_TO_PASS", "version", "created_at", "hints_text",
                     "environment_setup_commit", "image_name", "install", "test_cmd"}


def swe_bench_fields(row: dict[str, Any]) -> dict[str, Any]:
    """A SWE-bench-style row -> Task fields (no `verify`); a row with an `image_name` may leave out repo and
    base_commit (the image holds the repo). Columns swepost has no field for go to `metadata`."""
    image = optional_str(row, "image_name")
    fields = {
        "instance_id": required_str(row, "instance_id"),
        "problem_statement": required_str(row, "problem_statement"),
        "repo": optional_str(row, "repo") if image else required_str(row, "repo"),
        "base_commit": optional_str(row, "base_commit") if image else required_str(row, "base_commit"),
        "patch": optional_str(row, "patch") or "",
        "test_patch": optional_str(row, "test_patch") or "",
        "version": optional_str(row, "version", numbers=True),
        "created_at": optional_str(row, "created_at"),
        "hints_text": optional_str(row, "hints_text") or "",
        "environment_setup_commit": optional_str(row, "environment_setup_commit"),
    }
    install = row.get("install")
    if isinstance(install, str):
        install = [install]
    if install is not None and not (isinstance(install, list) and all(isinstance(c, str) for c in install)):
        raise BadInput("expected a command or a list of commands", key="install")
    fields["env"] = {"image": image, "install": install or [], "test_cmd": optional_str(row, "test_cmd")}
    fields["metadata"] = {k: v for k, v in row.items() if k not in SWE_BENCH_COLUMNS and k != "kind"}
    return fields


def required_str(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        raise BadInput("required field missing", key=key)
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"expected a non-empty string, got {value!r:.60}", key=key)
    return value


def optional_str(row: dict, key: str, numbers: bool = False) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise BadInput(f"expected a string, got {type(value).__name__}", key=key)
    return value


def listed_tests(row: dict, key: str, required: bool) -> list[str]:
    """A list of test ids, or a JSON string of one (SWE-bench on the Hub ships them so)."""
    value = row.get(key)
    if value is None:
        if required:
            raise BadInput("required field missing (a list of test ids)", key=key)
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadInput(f"expected a list of test ids or a JSON string of one, got {value!r:.60}",
                           key=key) from None
    if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
        raise BadInput(f"expected a list of test ids (strings), got {json.dumps(value)[:60]}", key=key)
    return value


def listed_strings(row: dict, key: str, what: str = "strings") -> list[str]:
    """A list of non-empty strings, or a JSON string of one (datasets on the Hub often ship lists so); missing
    is an empty list."""
    value = row.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadInput(f"expected a list of {what} or a JSON string of one, got {value!r:.60}", key=key) from None
    if not isinstance(value, list) or not all(isinstance(s, str) and s.strip() for s in value):
        raise BadInput(f"expected a list of {what} (non-empty strings), got {json.dumps(value)[:60]}", key=key)
    return value


def listed_commands(row: dict, key: str) -> list[str]:
    """A command or a list of commands; missing is an empty list."""
    value = row.get(key)
    if isinstance(value, str):
        value = [value]
    if value is not None and not (isinstance(value, list) and all(isinstance(c, str) for c in value)):
        raise BadInput("expected a command or a list of commands", key=key)
    return value or []


def repo_name(row: dict, key: str) -> tuple[str | None, str | None]:
    """(owner/name, the git URL it was written as, or None): a repo given as `owner/name` or as a git URL
    (https://host/owner/name(.git), git@host:owner/name.git, ssh://...), as SWE-QA-Pro's rows give it."""
    value = optional_str(row, key)
    if value is None:
        return None, None
    text = value.strip().removesuffix("/").removesuffix(".git")
    is_url = "://" in text or text.startswith("git@")
    if is_url:
        text = text.split("://", 1)[-1].replace(":", "/")
        parts = [p for p in text.split("/") if p]
        if len(parts) < 3:  # host, owner, name
            raise BadInput(f"expected a git URL ending in /owner/name, got {value!r:.80}", key=key)
        text = "/".join(parts[-2:])
    owner, sep, name = text.partition("/")
    if not (sep and owner and name) or "/" in name or any(c.isspace() for c in text):
        raise BadInput(f"expected owner/name or a git URL, got {value!r:.80}", key=key)
    return text, value if is_url else None
