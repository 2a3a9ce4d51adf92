"""The judge library (rewards/judge) through a real chat-completions server on loopback: scores, weights, retries,
failures that are never scores, the group-mean fallback, the cache, concurrency, secrets, the answer cap, the
lexical judge and make_judge."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from swepost.errors import BadInput
from swepost.rewards.judge import (
    AXES,
    JudgeItem,
    Judgement,
    LexicalJudge,
    MalformedReply,
    OpenAIJudge,
    group_rewards,
    load_prompt,
    make_judge,
    parse_reply,
    summarize,
)

KEY = "sk-judge-test-5ecret-0042"
SCORES = {"correctness": 9, "completeness": 8, "relevance": 7, "clarity": 6, "reasoning": 5}
QUESTION = "Where does minicalc turn digits into numbers?"
REFERENCE = "In minicalc/lexer.py, Lexer.number() reads a run of digits and yields a NUMBER token."
RUBRIC = ["names minicalc/lexer.py", "says a NUMBER token is produced"]


def verdict(scores: dict[str, int] = SCORES, rationale: str = "fine") -> str:
    return json.dumps({"rationale": rationale, **scores})


class JudgeServer:
    """A chat-completions server on 127.0.0.1 (any free port). Each request takes the next `script` entry, then
    `respond(body)`'s; an entry is {"content": str} | {"status": int, "error": str} | {"echo_auth": status}
    (an error whose body repeats the Authorization header), with an optional "delay" in seconds first. It records
    every request body and the most requests it held at once."""

    def __init__(self, script: list[dict[str, Any]] | None = None,
                 respond: Callable[[dict[str, Any]], dict[str, Any]] | None = None, delay: float = 0.0):
        self.script, self.respond, self.delay = list(script or []), respond, delay
        self.requests: list[dict[str, Any]] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def prompts(self) -> list[str]:
        return [body["messages"][0]["content"] for body in self.requests]

    def __enter__(self) -> JudgeServer:
        self._httpd = _Server(("127.0.0.1", 0), _handler(self))
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    def entry(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.requests.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.script:
                return self.script.pop(0)
        if self.respond is not None:
            return self.respond(body)
        return {"status": 410, "error": "script exhausted"}

    def done(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # socketserver's 5 drops the SYNs of a burst of connections (a 1 s stall each)
    daemon_threads = True


def _handler(server: JudgeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers
        disable_nagle_algorithm = True

        def log_message(self, format, *args):  # quiet
            pass

        def send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self.send(404, {"error": {"message": f"no route {self.path}"}})
            entry = server.entry(body)
            try:
                time.sleep(entry.get("delay", server.delay))
                if "echo_auth" in entry:
                    error = f"invalid credentials: {self.headers.get('Authorization')}"
                    return self.send(entry["echo_auth"], {"error": {"message": error, "code": entry["echo_auth"]}})
                if entry.get("status", 200) != 200:
                    return self.send(entry["status"], {"error": {"message": entry.get("error", "scripted"),
                                                                 "code": entry["status"]}})
                n = len(server.requests)
                self.send(200, {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
                                "model": body.get("model"),
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": entry["content"]}}],
                                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}})
            finally:
                server.done()

    return Handler


def endpoint_judge(server: JudgeServer, **kwargs: Any) -> OpenAIJudge:
    kwargs = {"backoff": 0.0, "api_key": KEY, **kwargs}
    return OpenAIJudge(base_url=server.base_url, model="judge-model", **kwargs)


def by_answer(table: dict[str, dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A reply chosen by which key of `table` the judged answer contains (so order does not matter)."""
    def respond(body: dict[str, Any]) -> dict[str, Any]:
        answer = body["messages"][0]["content"].split("## Candidate answer", 1)[1]
        return next(reply for marker, reply in table.items() if marker in answer)
    return respond


# -- scores and weights -------------------------------------------------------------------------------------------

