"""OpenAIPolicy through the real `openai` client against a real chat-completions server on loopback."""

from __future__ import annotations

import json
import time

import pytest
from openai_server import ScriptedChatServer, free_port

from swepost.policies.base import ContextOverflow, PolicyError
from swepost.policies.openai import OpenAIPolicy

TOOLS = [
    {"type": "function", "function": {"name": "bash", "description": "run a shell command",
                                      "parameters": {"type": "object", "properties": {"command": {"type": "string"}},
                                                     "required": ["command"]}}},
    {"type": "function", "function": {"name": "submit", "description": "finish",
                                      "parameters": {"type": "object", "properties": {}}}},
]
MESSAGES = [{"role": "system", "content": "You fix bugs."}, {"role": "user", "content": "Fix the bug in a.py"}]
VLLM_NO_TOOL_CHOICE = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'


def policy(server: ScriptedChatServer, **kw) -> OpenAIPolicy:
    kw.setdefault("backoff", 0.01)
    return OpenAIPolicy(model="m", base_url=server.base_url, api_key="test", **kw)


def test_native_tool_call_round_trip_keeps_arguments_string():
    raw_args = '{"command":  "grep -n \\"def f\\" a.py",   "extra": [1, 2]}'
    with ScriptedChatServer([{"content": None, "tool_calls": [{"name": "bash", "arguments": raw_args}]},
                             {"content": "done"}]) as server:
        p = policy(server, tool_mode="native")
        r = p.reply(MESSAGES, TOOLS)
        call = r.message["tool_calls"][0]
        assert call == {"id": "call_1_0", "type": "function", "function": {"name": "bash", "arguments": raw_args}}
        assert r.message["role"] == "assistant" and r.message["content"] is None
        assert (r.finish_reason, r.prompt_tokens, r.completion_tokens) == ("tool_calls", 18, 5)
        assert server.requests[0]["tools"] == TOOLS and server.requests[0]["messages"] == MESSAGES

        history = [*MESSAGES, r.message, {"role": "tool", "tool_call_id": call["id"], "content": "3:def f():"}]
        r2 = p.reply(history, TOOLS)
        assert r2.message == {"role": "assistant", "content": "done"} and r2.finish_reason == "stop"
        sent = server.requests[1]["messages"]
        assert sent[2]["tool_calls"][0]["function"]["arguments"] == raw_args
        assert sent[3] == {"role": "tool", "tool_call_id": "call_1_0", "content": "3:def f():"}


def test_text_mode_parses_tool_call_blocks_and_sends_hermes_format():
    two = ('Let me look first.\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>\n'
           '<tool_call>\n{"name": "bash", "arguments": {"command": "cat a.py"}}\n</tool_call>')
    broken = ('Trying.\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"</tool_call>\n'
              '<tool_call>oops</tool_call>')
    with ScriptedChatServer([{"content": two}, {"content": broken}, {"content": "no calls here"}]) as server:
        p = policy(server, tool_mode="text")
        r = p.reply(MESSAGES, TOOLS)
        assert r.message["content"] == "Let me look first."
        calls = r.message["tool_calls"]
        assert [c["function"]["name"] for c in calls] == ["bash", "bash"]
        assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"command": "ls"}, {"command": "cat a.py"}]
        assert len({c["id"] for c in calls}) == 2 and r.extra["tool_mode"] == "text"

        req = server.requests[0]
        assert "tools" not in req and "tool_choice" not in req
        system = req["messages"][0]
        assert system["role"] == "system" and system["content"].startswith("You fix bugs.\n\n# Tools")
        assert json.dumps(TOOLS[0]) in system["content"] and "<tool_call>" in system["content"]

        history = [*MESSAGES, r.message,
                   {"role": "tool", "tool_call_id": calls[0]["id"], "content": "a.py"},
                   {"role": "tool", "tool_call_id": calls[1]["id"], "content": "def f(): pass"}]
        r2 = p.reply(history, TOOLS)
        sent = server.requests[1]["messages"]
        assert sent[2] == {"role": "assistant", "content": (
            'Let me look first.\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "bash", "arguments": {"command": "cat a.py"}}\n</tool_call>')}
        assert sent[3] == {"role": "user", "content": "<tool_response>\na.py\n</tool_response>\n"
                                                      "<tool_response>\ndef f(): pass\n</tool_response>"}
        assert len(sent) == 4 and all(m["role"] != "tool" for m in sent)

        assert r2.message["content"] == "Trying."
        bad1, bad2 = r2.message["tool_calls"]
        assert bad1["function"] == {"name": "bash", "arguments": '{"name": "bash", "arguments": {"command": "ls"'}
        assert bad2["function"] == {"name": "", "arguments": "oops"}

        r3 = p.reply(MESSAGES, TOOLS)
        assert r3.message == {"role": "assistant", "content": "no calls here"}


