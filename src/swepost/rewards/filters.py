"""Trajectory filters: plain functions shared by the filter stage, rl and eval.

A per-trajectory rule takes a Trajectory (and its settings) and returns None to keep it, or a short reason
string to drop it. A list rule (`dedupe`, `per_task_cap`) takes the whole list and returns one such
decision per trajectory, in order. The format-error helpers find the assistant turns the agent loop answered
with an error, so that the training data can mask them out of the loss or drop them: from the TurnError marks
(format 2 records), or from the text of format 1 records, which have none.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from swepost.records import ERROR_KEY, ERROR_PREFIX, NO_TOOL_CALL, ExitStatus, Trajectory, TurnError

RESOLVED_FULL = "RESOLVED_FULL"
UNGRADED = "UNGRADED"  # the grader could not judge (timeout, memory, sandbox failure): reward None, no verdict
# the server or the sandbox failed, or rl cut the episode at its step deadline: the infrastructure, not the model
INFRA_EXIT_STATUSES = (ExitStatus.POLICY_ERROR, ExitStatus.SANDBOX_ERROR, ExitStatus.DEADLINE)
# the marks that make a format-error turn: a malformed call, or a well-formed one the tool refused (a str_replace
# whose old_str is not in the file); never a broken sandbox, the infrastructure's failure
FORMAT_ERROR_MARKS = (TurnError.FORMAT.value, TurnError.TOOL.value)
MARKED_FORMAT = 2  # the first Trajectory.format whose errors are marked on the turn
CHARS_PER_TOKEN = 4  # the estimate used when a trajectory has no token counts


# --- per-trajectory rules ---------------------------------------------------------------------------------------

def is_ungraded(traj: Trajectory) -> bool:
    """No verdict: the grader tried and could not judge this episode (why: `evidence["reason"]`), or the episode
    ended in an infrastructure failure (policy_error, sandbox_error, deadline; why: `error`). It is neither a
    success nor a wrong answer: no stage may keep it as one or count it as a failure."""
    return traj.resolved == UNGRADED or traj.exit_status in INFRA_EXIT_STATUSES


def is_infra_failure(traj: Trajectory) -> bool:
    """The episode itself failed for infrastructure reasons (run it again), as opposed to a grader that could
    not judge a finished one."""
    return traj.exit_status in INFRA_EXIT_STATUSES


def failure_cause(traj: Trajectory) -> str:
    """One line saying why an ungraded episode has no verdict."""
    if traj.exit_status in INFRA_EXIT_STATUSES:
        return f"{traj.exit_status}: {traj.error or 'no message'}"
    return f"UNGRADED: {traj.evidence.get('reason') or traj.error or 'no reason recorded'}"


def require_graded(traj: Trajectory) -> str | None:
    """Drop episodes the grader could not judge, whatever the other settings: their answer is unknown."""
    return "ungraded" if is_ungraded(traj) else None


def require_resolved(traj: Trajectory, min_reward: float | None = None) -> str | None:
    """Keep fully resolved episodes; with `min_reward`, keep episodes whose reward is at least that instead."""
    if is_ungraded(traj):
        return "ungraded"
    if min_reward is not None:
        if traj.reward is None:
            return "ungraded"
        return None if traj.reward >= min_reward else "reward_below_min"
    if traj.resolved == RESOLVED_FULL:
        return None
    return "ungraded" if traj.resolved is None and traj.reward is None else "unresolved"


def require_submitted(traj: Trajectory) -> str | None:
    """Keep episodes the agent ended itself (`submit`), not ones a limit or a failure ended."""
    if traj.exit_status == ExitStatus.SUBMITTED:
        return None
    return f"not_submitted:{traj.exit_status or 'unfinished'}"


def turn_count(traj: Trajectory) -> int:
    """The episode's model turns: the recorded count, else the number of assistant messages."""
    return traj.turns or sum(1 for m in traj.messages if m.get("role") == "assistant")


def max_turns(traj: Trajectory, limit: int) -> str | None:
    return None if turn_count(traj) <= limit else "too_many_turns"


def estimate_tokens(traj: Trajectory) -> int:
    """About CHARS_PER_TOKEN characters per token over every message's text, tool calls and the tool schemas."""
    chars = len(json.dumps(traj.tools, ensure_ascii=False)) if traj.tools else 0
    for m in traj.messages:
        chars += len(str(m.get("content") or ""))
        for call in m.get("tool_calls") or []:
            chars += len(json.dumps(call, ensure_ascii=False, default=str))
    return math.ceil(chars / CHARS_PER_TOKEN)


def max_tokens(traj: Trajectory, limit: int) -> str | None:
    """The conversation's length as an SFT sequence: the policy's counts are summed over turns (the prompt
    is counted again every turn), so they would drop episodes that fit; the text estimate does not."""
    return None if estimate_tokens(traj) <= limit else "too_many_tokens"


# --- list rules ---------------------------------------------------------------------------------------------------

