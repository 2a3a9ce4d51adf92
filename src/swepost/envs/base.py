"""The Environment protocol: a stateful task environment the agent loop talks to through tools."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from swepost.records import Task


class ToolError(Exception):
    """A tool call the environment cannot carry out as asked (bad arguments, missing file): the message is
    returned to the model as the observation, and the episode goes on. Marked as a `tool` error on the turn."""


class MalformedCall(ToolError):
    """A tool call that is not a call at all (bad JSON, unknown tool, arguments of the wrong shape): marked as a
    `format` error on the turn. An environment may raise it from `step` for arguments its schema rejects."""


class EnvironmentBroken(Exception):
    """The environment itself broke (sandbox gone): the episode ends with sandbox_error."""


@dataclass
class Observation:
    content: str
    done: bool = False  # the episode ends (submit)
    answer: str | None = None  # what was submitted, where the task wants an answer


class Environment(Protocol):
    name: str

    def reset(self, task: Task) -> list[dict[str, Any]]:
        """Start an episode: returns the first messages (system, user)."""
        ...

    def tools(self) -> list[dict[str, Any]]:
        """Tool schemas in OpenAI format: {"type": "function", "function": {name, description, parameters}}."""
        ...

    def step(self, name: str, arguments: dict[str, Any]) -> Observation:
        """Run one tool call; raises ToolError for a call it cannot honour, EnvironmentBroken if broken."""
        ...

    def final_diff(self) -> str:
        ...

    def score(self) -> dict[str, Any]:
        """Grade the episode's result: {"reward", "resolved", "evidence"}."""
        ...

    def close(self) -> None:
        ...