def test_429_is_retried_honouring_retry_after():
    with ScriptedChatServer([{"status": 429, "retry_after": 0.3}, {"content": "ok"}]) as server:
        p = policy(server, backoff=30.0)  # our own backoff would take 30 s: Retry-After must win
        start = time.monotonic()
        r = p.reply(MESSAGES, TOOLS)
        assert r.message["content"] == "ok" and r.extra["attempts"] == 2
        gap = server.times[1] - server.times[0]
        assert 0.3 <= gap < 2 and time.monotonic() - start < 3


def test_500_twice_then_success():
    with ScriptedChatServer([{"status": 500}, {"status": 502}, {"content": "ok"}]) as server:
        r = policy(server).reply(MESSAGES, TOOLS)
        assert r.message["content"] == "ok" and len(server.requests) == 3 and r.extra["attempts"] == 3


def test_slow_reply_is_retried_then_policy_error_when_always_slow():
    with ScriptedChatServer([{"delay": 1.0, "content": "late"}, {"content": "ok"}]) as server:
        r = policy(server, timeout=0.3).reply(MESSAGES, TOOLS)
        assert r.message["content"] == "ok" and len(server.requests) == 2

    with ScriptedChatServer([], default={"delay": 1.0, "content": "late"}) as server:
        start = time.monotonic()
        with pytest.raises(PolicyError, match="gave up after 3 attempts.*Timeout"):
            policy(server, timeout=0.2, max_retries=2).reply(MESSAGES, TOOLS)
        assert len(server.requests) == 3 and time.monotonic() - start < 3


def test_exhausted_retries_raise_policy_error_with_last_error():
    with ScriptedChatServer([{"status": 503, "error": "overloaded"}] * 4) as server:
        with pytest.raises(PolicyError, match="gave up after 4 attempts.*503.*overloaded") as e:
            policy(server, max_retries=3).reply(MESSAGES, TOOLS)
        assert not isinstance(e.value, ContextOverflow) and len(server.requests) == 4


def test_other_client_errors_are_not_retried():
    with ScriptedChatServer([{"status": 401, "error": "bad key"}, {"content": "never"}]) as server:
        with pytest.raises(PolicyError, match="401.*bad key"):
            policy(server).reply(MESSAGES, TOOLS)
        assert len(server.requests) == 1


@pytest.mark.parametrize("error", [
    "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
    "(3976 in the messages, 1024 in the completion). Please reduce the length of the messages or completion.",
    "The decoder prompt (length 9000) is longer than the maximum model length of 8192.",
])
def test_context_length_400_raises_context_overflow(error):
    with ScriptedChatServer([{"status": 400, "error": error}, {"content": "never"}]) as server:
        with pytest.raises(ContextOverflow):
            policy(server).reply(MESSAGES, TOOLS)
        assert len(server.requests) == 1


