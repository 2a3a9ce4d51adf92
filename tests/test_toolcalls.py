"""The one `<tool_call>` text parser (policies/toolcalls.py), on a table of what models write, well and badly."""

from __future__ import annotations

import json

import pytest

from swepost.agent import parse_call
from swepost.envs.base import MalformedCall
from swepost.policies.toolcalls import assistant_turn, parse_tool_calls, render_tool_call


def block(body: str) -> str:
    return f"<tool_call>\n{body}\n</tool_call>"


LS = '{"name": "bash", "arguments": {"command": "ls"}}'
# id, model output, content, [(name, arguments, start of the error or None)]
TABLE = [
    ("plain text", "  I think the bug is in a.py.\n", "I think the bug is in a.py.", []),
    ("empty", "", "", []),
    ("one call", block(LS), "", [("bash", '{"command": "ls"}', None)]),
    ("no arguments", block('{"name": "submit"}'), "", [("submit", "{}", None)]),
    ("parameters for arguments", block('{"name": "bash", "parameters": {"command": "ls"}}'), "",
     [("bash", '{"command": "ls"}', None)]),
    ("several calls, text around", f"Look first.\n{block(LS)}\n{block(LS)}\nthen submit.",
     "Look first.\n\nthen submit.",
     [("bash", '{"command": "ls"}', None), ("bash", '{"command": "ls"}', None)]),
    ("no newlines", f'a<tool_call>{LS}</tool_call>b', "a\n\nb", [("bash", '{"command": "ls"}', None)]),
    ("unclosed at the end: complete JSON", f"<tool_call>\n{LS}", "", [("bash", '{"command": "ls"}', None)]),
    ("unclosed at the end: truncated JSON", '<tool_call>\n{"name": "bash", "arguments": {"comm', "",
     [("bash", '{"name": "bash", "arguments": {"comm', "Malformed tool call: not valid JSON")]),
    ("unclosed, then another block", f'<tool_call>{{"name": "bash"\n{block(LS)}', "",
     [("bash", '{"name": "bash"', "Malformed tool call: not valid JSON"), ("bash", '{"command": "ls"}', None)]),
    ("broken JSON, name recovered", block('{"name": "bash", "arguments": {"command": "ls"}'), "",
     [("bash", '{"name": "bash", "arguments": {"command": "ls"}', "Malformed tool call: not valid JSON")]),
    ("broken JSON, no name", block("{'name': 'bash'}"), "",
     [("", "{'name': 'bash'}", "Malformed tool call: not valid JSON")]),
    ("not JSON at all", block("oops"), "", [("", "oops", "Malformed tool call: not valid JSON")]),
    ("empty block", "<tool_call></tool_call>", "", [("", "", "Malformed tool call: the <tool_call> block is empty")]),
    ("empty name", block('{"name": "", "arguments": {}}'), "",
     [("", '{"name": "", "arguments": {}}', 'Malformed tool call: no "name"')]),
    ("no name", block('{"arguments": {"command": "ls"}}'), "",
     [("", '{"arguments": {"command": "ls"}}', 'Malformed tool call: no "name"')]),
    ("name not a string", block('{"name": 3, "arguments": {}}'), "",
     [("", '{"name": 3, "arguments": {}}', 'Malformed tool call: no "name"')]),
    ("a JSON array", block("[1, 2]"), "", [("", "[1, 2]", "Malformed tool call: a JSON array, not an object")]),
    ("trailing text in the block", block(LS + " please"), "",
     [("bash", LS + " please", "Malformed tool call: not valid JSON (Extra data")]),
    # what the arguments hold is the agent loop's to judge, as for a native call: no parse error here
    ("arguments as a JSON string", block('{"name": "bash", "arguments": "{\\"command\\": \\"ls\\"}"}'), "",
     [("bash", '{"command": "ls"}', None)]),
    ("arguments as a plain string", block('{"name": "bash", "arguments": "ls -la"}'), "", [("bash", "ls -la", None)]),
    ("arguments an array", block('{"name": "bash", "arguments": ["ls"]}'), "", [("bash", '["ls"]', None)]),
    ("arguments null", block('{"name": "bash", "arguments": null}'), "", [("bash", "null", None)]),
    ("nested braces in strings", block('{"name": "bash", "arguments": {"command": "echo \'}}{\' && f() { :; }"}}'),
     "", [("bash", '{"command": "echo \'}}{\' && f() { :; }"}', None)]),
    ("tags inside a string",
     block('{"name": "str_replace_editor", "arguments": {"new_str": "</tool_call><tool_call>"}}'),
     "", [("str_replace_editor", '{"new_str": "</tool_call><tool_call>"}', None)]),
    ("unicode", "Ça marche → " + block('{"name": "bash", "arguments": {"command": "echo \\u00e9t\u00e9 日本"}}'),
     "Ça marche →", [("bash", '{"command": "echo été 日本"}', None)]),
]