def test_scores_are_parsed_and_weights_applied():
    with JudgeServer([{"content": verdict(rationale="cites the lexer")}] * 2) as server:
        judgement = endpoint_judge(server).judge(QUESTION, "Lexer.number() in lexer.py", REFERENCE, RUBRIC)
        assert judgement.scores == SCORES and not judgement.failed and judgement.requests == 1
        assert judgement.total == 35  # the eval score: the plain sum
        assert judgement.reward == pytest.approx((0.3 * 9 + 0.2 * 8 + 0.2 * 7 + 0.1 * 6 + 0.2 * 5) / 10)
        assert judgement.rationale == "cites the lexer" and judgement.judge == "openai"
        only_correctness = endpoint_judge(server, weights={"correctness": 1.0})
        other = only_correctness.judge(QUESTION, "Lexer.number() in lexer.py", REFERENCE, RUBRIC)
        assert other.reward == pytest.approx(0.9) and other.total == 35  # weights move the reward, not the total
    body = server.requests[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0
    prompt = body["messages"][0]["content"]
    for part in (QUESTION, REFERENCE, "Lexer.number() in lexer.py", "- names minicalc/lexer.py"):
        assert part in prompt
    assert "{" + "answer}" not in prompt and "5 is an average answer" in prompt


@pytest.mark.parametrize("reply", [
    verdict(),
    "Here is my verdict:\n```json\n" + verdict() + "\n```\nHope it helps.",
    "The answer is good. " + verdict() + " That is all.",
    "<think>maybe {\"correctness\": 2}</think>" + verdict(),
    json.dumps({"scores": SCORES, "rationale": "fine"}),
    json.dumps({k.capitalize(): float(v) for k, v in SCORES.items()}),
])
def test_replies_in_fences_or_prose_are_read(reply):
    assert parse_reply(reply)[0] == SCORES


@pytest.mark.parametrize("reply, cause", [
    ("", "empty"),
    ("I think it deserves a 7.", "no JSON object"),
    (json.dumps({**SCORES, "clarity": 11}), "clarity"),
    (json.dumps({**SCORES, "reasoning": 0}), "reasoning"),
    (json.dumps({**SCORES, "correctness": 7.5}), "correctness"),
    (json.dumps({**SCORES, "relevance": "high"}), "relevance"),
    (json.dumps({k: v for k, v in SCORES.items() if k != "completeness"}), "no score for completeness"),
])
def test_out_of_range_or_missing_axes_are_malformed(reply, cause):
    with pytest.raises(MalformedReply, match=cause):
        parse_reply(reply)


# -- retries and failures -----------------------------------------------------------------------------------------

def test_malformed_reply_is_retried_then_counted_as_failure():
    with JudgeServer(respond=lambda body: {"content": "Great answer, 9 out of 10!"}) as server:
        judgement = endpoint_judge(server, max_attempts=3).judge(QUESTION, "an answer", REFERENCE)
    assert len(server.requests) == 3 and judgement.requests == 3
    assert judgement.failed and "no usable reply in 3 attempts" in judgement.cause
    assert judgement.scores is None and judgement.total is None and judgement.reward is None  # never a 0
    # asked again with its own reply and a reminder of the format
    assert server.requests[1]["messages"][1] == {"role": "assistant", "content": "Great answer, 9 out of 10!"}
    assert "JSON" in server.requests[1]["messages"][2]["content"]


def test_malformed_then_good_reply_is_a_score():
    with JudgeServer([{"content": "no idea"}, {"content": verdict()}]) as server:
        judgement = endpoint_judge(server).judge(QUESTION, "an answer", REFERENCE)
    assert judgement.scores == SCORES and judgement.requests == 2


@pytest.mark.parametrize("error", [{"status": 500}, {"status": 503}, {"status": 429}])
def test_server_errors_are_retried(error):
    with JudgeServer([error, error, {"content": verdict()}]) as server:
        judgement = endpoint_judge(server, max_retries=3).judge(QUESTION, "an answer", REFERENCE)
    assert judgement.scores == SCORES and len(server.requests) == 3 and judgement.requests == 3


def test_server_errors_past_the_retries_are_a_failure():
    with JudgeServer(respond=lambda body: {"status": 502, "error": "bad gateway"}) as server:
        judgement = endpoint_judge(server, max_retries=2).judge(QUESTION, "an answer", REFERENCE)
    assert len(server.requests) == 3 and judgement.failed and judgement.reward is None
    assert "gave up after 3 requests" in judgement.cause and "bad gateway" in judgement.cause


def test_a_refusal_is_not_retried():
    with JudgeServer(respond=lambda body: {"status": 404, "error": "model judge-model does not exist"}) as server:
        judgement = endpoint_judge(server, max_retries=3).judge(QUESTION, "an answer", REFERENCE)
    assert len(server.requests) == 1 and judgement.failed and "does not exist" in judgement.cause


def test_a_timeout_is_retried():
    with JudgeServer([{"delay": 1.5, "content": verdict()}, {"content": verdict()}]) as server:
        judgement = endpoint_judge(server, timeout=0.5, max_retries=1).judge(QUESTION, "an answer", REFERENCE)
    assert judgement.scores == SCORES and judgement.requests == 2


def test_an_endpoint_that_is_down_is_a_failure_not_a_score():
    with JudgeServer() as server:
        base_url = server.base_url
    judge = OpenAIJudge(base_url=base_url, model="judge-model", backoff=0.0, max_retries=1, connect_timeout=1)
    judgement = judge.judge(QUESTION, "an answer", REFERENCE)
    assert judgement.failed and judgement.reward is None and "Connection" in judgement.cause


# -- the API key --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [401, 500])
def test_the_api_key_echoed_by_the_server_never_reaches_the_cause(status, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG, logger="swepost")
    with JudgeServer(respond=lambda body: {"echo_auth": status}) as server:
        judge = OpenAIJudge(base_url=server.base_url, model="judge-model", backoff=0.0, max_retries=1)
        judgement = judge.judge(QUESTION, "an answer", REFERENCE)
    assert judgement.failed and "invalid credentials: Bearer <redacted>" in judgement.cause
    assert KEY not in judgement.cause and KEY not in judgement.model_dump_json()
    assert KEY not in caplog.text and KEY not in json.dumps(judge.describe())


# -- the group-mean fallback --------------------------------------------------------------------------------------

def test_a_failure_gets_its_group_mean():
    low = {**SCORES, "correctness": 1, "completeness": 1}
    replies = {"GOOD": {"content": verdict()}, "POOR": {"content": verdict(low)}, "BROKEN": {"content": "oops"}}
    answers = ["GOOD answer", "BROKEN answer", "POOR answer", None]
    with JudgeServer(respond=by_answer(replies)) as server:
        judgements = endpoint_judge(server, concurrency=4, max_attempts=2).judge_many(
            [JudgeItem(QUESTION, a, REFERENCE) for a in answers])
    good, broken, poor, missing = judgements
    assert broken.failed and not good.failed and not poor.failed and missing.missing_answer
    assert missing.reward == 0.0 and missing.requests == 0  # a missing answer is graded 0, not a failure
    group = group_rewards(judgements)
    mean = (good.reward + poor.reward + 0.0) / 3
    assert group.judge_failed == 1
    assert group.rewards == pytest.approx([good.reward, mean, poor.reward, 0.0])
    masked = group_rewards(judgements, on_failure="mask")
    assert masked.rewards[1] is None and masked.rewards[0] == good.reward and masked.judge_failed == 1
    # the whole group failed: no made-up reward (SWE-QA-Pro gives 1.0 each: the same zero advantage)
    assert group_rewards([broken, broken]).rewards == [None, None]
    with pytest.raises(ValueError, match="on_failure"):
        group_rewards(judgements, on_failure="zero")
    summary = summarize(judgements)
    assert summary["judge_failed"] == 1 and summary["graded"] == 3 and summary["missing_answer"] == 1
    assert summary["total"] == pytest.approx((good.total + poor.total + 5) / 3)
    assert set(summary["axes"]) == set(AXES)


# -- the cache ----------------------------------------------------------------------------------------------------

def test_a_rerun_hits_the_cache_and_sends_no_request(tmp_path):
    cache = tmp_path / "cache" / "judge"
    items = [JudgeItem(QUESTION, f"answer {i}", REFERENCE, tuple(RUBRIC)) for i in range(4)]
    with JudgeServer(respond=lambda body: {"content": verdict()}) as server:
        first = endpoint_judge(server, cache=cache, concurrency=4).judge_many(items)
        assert len(server.requests) == 4 and not any(j.cached for j in first)
        again = endpoint_judge(server, cache=cache, concurrency=4).judge_many(items)
        assert len(server.requests) == 4  # no new request
        assert all(j.cached and j.requests == 0 for j in again)
        assert [j.scores for j in again] == [j.scores for j in first]
        # weights are not in the key: the reward is recomputed from the cached axes
        reweighted = endpoint_judge(server, cache=cache, weights={"clarity": 1.0}).judge_many(items[:1])
        assert reweighted[0].cached and reweighted[0].reward == pytest.approx(0.6)
        # another model or another prompt is judged afresh
        endpoint = {"base_url": server.base_url, "api_key": KEY, "cache": cache, "backoff": 0.0}
        OpenAIJudge(model="another-model", **endpoint).judge_many(items[:1])
        prompt = tmp_path / "judge_custom.md"
        prompt.write_text("Score this: {answer} (reference: {reference})")
        OpenAIJudge(model="judge-model", prompt=prompt, **endpoint).judge_many(items[:1])
        assert len(server.requests) == 6
    assert len(list(cache.rglob("*.json"))) == 6 and not list(cache.rglob("*.tmp"))


def test_failures_are_not_cached(tmp_path):
    with JudgeServer([{"content": "oops"}], respond=lambda body: {"content": verdict()}) as server:
        failed = endpoint_judge(server, cache=tmp_path, max_attempts=1).judge(QUESTION, "an answer", REFERENCE)
        assert failed.failed and not list(tmp_path.rglob("*.json"))
        later = endpoint_judge(server, cache=tmp_path, max_attempts=1).judge(QUESTION, "an answer", REFERENCE)
    assert later.scores == SCORES and len(server.requests) == 2


# -- concurrency, order, duplicates -------------------------------------------------------------------------------

def test_concurrency_overlaps_requests_and_keeps_order():
    replies = {f"ANSWER-{i}.": {"content": verdict({**SCORES, "correctness": i + 1})} for i in range(8)}
    items = [JudgeItem(QUESTION, f"ANSWER-{i}.", REFERENCE) for i in range(8)]
    with JudgeServer(respond=by_answer(replies), delay=0.3) as server:
        started = time.monotonic()
        judgements = endpoint_judge(server, concurrency=8).judge_many(items)
        elapsed = time.monotonic() - started
    assert [j.scores["correctness"] for j in judgements] == list(range(1, 9))
    assert server.max_in_flight >= 6, server.max_in_flight
    assert elapsed < 8 * 0.3


def test_concurrency_one_sends_one_at_a_time():
    with JudgeServer(respond=lambda body: {"content": verdict()}, delay=0.05) as server:
        endpoint_judge(server, concurrency=1).judge_many([JudgeItem(QUESTION, f"a{i}", REFERENCE) for i in range(4)])
    assert server.max_in_flight == 1 and len(server.requests) == 4


def test_identical_items_are_judged_once():
    item = {"question": QUESTION, "answer": "same answer", "reference_answer": REFERENCE, "rubric": RUBRIC}
    with JudgeServer(respond=lambda body: {"content": verdict()}) as server:
        judgements = endpoint_judge(server, concurrency=4).judge_many([item, dict(item), dict(item)])
    assert len(server.requests) == 1 and [j.scores for j in judgements] == [SCORES] * 3


# -- answers: missing and over-long -------------------------------------------------------------------------------

@pytest.mark.parametrize("answer", [None, "", "  \n "])
def test_a_missing_answer_scores_its_setting_without_a_request(answer):
    with JudgeServer(respond=lambda body: {"content": verdict()}) as server:
        default = endpoint_judge(server).judge(QUESTION, answer, REFERENCE)
        set_to = endpoint_judge(server, missing_answer_reward=0.25).judge(QUESTION, answer, REFERENCE)
    assert not server.requests
    assert default.reward == 0.0 and set_to.reward == 0.25 and default.missing_answer and not default.failed
    assert default.total == 5  # the eval score's floor: every axis 1


def test_a_long_answer_is_capped_before_the_judge_sees_it():
    answer = "x" * 1_000_000
    with JudgeServer(respond=lambda body: {"content": verdict()}) as server:
        judgement = endpoint_judge(server, max_answer_chars=4000).judge(QUESTION, answer, REFERENCE)
    prompt = server.prompts()[0]
    assert judgement.truncated and judgement.scores == SCORES
    assert "x" * 4000 in prompt and "x" * 4001 not in prompt
    assert "answer truncated by swepost: the first 4,000 of 1,000,000 characters" in prompt
    assert len(prompt) < 4000 + len(load_prompt().text) + 1000


# -- the prompt file ----------------------------------------------------------------------------------------------

def test_a_prompt_file_of_ones_own_is_used(tmp_path):
    prompt = tmp_path / "judge_mine.md"
    prompt.write_text("Q: {question}\nA: {answer}\nR: {reference}\nP:\n{rubric}\nReply as JSON {{...}}")
    with JudgeServer([{"content": verdict()}]) as server:
        endpoint_judge(server, prompt=prompt).judge("q?", "a.", "r.", ["one", "two"])
    assert server.prompts() == ["Q: q?\nA: a.\nR: r.\nP:\n- one\n- two\nReply as JSON {...}"]


@pytest.mark.parametrize("text, problem", [
    ("Score {answer} as {\"correctness\": 1}", "unknown template field"),
    ("Score {answr}", "unknown template field"),
    ("Score the question {question}", "needs an {answer} field"),
])
def test_a_broken_prompt_file_is_bad_input(tmp_path, text, problem):
    prompt = tmp_path / "judge_broken.md"
    prompt.write_text(text)
    with pytest.raises(BadInput, match=problem) as caught:
        load_prompt(prompt)
    assert str(prompt) in str(caught.value)


def test_the_shipped_prompt_loads():
    prompt = load_prompt()
    rendered = prompt.render(JudgeItem("q?", "a.", "r."))
    assert all(axis in rendered for axis in AXES) and "no rubric" in rendered


# -- the lexical judge --------------------------------------------------------------------------------------------

def test_the_lexical_judge_ranks_a_perfect_answer_above_an_unrelated_one():
    judge = LexicalJudge()
    perfect, partial, unrelated = judge.judge_many([
        JudgeItem(QUESTION, REFERENCE, REFERENCE, tuple(RUBRIC)),
        JudgeItem(QUESTION, "It happens in minicalc/lexer.py.", REFERENCE, tuple(RUBRIC)),
        JudgeItem(QUESTION, "Bake the cake for forty minutes at 180 degrees.", REFERENCE, tuple(RUBRIC)),
    ])
    assert perfect.judge == "lexical" and perfect.model is None
    assert perfect.total == 50 and perfect.reward == pytest.approx(1.0)
    assert perfect.reward > partial.reward > unrelated.reward
    assert unrelated.total == 5 and not unrelated.failed
    assert "not meaning" in perfect.rationale


# -- make_judge and JudgeConfig -----------------------------------------------------------------------------------

@pytest.mark.parametrize("config, key", [
    ({"base_url": "http://127.0.0.1:9/v1"}, "judge.model"),
    ({"model": "judge-model"}, "judge.base_url"),
    ({"kind": "openai"}, "judge.base_url"),
    ({"kind": "lexical", "model": "judge-model"}, "judge.kind"),
    ({"modle": "judge-model"}, "judge.modle"),
    ({"weights": {"corectness": 1.0}}, "judge.weights"),
    ({"weights": {"correctness": 0.0}}, "judge.weights"),
    ({"missing_answer_reward": 2}, "judge.missing_answer_reward"),
])
def test_make_judge_refuses_an_incomplete_or_wrong_config(config, key):
    with pytest.raises(BadInput) as caught:
        make_judge(config)
    assert key in str(caught.value)


def test_make_judge_builds_what_is_asked(tmp_path):
    assert isinstance(make_judge(None), LexicalJudge) and isinstance(make_judge({"kind": "lexical"}), LexicalJudge)
    with JudgeServer([{"content": verdict()}]) as server:
        judge = make_judge({"base_url": server.base_url, "model": "judge-model", "api_key": KEY,
                            "cache_dir": str(tmp_path), "concurrency": 3, "weights": {"correctness": 1}})
        assert isinstance(judge, OpenAIJudge) and judge.concurrency == 3
        judgement = judge.judge(QUESTION, "an answer", REFERENCE)
    assert judgement.reward == pytest.approx(0.9) and list(tmp_path.rglob("*.json"))
    described = json.dumps(judge.describe())
    assert KEY not in described and "judge-model" in described


def test_judgement_failure_is_distinct_from_a_zero():
    failure = Judgement.failure("openai", "down")
    assert failure.reward is None and failure.total is None and failure.failed
    assert Path(load_prompt().path).name == "judge.md"


def test_concurrent_writers_to_one_cache_leave_whole_files(tmp_path):
    items = [JudgeItem(QUESTION, f"answer {i}", REFERENCE) for i in range(8)]
    with JudgeServer(respond=lambda body: {"content": verdict()}, delay=0.02) as server:
        judges = [endpoint_judge(server, cache=tmp_path, concurrency=4) for _ in range(3)]
        threads = [threading.Thread(target=judge.judge_many, args=(items,)) for judge in judges]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        files = list(tmp_path.rglob("*.json"))
        assert len(files) == 8 and not list(tmp_path.rglob("*.tmp"))
        assert all(json.loads(f.read_text())["scores"] == SCORES for f in files)
        sent = len(server.requests)
        assert all(j.cached for j in endpoint_judge(server, cache=tmp_path).judge_many(items))
        assert len(server.requests) == sent
