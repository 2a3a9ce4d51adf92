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


def test_auto_switches_to_text_when_a_server_that_takes_tools_answers_with_tool_call_text():
    """A server that accepts `tools=` but has no (or a failing) tool parser hands the model's `<tool_call>` text
    back as content: auto reads it with the text parser and stays in text mode; native takes the server's word."""
    ls = 'Let me look.\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>'
    submit = '<tool_call>\n{"name": "submit", "arguments": {}}\n</tool_call>'
    with ScriptedChatServer([{"content": ls}, {"content": submit}]) as server:
        p = policy(server)
        r = p.reply(MESSAGES, TOOLS)
        assert server.requests[0]["tools"] == TOOLS  # the server took the tools ...
        assert r.message == {"role": "assistant", "content": "Let me look.", "tool_calls": [  # ... and wrote text
            {"id": "call_1_0", "type": "function", "function": {"name": "bash", "arguments": '{"command": "ls"}'}}]}
        assert r.extra["tool_mode"] == "text" and r.finish_reason == "stop"
        assert p.describe()["tool_mode"] == "auto" and p.describe()["tool_mode_active"] == "text"

        history = [*MESSAGES, r.message, {"role": "tool", "tool_call_id": "call_1_0", "content": "a.py"}]
        r2 = p.reply(history, TOOLS)
        sent = server.requests[1]
        assert "tools" not in sent and "<tools>" in sent["messages"][0]["content"]
        assert sent["messages"][2] == {"role": "assistant", "content": ls}  # the call as the model wrote it
        assert r2.message["tool_calls"][0]["id"] == "call_2_0" and r2.extra["tool_mode"] == "text"

    with ScriptedChatServer([{"content": ls}]) as server:
        p = policy(server, tool_mode="native")
        r = p.reply(MESSAGES, TOOLS)
        assert r.message == {"role": "assistant", "content": ls} and p.describe()["tool_mode_active"] == "native"


def test_the_trajectory_records_the_tool_mode_used():
    from rl_helpers import EchoEnvironment

    from swepost.agent import run_episode
    from swepost.records import Task

    submit = 'Done.\n<tool_call>\n{"name": "submit", "arguments": {}}\n</tool_call>'
    with ScriptedChatServer([], default={"content": submit}) as server:
        p = policy(server)
        first = run_episode(p, EchoEnvironment(), Task(instance_id="t-1", problem_statement="p"), grade=False)
        assert first.exit_status == "submitted" and first.messages[1]["tool_calls"][0]["function"]["name"] == "submit"
        # the loop records describe() again as the episode ends: the switching episode's own record says "text"
        assert p.describe()["tool_mode_active"] == "text" and first.policy["tool_mode_active"] == "text"
        second = run_episode(p, EchoEnvironment(), Task(instance_id="t-2", problem_statement="p"), grade=False)
        assert second.policy["tool_mode_active"] == "text" and "tools" not in server.requests[-1]


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


# -- the context budget: each turn's max_tokens is the cap, at most what max_model_len leaves --------------------


def tool_result(chars: int, n: int) -> dict:
    return {"role": "tool", "tool_call_id": f"call_{n}", "content": "x" * chars}


BASH = {"tool_calls": [{"name": "bash", "arguments": {"command": "cat big.py"}}]}


def test_max_tokens_shrinks_with_the_conversation_from_usage_and_an_estimate():
    from swepost.policies.openai import estimate_tokens

    script = [{**BASH, "usage": {"prompt_tokens": 900, "completion_tokens": 100}},
              {**BASH, "usage": {"prompt_tokens": 1110, "completion_tokens": 200}},
              {**BASH, "usage": {"prompt_tokens": 1520, "completion_tokens": 300}}]
    with ScriptedChatServer(script) as server:  # no /tokenize: 404, as on hosted APIs and SGLang
        p = policy(server, max_turn_tokens=1000, max_model_len=2000)
        p.start(None)
        history = list(MESSAGES)
        sizes = [300, 600, 600]
        for n, size in enumerate(sizes):
            history.append(p.reply(history, TOOLS).message)
            history.append(tool_result(size, n))
        sent = [body["max_tokens"] for body in server.requests]
        new1, new2 = estimate_tokens(history[3:4]), estimate_tokens(history[5:6])
        assert new1 >= 300 / 4 and new2 >= 600 / 4  # the estimate errs high, never below 4 characters a token
        assert sent == [1000, 2000 - 1000 - new1, 2000 - 1310 - new2], sent
        assert sent[0] > sent[1] > sent[2] > 0
        # usage says 1820 tokens so far; the last tool result leaves less than the floor: no request is sent
        with pytest.raises(ContextOverflow, match=r"2028 tokens \(estimated\); max_model_len 2000 leaves 0"):
            p.reply(history, TOOLS)
        assert len(server.requests) == 3
        assert p.describe()["context"] == {"max_turn_tokens": 1000, "max_model_len": 2000, "min_turn_tokens": 16}

        p.start(None)  # a new episode forgets the last one's usage
        with pytest.raises(ContextOverflow, match="estimated"):
            p.reply([*MESSAGES, {"role": "user", "content": "y" * 6000}], TOOLS)
        assert len(server.requests) == 3  # an over-long conversation costs no request


