"""`rl` on codeqa tasks (RLAIF): the reward is a judge's score of the final answer, through the environment's
score(); a judge failure gets its group's mean reward (no advantage) or is masked, and is counted.

With docker (the must-show): two real GRPO steps of the tiny model on two bundled questions, in read-only codeqa
sandboxes, judged by a chat-completions server on loopback whose first reply is malformed. The model's turns are
scripted token ids (a random tiny model never calls a tool); everything else is the stage as users run it.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from swepost.artifacts import ArtifactStore
from swepost.records import Trajectory
from swepost.rewards.judge import AXES, DEFAULT_WEIGHTS
from tests.test_judge import JudgeServer, verdict

REPO = Path(__file__).resolve().parents[1]
GOOD = {"correctness": 9, "completeness": 8, "relevance": 9, "clarity": 7, "reasoning": 8}
WEAK = {"correctness": 3, "completeness": 2, "relevance": 5, "clarity": 6, "reasoning": 3}
VIEW = '<tool_call>\n{"name": "view_codebase", "arguments": {"path": "minicalc/stats.py", "view_range": [7, 14]}}' \
       '\n</tool_call>'


def reward_of(scores: dict[str, int]) -> float:
    return round(sum(DEFAULT_WEIGHTS[a] * scores[a] for a in AXES) / 10, 6)


# --- group rewards, without a sandbox -------------------------------------------------------------------------

def _rollout(reward: float | None, *, judge_failed: bool = False, status: str = "submitted") -> SimpleNamespace:
    t = Trajectory(episode_id="t#0", instance_id="t", exit_status=status, reward=reward,
                   resolved="UNGRADED" if reward is None else "RESOLVED_NO",
                   evidence={"judge_failed": True, "cause": "malformed"} if judge_failed else {})
    return SimpleNamespace(trajectory=t, rewards={})


def _group(on_failure: str, group: list[SimpleNamespace]) -> list[float | None]:
    from swepost.train.rl import RolloutFunc

    fn = RolloutFunc.__new__(RolloutFunc)  # only what _group_rewards reads
    fn.on_judge_failure, fn.tasks, fn.reward = on_failure, {"t": None}, lambda t, task: t.reward
    return fn._group_rewards(group)


def test_a_judge_failure_gets_its_groups_mean_or_is_masked():
    group = lambda: [_rollout(0.2), _rollout(None, judge_failed=True), _rollout(0.6),  # noqa: E731
                     _rollout(None, status="sandbox_error")]
    assert _group("group_mean", group()) == [0.2, 0.4, 0.6, None]  # a broken sandbox is no verdict: not in the mean
    assert _group("mask", group()) == [0.2, None, 0.6, None]
    failed = [_rollout(None, judge_failed=True), _rollout(None, judge_failed=True)]
    assert _group("group_mean", failed) == [None, None]  # nothing to take a mean of: ungraded, not a made-up 1.0
    assert _group("group_mean", [_rollout(0.0), _rollout(1.0)]) == [0.0, 1.0]  # no failure: as graded


def test_a_judge_failure_is_not_taken_for_another_ungraded_episode():
    from swepost.train.rl import judge_failed

    assert judge_failed(_rollout(None, judge_failed=True).trajectory)
    assert not judge_failed(_rollout(None).trajectory)  # a grader timeout, say
    assert not judge_failed(_rollout(0.5).trajectory)


# --- the must-show: RLAIF on the tiny model -------------------------------------------------------------------

class AnswerGenerator:
    """Turn 1 views the code; turn 2 finishes with an answer named by the turn's seed (unique per episode, so no
    answer is judged from another's cache entry), GOOD or WEAK by the seed's parity."""

    concurrent = False

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.marker = tokenizer("<|im_start|>assistant", add_special_tokens=False)["input_ids"]

    def _turn(self, ids: list[int]) -> int:
        m, n = self.marker, len(self.marker)
        return sum(1 for i in range(len(ids) - n + 1) if ids[i:i + n] == m) - 1

    def generate(self, requests):
        from swepost.train.rollout import Generated

        out = []
        for ids, budget, seed in requests:
            if self._turn(ids) == 0:
                text = VIEW
            else:
                grade = "GOOD" if seed % 2 else "WEAK"
                answer = (f"ANSWER-{grade}-{seed % 10 ** 9}: it raises ZeroDivisionError, since count is 0 at "
                          "`total / count` (minicalc/stats.py: line 7-14).")
                text = f'<tool_call>\n{json.dumps({"name": "finish", "arguments": {"answer": answer}})}\n</tool_call>'
            tokens = list(self.tok(text, add_special_tokens=False)["input_ids"]) + [self.tok.eos_token_id]
            out.append(Generated(tokens[:budget], None, len(tokens) <= budget))
        return out


class ScoringJudge:
    """The judge's replies: the first is not JSON (a judge failure: max_attempts 1), then GOOD or WEAK scores by
    the answer's marker; remembers what it scored."""

    def __init__(self):
        self.lock = threading.Lock()
        self.scored: dict[str, dict[str, int]] = {}
        self.malformed: list[str] = []

    def __call__(self, body: dict) -> dict:
        prompt = body["messages"][0]["content"]
        marker = re.search(r"ANSWER-(GOOD|WEAK)-\d+", prompt).group(0)
        with self.lock:
            if not self.malformed:
                self.malformed.append(marker)
                return {"content": "I would rather not give numbers for this one."}
            scores = GOOD if "GOOD" in marker else WEAK
            self.scored[marker] = scores
        return {"content": verdict(scores)}