def test_auto_falls_back_to_text_mode_on_vllm_tool_choice_error():
    call = '<tool_call>\n{"name": "submit", "arguments": {}}\n</tool_call>'
    with ScriptedChatServer([{"status": 400, "error": VLLM_NO_TOOL_CHOICE}, {"content": call},
                             {"content": "again"}]) as server:
        p = policy(server)
        assert p.describe()["tool_mode_active"] == "native"
        r = p.reply(MESSAGES, TOOLS)
        assert r.message["tool_calls"][0]["function"] == {"name": "submit", "arguments": "{}"}
        assert "tools" in server.requests[0] and "tools" not in server.requests[1]
        assert "<tools>" in server.requests[1]["messages"][0]["content"]
        p.reply(MESSAGES, TOOLS)
        assert "tools" not in server.requests[2] and len(server.requests) == 3
        assert p.describe()["tool_mode"] == "auto" and p.describe()["tool_mode_active"] == "text"

    with ScriptedChatServer([{"status": 400, "error": VLLM_NO_TOOL_CHOICE}]) as server:
        with pytest.raises(PolicyError, match="enable-auto-tool-choice"):
            policy(server, tool_mode="native").reply(MESSAGES, TOOLS)


def test_sampling_parameters_in_describe_and_in_every_request():
    extra = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05}
    with ScriptedChatServer([{"content": "a", "usage": None}, {"content": "b"}]) as server:
        p = policy(server, temperature=0.7, top_p=0.8, max_tokens=321, seed=1234, extra_body=extra)
        d = p.describe()
        assert d["name"] == "openai" and d["model"] == "m" and d["base_url"].startswith(server.base_url)
        assert d["sampling"] == {"temperature": 0.7, "top_p": 0.8, "max_tokens": 321, "seed": 1234,
                                 "extra_body": extra}
        r = p.reply(MESSAGES, TOOLS)
        assert (r.prompt_tokens, r.completion_tokens) == (0, 0)
        p.reply(MESSAGES, [])
        for body in server.requests:
            assert body["model"] == "m"
            assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.7, 0.8, 321, 1234)
            assert {k: body[k] for k in extra} == extra
        assert "tools" not in server.requests[1]  # no tools offered: none sent

    with ScriptedChatServer([{"content": "x"}]) as server:
        p = policy(server)
        assert p.describe()["sampling"]["seed"] is None
        p.reply(MESSAGES, TOOLS)
        assert "seed" not in server.requests[0] and server.requests[0]["temperature"] == 0.0


def test_connection_refused_is_a_policy_error():
    p = OpenAIPolicy(model="m", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="t", backoff=0.01,
                     max_retries=1)
    with pytest.raises(PolicyError, match="gave up after 2 attempts.*APIConnectionError"):
        p.reply(MESSAGES, TOOLS)


def test_html_page_with_200_is_a_policy_error_not_a_crash():
    with ScriptedChatServer([], default={"html": "<html><body>Please log in</body></html>"}) as server:
        with pytest.raises(PolicyError, match="not a JSON chat completion.*Please log in"):
            policy(server).reply(MESSAGES, TOOLS)
        assert len(server.requests) == 1  # an answer, however wrong, is not retried


def test_html_500_is_retried_then_policy_error():
    with ScriptedChatServer([], default={"html": "<h1>Internal Server Error</h1>", "status": 500}) as server:
        with pytest.raises(PolicyError, match="gave up after 3 attempts.*500"):
            policy(server, max_retries=2).reply(MESSAGES, TOOLS)
        assert len(server.requests) == 3


def test_hung_server_ends_within_the_episode_budget():
    with ScriptedChatServer([], default={"hang": True}) as server:
        p = policy(server, timeout=30.0, episode_timeout=1.0, max_retries=5)
        p.start(None)
        start = time.monotonic()
        with pytest.raises(PolicyError, match="episode_timeout 1 s"):
            p.reply(MESSAGES, TOOLS)
        assert time.monotonic() - start < 2.5
        with pytest.raises(PolicyError, match="episode_timeout"):  # the budget is the episode's, not the turn's
            p.reply(MESSAGES, TOOLS)
        assert time.monotonic() - start < 2.5


def test_connect_and_episode_timeouts_are_validated():
    with pytest.raises(ValueError, match="episode_timeout"):
        OpenAIPolicy(model="m", base_url="http://127.0.0.1:1/v1", episode_timeout=0)
