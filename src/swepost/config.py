"""The one config system: pydantic models (unknown keys are errors) filled in layers.

defaults <- YAML file (--config) <- --set a.b=value (in order) <- explicit flags. A flag the user did not
give is None and never overrides the layers below it. Every value remembers where it came from, so a
validation error names the file and line (or the --set / flag) and the dotted key.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swepost.errors import BadInput, BadInputs

KeyPath = tuple  # ("stages", 0, "config", "lr"): str keys and int list indices


class StageConfig(BaseModel):
    """Base of every stage's config: unknown keys are rejected, defaults are validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())
    # fields that do not change the result (parallelism, logging, checkpoint frequency): left out of recipe
    # cache keys and of work-folder keys, so a run interrupted under one value resumes under another
    NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset()


def ArtifactInput(default: Any = ..., *, description: str) -> Any:
    """A field that names an input artifact (a reference the store resolves; it becomes a parent)."""
    return Field(default, description=description, json_schema_extra={"swepost_input": "artifact"})


def FileInput(default: Any = ..., *, description: str, names: tuple[str, ...] = ()) -> Any:
    """A field that names an input file outside the store; its content (not its path) enters cache keys. With
    `names`, the field may instead hold one of these names of a file shipped with swepost (`zero2`): a name is
    kept as text, swepost's own code covers its content. Such a field is of kind "file_or_name"."""
    if names:
        return Field(default, description=description,
                     json_schema_extra={"swepost_input": "file_or_name", "swepost_names": list(names)})
    return Field(default, description=description, json_schema_extra={"swepost_input": "file"})


def ModelInput(default: Any = ..., *, description: str) -> Any:
    """A field that names a model: a checkpoint artifact (by id), a local folder (by content) or a hub id (by the
    revision it resolves to) in cache keys."""
    return Field(default, description=description, json_schema_extra={"swepost_input": "model"})


def PathInput(default: Any = None, *, description: str) -> Any:
    """A folder outside the store whose location does not change the result (e.g. a repo mirror: the tasks'
    commit hashes pin the code). Relative to the recipe in recipes; left out of cache keys."""
    return Field(default, description=description, json_schema_extra={"swepost_input": "path"})


def input_fields(model: type[BaseModel], kind: str) -> list[str]:
    """Fields of `model` declared with ArtifactInput ("artifact"), FileInput ("file", or "file_or_name" when it
    has shipped names), ModelInput ("model") or PathInput ("path")."""
    out = []
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("swepost_input") == kind:
            out.append(name)
    return out


def file_inputs(model: type[BaseModel], data: dict) -> list[str]:
    """The FileInput fields whose value in `data` (a config, or its raw mapping) names a file: set, a string,
    and not one of the field's shipped names. Their content, not their text, belongs in keys."""
    out = []
    for name in input_fields(model, "file") + input_fields(model, "file_or_name"):
        value = data.get(name)
        extra = model.model_fields[name].json_schema_extra
        shipped = extra.get("swepost_names", ()) if isinstance(extra, dict) else ()
        if isinstance(value, (str, Path)) and str(value) and str(value) not in shipped:
            out.append(name)
    return out


def dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# --- YAML with line numbers ---------------------------------------------------------------------------------