@pytest.mark.docker
def test_rlaif_trains_on_judge_rewards_and_a_failed_judgement_gets_its_groups_mean(home, swepost, base_image,
                                                                                   tmp_path, monkeypatch):
    from swepost.stages.rl import RlConfig, run_rl
    from swepost.train.rl import RolloutFunc
    from swepost.train.tiny_model import build_tiny_model

    rows = [json.loads(line) for line in (REPO / "data" / "minicalc_qa.jsonl").read_text().splitlines()][:2]
    (tmp_path / "two.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    swepost("tasks", "import", tmp_path / "two.jsonl", "--kind", "codeqa", "--name", "qa", check=0)
    build_tiny_model(tmp_path / "tiny")

    def scripted(self, trainer):
        if self.generator is None:
            self.generator = AnswerGenerator(trainer.processing_class)
        return self.generator

    monkeypatch.setattr(RolloutFunc, "_generator", scripted)
    judge = ScoringJudge()
    with JudgeServer(respond=judge) as srv:
        config = RlConfig(tasks="qa", model=str(tmp_path / "tiny"), repos=REPO / "data" / "repos", backend="docker",
                          reward="judge",  # RLAIF by name; `env` gives the same reward through the same path
                          judge={"base_url": srv.base_url, "model": "judge", "max_attempts": 1, "max_retries": 0},
                          max_steps=2, tasks_per_step=2, num_generations=2, max_turns=2, max_prompt_tokens=2560,
                          max_completion_tokens=512, max_turn_tokens=256, concurrency=4, learning_rate=1e-3,
                          dynamic_sampling="off", gradient_checkpointing=False, save_steps=1, quarantine_after=0)
        art = run_rl(config, ArtifactStore(home))
    assert art.kind == "checkpoint" and (art.path / "model" / "config.json").is_file()

    rollouts = [json.loads(line) for line in (art.path / "rollouts.jsonl").read_text().splitlines()]
    trajectories = {n: [json.loads(line) for line in (art.path / "trajectories" / f"step-{n:06d}.jsonl")
                        .read_text().splitlines()] for n in (1, 2)}
    assert len(rollouts) == 8 and [r["step"] for r in rollouts] == [1] * 4 + [2] * 4
    by_step = {n: [r for r in rollouts if r["step"] == n] for n in (1, 2)}
    failed = []
    for n, step_rows in by_step.items():
        for row, t in zip(step_rows, trajectories[n], strict=True):
            assert t["environment"] == "codeqa" and t["exit_status"] == "submitted", t.get("error")
            assert "def mean(values):" in t["messages"][3]["content"]  # the view ran in the read-only sandbox
            assert t["evidence"]["judge"] == "openai" and t["evidence"]["read_only"] is True
            marker = t["answer"].split(":")[0]
            if row["judge_failed"]:
                failed.append((n, row, t))
                assert marker in judge.malformed and t["resolved"] == "UNGRADED" and t["evidence"]["cause"]
            else:  # the reward TRL trained on is the judge's weighted score of this very answer
                assert row["reward"] == reward_of(judge.scored[marker]) == t["reward"], (row, marker)
    assert len(failed) == 1
    n, row, _ = failed[0]
    partner = next(r for r in by_step[n] if r["group"] == row["group"] and r is not row)
    assert row["reward"] == partner["reward"] and row["masked"] is None  # its group's mean: trained, no advantage
    assert len(srv.requests) == 8  # 7 scored answers and the malformed reply, each judged once

    assert art.stats["judge_failed"] == 1 and art.stats["steps"] == 2
    history = json.loads((art.path / "log_history.json").read_text())
    assert sum(e["rl/judge_failed"] for e in history if "rl/judge_failed" in e) == 1
    # the reward metric counts verdicts only: the filled-in mean is no judgement
    logged = [e["rl/task_reward"] for e in history if "rl/task_reward" in e]
    verdicts = [r["reward"] for r in by_step[n] if not r["judge_failed"]]
    assert len(logged) == 2 and logged[n - 1] == pytest.approx(sum(verdicts) / len(verdicts))
    cached = list((home / "cache" / "judge").rglob("*.json"))
    assert len(cached) == 7  # every scored answer, and no failure: a resumed run never pays for them again

    import torch
    from transformers import AutoModelForCausalLM

    after = AutoModelForCausalLM.from_pretrained(art.path / "model")
    before = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny")
    assert any(not torch.equal(a, b) for a, b in zip(after.state_dict().values(), before.state_dict().values(),
                                                     strict=True))


def test_reward_judge_is_refused_for_an_environment_graded_by_its_tests(home, swepost, repo_root, tmp_path):
    """`--reward judge` names RLAIF; on bug-fixing tasks (graded by hidden tests) it exits 2 before training."""
    swepost("tasks", "import", repo_root / "data" / "minicalc_tasks.jsonl", "--name", "bugs", check=0)
    from swepost.train.tiny_model import build_tiny_model

    build_tiny_model(tmp_path / "tiny", vocab_size=512)
    r = swepost("rl", "bugs", "--model", tmp_path / "tiny", "--repos", repo_root / "data" / "repos",
                "--backend", "local", "--reward", "judge", "--max-steps", "1", "--tasks-per-step", "1", "-G", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "reward: reward 'judge' needs an environment graded by a judge (codeqa); 'swe'" in r.stderr, r.stderr
