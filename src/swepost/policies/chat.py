"""OpenAI chat messages -> what a Hugging Face chat template (Qwen2.5 style) renders; used by the hf policy and
RL's token policy, so both render one conversation to the same tokens."""

from __future__ import annotations

import json
from typing import Any

from swepost.policies.toolcalls import render_tool_call


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages -> what the Qwen2.5 template expects.

    The template writes `tool_call.arguments | tojson`: a JSON string would come out quoted a second time,
    so arguments that parse as JSON are turned back into objects. None content becomes "" (the template
    concatenates it). A turn with a call the text parser could not read (it has an "error") is rendered as the
    model wrote it: its calls go into the content as text, in order, laid out as the template lays them out.
    """
    out = []
    for m in messages:
        m = dict(m)
        content = m.get("content")
        if content is None:
            m["content"] = ""
        elif isinstance(content, list):  # OpenAI content parts: keep the text
            m["content"] = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        if any(isinstance(c, dict) and c.get("error") for c in m.get("tool_calls") or []):
            parts = [m["content"]] if m["content"] else []
            m["content"] = "\n".join(parts + [render_tool_call(c) for c in m.pop("tool_calls")])
        elif m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                call = dict(call)
                fn = dict(call.get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args) if args.strip() else {}
                    except ValueError:
                        pass  # malformed: rendered as the string the model wrote
                call["function"] = fn
                calls.append(call)
            m["tool_calls"] = calls
        out.append(m)
    return out