def load_yaml(path: str | Path) -> tuple[Any, dict[KeyPath, int]]:
    """Parse a YAML file; also return the line of every mapping key and list item, by key path."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadInput("file not found", file=str(path)) from None
    except OSError as e:
        raise BadInput(f"cannot read: {e.strerror}", file=str(path)) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise BadInput(f"invalid YAML: {problem}", file=str(path),
                       line=mark.line + 1 if mark else None) from None
    lines: dict[KeyPath, int] = {}

    def walk(n: yaml.Node, at: KeyPath) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = (*at, k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[(*at, i)] = item.start_mark.line + 1
                walk(item, (*at, i))

    if node is not None:
        walk(node, ())
    return data, lines


# --- layers ---------------------------------------------------------------------------------------------------

def parse_set(expr: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], value), the value read as YAML ('3' is an int, '[a, b]' a list)."""
    key, sep, raw = expr.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise BadInput(f"--set {expr!r}: expected KEY=VALUE with a dotted KEY, e.g. --set train.lr=1e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return [p.strip() for p in parts], value


class ConfigLayers:
    """A dict built up layer by layer, remembering the origin of every key for error messages."""

    def __init__(self, defaults: dict | None = None):
        self.data: dict = {}
        self.origin: dict[KeyPath, str] = {}
        if defaults:
            self.merge(defaults, "defaults")

    def merge(self, mapping: dict, source: str, lines: dict[KeyPath, int] | None = None) -> None:
        if not isinstance(mapping, dict):
            raise BadInput(f"expected a mapping of keys to values, got {type(mapping).__name__}",
                           file=source)
        _deep_merge(self.data, mapping)
        for path in _leaf_paths(mapping):
            line = (lines or {}).get(path)
            self.origin[path] = f"{source}:{line}" if line else source
        # keep the line of intermediate keys too: a missing-field error points at its parent
        for path, line in (lines or {}).items():
            self.origin.setdefault(path, f"{source}:{line}")

    def add_yaml(self, path: str | Path) -> None:
        data, lines = load_yaml(path)
        if data is None:
            return
        self.merge(data, str(path), lines)

    def add_sets(self, exprs: list[str] | None) -> None:
        for expr in exprs or []:
            parts, value = parse_set(expr)
            self.set(parts, value, f"--set {expr}")

    def add_flags(self, flags: dict[str, Any]) -> None:
        for key, value in flags.items():
            if value is not None:  # a flag not given never overrides the layers below
                self.set(key.split("."), value, f"--{key.replace('_', '-')}")

    def set(self, parts: list[str], value: Any, source: str) -> None:
        node = self.data
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
        path = tuple(parts)
        for known in [k for k in self.origin if k[: len(path)] == path]:
            del self.origin[known]
        self.origin[path] = source

    def where(self, loc: KeyPath) -> str | None:
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.origin:
                return self.origin[loc[:n]]
        return None

    def resolve(self, model: type[BaseModel]):
        return validate(model, self.data, self.where)


def validate(model: type[BaseModel], data: dict, where=lambda loc: None, prefix: KeyPath = ()):
    """model.model_validate(data), turning a ValidationError into BadInput lines that name the key."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            origin = where((*prefix, *loc)) or where(loc)
            file, _, line = (origin or "").rpartition(":")
            if not (file and line.isdigit()):
                file, line = origin, ""
            problems.append(BadInput(_explain(model, err), file=file or None,
                                     line=int(line) if line else None, key=dotted((*prefix, *loc))))
        raise BadInputs(problems) from None


def _explain(model: type[BaseModel], err: dict) -> str:
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, tuple(err["loc"])[:-1])
        return "unknown key" + (f" (expected one of: {', '.join(allowed)})" if allowed else "")
    if err["type"] == "missing":
        return "required, but not given"
    if err["type"] == "value_error":  # a validator's own message says what is wrong
        return str(err["msg"]).removeprefix("Value error, ")
    got = err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) or len(repr(got)) < 60 else type(got).__name__
    return f"{err['msg']} (got {shown})"


def _allowed_keys(model: Any, loc: KeyPath) -> list[str]:
    """The field names valid at `loc` inside `model`, following nested models through lists and dicts."""
    target = model
    for part in loc:
        if isinstance(part, int):  # a list index: the items' model is already unwrapped
            continue
        target = _inner_model(target, part)
        if target is None:
            return []
    if isinstance(target, type) and issubclass(target, BaseModel):
        return sorted(target.model_fields)
    return []


def _inner_model(target: Any, part: Any) -> Any:
    if isinstance(target, type) and issubclass(target, BaseModel):
        field = target.model_fields.get(part) if isinstance(part, str) else None
        return _unwrap(field.annotation) if field else None
    return None


def _unwrap(annotation: Any) -> Any:
    """list[X] / dict[str, X] / X | None -> X, when X is a model."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):  # the arguments only: list[X] itself would recurse for ever
        inner = _unwrap(arg)
        if inner is not None:
            return inner
    return None


def _deep_merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = v


def _leaf_paths(mapping: dict, at: KeyPath = ()) -> list[KeyPath]:
    out = []
    for k, v in mapping.items():
        if isinstance(v, dict) and v:
            out.extend(_leaf_paths(v, (*at, k)))
        else:
            out.append((*at, k))
    return out


def to_yaml(data: BaseModel | dict) -> str:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
