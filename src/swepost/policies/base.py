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


MIN_TURN_TOKENS = 16  # a turn with less room than this cannot write a useful tool call


def turn_budget(max_turn_tokens: int, max_model_len: int | None, prompt_tokens: int, *,
                min_turn_tokens: int = MIN_TURN_TOKENS, counted: str = "counted") -> int:
    """The next turn's generation budget, as RL's rollouts compute it: the per-turn cap `max_turn_tokens`, at most
    what the model's context has left after the prompt. No `max_model_len`: the cap alone. ContextOverflow, before
    anything is generated, when what is left is under `min_turn_tokens` (or under the cap, when that is smaller)."""
    if max_model_len is None:
        return max_turn_tokens
    left = max_model_len - prompt_tokens
    floor = min(min_turn_tokens, max_turn_tokens)
    if left < floor:
        raise ContextOverflow(f"the conversation has {prompt_tokens} tokens ({counted}); max_model_len "
                              f"{max_model_len} leaves {max(left, 0)} for the next turn, under its floor of {floor}")
    return min(max_turn_tokens, left)


def one_name(names: tuple[str, str], values: tuple[int | None, int | None], default: int | None) -> int | None:
    """A setting that has two names (RL's and a library's, e.g. max_turn_tokens and max_tokens): whichever is
    given; both given must agree."""
    (a, b), (x, y) = names, values
    if x is not None and y is not None and x != y:
        raise ValueError(f"{a} ({x}) and {b} ({y}) are the same setting: give one")
    value = x if x is not None else y
    return default if value is None else value
