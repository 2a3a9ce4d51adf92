"""ScriptedPolicy: replays fixed assistant turns (tests, smoke runs, benchmarks of the environment side).

A script is a list of turns. A turn is a string (its content) or an object with `content` (a string) and/or
`tool_calls`: a list of {"name": ..., "arguments": object or raw string, "id"?: ...}, or OpenAI-style
{"type": "function", "function": {"name", "arguments"}, "id"?}. With `per_task` the script maps instance_id ->
list of turns. Files: .json (and any other suffix), .yaml/.yml, or .jsonl (one turn per line; with per_task one
{"instance_id": ..., "turns": [...]} object per line). A mistake is reported with the file, the line where it
can be known, and where in the script it is (`turns[2].tool_calls[0].name`).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from swepost.config import KeyPath, dotted, load_yaml
from swepost.errors import BadInput
from swepost.policies.base import PolicyError, PolicyReply
from swepost.records import Task

SCRIPT_ENDED = "(script ended)"
TURN_KEYS = ("content", "tool_calls", "role")
CALL_KEYS = ("name", "arguments", "id", "type", "function")


class ScriptedArgs(BaseModel):
    """policy_args of `scripted`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    path: str | None = Field(None, description="the script file (.json, .yaml, .jsonl), relative to the recipe; "
                             "give this or turns")
    turns: list[Any] | dict[str, Any] | None = Field(None, description="the script inline: a list of turns (with "
                                                     "per_task, instance_id -> list of turns)")
    per_task: bool = Field(False, description="the script maps each task's instance_id to its own turns")
    delay: float = Field(0.0, ge=0, description="seconds to wait before each turn (to mimic a model server)")
    model: str | None = Field(None, description="ignored: lets model-driven pipelines (rft, eval) run a script")

    @model_validator(mode="after")
    def _one_source(self) -> ScriptedArgs:
        if (self.turns is None) == (self.path is None):
            raise ValueError("give exactly one of path (a script file) or turns (the script inline)")
        return self


class _Problem(Exception):
    """A mistake at `loc`, a key path into the script as read (before normalising)."""

    def __init__(self, loc: KeyPath, message: str):
        super().__init__(message)
        self.loc, self.message = loc, message


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), f"a {type(value).__name__}")


def _unknown(obj: dict, known: tuple[str, ...], at: KeyPath, what: str) -> None:
    unknown = [k for k in obj if k not in known]
    if unknown:
        raise _Problem((*at, unknown[0]), f"unknown key {unknown[0]!r} ({what})")


def _call(call: Any, at: KeyPath) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise _Problem(at, f"a tool call is an object {{\"name\": ..., \"arguments\": {{...}}}}, not {_kind(call)}")
    _unknown(call, CALL_KEYS, at, "a tool call has name, arguments and id, or OpenAI's type, function and id")
    fn, fn_at = (call["function"], (*at, "function")) if "function" in call else (call, at)
    if not isinstance(fn, dict):
        raise _Problem(fn_at, f"must be an object {{\"name\": ..., \"arguments\": ...}}, not {_kind(fn)}")
    name, args = fn.get("name"), fn.get("arguments", {})
    if not isinstance(name, str):
        raise _Problem((*fn_at, "name") if "name" in fn else fn_at,
                       f"a tool call needs a \"name\": a string, not {_kind(name)}")
    if args is None:
        args = {}
    if not isinstance(args, (dict, str)):
        raise _Problem((*fn_at, "arguments"), f"must be an object, or a raw string sent as written (broken JSON "
                       f"included), not {_kind(args)}")
    entry: dict[str, Any] = {"name": name, "arguments": args}
    if call.get("id") is not None:
        if not isinstance(call["id"], str):
            raise _Problem((*at, "id"), f"must be a string, not {_kind(call['id'])}")
        entry["id"] = call["id"]
    return entry


