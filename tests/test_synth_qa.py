"""`swepost tasks synth-qa`: codeqa questions from issue texts, end to end on the bundled minicalc repo through a real
chat-completions server on loopback (questions, a teacher agent's tool calls in real sandboxes, direct answers and
judgements, each answered by what the request asks), and its parts: reply parsing, near-duplicates, clusters,
balance, bad input and a dead server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from swepost.artifacts import ArtifactStore
from swepost.stages.synth_qa import (
    Issue,
    Question,
    TasksSynthQaConfig,
    Unreadable,
    balance,
    cluster_texts,
    jaccard,
    near_duplicates,
    parse_questions,
)
from swepost.stages.tasks import load_tasks
from swepost.taskkinds.codeqa import CODEQA

REPO_ROOT = Path(__file__).resolve().parents[1]
ISSUES = REPO_ROOT / "data" / "minicalc_issues.jsonl"
MIRRORS = REPO_ROOT / "data" / "repos"
PINNED = "6439748ee1c52c4184dc9c7efe8a2c26bcfb8ff4"
BACKENDS = [pytest.param("docker", marks=pytest.mark.docker), "bwrap"]

# what the "LLM" writes for each issue (by title); the teacher's and the direct answers (by question)
Q_EMPTY = "What does minicalc.stats.mean do when it is given an empty list?"
Q_EMPTY_TWIN = "What does minicalc.stats.mean do when it's given an empty list?"
Q_WHY_ZERO = "Why does minicalc.stats.mean raise ZeroDivisionError rather than ValueError for empty input?"
Q_WHERE_MEDIAN = "Where does minicalc compute the median of an even number of values?"
Q_HOW_MEDIAN = "How does minicalc.stats.median combine the two middle values of an even-length input?"
Q_LEAP = "Why does minicalc.dates.is_leap_year return False for the year 2000?"
Q_SLUG = "How does minicalc.text.slugify split text into the words it joins?"
GENERATED = {
    "mean() of an empty list raises ZeroDivisionError": json.dumps({"questions": [
        {"question": Q_EMPTY, "qa_type": "what"}, {"question": Q_WHY_ZERO, "qa_type": "Why"},
        {"question": Q_EMPTY_TWIN, "qa_type": "what"}]}),
    "median([1, 2]) returns 1": json.dumps([{"question": Q_WHERE_MEDIAN, "qa_type": "where"},
                                           {"question": Q_HOW_MEDIAN, "qa_type": "how/algorithm"}]),
    "is_leap_year(2000) is False": "RETRY",  # prose first; JSON after the reminder
    "add_months(date(2024, 1, 31), 1) raises ValueError": "GARBAGE",  # never JSON: a failure, counted
    "slugify leaves double dashes for repeated spaces": "Here you are:\n```json\n" + json.dumps(
        {"questions": [{"question": Q_SLUG, "qa_type": "how"}]}) + "\n```\nHope this helps.",
    "round_half_up(2.5) returns 2": '<think>nothing here asks about the code</think>{"questions": []}',
}
LEAP_JSON = json.dumps({"questions": [{"question": Q_LEAP, "qa_type": "why"},
                                      {"question": "Who wrote the leap year code?", "qa_type": "who"}]})
TEACHER = {  # marker words the judges look for: WRONG (a poor teacher answer), EASY (a direct answer that is right)
    Q_EMPTY: "It raises ZeroDivisionError: mean sums and counts in one loop and returns total / count with count 0 "
             "(minicalc/stats.py: line 7-14).",
    Q_WHY_ZERO: "Nothing checks for empty data before total / count (minicalc/stats.py: line 14), unlike median.",
    Q_WHERE_MEDIAN: "In minicalc/stats.py: line 17-25, median(), which floor-divides the two middle values.",
    Q_HOW_MEDIAN: "WRONG: it probably averages them somewhere.",
    Q_LEAP: "is_leap_year (minicalc/dates.py: line 7-9) checks year % 4 and year % 100 but not year % 400.",
    Q_SLUG: "It splits on single spaces with str.split(' ') (minicalc/text.py: line 7-15), so runs of spaces stay.",
}
DIRECT = {q: "I cannot see the code; probably it handles that case." for q in TEACHER}
DIRECT[Q_WHY_ZERO] = "EASY: mean divides by the count without checking for empty data."
GOOD = {"correctness": 9, "completeness": 9, "relevance": 9, "clarity": 8, "reasoning": 9}
POOR = {"correctness": 2, "completeness": 2, "relevance": 3, "clarity": 4, "reasoning": 2}


class LoopbackLLM:
    """An OpenAI chat-completions server on 127.0.0.1 (any free port) that answers by what each request asks:
    `respond(body)` -> {"content": str}, {"tool_calls": [{"name", "arguments"}]} or {"status": int} (an error).
    Records every body."""

    def __init__(self, respond: Callable[[dict[str, Any]], dict[str, Any]]):
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> LoopbackLLM:
        self._httpd = _Server(("127.0.0.1", 0), _handler(self))
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def prompts(self, marker: str) -> list[str]:
        return [b["messages"][0]["content"] for b in self.requests if marker in b["messages"][0]["content"]]


class _Server(ThreadingHTTPServer):
    request_queue_size = 64
    daemon_threads = True


def _handler(server: LoopbackLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # quiet
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self.send(404, {"error": {"message": f"no route {self.path}"}})
            with server._lock:
                server.requests.append(body)
                n = len(server.requests)
            entry = server.respond(body)
            if "status" in entry:
                return self.send(entry["status"], {"error": {"message": "scripted failure", "code": entry["status"]}})
            calls = [{"id": f"call_{n}_{i}", "type": "function",
                      "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                     for i, c in enumerate(entry.get("tool_calls", []))]
            message = {"role": "assistant", "content": entry.get("content"), **({"tool_calls": calls} if calls else {})}
            self.send(200, {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
                            "model": body.get("model"),
                            "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
                            "choices": [{"index": 0, "message": message,
                                         "finish_reason": "tool_calls" if calls else "stop"}]})

        def send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _asked(text: str, table: dict[str, Any]) -> str:
    return next(key for key in table if key in text)


def respond(body: dict[str, Any]) -> dict[str, Any]:
    """The scripted LLM, teacher and judge, chosen by request content (so concurrency and order do not matter)."""
    messages = body["messages"]
    if body.get("tools"):  # the teacher agent: search, read, then finish with its answer
        question = _asked(messages[1]["content"], TEACHER)
        turn = sum(m["role"] == "assistant" for m in messages)
        if turn == 0:
            return {"content": "Find the code first.", "tool_calls": [{"name": "semantic_search",
                                                                        "arguments": {"term": "median"}}]}
        if turn == 1:
            return {"content": "Read it.", "tool_calls": [{"name": "view_codebase",
                                                           "arguments": {"path": "minicalc/stats.py",
                                                                         "view_range": [1, 30]}}]}
        return {"content": "Done.", "tool_calls": [{"name": "finish", "arguments": {"answer": TEACHER[question]}}]}
    prompt = messages[0]["content"]
    if "You write questions for a benchmark" in prompt:
        reply = GENERATED[_asked(prompt, GENERATED)]
        if reply == "RETRY":
            reply = LEAP_JSON if len(messages) > 1 else "Good questions would be why and what about leap years."
        elif reply == "GARBAGE":
            reply = "I would ask about add_months, but I am not sure how."
        return {"content": reply}
    if "You cannot see the repository" in prompt:
        return {"content": DIRECT[_asked(prompt, DIRECT)]}
    answer = prompt.split("## Candidate answer", 1)[1]
    if "## The issue the question was written from" in prompt:  # the teacher's answer, judged against the issue
        return {"content": json.dumps({"rationale": "judged", **(POOR if "WRONG" in answer else GOOD)})}
    assert "## Reference answer" in prompt, prompt[:300]
    return {"content": json.dumps({"rationale": "direct", **(GOOD if "EASY" in answer else POOR)})}


def require_backend(backend: str, request) -> None:
    if backend == "docker":
        request.getfixturevalue("base_image")
    else:
        from conftest import require_or_skip

        from swepost.sandbox.bwrap import bwrap_available

        if not bwrap_available():
            require_or_skip("bubblewrap (bwrap) is missing or cannot create namespaces here")


# --- end to end ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_synth_qa_end_to_end_on_minicalc(backend, request, swepost, home, tmp_path):
    require_backend(backend, request)
    with LoopbackLLM(respond) as llm:
        args = ("tasks", "synth-qa", ISSUES, "--repos", MIRRORS, "--commit", "swepost/minicalc@6439748",
                "--model", "synth-model", "--base-url", llm.base_url, "--backend", backend, "-j", "3",
                "--set", "clusters=2", "--set", "llm.backoff=0", "--set", "llm.max_retries=1",
                "--set", "teacher.limits.max_turns=5", "--json")
        r = swepost(*args, check=0)
        first = list(llm.requests)
        llm.requests.clear()
        again = swepost(*args, check=0)  # a re-run: the teacher's episodes and the judgements are not paid twice
    assert json.loads(again.stdout)["id"] == json.loads(r.stdout)["id"]
    assert not any(b.get("tools") or "## Candidate answer" in b["messages"][0]["content"] for b in llm.requests)
    llm.requests = first
    out = json.loads(r.stdout)
    assert out["stats"]["tasks"] == 4 and out["stats"]["issues"] == 6
    store = ArtifactStore(home)
    art = store.resolve(out["id"])
    report = json.loads((art.path / "report.json").read_text())
    counts = report["counts"]
    assert {k: counts[k] for k in ("issues", "issues_failed", "generated", "rejected", "near_duplicates", "unique",
                                   "clusters", "sampled", "teacher_episodes", "references_kept", "kept")} == {
        "issues": 6, "issues_failed": 1, "generated": 7, "rejected": 1, "near_duplicates": 1, "unique": 6,
        "clusters": 2, "sampled": 6, "teacher_episodes": 6, "references_kept": 5, "kept": 4}
    assert counts["dropped_by_step"] == {"generate": 1, "dedup": 1, "reference": 1, "calibrate": 1}
    assert counts["failed_by_step"] == {"generate": 1}

    # every drop and failure says which question (or issue) and why
    dropped = {d["step"]: d for d in report["dropped"]}
    assert "qa_type 'who'" in dropped["generate"]["reason"] and dropped["generate"]["issue_line"] == 3
    assert dropped["dedup"]["question"] == Q_EMPTY_TWIN and "near-duplicate of swepost__minicalc-qa-" in \
        dropped["dedup"]["reason"]
    assert dropped["reference"]["question"] == Q_HOW_MEDIAN and "< reference_threshold 0.7" in \
        dropped["reference"]["reason"]
    assert dropped["calibrate"]["question"] == Q_WHY_ZERO and "too easy" in dropped["calibrate"]["reason"]
    (failed,) = report["failed"]
    assert failed["issue_line"] == 4 and "no usable reply in 3 attempts" in failed["cause"]
    assert "synth-model at http://127.0.0.1" in failed["cause"]
    assert sum(c["size"] for c in report["clusters"]) == 6 and len(report["clusters"]) == 2
    assert report["clustering"]["method"] == "tfidf" and all(c["terms"] for c in report["clusters"])
    assert "dropped (calibrate)" in r.stderr and "failed (generate)" in r.stderr and "lexical" not in r.stderr

    # the artifact: codeqa tasks any stage reads, references from the teacher, lineage to its inputs
    tasks = {t.problem_statement: t for t in load_tasks(art)}
    assert set(tasks) == {Q_EMPTY, Q_WHERE_MEDIAN, Q_LEAP, Q_SLUG}
    for question, task in tasks.items():
        assert task.kind == "codeqa" and task.repo == "swepost/minicalc" and task.base_commit == PINNED
        assert task.verify.reference_answer == TEACHER[question] and CODEQA.unusable(task) == {}
        assert task.metadata["qa_type"] in ("what", "where", "why", "how") and task.metadata["cluster"] in "01"
        assert task.metadata["synthesis"]["teacher"]["judge_reward"] >= 0.7
        assert task.metadata["synthesis"]["direct_answer"]["judge_reward"] < 0.7
        assert task.metadata["source_issue"]["url"].startswith("https://github.com/swepost/minicalc/issues/")
    assert tasks[Q_LEAP].metadata["qa_type"] == "why" and tasks[Q_SLUG].metadata["source_issue"]["number"] == 5
    parents = {p.split("@")[0] for p in art.parents}
    assert parents == {"tasks-synth-qa-candidates", "tasks-synth-qa-teacher"}

    # the teacher really explored: its tool calls ran in the sandbox against the pinned repo
    teacher = store.resolve("tasks-synth-qa-teacher")
    episodes = [json.loads(x) for x in (teacher.path / "trajectories.jsonl").read_text().splitlines()]
    assert len(episodes) == 6 and all(e["exit_status"] == "submitted" and e["environment"] == "codeqa"
                                      for e in episodes)
    tool_output = [m["content"] for m in episodes[0]["messages"] if m["role"] == "tool"]
    assert '"path": "minicalc/stats.py"' in tool_output[0] and "return (data[mid - 1] + data[mid]) // 2" in \
        tool_output[1]

    # requests: the near-duplicate never reached the teacher or the calibration; the malformed reply was retried
    teacher_questions = {_asked(b["messages"][1]["content"], TEACHER) for b in llm.requests if b.get("tools")}
    assert teacher_questions == set(TEACHER)
    assert not any(Q_EMPTY_TWIN in b["messages"][-1]["content"] for b in llm.requests)
    leap = [b for b in llm.requests if "You write questions" in b["messages"][0]["content"]
            and "is_leap_year(2000) is False" in b["messages"][0]["content"]]
    assert [len(b["messages"]) for b in leap] == [1, 3] and "could not be read" in leap[1]["messages"][2]["content"]
    assert len([p for p in llm.prompts("You write questions") if "add_months(date(2024, 1, 31), 1)" in p]) == 3
    assert len(llm.prompts("You cannot see the repository")) == 5  # only questions with a reference
    assert all(b["model"] == "synth-model" for b in llm.requests)


def judge_failures(mode: dict[str, str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """`respond`, one question per issue, with judge failures: the teacher answer to Q_EMPTY cannot be judged (500),
    and the direct answers to Q_WHERE_MEDIAN (mode["direct_judge"] "one") or to all questions ("all") get replies
    that are not scores."""
    one_each = {"mean() of an empty": Q_EMPTY, "median([1, 2])": Q_WHERE_MEDIAN, "slugify leaves": Q_SLUG}

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["messages"][0]["content"]
        if "You write questions for a benchmark" in prompt:
            question = one_each[_asked(prompt, one_each)]
            return {"content": json.dumps({"questions": [{"question": question, "qa_type": "what"}]})}
        if "## The issue the question was written from" in prompt and Q_EMPTY in prompt:
            return {"status": 500}
        if "## Reference answer" in prompt and (mode["direct_judge"] == "all" or Q_WHERE_MEDIAN in prompt):
            return {"content": "A fine answer, I would say."}
        return respond(body)

    return answer


def test_judge_failures_are_failures_not_drops_and_most_failing_exits_1(request, swepost, home, tmp_path):
    require_backend("bwrap", request)
    issues = tmp_path / "issues.jsonl"
    issues.write_text("".join(line + "\n" for n, line in enumerate(ISSUES.read_text().splitlines()) if n in (0, 1, 4)))
    store, mode = ArtifactStore(home), {}
    with LoopbackLLM(judge_failures(mode)) as llm:
        for direct_judge in ("one", "all"):
            mode["direct_judge"] = direct_judge
            llm.requests.clear()
            r = swepost("tasks", "synth-qa", issues, "--repos", MIRRORS, "--commit", "swepost/minicalc@6439748",
                        "--model", "m", "--base-url", llm.base_url, "--backend", "bwrap", "-j", "3", "--json",
                        "--set", "judge.max_retries=0", "--set", "judge.backoff=0", "--set", "llm.backoff=0",
                        "--set", "teacher.limits.max_turns=5", "--set", f"judge.cache_dir={tmp_path / direct_judge}",
                        check=0 if direct_judge == "one" else 1)
            if direct_judge == "one":
                report = json.loads((store.resolve(json.loads(r.stdout)["id"]).path / "report.json").read_text())
                assert report["counts"]["kept"] == 1 and report["dropped"] == []
                failed = {f["question"]: f for f in report["failed"]}
                assert failed[Q_EMPTY]["step"] == "reference_judge" and "500" in failed[Q_EMPTY]["cause"]
                assert failed[Q_WHERE_MEDIAN]["step"] == "direct_judge"
                assert "no usable reply in 3 attempts" in failed[Q_WHERE_MEDIAN]["cause"]
                assert [t.problem_statement for t in load_tasks(store.resolve("tasks-synth-qa"))] == [Q_SLUG]
            else:  # both questions with a reference fail calibration's judge: no artifact, the cause said
                assert "2 of 2 direct-answer judge requests failed" in r.stderr and "no usable reply" in r.stderr
                assert not any(b.get("tools") for b in llm.requests)  # the teacher's run was reused


def test_malformed_issues_exit_2_naming_line_and_field(swepost, tmp_path):
    issues = tmp_path / "issues.jsonl"
    good = {"repo": "swepost/minicalc", "title": "mean is wrong", "body": "It divides by zero."}
    issues.write_text("\n".join([
        json.dumps(good),
        '{"repo": "swepost/minicalc", "title": "no closing brace"',
        json.dumps({**good, "title": ""}),
        json.dumps({**good, "repo": "other/project"}),
        json.dumps({**good, "body": 42}),
        json.dumps({k: v for k, v in good.items() if k != "body"}),
        json.dumps({**good, "body": None}),  # an issue without a body: fine
    ]) + "\n")
    r = swepost("tasks", "synth-qa", issues, "--repos", MIRRORS, "--commit", f"swepost/minicalc@{PINNED}",
                "--model", "m", "--base-url", "http://127.0.0.1:9/v1", check=2)
    for where in (f"{issues}:2: invalid JSON", f"{issues}:3: title", f"{issues}:4: repo: other/project has no "
                  "pinned commit", f"{issues}:5: body: expected a string or null", f"{issues}:6: body: required"):
        assert where in r.stderr, r.stderr
    assert ":1:" not in r.stderr and ":7:" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("pin, message", [
    ("swepost/minicalc@0123456789abcdef", "commits.0.commit: 0123456789abcdef is not a commit of swepost/minicalc"),
    ("swepost/minicalc@main", "commits.0.commit: 'main' names a ref"),
    ("swepost/nothere@6439748", "commits.0.repo: repo 'swepost/nothere': no swepost__nothere"),
    ("swepost/minicalc@--output=/tmp/x", "commits.0.commit: '--output=/tmp/x' is not a commit hash"),
])
def test_a_pin_that_is_not_a_commit_in_the_mirror_exits_2(swepost, tmp_path, pin, message):
    issues = tmp_path / "issues.jsonl"
    issues.write_text(json.dumps({"repo": pin.split("@")[0], "title": "t", "body": "b"}) + "\n")
    r = swepost("tasks", "synth-qa", issues, "--repos", MIRRORS, "--commit", pin, "--model", "m", "--base-url",
                "http://127.0.0.1:9/v1", check=2)
    assert message in r.stderr, r.stderr


def test_a_dead_llm_server_exits_1_with_the_cause_and_writes_nothing(swepost, home):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = swepost("tasks", "synth-qa", ISSUES, "--repos", MIRRORS, "--commit", f"swepost/minicalc@{PINNED}",
                "--model", "m", "--base-url", f"http://127.0.0.1:{port}/v1", "--set", "llm.max_retries=0",
                "--set", "llm_attempts=1", check=1)
    assert "6 of 6 question-writing requests failed" in r.stderr and "APIConnectionError" in r.stderr
    assert "no artifact written" in r.stderr and "Traceback" not in r.stderr
    assert ArtifactStore(home).all() == []


def test_a_prompt_template_with_an_unknown_field_exits_2_before_any_request(swepost, tmp_path):
    prompt = tmp_path / "questions.md"
    prompt.write_text("Questions about {repo} from {issue_text}")
    r = swepost("tasks", "synth-qa", ISSUES, "--repos", MIRRORS, "--commit", f"swepost/minicalc@{PINNED}",
                "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--set", f"question_prompt={prompt}",
                check=2)
    assert f"{prompt}: unknown template field(s) {{issue_text}}" in r.stderr


# --- the parts ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply", [
    '{"questions": [{"question": "Where is x?", "qa_type": "where"}]}',
    'Sure.\n```json\n[{"question": "Where is x?", "qa_type": "Where"}]\n```',
    '<think>{"questions": "no"}</think> {"questions": [{"question": "  Where\\n is x?", "qa_type": "where/locate"}]}',
    'Some {braces} first, then {"questions": [{"question": "Where is x?", "qa_type": "WHERE"}, {"qa_type": "how"}]}',
])
def test_questions_are_read_from_json_in_fences_or_prose(reply):
    text = reply.rsplit("</think>", 1)[-1]  # as ChatLLM hands it over
    questions, rejected = parse_questions(text, ["what", "why", "where", "how"])
    assert questions == [{"question": "Where is x?", "qa_type": "where"}]
    assert len(rejected) == reply.count('{"qa_type": "how"}')


@pytest.mark.parametrize("reply, cause", [
    ("I have no questions.", "no {\"questions\": [...]}"),
    ('{"questions": [{"question": "Who?", "qa_type": "who"}]}', "no usable question"),
    ('{"answer": 42}', "no {\"questions\": [...]}"),
])
def test_a_reply_without_usable_questions_is_unreadable(reply, cause):
    with pytest.raises(Unreadable, match=cause.replace("[", r"\[").replace("{", r"\{")):
        parse_questions(reply, ["what", "why", "where", "how"])


def test_an_empty_question_list_is_an_answer():
    assert parse_questions('{"questions": []}', ["what"]) == ([], [])


def _question(n: int, text: str, qa_type: str = "what", repo: str = "o/r", cluster: str = "0") -> Question:
    issue = Issue(1, repo, "t", "b", {})
    return Question(f"q{n}", repo, "c" * 40, text, qa_type, issue, cluster=cluster)


def test_near_duplicates_are_dropped_per_repo_by_word_jaccard():
    assert jaccard("What is `mean`?", "what is MEAN") == 1.0
    questions = [_question(1, "What does stats.mean return for an empty list?"),
                 _question(2, "What does stats.mean return for an empty list ?"),
                 _question(3, "What does stats.mean return for an empty list?", repo="o/other"),
                 _question(4, "Where is the median computed?")]
    kept, dropped = near_duplicates(questions, 0.8)
    assert [q.id for q in kept] == ["q1", "q3", "q4"]
    assert dropped[0]["id"] == "q2" and "near-duplicate of q1 (Jaccard 1.00 >= 0.8)" == dropped[0]["reason"]


def test_balance_caps_per_cluster_per_type_and_in_all_cut_evenly():
    questions = [_question(i, f"q{i}", qa_type=("what", "why")[i % 2], cluster=str(i % 3)) for i in range(12)]
    config = TasksSynthQaConfig.model_construct(seed=0, max_per_cluster=3, max_per_type=None, max_questions=None)
    kept, dropped = balance(questions, config)
    assert len(kept) == 9 and all(sum(q.cluster == c for q in kept) == 3 for c in "012")
    assert all("max_per_cluster 3" in d["reason"] for d in dropped) and len(dropped) == 3
    config = TasksSynthQaConfig.model_construct(seed=0, max_per_cluster=None, max_per_type=2, max_questions=None)
    kept, _ = balance(questions, config)
    assert sorted(q.qa_type for q in kept) == ["what", "what", "why", "why"]
    config = TasksSynthQaConfig.model_construct(seed=0, max_per_cluster=None, max_per_type=None, max_questions=6)
    kept, dropped = balance(questions, config)
    assert len(kept) == 6 and {sum(q.cluster == c for q in kept) for c in "012"} == {2}
    assert {sum(q.qa_type == t for q in kept) for t in ("what", "why")} == {3}
    assert [q.id for q in kept] == sorted((q.id for q in kept), key=lambda i: int(i[1:]))  # input order kept
    assert balance(questions, config)[0] == kept  # the seed decides


def test_tfidf_clusters_group_questions_by_topic():
    texts = ["How is the median of an even list computed?", "Why does median floor-divide the middle values?",
             "Where does median sort its input?", "How does slugify turn spaces into dashes?",
             "Why does slugify keep underscores?", "What does slugify do with accents?"]
    config = TasksSynthQaConfig.model_construct(clusters=2, embeddings="tfidf", seed=0,
                                                embedding_model="unused")
    labels, info = cluster_texts(texts, config)
    assert len(set(labels[:3])) == 1 and len(set(labels[3:])) == 1 and labels[0] != labels[3]
    assert info["method"] == "tfidf" and info["k"] == 2
    assert sorted(terms[0] for terms in info["terms"]) == ["median", "slugify"]


def test_auto_embeddings_fall_back_to_tfidf_and_say_why():
    config = TasksSynthQaConfig.model_construct(clusters=1, embeddings="auto", seed=0,
                                                embedding_model="no/such-model")
    labels, info = cluster_texts(["one question", "another question"], config)
    assert labels == [0, 0] and info["method"] == "tfidf"


def test_commits_are_pins_in_either_form():
    base = {"issues": str(ISSUES), "repos": str(MIRRORS), "llm": {"model": "m"}}
    config = TasksSynthQaConfig.model_validate({**base, "commits": ["swepost/minicalc@6439748",
                                                                   {"repo": "a/b", "commit": "abc1234"}]})
    assert [(p.repo, p.commit) for p in config.commits] == [("swepost/minicalc", "6439748"), ("a/b", "abc1234")]
    with pytest.raises(ValueError, match="pinned more than once"):
        TasksSynthQaConfig.model_validate({**base, "commits": ["a/b@1234567", "a/b@7654321"]})
    with pytest.raises(ValueError, match="teacher.policy_args"):
        TasksSynthQaConfig.model_validate({**base, "commits": ["a/b@1234567"],
                                           "teacher": {"policy_args": {"temprature": 0.2}}})