def test_max_tokens_from_the_servers_tokenize_count():
    def count(body):
        return 40 * len(body["messages"]) + (100 if body.get("tools") else 0)

    with ScriptedChatServer([], default=BASH, tokenize=count) as server:
        p = policy(server, tool_mode="native", max_turn_tokens=300, max_model_len=500)
        history = list(MESSAGES)
        full = r"500 tokens \(counted by the server's /tokenize\); max_model_len 500 leaves 0"
        with pytest.raises(ContextOverflow, match=full):
            for n in range(10):
                history.append(p.reply(history, TOOLS).message)
                history.append(tool_result(10, n))
        # 2, 4, 6, 8 messages + tools: 180, 260, 340, 420 tokens; 10 messages fill the context
        assert [b["max_tokens"] for b in server.requests] == [300, 240, 160, 80]
        assert len(server.tokenize_requests) == 5
        first = server.tokenize_requests[0]
        assert first["messages"] == MESSAGES and first["tools"] == TOOLS and first["add_generation_prompt"] is True

    with ScriptedChatServer([], default={"content": "hi"}, tokenize=count) as server:  # text tool calls
        p = policy(server, tool_mode="text", max_turn_tokens=1000, max_model_len=500)
        p.reply(MESSAGES, TOOLS)
        body = server.tokenize_requests[0]
        assert "tools" not in body and "<tools>" in body["messages"][0]["content"]  # what the chat request sends
        assert server.requests[0]["max_tokens"] == 500 - 80


def test_a_count_too_low_is_corrected_from_the_servers_context_error():
    vllm = ("This model's maximum context length is 2000 tokens. However, you requested 2300 tokens (1300 in the "
            "messages, 1000 in the completion). Please reduce the length of the messages or completion.")
    vllm_new = ("'max_tokens' or 'max_completion_tokens' is too large: 1000. This model's maximum context length is "
                "1800 tokens and your request has 1300 input tokens (1000 > 1800 - 1300).")
    for error, fits in ((vllm, 700), (vllm_new, 500)):
        with ScriptedChatServer([{"status": 400, "error": error}, {"content": "ok"}]) as server:
            r = policy(server, max_turn_tokens=1000, max_model_len=2000).reply(MESSAGES, TOOLS)
            assert r.message["content"] == "ok" and r.extra["max_tokens"] == fits
            assert [b["max_tokens"] for b in server.requests] == [1000, fits]

    full = vllm.replace("1300 in the messages", "1995 in the messages")
    with ScriptedChatServer([{"status": 400, "error": full}, {"content": "never"}]) as server:
        with pytest.raises(ContextOverflow, match="context exceeded"):  # nothing useful fits: no second try
            policy(server, max_turn_tokens=1000, max_model_len=2000).reply(MESSAGES, TOOLS)
        assert len(server.requests) == 1


def test_without_max_model_len_every_turn_asks_for_the_cap():
    with ScriptedChatServer([], default=BASH, tokenize=lambda body: 10 ** 6) as server:
        p = policy(server, max_tokens=77)
        history = [*MESSAGES, {"role": "user", "content": "z" * 50_000}]
        p.reply(history, TOOLS)
        p.reply(history, TOOLS)
        assert [b["max_tokens"] for b in server.requests] == [77, 77] and server.tokenize_requests == []


def test_context_settings_are_validated():
    url = "http://127.0.0.1:1/v1"
    with pytest.raises(ValueError, match="max_turn_tokens .*max_tokens .*same setting"):
        OpenAIPolicy(model="m", base_url=url, max_turn_tokens=10, max_tokens=20)
    assert OpenAIPolicy(model="m", base_url=url, max_turn_tokens=10, max_tokens=10).max_tokens == 10
    with pytest.raises(ValueError, match="max_model_len"):
        OpenAIPolicy(model="m", base_url=url, max_model_len=8)
    with pytest.raises(ValueError, match="max_turn_tokens"):
        OpenAIPolicy(model="m", base_url=url, max_turn_tokens=0)
