"""The Environment protocol: a stateful task environment the agent loop talks to through tools."""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from swepost.errors import BadInput
from swepost.records import Task


class ToolError(Exception):
    """A tool call the environment cannot carry out as asked (bad arguments, missing file): the message is
    returned to the model as the observation, and the episode goes on. Marked as a `tool` error on the turn."""


class MalformedCall(ToolError):
    """A tool call that is not a call at all (bad JSON, unknown tool, arguments of the wrong shape): marked as a
    `format` error on the turn. An environment may raise it from `step` for arguments its schema rejects."""


class EnvironmentBroken(Exception):
    """The environment itself broke (sandbox gone): the episode ends with sandbox_error."""


def show_value(value: Any, limit: int = 200) -> str:
    """A short, safe rendering of any argument value for an error message."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a huge int refuses repr; anything else odd likewise
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit // 2] + " ... " + text[-limit // 2:]


def tool_arguments(name: str, arguments: Any, allowed: Iterable[str]) -> dict[str, Any]:
    """A tool call's arguments as a dict: JSON text (or none) parsed, an object required, keys outside `allowed`
    refused; every refusal a MalformedCall the model reads. An explicit null is an omitted argument."""
    if arguments is None:
        arguments = {}
    if isinstance(arguments, (str, bytes)):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            raise MalformedCall(f"The arguments of {name} are not valid JSON: {show_value(arguments)}") from None
    if not isinstance(arguments, dict):
        raise MalformedCall(f"The arguments of {name} must be a JSON object, got {type(arguments).__name__}")
    allowed = tuple(allowed)
    extra = [k for k in arguments if k not in allowed]
    if extra:
        takes = f"it takes: {', '.join(allowed)}" if allowed else "it takes none"
        raise MalformedCall(f"Unexpected argument(s) for {name}: {', '.join(show_value(k, 60) for k in extra[:10])}"
                            f"; {takes}")
    return {k: v for k, v in arguments.items() if v is not None}


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

    # Optional: `text_reply(content) -> Observation | None`, for a reply with no tool call. An environment that
    # reads answers from text (search: the response's last `<answer>...</answer>`) returns Observation(done=True,
    # answer=...); one that reads an action from text (search: `<search>q</search>`, Search-R1's form) returns
    # its result as Observation(content) for the next user turn; None (or no such method) and the loop asks the
    # model to call a tool, in the words of the
    # environment's optional `no_tool_call` attribute (records.NO_TOOL_CALL, written for bug fixing, when unset).


def ask_judge(judge: Any, question: str, answer: str | None, reference: str, rubric: list[str],
              evidence: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """An environment's judged score, the part codeqa and search share: (the Judgement, None) with the judge's
    name, model, scores, total, reward, cache hit and rationale added to `evidence`; or (None, the ungraded score
    to return) when the judge failed or raised (BadInput aside) — a judge failure is never a score."""
    try:
        j = judge.judge(question, answer, reference, rubric)
    except BadInput:
        raise
    except Exception as e:  # noqa: BLE001 - a judge that raises instead of reporting: still never a score
        return None, {"reward": None, "resolved": "UNGRADED",
                      "evidence": {**evidence, "judge_failed": True, "cause": f"{type(e).__name__}: {e}"[:2000]}}
    evidence.update(judge=j.judge, model=j.model, judge_failed=j.failed)
    if j.failed:
        return None, {"reward": None, "resolved": "UNGRADED", "evidence": {**evidence, "cause": j.cause}}
    evidence.update(scores=j.scores, total=j.total, reward=j.reward, cached=j.cached, rationale=j.rationale)
    return j, None


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


def load_prompt_templates(folder: Path, files: dict[str, str], fields: Iterable[str]) -> dict[str, str]:
    """An environment's prompt templates (role -> file name in `folder`), each checked to be a str.format
    template using only `fields`, so a typo fails before any episode."""
    fields = set(fields)
    if not folder.is_dir():
        raise BadInput("prompts folder not found", file=str(folder))
    out = {}
    for role, name in files.items():
        path = folder / name
        try:
            text = path.read_text(encoding="utf-8")
            used = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except (OSError, UnicodeDecodeError) as e:
            raise BadInput(f"cannot read the {role} prompt template: {e}", file=str(path)) from None
        except ValueError as e:
            raise BadInput(f"not a valid str.format template: {e}", file=str(path)) from None
        unknown = sorted(f for f in used if f.split(".")[0].split("[")[0] not in fields)
        if unknown:
            raise BadInput(f"unknown template field(s) {', '.join('{' + f + '}' for f in unknown)} "
                           f"(known: {', '.join(sorted(fields))}; write {{{{ and }}}} for braces)", file=str(path))
        out[role] = text
    return out