def _turn(turn: Any, at: KeyPath) -> dict[str, Any]:
    if isinstance(turn, str):
        turn = {"content": turn}
    if not isinstance(turn, dict):
        raise _Problem(at, f"a turn is a string or an object with content and/or tool_calls, not {_kind(turn)}")
    _unknown(turn, TURN_KEYS, at, "a turn has content and tool_calls")
    if turn.get("role", "assistant") != "assistant":
        raise _Problem((*at, "role"), f"a script holds the assistant's turns only, not {turn['role']!r}")
    content = turn.get("content")
    if content is not None and not isinstance(content, str):
        raise _Problem((*at, "content"), f"must be a string, not {_kind(content)}")
    raw_calls = turn.get("tool_calls")
    if raw_calls is None:
        raw_calls = []
    if not isinstance(raw_calls, list):
        raise _Problem((*at, "tool_calls"), f"must be a list of tool calls, not {_kind(raw_calls)}")
    return {"content": content or "", "tool_calls": [_call(c, (*at, "tool_calls", j)) for j, c in enumerate(raw_calls)]}


def _turns(turns: Any, at: KeyPath) -> list[dict[str, Any]]:
    if not isinstance(turns, list):
        raise _Problem(at, f"expected a list of turns, not {_kind(turns)}")
    return [_turn(t, (*at, i)) for i, t in enumerate(turns)]


def _normalise(raw: Any, per_task: bool) -> Any:
    if per_task:
        if not isinstance(raw, dict):
            raise _Problem((), f"a per_task script maps each instance_id to its list of turns, not {_kind(raw)}")
        return {str(k): _turns(v, (k,)) for k, v in raw.items()}
    if isinstance(raw, dict):
        raise _Problem((), "expected a list of turns, not an object (a script per instance_id needs per_task: true)")
    return _turns(raw, ())


def _where(loc: KeyPath, per_task: bool) -> str:
    """`turns[2].tool_calls[0]`, or `instance 'a-1' turns[2]...` in a per-task script."""
    if not per_task:
        return dotted(("turns", *loc)) if loc else ""
    return f"instance {loc[0]!r} {dotted(('turns', *loc[1:]))}" if loc else ""


def _problem(p: _Problem, per_task: bool, file: str | None = None, line: int | None = None) -> BadInput:
    where = _where(p.loc, per_task)
    return BadInput(f"{where}: {p.message}" if where else p.message, file=file, line=line)


