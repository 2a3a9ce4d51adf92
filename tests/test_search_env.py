"""The search environment over a real tantivy index built from a corpus written here, and over a real retriever
server on loopback: search / open / find / answer, pages, bad calls, EM / F1 scores and the answer-spam guard, and
whole episodes through the agent loop (a retriever that is down is sandbox_error, never a wrong answer)."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from swepost.agent import AgentLimits, environment_factory, run_episode
from swepost.envs.base import MalformedCall, ToolError
from swepost.envs.search import SearchEnvironment, snippet
from swepost.errors import BadInput
from swepost.policies.scripted import ScriptedPolicy
from swepost.records import ExitStatus, Task, TaskVerify

# a two-hop question: the author of "The Analytical Engine Notes" -> her birthplace
PASSAGES = {
    "d1": ("Analytical Engine Notes", "The Analytical Engine Notes were written by Ada Lovelace in 1843, who "
           "translated an article by Luigi Menabrea and added her own notes."),
    "d2": ("Ada Lovelace", "Ada Lovelace was an English mathematician born in London in 1815. She is known for "
           "her work on Charles Babbage's proposed mechanical general-purpose computer."),
    "d3": ("Charles Babbage", "Charles Babbage was an English polymath who originated the concept of a digital "
           "programmable computer. He was born in Walworth, Surrey."),
    "d4": ("London", "London is the capital and largest city of England and the United Kingdom."),
    "d5": ("Luigi Menabrea", "Luigi Federico Menabrea was an Italian general, statesman and mathematician who "
           "served as the Prime Minister of Italy."),
}
LONG_TEXT = "\n".join(f"Line {i}: the history of the difference engine, part {i}." for i in range(1, 121)) + \
    "\nThe final part mentions the Jacquard loom exactly once."
QUESTION = "In which city was the author of the Analytical Engine Notes born?"
TASK = Task(instance_id="hop-1", kind="search", problem_statement=QUESTION,
            verify=TaskVerify(gold_answers=["London", "London, England"]), metadata={"hops": 2})
STAGE_SETTINGS = {"repos": None, "backend": "docker", "tool_timeout": 30.0, "grade": True}


def corpus_rows() -> list[dict]:
    rows = [{"id": doc_id, "contents": f'"{title}"\n{text}'} for doc_id, (title, text) in PASSAGES.items()]
    rows.append({"id": "long", "title": "Difference engine history", "text": LONG_TEXT, "url": "https://x/long"})
    rows.append({"id": "42", "contents": '"Forty-two"\nA number whose id is written as a number.'})
    rows += [{"id": f"f{i}", "contents": f'"Filler {i}"\nAn English note about engines and notes, number {i}.'}
             for i in range(20)]
    return rows


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    """An index artifact-like folder: the index in its `index` subfolder, built by the real build_index."""
    from swepost.retrieval.index import build_index

    folder = tmp_path_factory.mktemp("search-env")
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in corpus_rows()))
    build_index(corpus, folder / "artifact" / "index")
    return folder / "artifact"


@pytest.fixture
def env(index_dir):
    env = SearchEnvironment(index=index_dir, **STAGE_SETTINGS)
    yield env
    env.close()


def started(env: SearchEnvironment, task: Task = TASK) -> SearchEnvironment:
    env.reset(task)
    return env


# --- episode start ------------------------------------------------------------------------------------------------

def test_reset_gives_the_prompts_and_the_tools(env):
    system, user = env.reset(TASK)
    assert system["role"] == "system" and user["role"] == "user"
    for tool in ("`search(query, topk)`", "`open(doc_id, page)`", "`find(text)`", "`answer(text)`"):
        assert tool in system["content"]
    assert "It returns 3 documents" in system["content"] and "2000 characters a page" in system["content"]
    assert QUESTION in user["content"] and "{" not in user["content"]
    assert [t["function"]["name"] for t in env.tools()] == ["search", "open", "find", "answer"]
    assert env.tools()[0]["function"]["parameters"]["required"] == ["query"]


# --- tools --------------------------------------------------------------------------------------------------------

def test_search_lists_ranked_documents_with_ids_titles_and_snippets(env):
    text = started(env).step("search", {"query": "Analytical Engine Notes author"}).content
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith('Doc 1 [id: d1] (Title: "Analytical Engine Notes") The Analytical Engine Notes were')
    assert [line.split()[1] for line in lines] == ["1", "2", "3"]
    five = env.step("search", {"query": "English mathematician engine", "topk": 5}).content
    assert len(five.splitlines()) == 5
    # punctuation and query syntax are words, not commands to the index
    odd = env.step("search", {"query": 'Lovelace: "born" AND (London OR -x) ^2 ~ * ?'}).content
    assert "[id: d2]" in odd
    assert env.step("search", {"query": "zzzqqq"}).content == "No documents match 'zzzqqq'. Try other words."
    assert env.searches == 4


def test_open_pages_and_find(env):
    started(env)
    with pytest.raises(ToolError, match="No document is open"):
        env.step("find", {"text": "loom"})
    with pytest.raises(ToolError, match="No document with id 'nope'"):
        env.step("open", {"doc_id": "nope"})
    first = env.step("open", {"doc_id": "long"}).content
    pages = len(LONG_TEXT) // 2000 + 1
    assert first.startswith(f'Document long (Title: "Difference engine history"), page 1 of {pages}\n\nLine 1:')
    assert first.endswith(f'[page 1 of {pages}; open(doc_id="long", page=2) for the next]')
    body = first.split("\n\n")[1]
    assert len(body) <= 2000 and body.endswith(".")  # cut at a line's end, not mid-word
    last = env.step("open", {"doc_id": "long", "page": pages}).content
    assert last.endswith(f"[page {pages} of {pages}]") and "Jacquard loom" in last
    with pytest.raises(ToolError, match=f"has {pages} page\\(s\\): `page` is from 1 to {pages}, not {pages + 1}"):
        env.step("open", {"doc_id": "long", "page": pages + 1})
    found = env.step("find", {"text": "JACQUARD"}).content.splitlines()
    assert found[0] == "1 match(es) of 'JACQUARD' in document long (Title: \"Difference engine history\"):"
    assert found[1].startswith(f"1. page {pages}, line ") and "[Jacquard] loom exactly once" in found[1]
    many = env.step("find", {"text": "difference engine"}).content.splitlines()
    assert many[0].startswith("120 match(es) of 'difference engine'") and many[0].endswith("the first 20:")
    assert len(many) == 21 and many[1].startswith("1. page 1, line 1: ...Line 1: the history of the [difference")
    assert env.step("find", {"text": "steam"}).content == "'steam' does not occur in document long (Title: " \
        '"Difference engine history").'
    # an id written as a number is the same id
    assert env.step("open", {"doc_id": 42}).content.startswith('Document 42 (Title: "Forty-two"), page 1 of 1')
    assert env.opened == ["long", "42"]


@pytest.mark.parametrize("name, args, error, match", [
    ("lookup", {}, MalformedCall, "Unknown tool 'lookup'. Available tools: search, open, find, answer"),
    ("search", {}, MalformedCall, "Parameter `query` is required for search"),
    ("search", {"query": 7}, MalformedCall, "`query` of search must be a string"),
    ("search", {"query": "x", "k": 3}, MalformedCall, "Unexpected argument\\(s\\) for search: 'k'; it takes: query, "
     "topk"),
    ("search", '{"query": "x"', MalformedCall, "not valid JSON"),
    ("search", ["x"], MalformedCall, "must be a JSON object"),
    ("search", {"query": "x", "topk": "5"}, MalformedCall, "`topk` of search must be an integer"),
    ("search", {"query": "x", "topk": True}, MalformedCall, "`topk` of search must be an integer"),
    ("search", {"query": "  "}, ToolError, "`query` of search is empty"),
    ("search", {"query": "x", "topk": 0}, ToolError, "`topk` must be from 1 to 20, not 0"),
    ("search", {"query": "x", "topk": 21}, ToolError, "`topk` must be from 1 to 20, not 21"),
    ("search", {"query": "x" * 1001}, ToolError, "queries are at most 1000"),
    ("open", {"doc_id": "d1", "page": "2"}, MalformedCall, "`page` of open must be an integer"),
    ("open", {"doc_id": ["d1"]}, MalformedCall, "`doc_id` of open must be a string"),
    ("open", {"doc_id": ""}, ToolError, "`doc_id` of open is empty"),
    ("open", {"doc_id": "d1", "page": 0}, ToolError, "`page` is from 1 to 1, not 0"),
    ("find", {"text": ""}, ToolError, "`text` of find is empty"),
    ("answer", {}, MalformedCall, "Parameter `text` is required for answer"),
    ("answer", {"text": "   "}, ToolError, "`text` of answer is empty"),
    ("answer", {"text": "<answer> </answer>"}, ToolError, "`text` of answer is empty"),
    ("search", {"query": "Ada \ud800"}, MalformedCall, "`query` of search holds characters that are not valid"),
    ("find", {"text": "\udfff"}, MalformedCall, "`text` of find holds characters that are not valid"),
])
def test_bad_calls_are_refused_with_a_reason(env, name, args, error, match):
    started(env)
    with pytest.raises(error, match=match) as e:
        env.step(name, args)
    assert (e.type is MalformedCall) == (error is MalformedCall)
    assert env.answer is None


def test_snippets_show_the_query_words_and_long_observations_are_clipped(index_dir):
    text = " ".join(f"word{i}" for i in range(200)) + " Jacquard loom " + " ".join(f"w{i}" for i in range(200))
    cut = snippet(text, "jacquard loom", 80)
    assert "Jacquard loom" in cut and cut.startswith("... ") and cut.endswith(" ...") and len(cut) <= 80 + 8
    assert snippet("short text", "x", 80) == "short text"
    env = SearchEnvironment(index=index_dir, max_observation_chars=300, **STAGE_SETTINGS)
    page = started(env).step("open", {"doc_id": "long"}).content
    assert len(page) == 300 and page.startswith("Document long")
    full = SearchEnvironment(index=index_dir, **STAGE_SETTINGS)
    whole = started(full).step("open", {"doc_id": "long"}).content
    assert page.endswith(f"\n[... clipped: {len(whole)} characters in all ...]")


# --- answers and scores -------------------------------------------------------------------------------------------

def test_answers_are_scored_by_exact_match_and_f1(env, index_dir):
    assert started(env).step("answer", {"text": "<answer>London</answer>"}).answer == "London"
    right = started(env).step("answer", {"text": " the London "})
    assert right.done and right.answer == "the London"
    s = env.score()
    assert (s["reward"], s["resolved"]) == (1.0, "RESOLVED_FULL")
    assert s["evidence"] == {"answer": "the London", "golds": ["London", "London, England"], "hops": 2,
                             "metric": "em", "answer_tags": 1, "searches": 0, "opened": [], "em": 1.0, "f1": 1.0,
                             "missing_answer": False, "spam": False, "verify": "em"}
    started(env).step("answer", {"text": "London, UK"})
    s = env.score()
    assert (s["reward"], s["resolved"]) == (0.0, "RESOLVED_NO") and 0.5 < s["evidence"]["f1"] < 1.0
    f1 = SearchEnvironment(index=index_dir, reward_metric="f1", **STAGE_SETTINGS)
    started(f1).step("answer", {"text": "London, UK"})
    assert f1.score()["reward"] == pytest.approx(2 / 3) and f1.score()["resolved"] == "RESOLVED_NO"
    started(env)  # no answer at all
    s = env.score()
    assert (s["reward"], s["resolved"]) == (0.0, "RESOLVED_NO") and s["evidence"]["missing_answer"] is True
    no_golds = Task(instance_id="x", kind="search", problem_statement="?")
    started(env, no_golds).step("answer", {"text": "London"})
    s = env.score()
    assert s["reward"] is None and s["resolved"] == "UNGRADED"
    assert s["evidence"]["reason"] == "the task has no gold answers to score against"


def test_an_answer_in_a_reply_without_a_tool_call_and_the_spam_guard(env):
    started(env)
    assert env.text_reply("I should search first.") is None
    assert env.text_reply("<answer>  </answer>") is None  # an empty tag is no answer
    done = env.text_reply("Maybe <answer>Paris</answer>, no: <answer>London</answer>")
    assert done.done and done.answer == "London" and env.answer_count == 3
    assert env.score()["reward"] == 1.0
    started(env)
    spam = env.text_reply(" ".join(["<answer>Paris</answer>"] * 10 + ["<answer>London</answer>"]))
    assert spam.answer == "London" and env.answer_count == 11
    s = env.score()
    assert s["reward"] == 0.25 and s["evidence"]["spam"] is True and s["evidence"]["em"] == 1.0
    assert s["resolved"] == "RESOLVED_FULL"  # right, but penalised for guessing eleven times


# --- whole episodes through the agent loop ------------------------------------------------------------------------

def calls(*steps) -> list[dict]:
    return [{"tool_calls": [{"name": name, "arguments": args}]} for name, args in steps]


def test_an_episode_searches_reads_and_answers(env):
    policy = ScriptedPolicy(turns=calls(("search", {"query": "Analytical Engine Notes"}),
                                        ("open", {"doc_id": "d1"}),
                                        ("search", {"query": "Ada Lovelace born"}),
                                        ("find", {"text": "born"}),  # find before open of d2: reads d1
                                        ("open", {"doc_id": "d2"}),
                                        ("find", {"text": "born"}),
                                        ("answer", {"text": "London"})))
    traj = run_episode(policy, env, TASK)
    assert traj.exit_status == ExitStatus.SUBMITTED and traj.answer == "London"
    assert (traj.reward, traj.resolved) == (1.0, "RESOLVED_FULL")
    assert traj.evidence["searches"] == 2 and traj.evidence["opened"] == ["d1", "d2"] and traj.tool_errors == 0
    tool_texts = [m["content"] for m in traj.messages if m["role"] == "tool"]
    assert "'born' does not occur in document d1" in tool_texts[3]
    assert "[born] in London" in tool_texts[5]
    assert traj.environment == "search"


def test_an_episode_may_end_with_an_answer_tag(env):
    policy = ScriptedPolicy(turns=[*calls(("search", {"query": "Ada Lovelace"})),
                                   "She was born in London, so <answer>London</answer>"])
    traj = run_episode(policy, env, TASK)
    assert traj.exit_status == ExitStatus.SUBMITTED and traj.answer == "London" and traj.reward == 1.0
    assert traj.tool_errors == 0


def test_search_r1_s_text_actions_search_and_answer(env):
    """A Search-R1-trained model writes `<search>q</search>` and `<answer>a</answer>` as text, no tool calls: the
    search runs and its passages come back as Search-R1 shows them, then the answer tag ends the episode."""
    policy = ScriptedPolicy(turns=["<think>who wrote the notes?</think>\n<search>Analytical Engine Notes</search>",
                                   "<search>Ada Lovelace born</search>",
                                   "<think>London</think>\n<answer>London</answer>"])
    traj = run_episode(policy, env, TASK)
    assert traj.exit_status == ExitStatus.SUBMITTED and traj.answer == "London" and traj.reward == 1.0
    assert traj.tool_errors == 0 and traj.evidence["searches"] == 2
    first = traj.messages[3]
    assert first["role"] == "user" and first["content"].startswith("\n\n<information>Doc 1(Title: ")
    assert 'Doc 1(Title: "Analytical Engine Notes") The Analytical Engine Notes were written by Ada Lovelace' in \
        first["content"] and first["content"].rstrip().endswith("</information>")
    assert first["content"].count("\nDoc ") == 2  # topk 3: three passages, whole
    # a text search against a retriever that is down is infrastructure, as the tool's is
    down = SearchEnvironment(retriever_url=f"http://127.0.0.1:{dead_port()}", tool_timeout=5.0)
    traj = run_episode(ScriptedPolicy(turns=["<search>Ada</search>"]), down, TASK)
    assert traj.exit_status == ExitStatus.SANDBOX_ERROR and traj.reward is None and "retriever failed" in traj.error


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on return: nothing listens there


def test_a_retriever_that_is_down_ends_the_episode_as_infrastructure_not_a_wrong_answer():
    env = SearchEnvironment(retriever_url=f"http://127.0.0.1:{dead_port()}", tool_timeout=5.0)
    policy = ScriptedPolicy(turns=calls(("search", {"query": "Ada Lovelace"}), ("answer", {"text": "London"})))
    traj = run_episode(policy, env, TASK)
    assert traj.exit_status == ExitStatus.SANDBOX_ERROR
    assert traj.reward is None and traj.resolved is None and traj.answer is None
    assert "the retriever failed" in traj.error
    assert traj.messages[-1]["error"] == "sandbox"


def test_a_retriever_server_is_a_backend_like_the_index(index_dir):
    from swepost.retrieval.index import open_index
    from swepost.serve.retriever import BackgroundRetrieverServer

    with BackgroundRetrieverServer(open_index(index_dir / "index")) as server:
        for url in (server.url, server.url + "/retrieve"):  # Search-R1 configs name the /retrieve URL
            env = SearchEnvironment(retriever_url=url)
            policy = ScriptedPolicy(turns=calls(("search", {"query": "Analytical Engine Notes"}),
                                                ("open", {"doc_id": "d1"}),  # a document search returned
                                                ("open", {"doc_id": "d2"}),  # one it did not: /documents
                                                ("answer", {"text": "London"})))
            traj = run_episode(policy, env, TASK)
            assert traj.exit_status == ExitStatus.SUBMITTED and traj.reward == 1.0 and traj.tool_errors == 0
            tools = [m["content"] for m in traj.messages if m["role"] == "tool"]
            assert "[id: d1]" in tools[0] and "[id: d2]" not in tools[0]
            assert tools[1].startswith('Document d1 (Title: "Analytical Engine Notes"), page 1 of 1')
            assert tools[2].startswith('Document d2 (Title: "Ada Lovelace"), page 1 of 1')


# --- settings -----------------------------------------------------------------------------------------------------

def test_the_stage_builds_it_with_its_settings_and_checks_its_arguments(index_dir):
    from swepost.records import SandboxLimits

    settings = {**STAGE_SETTINGS, "limits": SandboxLimits(memory_mb=512)}  # sandbox settings: accepted, unused
    make = environment_factory("search", settings=settings, args={"index": str(index_dir), "topk": 5})
    env = make()
    assert env.topk == 5 and env.name == "search"
    assert env.retriever is make().retriever  # one index per process, shared by every episode's environment
    assert env.retriever is SearchEnvironment(index=index_dir / "index").retriever  # the folder or its parent
    with pytest.raises(BadInput, match="environment_args.top_k: environment 'search' takes no argument 'top_k'"):
        environment_factory("search", settings=settings, args={"index": str(index_dir), "top_k": 5})
    bad = [({}, "index: give exactly one of index"), ({"index": index_dir, "retriever_url": "http://127.0.0.1:1"},
           "retriever_url: give exactly one of index"), ({"index": index_dir, "topk": 21}, "topk: at most 20"),
           ({"index": index_dir, "page_chars": 10}, "page_chars: expected an integer of at least 200"),
           ({"index": index_dir, "mode": "crawl"}, "mode: expected one of search, browse"),
           ({"index": index_dir, "reward_metric": "bleu"}, "reward_metric: expected em or f1"),
           ({"index": index_dir / "nowhere"}, "index: index folder not found"),
           ({"retriever_url": "ftp://x"}, "retriever_url: retriever url"),
           ({"index": index_dir, "site": "x"}, "site: is for mode browse"),
           ({"index": index_dir, "prompts_dir": index_dir}, "prompt template")]
    for kwargs, message in bad:
        with pytest.raises(BadInput, match=message.replace("(", "\\(")):
            SearchEnvironment(**kwargs)


def test_a_folder_that_is_no_index_is_bad_input(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "meta.json").write_text("{not an index")
    with pytest.raises(BadInput) as e:
        SearchEnvironment(index=tmp_path / "junk")
    assert e.value.key == "index"


def test_environments_on_many_threads_share_one_index(index_dir):
    """Stages run episodes on threads, each with its own environment on the one shared index."""
    failures: list[str] = []

    def episode(i: int) -> None:
        env = SearchEnvironment(index=index_dir)
        query, want = [("Analytical Engine Notes", "d1"), ("Luigi Menabrea", "d5")][i % 2]
        traj = run_episode(ScriptedPolicy(turns=calls(("search", {"query": query}), ("answer", {"text": "x"}))),
                           env, TASK, limits=AgentLimits(max_turns=4))
        if f"[id: {want}]" not in traj.messages[3]["content"].splitlines()[0]:
            failures.append(f"{i}: {traj.messages[3]['content'][:200]}")

    threads = [threading.Thread(target=episode, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []


def test_own_prompts_replace_the_bundled_ones(index_dir, tmp_path):
    (tmp_path / "search_system.md").write_text("Search tool ({topk}). Answer {{briefly}}.")
    (tmp_path / "search_user.md").write_text("Q[{instance_id}]: {question}")
    env = SearchEnvironment(index=index_dir, prompts_dir=tmp_path)
    system, user = env.reset(TASK)
    assert system["content"] == "Search tool (3). Answer {briefly}."
    assert user["content"] == f"Q[hop-1]: {QUESTION}"
    (tmp_path / "search_user.md").write_text("{question} {gold}")
    with pytest.raises(BadInput, match="unknown template field"):
        SearchEnvironment(index=index_dir, prompts_dir=tmp_path)


def test_verify_judge_asks_the_stage_s_judge_and_a_judge_failure_is_never_a_score(index_dir):
    from swepost.rewards.judge import JudgeConfig
    from tests.test_judge import SCORES, JudgeServer, verdict

    high = {axis: 9 for axis in SCORES}
    with JudgeServer(respond=lambda body: {"content": verdict(high)}) as server:
        judge = JudgeConfig(base_url=server.base_url, model="judge-model", max_retries=0, backoff=0.0)
        make = environment_factory("search", settings=STAGE_SETTINGS, args={"index": str(index_dir),
                                                                               "verify": "judge"}, judge=judge)
        env = make()
        started(env).step("answer", {"text": "the capital of England"})  # right, but not a string match
        s = env.score()
        assert s["resolved"] == "RESOLVED_FULL" and s["reward"] == pytest.approx(0.9)
        assert s["evidence"]["em"] == 0.0 and s["evidence"]["verify"] == "judge" and not s["evidence"]["judge_failed"]
        prompt = server.prompts()[-1]
        assert "London" in prompt and "London, England" in prompt and "the capital of England" in prompt
        # strict verification (the default) never asks the judge
        asked = len(server.requests)
        em = environment_factory("search", settings=STAGE_SETTINGS, args={"index": str(index_dir)}, judge=judge)()
        started(em).step("answer", {"text": "the capital of England"})
        assert em.score()["resolved"] == "RESOLVED_NO" and len(server.requests) == asked
    with JudgeServer(respond=lambda body: {"status": 503, "error": "overloaded"}) as server:
        judge = JudgeConfig(base_url=server.base_url, model="judge-model", max_retries=1, backoff=0.0)
        env = environment_factory("search", settings=STAGE_SETTINGS, args={"index": str(index_dir),
                                                                              "verify": "judge"}, judge=judge)()
        started(env).step("answer", {"text": "London"})
        s = env.score()
        assert (s["reward"], s["resolved"]) == (None, "UNGRADED") and s["evidence"]["judge_failed"]
    with pytest.raises(BadInput) as e:
        environment_factory("search", settings=STAGE_SETTINGS, args={"index": str(index_dir), "verify": "vibes"})
    assert e.value.key == "environment_args.verify"
