"""Task kinds: what `kind` in a task means. One module per kind, named by one line in registry.TASK_KINDS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from swepost.errors import BadInput
from swepost.records import Task
from swepost.registry import TASK_KINDS, check_component, load_component


def always_usable(task: Task) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class TaskKind:
    """A kind of task: how a source row becomes a task, what makes a task useless, where it runs by default."""

    name: str
    # a source row (one JSON object) -> the Task's fields but `kind`; a missing column may raise KeyError, a bad
    # one BadInput(key=column): `tasks import` reports either by file, line and column
    from_row: Callable[[dict[str, Any]], dict[str, Any]]
    # {field: why} for each reason no stage can use the task: `tasks import` warns, and --strict refuses
    unusable: Callable[[Task], dict[str, str]] = always_usable
    # its environment by default: a name of registry.ENVIRONMENTS or module:Class; None when there is none yet
    environment: str | None = None


def task_kind(name: str) -> TaskKind:
    """The kind named `name` in registry.TASK_KINDS, or at the import path `module:NAME`; else BadInput naming
    the known kinds."""
    check_component(name, TASK_KINDS, "task kind")
    kind = load_component(name, TASK_KINDS, "task kind")
    if not isinstance(kind, TaskKind):
        raise BadInput(f"task kind {name!r} is a {type(kind).__name__}, not a swepost.taskkinds.TaskKind")
    return kind
