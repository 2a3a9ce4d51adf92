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


def command_observation(result: Any, timeout: float, empty: str) -> str:
    """What a model sees of a shell command's result (a sandbox CommandResult): its output, then notes for a
    timeout, a non-zero exit code, an out-of-memory kill or a restarted shell; `empty` when there is neither."""
    notes = []
    if result.timed_out:
        notes.append(f"[timed out after {timeout:g} s]")
    elif result.exit_code != 0:
        notes.append(f"[exit code {result.exit_code}]")
    if result.oom_killed:
        notes.append("[a process was killed: out of memory]")
    if result.session_restarted:
        notes.append("[the shell was restarted: the working directory and variables are reset]")
    output = result.output
    if not output and not notes:
        return empty
    if output and notes and not output.endswith("\n"):
        output += "\n"
    return output + "\n".join(notes)