def _line_of(loc: KeyPath, lines: dict[KeyPath, int]) -> int | None:
    """The line of the deepest part of `loc` that the file's line map knows."""
    loc = tuple(str(p) if i == 0 and not isinstance(p, int) else p for i, p in enumerate(loc))
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _read_jsonl(path: Path, text: str, per_task: bool) -> tuple[Any, dict[KeyPath, int]]:
    rows: list[tuple[int, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except ValueError as e:
                raise BadInput(f"not JSON: {e}", file=str(path), line=n) from None
    if not per_task:
        return [row for _, row in rows], {(i,): n for i, (n, _) in enumerate(rows)}
    script: dict[str, Any] = {}
    lines: dict[KeyPath, int] = {}
    for n, row in rows:
        if not isinstance(row, dict):
            raise BadInput(f"a per_task line is {{\"instance_id\": ..., \"turns\": [...]}}, not {_kind(row)}",
                           file=str(path), line=n)
        if "instance_id" in row:
            extra = sorted(set(row) - {"instance_id", "turns"})
            if extra or "turns" not in row:
                raise BadInput("a per_task line is {\"instance_id\": ..., \"turns\": [...]}; "
                               + (f"unknown key {extra[0]!r}" if extra else "\"turns\" is missing"),
                               file=str(path), line=n)
            row = {str(row["instance_id"]): row["turns"]}
        for iid, turns in row.items():  # or {instance_id: turns, ...} on a line
            if iid in script:
                raise BadInput(f"instance {iid!r} is given twice (lines {lines[(iid,)]} and {n})", file=str(path),
                               line=n)
            script[iid], lines[(iid,)] = turns, n
    return script, lines


def read_script(path: str | Path, per_task: bool = False) -> Any:
    """A script file -> the normalised script (a list of turns, or instance_id -> list of turns); BadInput naming
    the file, the line where it can be known, and the place in the script."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        raw, lines = load_yaml(path)
        text = None
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BadInput("file not found", file=str(path)) from None
        except (OSError, UnicodeDecodeError) as e:
            raise BadInput(f"cannot read the script: {e}", file=str(path)) from None
        if suffix == ".jsonl":
            raw, lines = _read_jsonl(path, text, per_task)
        else:
            try:
                raw = json.loads(text)
            except ValueError as e:
                line = getattr(e, "lineno", None)
                raise BadInput(f"not JSON: {getattr(e, 'msg', e)}", file=str(path), line=line) from None
            lines = {}
    if raw is None and text is None:
        raise BadInput("the script is empty: expected a list of turns", file=str(path))
    try:
        return _normalise(raw, per_task)
    except _Problem as p:
        if suffix not in (".yaml", ".yml", ".jsonl"):
            try:  # JSON is (nearly always) YAML too: its line map says where the mistake is
                lines = load_yaml(path)[1]
            except BadInput:
                lines = {}
        raise _problem(p, per_task, str(path), _line_of(p.loc, lines)) from None


class ScriptedPolicy:
    name = "scripted"
    Args = ScriptedArgs

    def __init__(self, *, turns: list | dict | None = None, path: str | None = None, per_task: bool = False,
                 delay: float = 0.0, model: str | None = None):
        # `model` is accepted and ignored, so pipelines that set it (rft, eval) can run a script
        if (turns is None) == (path is None):
            raise BadInput("ScriptedPolicy needs exactly one of turns= or path=")
        if delay < 0:
            raise BadInput(f"delay {delay} must be >= 0", key="delay")
        self.path, self.per_task, self.delay = (str(path) if path else None), bool(per_task), float(delay)
        if path is not None:
            self.script: Any = read_script(path, self.per_task)
        else:
            try:
                self.script = _normalise(turns, self.per_task)
            except _Problem as p:
                raise _problem(p, self.per_task) from None
        canonical = json.dumps(self.script, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        self.sha256 = hashlib.sha256(canonical.encode()).hexdigest()
        self._turns: list[dict[str, Any]] | None = None if per_task else self.script
        self._task: str | None = None
        self._next = 0
        self._calls = 0

    @classmethod
    def submit_only(cls, delay: float = 0.0) -> ScriptedPolicy:
        """Submits straight away: the do-nothing baseline (the diff is empty, so tasks are unresolved)."""
        return cls(turns=[{"tool_calls": [{"name": "submit", "arguments": {}}]}], delay=delay)

    def describe(self) -> dict[str, Any]:
        n = sum(map(len, self.script.values())) if self.per_task else len(self.script)
        return {"name": self.name, "path": self.path, "per_task": self.per_task, "delay": self.delay,
                "turns": n, "sha256": self.sha256}

    def start(self, task: Task) -> None:
        self._next, self._calls, self._task = 0, 0, task.instance_id
        if self.per_task:
            self._turns = self.script.get(task.instance_id)

    def reply(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> PolicyReply:
        if self.delay:
            time.sleep(self.delay)
        if self._turns is None:
            raise PolicyError(f"the per-task script has no turns for {self._task!r}" if self._task else
                              "per-task script: start(task) was not called")
        if self._next >= len(self._turns):
            return PolicyReply(message={"role": "assistant", "content": SCRIPT_ENDED, "tool_calls": []},
                               finish_reason="stop", extra={"script_ended": True})
        turn, index = self._turns[self._next], self._next
        self._next += 1
        calls = []
        for call in turn["tool_calls"]:
            args = call["arguments"]
            calls.append({"id": call.get("id") or f"call_{self._calls}", "type": "function",
                          "function": {"name": call["name"],
                                       "arguments": args if isinstance(args, str) else json.dumps(args)}})
            self._calls += 1
        return PolicyReply(message={"role": "assistant", "content": turn["content"], "tool_calls": calls},
                           finish_reason="tool_calls" if calls else "stop", extra={"turn": index})
