"""ScriptedPolicy: replays fixed assistant turns (tests, smoke runs, benchmarks of the environment side).

A script is a list of turns, each {"content": str?, "tool_calls": [{"name": ..., "arguments": dict or str}]}
(OpenAI-style {"function": {"name", "arguments"}} entries are accepted too). With `per_task` the script maps
instance_id -> list of turns. Files: .json, .yaml/.yml, or .jsonl (one turn per line; with per_task one
{"instance_id": ..., "turns": [...]} object per line).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from swepost.errors import BadInput
from swepost.policies.base import PolicyError, PolicyReply
from swepost.records import Task

SCRIPT_ENDED = "(script ended)"


def _normalise_turn(turn: Any, where: str) -> dict[str, Any]:
    if isinstance(turn, str):
        turn = {"content": turn}
    if not isinstance(turn, dict):
        raise BadInput(f"{where}: a turn is an object with content and/or tool_calls, got {type(turn).__name__}")
    unknown = set(turn) - {"role", "content", "tool_calls"}
    if unknown:
        raise BadInput(f"{where}: unknown turn keys {sorted(unknown)} (content, tool_calls)")
    content = turn.get("content")
    if content is not None and not isinstance(content, str):
        raise BadInput(f"{where}: content must be a string")
    raw_calls = turn.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise BadInput(f"{where}: tool_calls must be a list")
    calls = []
    for j, call in enumerate(raw_calls):
        if not isinstance(call, dict):
            raise BadInput(f"{where}: tool_calls[{j}] must be an object")
        fn = call.get("function") if isinstance(call.get("function"), dict) else call
        name, args = fn.get("name"), fn.get("arguments", {})
        if not isinstance(name, str):
            raise BadInput(f"{where}: tool_calls[{j}] needs a string name")
        if args is None:
            args = {}
        if not isinstance(args, (dict, str)):
            raise BadInput(f"{where}: tool_calls[{j}].arguments must be an object or a raw string")
        entry: dict[str, Any] = {"name": name, "arguments": args}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        calls.append(entry)
    return {"content": content or "", "tool_calls": calls}


def _normalise_turns(turns: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(turns, list):
        raise BadInput(f"{where}: expected a list of turns, got {type(turns).__name__}")
    return [_normalise_turn(t, f"{where}[{i}]") for i, t in enumerate(turns)]


def _load_file(path: Path, per_task: bool) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read the script: {e}", file=str(path)) from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        if suffix == ".jsonl":
            rows = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as e:
                        raise BadInput(f"not JSON: {e}", file=str(path), line=n) from None
            if not per_task:
                return rows
            script: dict[str, Any] = {}
            for row in rows:
                if isinstance(row, dict) and "instance_id" in row and "turns" in row:
                    script[str(row["instance_id"])] = row["turns"]
                elif isinstance(row, dict):
                    script.update(row)  # {instance_id: turns} per line
                else:
                    raise BadInput("per_task lines are {\"instance_id\": ..., \"turns\": [...]}", file=str(path))
            return script
        return json.loads(text)
    except BadInput:
        raise
    except Exception as e:  # yaml.YAMLError, json.JSONDecodeError
        raise BadInput(f"cannot parse the script: {e}", file=str(path)) from None


class ScriptedPolicy:
    name = "scripted"

    def __init__(self, *, turns: list | dict | None = None, path: str | None = None, per_task: bool = False,
                 delay: float = 0.0, model: str | None = None):
        # `model` is accepted and ignored, so pipelines that set it (rft, eval) can run a script
        if (turns is None) == (path is None):
            raise BadInput("ScriptedPolicy needs exactly one of turns= or path=")
        if delay < 0:
            raise BadInput(f"delay {delay} must be >= 0", key="delay")
        self.path, self.per_task, self.delay = (str(path) if path else None), bool(per_task), float(delay)
        where = self.path or "turns"
        raw = _load_file(Path(path), per_task) if path is not None else turns
        try:
            if per_task:
                if not isinstance(raw, dict):
                    raise BadInput(f"{where}: per_task scripts map instance_id -> list of turns")
                self.script: Any = {str(k): _normalise_turns(v, f"{where}[{k!r}]") for k, v in raw.items()}
            else:
                self.script = _normalise_turns(raw, where)
        except BadInput as e:
            if self.path:
                raise BadInput(e.detail, file=self.path) from None
            raise
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
