"""The Policy protocol: who writes the assistant turns. Implementations never import each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from swepost.records import Task


class PolicyError(Exception):
    """The policy could not produce a turn (server down after retries, generation failed): policy_error."""


class ContextOverflow(PolicyError):
    """The conversation no longer fits the model's context: context_overflow."""


@dataclass
class PolicyReply:
    """One assistant turn in OpenAI chat format: {"role": "assistant", "content": ..., "tool_calls": [...]}.

    tool_calls are {"id", "type": "function", "function": {"name", "arguments": <JSON string>}}; arguments
    stay the raw string the model wrote, so the agent loop (not the policy) judges malformed JSON.
    """

    message: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Policy(Protocol):
    name: str

    def describe(self) -> dict[str, Any]:
        """What to record in every trajectory: the model and every sampling parameter in force."""
        ...

    def start(self, task: Task) -> None:
        """A new episode on `task` begins (scripted and oracle policies use it; others may ignore it)."""
        ...

    def reply(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> PolicyReply:
        ...
