"""Stage `tasks-import`: SWE-bench-format rows (JSONL or a JSON list) -> a `tasks` artifact.

Public datasets ship FAIL_TO_PASS / PASS_TO_PASS either as lists or as JSON strings of lists; both import.
Columns swepost has no field for are kept in `metadata`. Every problem names the file, line and field; all of a
file's problems are reported together. A row's kind (swepost.taskkinds) maps its columns and says what makes it
useless to every stage (for swe: no patches, or no FAIL_TO_PASS test); such rows import with a warning, or fail
the import with `strict`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swepost.artifacts import Artifact, ArtifactStore, producer_record, sha256_path
from swepost.config import FileInput, StageConfig, dotted, load_yaml, validate
from swepost.errors import BadInput, BadInputs
from swepost.records import Task, TaskKindName
from swepost.taskkinds import TaskKind, task_kind

TASKS_FILE = "tasks.jsonl"


class TasksImportConfig(StageConfig):
    source: Path = FileInput(description="SWE-bench-format rows: a JSONL file, a JSON list, a Parquet file, or a "
                             "Hugging Face dataset folder written by save_to_disk")
    name: str = Field("tasks", description="output artifact name")
    format: Literal["auto", "jsonl", "json", "parquet", "hf-disk"] = Field(
        "auto", description="auto: a folder is a saved dataset, *.parquet is Parquet, a file starting with '[' "
        "is a JSON list, anything else JSONL")
    split: str | None = Field(None, description="split of a saved DatasetDict (default: its only split; with "
                              "several, naming one is required)")
    kind: TaskKindName = Field("swe", description="task kind of rows that do not say: swe, codeqa, search "
                               "(registry.TASK_KINDS) or module:NAME of a swepost.taskkinds.TaskKind")
    specs: Path | None = FileInput(None, description="YAML of per-repo specs (install, test_cmd, network, and "
                                   "per-version overrides) for rows that do not carry their own")
    strict: bool = Field(False, description="fail (exit 2) on rows no stage can use instead of warning (as their "
                         "kind says: a swe row without patch or test_patch, or with an empty FAIL_TO_PASS)")


class RepoSpec(BaseModel):
    """How to install and test one repo (like SWE-bench's per-repo specs); a row's own values win."""

    model_config = ConfigDict(extra="forbid")

    install: list[str] | None = None
    test_cmd: str | None = None
    network: bool | None = None
    versions: dict[str, RepoSpec] = Field(default_factory=dict)


def load_specs(path: str | Path) -> dict[str, RepoSpec]:
    """`owner/name: {install: [...], test_cmd: ..., versions: {"1.2": {...}}}`, checked key by key."""
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise BadInput("a specs file maps owner/name to {install, test_cmd, network, versions}", file=str(path))

    def where(loc):
        for n in range(len(loc), 0, -1):
            if loc[:n] in lines:
                return f"{path}:{lines[loc[:n]]}"
        return str(path)

    return {repo: validate(RepoSpec, spec or {}, where, prefix=(repo,)) for repo, spec in data.items()}


def apply_specs(task: Task, specs: dict[str, RepoSpec]) -> Task:
    spec = specs.get(task.repo or "")
    if spec is None:
        return task
    layers = [spec, spec.versions.get(task.version or "")]
    env = task.env.model_copy()
    for layer in [x for x in layers if x is not None]:
        if layer.install is not None and not task.env.install:
            env.install = list(layer.install)
        if layer.test_cmd is not None and task.env.test_cmd is None:
            env.test_cmd = layer.test_cmd
        if layer.network is not None:
            env.network = layer.network
    return task.model_copy(update={"env": env})


def run_import(config: TasksImportConfig, store: ArtifactStore) -> Artifact:
    located = read_located_tasks(config.source, fmt=config.format, kind=config.kind, split=config.split)
    unusable = unusable_rows(located, str(config.source))
    if unusable and config.strict:
        raise BadInputs(unusable)
    if unusable:
        rows = len({p.line for p in unusable})
        warnings.warn(f"{rows} of {len(located)} rows no stage can use (imported anyway; --strict refuses them):\n"
                      + BadInputs(unusable).render(), stacklevel=2)
    tasks = [task for _, task in located]
    if config.specs is not None:
        specs = load_specs(config.specs)
        tasks = [apply_specs(t, specs) for t in tasks]
    producer = producer_record("tasks-import", config.model_dump(mode="json"),
                               source_sha256=sha256_path(Path(config.source)))
    with store.write(config.name, "tasks", producer=producer) as w:
        with open(w.path / TASKS_FILE, "w") as f:
            for task in tasks:
                f.write(json.dumps(task.model_dump(mode="json"), ensure_ascii=False) + "\n")
        w.stats.update({"tasks": len(tasks), "repos": len({t.repo for t in tasks if t.repo}),
                        "with_image": sum(1 for t in tasks if t.env.image),
                        "unusable": len({p.line for p in unusable})})
    return w.artifact


def load_tasks(art: Artifact) -> list[Task]:
    if art.kind != "tasks":
        raise BadInput(f"{art.id} is a {art.kind} artifact, not tasks")
    path = art.path / TASKS_FILE
    tasks = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                tasks.append(Task.model_validate_json(line))
            except ValidationError as e:  # a kind named by a module that is no longer on the path, say
                raise BadInput(_message(e), file=f"{art.id} ({path})", line=n, key=_key(e)) from None
    return tasks


# --- reading rows ---------------------------------------------------------------------------------------------

def unusable_rows(located: list[tuple[int, Task]], file: str) -> list[BadInput]:
    """Every reason, by line and field, that a row is useless to every stage, as its kind says."""
    kinds: dict[str, TaskKind] = {}
    problems = []
    for line, task in located:
        if task.kind not in kinds:
            kinds[task.kind] = task_kind(task.kind)
        problems += [BadInput(why, file=file, line=line, key=key)
                     for key, why in kinds[task.kind].unusable(task).items()]
    return problems


def read_task_file(path: str | Path, *, fmt: str = "auto", kind: str = "swe", split: str | None = None) -> list[Task]:
    """Rows of any supported format -> tasks; problems are reported by file and line (or row number)."""
    return [task for _, task in read_located_tasks(path, fmt=fmt, kind=kind, split=split)]


def read_located_tasks(path: str | Path, *, fmt: str = "auto", kind: str = "swe",
                       split: str | None = None) -> list[tuple[int, Task]]:
    """(line or row number, task) for every row; every problem of the file is raised together."""
    path = Path(path)
    if not path.exists():
        raise BadInput("file not found", file=str(path))
    problems: list[BadInput] = []
    if fmt == "hf-disk" or (fmt == "auto" and path.is_dir()):
        rows = _dataset_rows(path, split)
    elif fmt == "parquet" or (fmt == "auto" and path.suffix == ".parquet"):
        rows = _parquet_rows(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BadInput(f"cannot read: {e}", file=str(path)) from None
        if fmt == "json" or (fmt == "auto" and text.lstrip().startswith("[")):
            rows = _json_list_rows(text, str(path))
        else:
            rows, problems = _jsonl_rows(text, str(path))
    tasks, first_line, kinds = [], {}, {}
    for line, row in rows:
        try:
            task = row_to_task(row, default_kind=kind, kinds=kinds)
        except BadInput as e:
            problems.append(BadInput(e.detail, file=str(path), line=line, key=e.key))
            continue
        if task.instance_id in first_line:
            problems.append(BadInput(f"duplicate instance_id {task.instance_id!r} (first on line "
                                     f"{first_line[task.instance_id]})", file=str(path), line=line,
                                     key="instance_id"))
            continue
        first_line[task.instance_id] = line
        tasks.append((line, task))
    if problems:
        raise BadInputs(sorted(problems, key=lambda p: p.line or 0))
    if not tasks:
        raise BadInput("no task rows found", file=str(path))
    return tasks


def _parquet_rows(path: Path) -> list[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
        raise BadInput(f"not a readable Parquet file: {e}", file=str(path)) from None
    return [(n, row) for n, row in enumerate(table.to_pylist(), start=1)]


def _dataset_rows(path: Path, split: str | None) -> list[tuple[int, Any]]:
    """A Hugging Face dataset saved with `save_to_disk` (a Dataset, or a DatasetDict and a split)."""
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - datasets raises FileNotFoundError, ValueError, ...
        raise BadInput(f"not a dataset saved with save_to_disk: {e}", file=str(path)) from None
    if isinstance(data, DatasetDict):
        names = list(data)
        chosen = split or (names[0] if len(names) == 1 else None)
        if chosen is None:
            raise BadInput(f"this DatasetDict has {len(names)} splits ({', '.join(names)}): choose a split with "
                           f"--split", file=str(path))
        if chosen not in data:
            raise BadInput(f"no split {chosen!r}: choose a split with --split ({', '.join(names)})", file=str(path))
        data = data[chosen]
    elif split is not None:
        raise BadInput(f"--split {split}: this dataset has no splits", file=str(path))
    return [(n, row) for n, row in enumerate(data.to_list(), start=1)]


def _jsonl_rows(text: str, file: str) -> tuple[list[tuple[int, Any]], list[BadInput]]:
    """The rows that decode, and a problem for each line that does not (the other rows are still checked)."""
    rows, problems = [], []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rows.append((n, json.loads(raw)))
        except json.JSONDecodeError as e:
            problems.append(BadInput(f"invalid JSON: {e.msg} (column {e.colno})", file=file, line=n))
    return rows, problems


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


def row_to_task(row: Any, *, default_kind: str = "swe", kinds: dict[str, TaskKind] | None = None) -> Task:
    """One row -> Task: swepost's own record as is, any other row through its kind's column mapping (SWE-bench /
    SWE-Gym for swe). BadInput(key=field) says what is wrong. `kinds` remembers the kinds already loaded."""
    if not isinstance(row, dict):
        raise BadInput(f"expected a JSON object per row, got {type(row).__name__}")
    if "verify" in row or "env" in row:  # swepost's own record, as written by `tasks import`
        try:
            return Task.model_validate(row)
        except ValidationError as e:
            raise BadInput(_message(e), key=_key(e)) from None
    name = row.get("kind", default_kind)
    if not isinstance(name, str):
        raise BadInput(f"expected the name of a task kind, got {type(name).__name__}", key="kind")
    kinds = {} if kinds is None else kinds
    if name not in kinds:
        try:
            kinds[name] = task_kind(name)
        except BadInput as e:
            raise BadInput(e.detail, key="kind") from None
    try:
        fields = kinds[name].from_row(row)
    except KeyError as e:  # a kind module may index its columns: a missing one is bad input, not a crash
        raise BadInput("required field missing", key=str(e.args[0])) from None
    try:
        return Task.model_validate({**fields, "kind": name})
    except ValidationError as e:
        err = e.errors()[0]
        raise BadInput(f"{_message(e)} (got {err.get('input')!r})", key=_key(e)) from None


def _message(e: ValidationError) -> str:
    return str(e.errors()[0]["msg"]).removeprefix("Value error, ")


def _key(e: ValidationError) -> str:
    return dotted(tuple(e.errors()[0]["loc"]))
