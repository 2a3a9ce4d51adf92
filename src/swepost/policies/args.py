"""`policy_args`, typed: each policy class states its keyword arguments as a pydantic model `Args`; here they are
checked (BadInput, exit 2, naming `policy_args.<key>` and listing the valid keys) and rendered as a Markdown table.

A plugged-in policy (`policy: mymod:MyPolicy`) without an `Args` model takes its policy_args as plain keywords.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Collection
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import PydanticUndefined

from swepost.artifacts import is_secret_key
from swepost.config import dotted
from swepost.errors import BadInput, BadInputs


def args_model(policy_cls: Any) -> type[BaseModel] | None:
    """The policy's `Args` model, or None for a policy that declares none."""
    model = getattr(policy_cls, "Args", None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def validate_policy_args(policy_cls: Any, args: dict[str, Any], key: str = "policy_args", *,
                         later: Collection[str] = ()) -> dict[str, Any]:
    """The keyword arguments to build `policy_cls` with: the keys given, their values converted to the declared
    types (secrets as plain strings). BadInput (exit 2) when a key is unknown or a value has the wrong type or
    is out of bounds, naming `<key>.<arg>` and listing the valid keys. `later`: keys the caller fills in
    afterwards (rft sets `model` per round), so their absence is no error yet. Policies without `Args` get
    `args` back unchecked."""
    model = args_model(policy_cls)
    if model is None:
        return dict(args)
    if not isinstance(args, dict):
        raise BadInput(f"expected a mapping of keyword arguments, got {type(args).__name__}", key=key or None)
    try:
        parsed = model.model_validate(args)
    except ValidationError as e:
        errors = [err for err in e.errors()
                  if not (err["type"] == "missing" and tuple(err["loc"]) in {(k,) for k in later})]
        if not errors:
            return dict(args)
        name = getattr(policy_cls, "name", None) or policy_cls.__name__
        problems = [BadInput(_explain(model, err), key=dotted((key, *err["loc"]) if key else err["loc"]) or None)
                    for err in errors]
        problems.append(BadInput(f"the valid keys of policy {name!r} are: {', '.join(model.model_fields)}",
                                 key=key or None))
        raise BadInputs(problems) from None
    out = {}
    for field in parsed.model_fields_set:
        value = getattr(parsed, field)
        out[field] = value.get_secret_value() if isinstance(value, SecretStr) else value
    return out


def _explain(model: type[BaseModel], err: dict) -> str:
    kind, loc = err["type"], tuple(err["loc"])
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required, but not given"
    if kind == "value_error":  # a validator's own words
        return str(err["msg"]).removeprefix("Value error, ")
    field = model.model_fields.get(loc[0]) if loc and isinstance(loc[0], str) else None
    if kind == "literal_error" and field is not None:
        return f"must be one of {', '.join(map(str, _literals(field.annotation)))} (got {err.get('input')!r})"
    if any(isinstance(part, str) and is_secret_key(part) for part in loc):
        return str(err["msg"])  # never echo what was given for a credential
    got = err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) or len(repr(got)) < 60 else type(got).__name__
    return f"{err['msg']} (got {shown})"


def _literals(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for arg in typing.get_args(annotation) for v in _literals(arg)]


def check_policy_args(policy: Any, args: Any, *, later: Collection[str] = ()) -> Any:
    """The body of a config's `policy_args` field validator: ValueError (which pydantic reports at policy_args,
    with the file and line) when `args` do not fit the built-in policy named `policy`; `args` back unchanged
    otherwise. A plugged-in policy (module:Class) is checked where it is built: importing the user's module is
    for the run, not for reading a config."""
    from swepost.registry import POLICIES, load_component

    if not isinstance(policy, str) or policy not in POLICIES or not isinstance(args, dict):
        return args
    try:
        validate_policy_args(load_component(policy, POLICIES, "policy"), args, key="", later=later)
    except BadInput as e:
        raise ValueError(str(e)) from None
    return args


# -- documentation --------------------------------------------------------------------------------------------


def args_table(policy_cls: Any) -> str:
    """A Markdown table of the policy's arguments (key, type, default, meaning), from its `Args` model."""
    model = args_model(policy_cls)
    if model is None:
        return ""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        default = "required" if field.is_required() else _default(field.get_default(call_default_factory=True))
        cells = [f"`{name}`", type_name(field.annotation) + _bounds(field.metadata), default,
                 field.description or ""]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def type_name(annotation: Any) -> str:
    """`int`, `native | text | auto`, `str (secret)`: a field's type as a reader of the README says it."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(str(v) for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):  # `None` allowed shows as the default "none"
        return " | ".join(type_name(a) for a in typing.get_args(annotation) if a is not type(None))
    if origin is typing.Annotated:
        return type_name(typing.get_args(annotation)[0])
    if annotation is SecretStr:
        return "str (secret)"
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "any"
    if origin is not None:
        inner = ", ".join(type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if inner else origin.__name__
    return getattr(annotation, "__name__", str(annotation))


def _bounds(metadata: list[Any]) -> str:
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    parts = [f"{sign} {getattr(m, attr)}" for m in metadata for attr, sign in signs.items()
             if getattr(m, attr, None) is not None]
    return "".join(f", {p}" for p in parts)


def _default(value: Any) -> str:
    if value is None or value is PydanticUndefined:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"  # as YAML writes it
    return f"`{value!r}`" if not isinstance(value, str) else f"`{value}`"


def policy_args_doc() -> str:
    """The README's policy_args tables: one per built-in policy, from their `Args` models."""
    from swepost.registry import POLICIES, load_component

    parts = []
    for name in POLICIES:
        model = args_model(load_component(name, POLICIES, "policy"))
        if model is not None:
            parts.append(f"### `{name}`\n\n{args_table(load_component(name, POLICIES, 'policy'))}")
    return "\n".join(parts)
