"""The Hermes/Qwen2.5 text tool-call format, read and written in one place for every policy and RL's token policy.

A model writes each call as `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`. `parse_tool_calls`
turns a generation into (content, OpenAI tool calls), the same way wherever the text came from (a local model,
an OpenAI-compatible server in text mode, RL's sampled tokens), so one model output gets one observation:

* A block runs from `<tool_call>` to `</tool_call>`. A closing tag inside a JSON string does not end it; a block
  left open ends at the next `<tool_call>` or at the end of the text (a truncated generation).
* A block holding a JSON object with a non-empty string "name" is a call: that name, and its "arguments"
  ("parameters" is read too) as a JSON string. A string value is kept as written and any other value written as
  JSON; what the arguments hold (an object? valid JSON?) is the agent loop's to judge, as for a native call.
  No arguments at all give "{}".
* Any other block is still a call, so the agent loop answers it with a format error instead of a "no tool call"
  nudge: its "name" is the one recovered from broken JSON (the first `"name": "..."` in the block) or "", its
  "arguments" the block's text as written, and it carries `"error"`: a sentence saying what is wrong. Only
  malformed calls have the key; the agent loop reads it with `call.get("error")`.
* Call ids are deterministic: `call_{turn}_{i}` for the i-th call (from 0) of the conversation's `turn`-th
  assistant turn (from 1, see `assistant_turn`).
* The content is the text outside the blocks, each piece stripped, joined by one blank line ("" when none).

`render_tool_call` writes a call back in this format (a malformed one as the model wrote it), for text-mode
requests and chat templates.
"""

from __future__ import annotations

import json
import re
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FORMAT_HINT = f'Write each call as {OPEN}{{"name": <tool name>, "arguments": {{...}}}}{CLOSE}.'
_NAME_IN_BROKEN_JSON = re.compile(r'"name"\s*:\s*"([^"\\]*)"')
_DECODER = json.JSONDecoder()


def call_id(turn: int, index: int) -> str:
    return f"call_{turn}_{index}"


def assistant_turn(messages: list[dict[str, Any]]) -> int:
    """The number (from 1) of the assistant turn that answers `messages`: one more than the assistant turns in it."""
    return 1 + sum(1 for m in messages if m.get("role") == "assistant")


def parse_tool_calls(text: str | None, *, turn: int) -> tuple[str, list[dict[str, Any]]]:
    """A generation -> (content, OpenAI tool calls), as the module docstring says."""
    text = text or ""
    outside, calls = [], []
    pos = 0
    while (start := text.find(OPEN, pos)) >= 0:
        outside.append(text[pos:start])
        body = start + len(OPEN)
        end = _block_end(text, body)
        name, arguments, error = _read_block(text[body:end].strip())
        call: dict[str, Any] = {"id": call_id(turn, len(calls)), "type": "function",
                                "function": {"name": name, "arguments": arguments}}
        if error is not None:
            call["error"] = error
        calls.append(call)
        pos = end + len(CLOSE) if text.startswith(CLOSE, end) else end
    outside.append(text[pos:])
    content = "\n\n".join(piece.strip() for piece in outside if piece.strip())
    return content, calls


def render_tool_call(call: dict[str, Any]) -> str:
    """An OpenAI tool call as the model writes it: arguments that are a JSON string are written as the object they
    hold; a malformed call (one with an "error") is written back as the model wrote it, its raw text."""
    fn = call.get("function") or {}
    name, arguments = fn.get("name", ""), fn.get("arguments")
    if call.get("error"):
        return f"{OPEN}\n{arguments}\n{CLOSE}"
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass  # written back as the string the model wrote
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CLOSE}"


def _block_end(text: str, body: int) -> int:
    """Where the block whose text starts at `body` ends: the index of its closing tag, or where it stops unclosed."""
    start = len(text) - len(text[body:].lstrip())
    try:
        _, after = _DECODER.raw_decode(text, start)
    except ValueError:
        pass
    else:  # a whole JSON value: tags inside its strings are text, the block ends at the tag after it
        rest = len(text) - len(text[after:].lstrip())
        if rest == len(text) or text.startswith(CLOSE, rest):
            return rest
    ends = [i for i in (text.find(CLOSE, body), text.find(OPEN, body)) if i >= 0]
    return min(ends) if ends else len(text)


def _read_block(raw: str) -> tuple[str, str, str | None]:
    """A block's stripped text -> (name, arguments, error or None)."""
    if not raw:
        return "", "", f"Malformed tool call: the {OPEN} block is empty. {FORMAT_HINT}"
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        found = _NAME_IN_BROKEN_JSON.search(raw)
        return (found.group(1) if found else ""), raw, (
            f"Malformed tool call: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}). {FORMAT_HINT}")
    if not isinstance(obj, dict):
        return "", raw, f"Malformed tool call: a JSON {_json_type(obj)}, not an object. {FORMAT_HINT}"
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return "", raw, f'Malformed tool call: no "name" (a non-empty string). {FORMAT_HINT}'
    args = obj["arguments"] if "arguments" in obj else obj.get("parameters", {})
    return name, args if isinstance(args, str) else json.dumps(args, ensure_ascii=False), None


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool) or value is None:
        return "literal"
    return "number"
