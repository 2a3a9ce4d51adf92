"""Stage `tasks-import`: SWE-bench-format rows (JSONL or a JSON list) -> a `tasks` artifact.

Public datasets ship FAIL_TO_PASS / PASS_TO_PASS either as lists or as JSON strings of lists; both import.
Columns swepost has no field for are kept in `metadata`. Every problem names the file, line and field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from swepost.artifacts import Artifact, ArtifactStore, producer_record, sha256_file
from swepost.config import FileInput, StageConfig, dotted
from swepost.errors import BadInput, BadInputs
from swepost.records import Task, TaskEnv, TaskVerify

TASKS_FILE = "tasks.jsonl"
_SWE_BENCH_FIELDS = {"instance_id", "repo", "base_commit", "problem_statement", "patch", "test_patch",
                     "FAIL_TO_PASS", "PASS_TO_PASS", "version", "created_at", "hints_text",
                     "environment_setup_commit", "image_name", "install", "test_cmd"}


class TasksImportConfig(StageConfig):
    source: Path = FileInput(description="a SWE-bench-format JSONL file or JSON list of task rows")
    name: str = Field("tasks", description="output artifact name")
    format: Literal["auto", "jsonl", "json"] = Field("auto", description="auto: a file starting with '[' is a "
                                                     "JSON list, anything else JSONL")
    kind: Literal["swe", "codeqa", "search"] = Field("swe", description="task kind of rows that do not say")


def run_import(config: TasksImportConfig, store: ArtifactStore) -> Artifact:
    tasks = read_task_file(config.source, fmt=config.format, kind=config.kind)
    producer = producer_record("tasks-import", config.model_dump(mode="json"),
                               source_sha256=sha256_file(Path(config.source)))
    with store.write(config.name, "tasks", producer=producer) as w:
        with open(w.path / TASKS_FILE, "w") as f:
            for task in tasks:
                f.write(json.dumps(task.model_dump(mode="json"), ensure_ascii=False) + "\n")
        w.stats.update({"tasks": len(tasks), "repos": len({t.repo for t in tasks if t.repo}),
                        "with_image": sum(1 for t in tasks if t.env.image)})
    return w.artifact


def load_tasks(art: Artifact) -> list[Task]:
    if art.kind != "tasks":
        raise BadInput(f"{art.id} is a {art.kind} artifact, not tasks")
    path = art.path / TASKS_FILE
    return [Task.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


# --- reading rows ---------------------------------------------------------------------------------------------

def read_task_file(path: str | Path, *, fmt: str = "auto", kind: str = "swe") -> list[Task]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput("file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read: {e}", file=str(path)) from None
    if fmt == "json" or (fmt == "auto" and text.lstrip().startswith("[")):
        rows = _json_list_rows(text, str(path))
    else:
        rows = _jsonl_rows(text, str(path))
    tasks, problems, first_line = [], [], {}
    for line, row in rows:
        try:
            task = row_to_task(row, default_kind=kind)
        except BadInput as e:
            problems.append(BadInput(e.detail, file=str(path), line=line, key=e.key))
            continue
        if task.instance_id in first_line:
            problems.append(BadInput(f"duplicate instance_id {task.instance_id!r} (first on line "
                                     f"{first_line[task.instance_id]})", file=str(path), line=line,
                                     key="instance_id"))
            continue
        first_line[task.instance_id] = line
        tasks.append(task)
    if problems:
        raise BadInputs(problems)
    if not tasks:
        raise BadInput("no task rows found", file=str(path))
    return tasks


def _jsonl_rows(text: str, file: str) -> list[tuple[int, Any]]:
    rows, problems = [], []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rows.append((n, json.loads(raw)))
        except json.JSONDecodeError as e:
            problems.append(BadInput(f"invalid JSON: {e.msg} (column {e.colno})", file=file, line=n))
    if problems:
        raise BadInputs(problems)
    return rows


def _json_list_rows(text: str, file: str) -> list[tuple[int, Any]]:
    """Decode a JSON list element by element so each row knows the line it starts on."""
    decoder, rows = json.JSONDecoder(), []
    i = text.index("[") + 1

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    i = skip(i)
    if i < len(text) and text[i] == "]":
        return rows
    while True:
        line = text.count("\n", 0, i) + 1
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise BadInput(f"invalid JSON: {e.msg}", file=file, line=e.lineno) from None
        rows.append((line, obj))
        i = skip(i)
        if i < len(text) and text[i] == ",":
            i = skip(i + 1)
            continue
        if i < len(text) and text[i] == "]":
            if text[i + 1:].strip():
                raise BadInput("invalid JSON: extra data after the list", file=file,
                               line=text.count("\n", 0, skip(i + 1)) + 1)
            return rows
        raise BadInput("invalid JSON: expected ',' or ']' between rows", file=file,
                       line=text.count("\n", 0, i) + 1)


def row_to_task(row: Any, *, default_kind: str = "swe") -> Task:
    """One SWE-bench / SWE-Gym / swepost row -> Task; BadInput(key=field) says what is wrong."""
    if not isinstance(row, dict):
        raise BadInput(f"expected a JSON object per row, got {type(row).__name__}")
    if "verify" in row or "env" in row:  # swepost's own record, as written by `tasks import`
        try:
            return Task.model_validate(row)
        except ValidationError as e:
            err = e.errors()[0]
            raise BadInput(err["msg"], key=dotted(tuple(err["loc"]))) from None
    kind = row.get("kind", default_kind)
    image = _opt_str(row, "image_name")
    task = {
        "instance_id": _str(row, "instance_id"),
        "kind": kind,
        "problem_statement": _str(row, "problem_statement"),
        "repo": _opt_str(row, "repo") if image else _str(row, "repo"),
        "base_commit": _opt_str(row, "base_commit") if image else _str(row, "base_commit"),
        "patch": _opt_str(row, "patch") or "",
        "test_patch": _opt_str(row, "test_patch") or "",
        "version": _opt_str(row, "version", numbers=True),
        "created_at": _opt_str(row, "created_at"),
        "hints_text": _opt_str(row, "hints_text") or "",
        "environment_setup_commit": _opt_str(row, "environment_setup_commit"),
    }
    install = row.get("install")
    if isinstance(install, str):
        install = [install]
    if install is not None and not (isinstance(install, list) and all(isinstance(c, str) for c in install)):
        raise BadInput("expected a command or a list of commands", key="install")
    env = TaskEnv(image=image, install=install or [], test_cmd=_opt_str(row, "test_cmd"))
    if kind == "swe":
        verify = TaskVerify(fail_to_pass=_test_ids(row, "FAIL_TO_PASS", required=True),
                            pass_to_pass=_test_ids(row, "PASS_TO_PASS", required=False))
    else:
        verify = TaskVerify()
    metadata = {k: v for k, v in row.items() if k not in _SWE_BENCH_FIELDS and k != "kind"}
    try:
        return Task(**task, env=env, verify=verify, metadata=metadata)
    except ValidationError as e:
        err = e.errors()[0]
        raise BadInput(f"{err['msg']} (got {err.get('input')!r})", key=dotted(tuple(err["loc"]))) from None


def _str(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        raise BadInput("required field missing", key=key)
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"expected a non-empty string, got {value!r:.60}", key=key)
    return value


def _opt_str(row: dict, key: str, numbers: bool = False) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise BadInput(f"expected a string, got {type(value).__name__}", key=key)
    return value


def _test_ids(row: dict, key: str, required: bool) -> list[str]:
    value = row.get(key)
    if value is None:
        if required:
            raise BadInput("required field missing (a list of test ids)", key=key)
        return []
    if isinstance(value, str):  # SWE-bench on the Hub ships these as JSON strings
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadInput(f"expected a list of test ids or a JSON string of one, got {value!r:.60}",
                           key=key) from None
    if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
        raise BadInput(f"expected a list of test ids (strings), got {json.dumps(value)[:60]}", key=key)
    return value

