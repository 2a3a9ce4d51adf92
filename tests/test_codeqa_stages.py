"""collect, filter and eval on codeqa tasks: the tasks' kind picks the environment, the stage's `judge` reaches it
(and `environment_args` the rest of its constructor, checked), the oracle answers with the reference, filter keeps
judge-scored answers, and eval reports the judge's axes, total and failures by qa_type, with judgements cached so
a re-run asks the judge nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swepost.errors import BadInput
from swepost.records import Task, Trajectory
from tests.test_judge import JudgeServer, verdict

REPO = Path(__file__).resolve().parents[1]
QA = REPO / "data" / "minicalc_qa.jsonl"
REPOS = REPO / "data" / "repos"


# --- which environment, built how (no sandbox) ----------------------------------------------------------------

def test_the_tasks_kind_picks_the_environment_unless_one_is_named():
    from swepost.agent import pick_environment

    assert pick_environment(None, ["codeqa", "codeqa"]) == "codeqa"
    assert pick_environment(None, ["swe"]) == "swe"
    assert pick_environment("codeqa", ["codeqa"]) == "codeqa"
    assert pick_environment("tests.rl_helpers:EchoEnvironment", ["codeqa"]) == "tests.rl_helpers:EchoEnvironment"
    with pytest.raises(BadInput, match="environment 'swe' cannot run codeqa tasks .* set it to codeqa"):
        pick_environment("swe", ["codeqa"])
    with pytest.raises(BadInput, match="different environments .*codeqa in codeqa, swe in swe"):
        pick_environment(None, ["swe", "codeqa"])
    assert pick_environment(None, ["search"]) == "search"
    with pytest.raises(BadInput, match="different environments"):
        pick_environment(None, ["search", "codeqa"])


def test_environment_args_and_the_judge_reach_the_constructor_checked(tmp_path):
    from swepost.agent import environment_factory
    from swepost.rewards.judge import JudgeConfig

    settings = {"repos": None, "backend": "docker", "tool_timeout": 30.0, "grade": True}
    make = environment_factory("codeqa", settings=settings, args={"resolved_threshold": 0.9},
                               judge=JudgeConfig(weights={"correctness": 1.0}), judge_cache=tmp_path / "judge")
    env = make()
    assert env.resolved_threshold == 0.9 and env.judge.name == "lexical"
    assert env.judge.weights["correctness"] == 1.0 and env.judge.weights["clarity"] == 0.0
    with pytest.raises(BadInput) as e:
        environment_factory("codeqa", settings=settings, args={"resolved_treshold": 0.9}, judge=JudgeConfig())
    assert e.value.key == "environment_args.resolved_treshold" and "resolved_threshold" in str(e.value)
    with pytest.raises(BadInput) as e:  # a bad value the constructor refuses is named as the user wrote it
        environment_factory("codeqa", settings=settings, args={"resolved_threshold": 2.0}, judge=JudgeConfig())
    assert e.value.key == "environment_args.resolved_threshold" and "[0, 1]" in str(e.value)
    with pytest.raises(BadInput) as e:  # a stage setting is set on the stage
        environment_factory("codeqa", settings=settings, args={"backend": "local"}, judge=JudgeConfig())
    assert e.value.key == "environment_args.backend"
    with pytest.raises(BadInput) as e:  # an endpoint judge without a model stops the stage before any episode
        environment_factory("codeqa", settings=settings, judge=JudgeConfig(base_url="http://127.0.0.1:9/v1"))
    assert e.value.key == "judge.model"
    # swe has no judge: the default one is not passed; one the user set is an error, not silently dropped
    assert environment_factory("swe", settings=settings, judge=JudgeConfig())().name == "swe"
    with pytest.raises(BadInput) as e:
        environment_factory("swe", settings=settings, judge=JudgeConfig(model="judge", base_url="http://x/v1"))
    assert e.value.key == "judge"


def test_stages_give_an_endpoint_judge_the_stores_cache(tmp_path):
    from swepost.agent import environment_factory
    from swepost.rewards.judge import JudgeConfig

    settings = {"repos": None, "backend": "docker", "tool_timeout": 30.0, "grade": True}
    judge = JudgeConfig(base_url="http://127.0.0.1:9/v1", model="cache-test-judge")
    env = environment_factory("codeqa", settings=settings, judge=judge, judge_cache=tmp_path / "judge")()
    assert env.judge.cache.folder == tmp_path / "judge"
    mine = judge.model_copy(update={"cache_dir": tmp_path / "mine", "model": "cache-test-judge-2"})
    env = environment_factory("codeqa", settings=settings, judge=mine, judge_cache=tmp_path / "judge")()
    assert env.judge.cache.folder == tmp_path / "mine"  # the user's own cache_dir wins


# --- the oracle answers -------------------------------------------------------------------------------------

def test_the_oracle_views_the_first_cited_lines_then_finishes_with_the_reference():
    from swepost.policies.oracle import NO_REFERENCE, OraclePolicy, answer_calls

    task = Task(instance_id="q", kind="codeqa", problem_statement="Why?",
                verify={"reference_answer": "Because `f` (pkg/a.py: line 12-30) calls g (pkg/b.py: line 4)."})
    assert answer_calls(task, {"view_codebase", "finish"}) == [
        {"name": "view_codebase", "arguments": {"path": "pkg/a.py", "view_range": [12, 30]}},
        {"name": "finish", "arguments": {"answer": task.verify.reference_answer}}]
    assert [c["name"] for c in answer_calls(task, {"finish"})] == ["finish"]
    bare = Task(instance_id="q", kind="codeqa", problem_statement="Why?")
    assert answer_calls(bare, {"view_codebase", "finish"}) == [{"name": "finish",
                                                                "arguments": {"answer": NO_REFERENCE}}]
    oracle = OraclePolicy()
    oracle.start(task)
    tools = [{"type": "function", "function": {"name": n}} for n in ("view_codebase", "finish")]
    first = oracle.reply([], tools).message["tool_calls"][0]["function"]
    second = oracle.reply([], tools).message["tool_calls"][0]["function"]
    assert (first["name"], second["name"]) == ("view_codebase", "finish")
    assert json.loads(second["arguments"]) == {"answer": task.verify.reference_answer}
    assert oracle.describe()["source"] == "task.verify.reference_answer"
    swe = Task(instance_id="s", problem_statement="Fix it.", patch="")  # a bug-fixing environment: the patch
    oracle.start(swe)
    call = oracle.reply([], [{"type": "function", "function": {"name": "submit"}}]).message["tool_calls"][0]
    assert call["function"]["name"] == "submit" and oracle.describe()["source"] == "task.patch"


# --- eval's judge metrics (no sandbox) ------------------------------------------------------------------------

def _judged(i: str, qa_type: str, scores: dict | None, *, failed: bool = False, missing: bool = False) -> Trajectory:
    ev: dict = {"judge": "openai", "model": "judge-m", "qa_type": qa_type, "judge_failed": failed}
    if failed:
        ev["cause"] = "no usable reply"
    else:
        ev.update(scores=scores, total=sum(scores.values()), reward=round(sum(scores.values()) / 50, 6),
                  missing_answer=missing, cached=False, truncated=False)
    return Trajectory(episode_id=f"{i}#0", instance_id=i, exit_status="submitted", evidence=ev,
                      resolved="UNGRADED" if failed else "RESOLVED_NO", reward=None if failed else ev["reward"])


def test_eval_metrics_report_axes_totals_failures_and_qa_types():
    from swepost.stages.evaluate import EvalConfig, metrics, summary_markdown

    high = {"correctness": 9, "completeness": 8, "relevance": 9, "clarity": 7, "reasoning": 8}
    low = {"correctness": 3, "completeness": 2, "relevance": 5, "clarity": 6, "reasoning": 3}
    floor = dict.fromkeys(high, 1)
    trajectories = [_judged("a", "what", high), _judged("b", "what", low), _judged("c", "why", None, failed=True),
                    _judged("d", "why", floor, missing=True),
                    Trajectory(episode_id="e#0", instance_id="e", exit_status="sandbox_error")]
    tasks = [Task(instance_id=i, kind="codeqa", problem_statement="?", metadata={"qa_type": q})
             for i, q in (("a", "what"), ("b", "what"), ("c", "why"), ("d", "how"), ("e", "where"))]
    m = metrics(trajectories, 1, tasks)
    j = m["judge"]
    assert (j["judge"], j["model"], j["n"], j["graded"], j["judge_failed"], j["missing_answer"]) == (
        "openai", "judge-m", 4, 3, 1, 1)
    assert j["total"] == pytest.approx((41 + 19 + 5) / 3, abs=1e-4)  # the failure is no 0: out of the mean
    assert j["axes"]["correctness"] == pytest.approx((9 + 3 + 1) / 3, abs=1e-4)
    # by the task's qa_type (d is `how` in its task, whatever its evidence says); e was never judged
    assert set(j["by_qa_type"]) == {"what", "why", "how"}
    assert j["by_qa_type"]["what"]["total"] == 30.0 and j["by_qa_type"]["why"]["judge_failed"] == 1
    assert j["by_qa_type"]["why"]["total"] is None and j["by_qa_type"]["how"]["missing_answer"] == 1
    text = summary_markdown("qa-eval", EvalConfig(tasks="qa"), m)
    assert "## Judge: openai `judge-m`" in text and "**21.67**" in text and "judge failures: 1" in text
    assert "| what | 2 | 2 | 0 | 30.00 |" in text and "| why | 1 | 0 | 1 | - |" in text
    assert "judge" not in metrics(trajectories[-1:], 1, tasks)  # no judged episode: no judge block


# --- through the CLI, in docker -------------------------------------------------------------------------------

def _import(swepost, name: str = "qa") -> None:
    swepost("tasks", "import", QA, "--kind", "codeqa", "--name", name, check=0)


def test_bad_environment_settings_exit_2_before_any_episode(swepost, home):
    _import(swepost)
    common = ["collect", "qa", "--policy", "oracle", "--repos", REPOS, "--backend", "docker", "--limit", "1"]
    r = swepost(*common, "--set", "environment=swe", check=2)
    assert "environment 'swe' cannot run codeqa tasks" in r.stderr and "environment" in r.stderr
    r = swepost(*common, "--set", "environment_args.threshold=0.5", check=2)
    assert "environment_args.threshold" in r.stderr and "resolved_threshold" in r.stderr
    r = swepost(*common, "--set", "judge.base_url=http://127.0.0.1:9/v1", check=2)
    assert "judge.model" in r.stderr and "never falls back to the lexical judge" in r.stderr
    r = swepost(*common, "--set", "judge.nope=1", check=2)  # the judge block is a typed config
    assert "judge.nope" in r.stderr and "unknown key" in r.stderr
    assert not (home / "work").exists()  # refused before the first episode's work folder


@pytest.mark.docker
def test_oracle_collect_then_filter_keeps_judge_scored_answers(swepost, home, base_image):
    _import(swepost)
    out = json.loads(swepost("collect", "qa", "--policy", "oracle", "--repos", REPOS, "--backend", "docker",
                             "--limit", "3", "-j", "3", "--name", "qa-oracle", "--json", check=0).stdout)
    trajectories = [json.loads(line) for line in (Path(out["path"]) / "trajectories.jsonl").read_text().splitlines()]
    assert len(trajectories) == 3
    for t in trajectories:  # the kind picked the environment; the lexical judge graded the reference answer
        assert t["environment"] == "codeqa" and t["exit_status"] == "submitted" and t["tool_errors"] == 0
        assert [m["name"] for m in t["messages"] if m["role"] == "tool"] == ["view_codebase", "finish"]
        assert t["evidence"]["judge"] == "lexical" and t["reward"] == 1.0 and t["resolved"] == "RESOLVED_FULL"
        assert t["policy"]["source"] == "task.verify.reference_answer"
    kept = json.loads(swepost("filter", "qa-oracle", "--min-reward", "0.7", "--json", check=0).stdout)
    assert kept["stats"]["kept"] == 3
    rows = [json.loads(line) for line in (Path(kept["path"]) / "train.jsonl").read_text().splitlines()]
    assert {t["function"]["name"] for t in rows[0]["tools"]} == {"semantic_search", "view_codebase",
                                                                 "execute_readonly_command", "finish"}
    r = swepost("filter", "qa-oracle", "--min-reward", "1.01", "--name", "none", check=1)  # nothing scores that
    assert "reward_below_min: 3" in r.stderr


class Broken:
    """Judge replies: higher scores for the empty-list question (qa-1), and no JSON for the median question (qa-2,
    a `what`) while `broken` is set (a judge failure with max_attempts 1)."""

    def __init__(self):
        self.broken = True

    def __call__(self, body: dict) -> dict:
        prompt = body["messages"][0]["content"]
        if self.broken and "even number of values" in prompt:
            return {"content": "Sorry, I cannot score this."}
        good = "empty list" in prompt
        scores = {"correctness": 9 if good else 4, "completeness": 8 if good else 5, "relevance": 7,
                  "clarity": 6, "reasoning": 5}
        return {"content": verdict(scores)}


@pytest.mark.docker
def test_eval_reports_the_judge_by_qa_type_and_a_rerun_asks_the_judge_nothing(swepost, home, base_image):
    _import(swepost)
    respond = Broken()
    with JudgeServer(respond=respond) as srv:
        args = ["eval", "qa", "--policy", "oracle", "--repos", REPOS, "--backend", "docker", "--limit", "4",
                "-j", "4", "--set", f"judge.base_url={srv.base_url}", "--set", "judge.model=judge-m",
                "--set", "judge.max_attempts=1", "--set", "judge.max_retries=0", "--json"]
        first = json.loads(swepost(*args, "--name", "e1", check=0).stdout)
        assert len(srv.requests) == 4
        m = json.loads((Path(first["path"]) / "metrics.json").read_text())
        j = m["judge"]
        assert (j["judge"], j["model"], j["n"], j["graded"], j["judge_failed"], j["cached"]) == (
            "openai", "judge-m", 4, 3, 1, 0)
        assert m["ungraded"] == 1 and m["episodes"] == 4  # the failed judgement: ungraded, never a 0
        # qa-1 (the empty list) scores 9/8/7/6/5 = 35, the other two 4/5/7/6/5 = 27
        assert j["total"] == pytest.approx((35 + 27 + 27) / 3, abs=1e-3)
        assert j["axes"]["correctness"] == pytest.approx((9 + 4 + 4) / 3, abs=1e-3)
        assert set(j["by_qa_type"]) == {"what", "why"}  # qa-1..3 are `what`, qa-4 `why`
        assert j["by_qa_type"]["what"]["judge_failed"] == 1 and j["by_qa_type"]["what"]["graded"] == 2
        assert j["by_qa_type"]["why"]["total"] == 27.0
        assert first["stats"]["judge_failed"] == 1 and first["stats"]["judge_total"] == j["total"]
        summary = (Path(first["path"]) / "summary.md").read_text()
        assert "## Judge: openai `judge-m`" in summary and "judge failures: 1" in summary
        predictions = [json.loads(line) for line in (Path(first["path"]) / "predictions.jsonl").read_text()
                       .splitlines()]
        assert all(p["answer"] for p in predictions)

        respond.broken = False  # the judge is back: only the failed answer is asked again; the rest are cached
        second = json.loads(swepost(*args, "--name", "e2", check=0).stdout)
        assert len(srv.requests) == 5
        j2 = json.loads((Path(second["path"]) / "metrics.json").read_text())["judge"]
        assert (j2["graded"], j2["judge_failed"], j2["cached"]) == (4, 0, 3)
        third = json.loads(swepost(*args, "--name", "e3", check=0).stdout)
        assert len(srv.requests) == 5  # a re-run pays the judge nothing
        j3 = json.loads((Path(third["path"]) / "metrics.json").read_text())["judge"]
        assert j3["cached"] == 4 and j3["total"] == j2["total"]
    assert len(list((home / "cache" / "judge").rglob("*.json"))) == 4