def dedupe(trajectories: Sequence[Trajectory]) -> list[str | None]:
    """Drop every trajectory whose task and messages (tool call ids aside) equal an earlier one's."""
    seen: set[str] = set()
    out: list[str | None] = []
    for traj in trajectories:
        key = json.dumps([traj.instance_id, [_without_ids(m) for m in traj.messages]], sort_keys=True,
                         ensure_ascii=False, default=str)
        out.append("duplicate" if key in seen else None)
        seen.add(key)
    return out


def per_task_cap(trajectories: Sequence[Trajectory], limit: int, prefer: str = "shortest") -> list[str | None]:
    """At most `limit` trajectories per task: the fewest turns first (`prefer` "shortest"), or the most
    ("longest": BrowserAgent keeps the longest successful trajectory per question); ties by completion tokens the
    same way, then in list order."""
    if prefer not in ("shortest", "longest"):
        raise ValueError(f"prefer must be shortest or longest, not {prefer!r}")
    sign = 1 if prefer == "shortest" else -1
    by_task: dict[str, list[int]] = {}
    for i, traj in enumerate(trajectories):
        by_task.setdefault(traj.instance_id, []).append(i)
    out: list[str | None] = [None] * len(trajectories)
    for indices in by_task.values():
        ranked = sorted(indices, key=lambda i: (sign * turn_count(trajectories[i]),
                                                sign * trajectories[i].completion_tokens, i))
        for i in ranked[limit:]:
            out[i] = "per_task_cap"
    return out


def solve_rates(trajectories: Sequence[Trajectory]) -> dict[str, float | None]:
    """Each task's fraction of graded episodes that resolved it (None when none was graded: no estimate)."""
    graded: dict[str, list[bool]] = {}
    for t in trajectories:
        graded.setdefault(t.instance_id, [])
        if not is_ungraded(t):
            graded[t.instance_id].append(t.resolved == "RESOLVED_FULL")
    return {task: (sum(v) / len(v) if v else None) for task, v in graded.items()}


def solve_rate_band(trajectories: Sequence[Trajectory], low: float, high: float) -> list[str | None]:
    """Drop every episode of a task whose solve rate (over all its graded episodes) is outside [low, high]: RFT
    keeps the questions a model solves only partly (high < 1 leaves out what it already always solves)."""
    rates = solve_rates(trajectories)
    return [None if (r := rates[t.instance_id]) is not None and low <= r <= high else "solve_rate"
            for t in trajectories]


def _without_ids(message: dict[str, Any]) -> dict[str, Any]:
    m = {k: v for k, v in message.items() if k != "tool_call_id"}
    if m.get("tool_calls"):
        calls = []
        for call in m["tool_calls"]:
            if isinstance(call, dict):
                call = {k: v for k, v in call.items() if k != "id"}
                fn = call.get("function")
                if isinstance(fn, dict):
                    call["function"] = {**fn, "arguments": parse_arguments(fn.get("arguments"))}
            calls.append(call)
        m["tool_calls"] = calls
    return m


# --- format errors --------------------------------------------------------------------------------------------------

def parse_arguments(raw: Any) -> Any:
    """A tool call's arguments as a dict when they are a JSON object (or blank); anything else unchanged."""
    if isinstance(raw, str):
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            return raw
        return value if isinstance(value, dict) else raw
    return raw


def turn_answers(messages: Sequence[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    """The messages that answer the assistant message at `index`: everything up to the next assistant message."""
    out = []
    for m in messages[index + 1:]:
        if m.get("role") == "assistant":
            break
        out.append(m)
    return out


def errors_marked(traj: Trajectory) -> bool:
    """Whether the trajectory marks its per-turn errors (format 2 on), or they must be read from the text."""
    return traj.format >= MARKED_FORMAT


def is_no_tool_call_nudge(message: dict[str, Any], marked: bool = True) -> bool:
    """The message the agent loop answers a reply without a tool call with."""
    if message.get("role") != "user":
        return False
    return message.get(ERROR_KEY) == TurnError.FORMAT if marked else message.get("content") == NO_TOOL_CALL


def is_format_error_turn(messages: Sequence[dict[str, Any]], index: int, marked: bool = True) -> bool:
    """An assistant turn the agent loop answered only with errors: every tool result is marked a `format` or
    `tool` error (a legitimate call that failed, e.g. a str_replace whose old_str is not in the file, counts; a
    broken sandbox does not), or, with no tool call, the loop's no-tool-call nudge. `marked=False` reads a
    format 1 record instead, by the text: every tool result starts with "Error: ", or the nudge's text."""
    message = messages[index]
    if message.get("role") != "assistant":
        return False
    answers = turn_answers(messages, index)
    if not message.get("tool_calls"):
        return any(is_no_tool_call_nudge(m, marked) for m in answers)
    results = [m for m in answers if m.get("role") == "tool"]
    if marked:
        return bool(results) and all(m.get(ERROR_KEY) in FORMAT_ERROR_MARKS for m in results)
    return bool(results) and all(str(m.get("content") or "").startswith(ERROR_PREFIX) for m in results)


def format_error_turns(traj: Trajectory) -> list[int]:
    """Indices of the trajectory's assistant messages that are format-error turns."""
    marked = errors_marked(traj)
    return [i for i in range(len(traj.messages)) if is_format_error_turn(traj.messages, i, marked)]