@pytest.mark.parametrize("text, content, want", [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_one_parse_for_every_output(text, content, want):
    got_content, calls = parse_tool_calls(text, turn=3)
    assert got_content == content
    assert [c["id"] for c in calls] == [f"call_3_{i}" for i in range(len(want))]  # deterministic per turn
    assert all(c["type"] == "function" and set(c) <= {"id", "type", "function", "error"} for c in calls)
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [(n, a) for n, a, _ in want]
    for call, (_, _, error) in zip(calls, want, strict=True):
        if error is None:
            assert "error" not in call
        else:
            assert call["error"].startswith(error) and "Write each call as <tool_call>" in call["error"]
    assert parse_tool_calls(text, turn=3) == (got_content, calls)  # no hidden state


TOOL_NAMES = {"bash", "submit", "str_replace_editor"}
BAD_ARGUMENTS = {"arguments as a plain string", "arguments an array", "arguments null"}  # well-formed envelopes


@pytest.mark.parametrize("row", [row for row in TABLE if row[3]], ids=[row[0] for row in TABLE if row[3]])
def test_the_agent_loop_refuses_every_malformed_call(row):
    """A call the parser marks malformed never reaches a tool: the loop answers with the parser's `error`, a
    format error. Arguments that are no JSON object are refused by the loop alone, as a native call's would be."""
    label, text, _, want = row
    _, calls = parse_tool_calls(text, turn=1)
    for call, (_, _, error) in zip(calls, want, strict=True):
        if error is not None:
            with pytest.raises(MalformedCall) as refused:
                parse_call(call, TOOL_NAMES, 10_000)
            assert str(refused.value) == call["error"]
        elif label in BAD_ARGUMENTS:
            with pytest.raises(MalformedCall, match="Tool arguments"):
                parse_call(call, TOOL_NAMES, 10_000)
        else:
            parse_call(call, TOOL_NAMES, 10_000)


def test_rendered_calls_parse_back_to_themselves():
    for name, arguments in [("bash", '{"command": "ls"}'), ("submit", "{}"),
                            ("str_replace_editor", json.dumps({"new_str": "</tool_call> été {", "n": [1, {}]},
                                                              ensure_ascii=False)),
                            ("bash", "not json")]:
        call = {"id": "call_1_0", "type": "function", "function": {"name": name, "arguments": arguments}}
        assert parse_tool_calls("ok\n" + render_tool_call(call), turn=1) == ("ok", [call])
    for row in TABLE:  # a malformed call is written back as the model wrote it, and reads back the same
        _, calls = parse_tool_calls(row[1], turn=1)
        assert parse_tool_calls("".join(render_tool_call(c) for c in calls), turn=1) == ("", calls)


def test_the_turn_number_counts_the_assistant_turns_answered():
    assert assistant_turn([{"role": "system"}, {"role": "user"}]) == 1
    assert assistant_turn([{"role": "user"}, {"role": "assistant"}, {"role": "tool"}, {"role": "assistant"},
                           {"role": "user"}]) == 3


def test_a_malformed_call_from_a_served_model_is_answered_with_its_format_error():
    """The whole path: a model behind a real HTTP server writes a broken call, the loop answers with the parser's
    error marked as a format error, and the next turn's call goes through."""
    from openai_server import ScriptedChatServer
    from rl_helpers import EchoEnvironment

    from swepost.agent import run_episode
    from swepost.policies.openai import OpenAIPolicy
    from swepost.records import ERROR_KEY, ERROR_PREFIX, Task, TurnError

    broken = 'Let me look.\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}\n</tool_call>'
    submit = block('{"name": "submit", "arguments": {}}')
    with ScriptedChatServer([{"content": broken}, {"content": submit}]) as server:
        policy = OpenAIPolicy(model="m", base_url=server.base_url, api_key="test", tool_mode="text")
        traj = run_episode(policy, EchoEnvironment(), Task(instance_id="t", problem_statement="p"), grade=False)
    assert traj.exit_status == "submitted" and traj.tool_errors == 1
    call = traj.messages[1]["tool_calls"][0]
    assert call["id"] == "call_1_0" and call["error"].startswith("Malformed tool call: not valid JSON")
    answer = traj.messages[2]
    assert answer["tool_call_id"] == "call_1_0" and answer["content"] == ERROR_PREFIX + call["error"]
    assert answer[ERROR_KEY] == TurnError.FORMAT.value
    # the next request carries the broken call as the model wrote it, and no swepost mark
    sent = server.requests[1]["messages"]
    assert sent[2] == {"role": "assistant", "content": broken}
    assert all(ERROR_KEY not in m for m in sent)


def test_a_chat_template_shows_a_malformed_turn_as_the_model_wrote_it(tok):
    """The hf policy's (and RL's) rendering: a turn with a call that could not be read is the model's own text,
    laid out as the template lays out well-formed calls."""
    from swepost.policies.chat import template_messages

    def rendered_turn(text: str) -> str:
        content, calls = parse_tool_calls(text, turn=1)
        messages = [{"role": "user", "content": "Fix it."}, {"role": "assistant", "content": content,
                                                             "tool_calls": calls}]
        return tok.apply_chat_template(template_messages(messages), tokenize=False)

    good = "Let me look.\n" + block(LS)
    bad = good + "\n" + block('{"name": "bash", "arguments": {"command": "ls"}')
    assert f"<|im_start|>assistant\n{good}<|im_end|>" in rendered_turn(good)  # the template's own layout
    assert f"<|im_start|>assistant\n{bad}<|im_end|>" in rendered_turn(bad)
