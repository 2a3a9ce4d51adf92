"""Stage `eval`: the collect engine on a task split, k samples per task, summarised as metrics.

Writes an `eval` artifact: metrics.json (resolved rate over graded episodes, ungraded count and rate, unbiased
pass@k over graded samples, exit statuses, mean turns and tokens), predictions.jsonl in SWE-bench's format
(instance_id, model_name_or_path, model_patch; `answer` too for answering tasks), a Markdown summary, the
trajectories themselves, and quarantined.jsonl when tasks were quarantined (their episodes stay in the
trajectories, ungraded).

Episodes graded by a judge (codeqa) add `judge` to metrics.json: the mean of each axis (1-10), of the total (their
sum, 5-50: SWE-QA-Pro's score) and of the RL reward over the judged answers, judge failures counted apart (no
score, never a 0), missing answers (scored at the floor), cache hits, and the same broken down by qa_type.
Episodes scored by exact match and F1 (search) add `answers`: mean EM and F1, missing and spammed answers, and the
same by hop count.
"""

from __future__ import annotations

import json
import shutil
from math import comb

from pydantic import Field

from swepost.artifacts import Artifact, ArtifactStore, producer_record, redact_secrets
from swepost.records import Task, Trajectory
from swepost.rewards.filters import is_ungraded
from swepost.rewards.judge import AXES, Judgement, summarize
from swepost.stages.collect import (
    CollectConfig,
    episode_stats,
    input_parents,
    publish_quarantine,
    run_episodes,
    write_trajectories,
)


class EvalConfig(CollectConfig):
    name: str = Field("eval", description="output artifact name")
    policy: str = Field("hf", description="openai | hf | scripted | oracle | module:Class")
    model_name: str | None = Field(None, description="model_name_or_path written in predictions.jsonl "
                                   "(default: the policy's model)")


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def judgement_of(traj: Trajectory) -> Judgement | None:
    """The judge's verdict as the environment recorded it in the evidence, or None when no judge saw the episode
    (it failed before its end, or its task has no reference answer)."""
    ev = traj.evidence
    if ev.get("judge_failed"):
        return Judgement.failure(str(ev.get("judge") or "judge"), str(ev.get("cause") or "judge failed"),
                                 model=ev.get("model"))
    if not isinstance(ev.get("scores"), dict) or ev.get("total") is None:
        return None
    return Judgement(judge=str(ev.get("judge") or "judge"), model=ev.get("model"), scores=ev["scores"],
                     total=ev["total"], reward=ev.get("reward"), missing_answer=bool(ev.get("missing_answer")),
                     truncated=bool(ev.get("truncated")), cached=bool(ev.get("cached")))


def judge_metrics(trajectories: list[Trajectory], tasks: dict[str, Task]) -> dict | None:
    """summarize() over the judged episodes, with the judge's name and model, and by qa_type (the task's
    metadata, else the evidence's; `unknown` when neither says). None when no episode was judged."""
    judged = [(t, j) for t in trajectories if (j := judgement_of(t)) is not None]
    if not judged:
        return None
    by_type: dict[str, list[Judgement]] = {}
    for t, j in judged:
        task = tasks.get(t.instance_id)
        qa_type = (task.metadata.get("qa_type") if task else None) or t.evidence.get("qa_type") or "unknown"
        by_type.setdefault(str(qa_type), []).append(j)
    first = judged[0][1]
    return {"judge": first.judge, "model": first.model, **summarize([j for _, j in judged]),
            "by_qa_type": {qa: summarize(js) for qa, js in sorted(by_type.items())}}


def answer_metrics(trajectories: list[Trajectory], tasks: dict[str, Task]) -> dict | None:
    """Mean exact match and F1 of the scored short answers (retrieval), overall and by hop count (the task's
    `hops`, else the evidence's; `unknown` when neither says). Ungraded episodes (a retriever that failed) are left
    out, never counted as 0; missing answers count as 0 and are counted. None when no episode was scored so."""
    scored = [t for t in trajectories if not is_ungraded(t) and "em" in t.evidence and "f1" in t.evidence]
    if not scored:
        return None

    def summary(ts: list[Trajectory]) -> dict:
        n = len(ts)
        return {"n": n, "em": round(sum(float(t.evidence["em"]) for t in ts) / n, 4),
                "f1": round(sum(float(t.evidence["f1"]) for t in ts) / n, 4),
                "missing_answer": sum(bool(t.evidence.get("missing_answer")) for t in ts),
                "spam": sum(bool(t.evidence.get("spam")) for t in ts)}

    by_hops: dict[str, list[Trajectory]] = {}
    for t in scored:
        task = tasks.get(t.instance_id)
        hops = (task.metadata.get("hops") if task else None) or t.evidence.get("hops") or "unknown"
        by_hops.setdefault(str(hops), []).append(t)
    return {**summary(scored), "by_hops": {h: summary(ts) for h, ts in sorted(by_hops.items())}}


def answers_markdown(a: dict) -> str:
    rows = "\n".join(f"| {h} | {s['n']} | {s['em']:.3f} | {s['f1']:.3f} | {s['missing_answer']} |"
                     for h, s in a["by_hops"].items())
    return (f"\n## Answers: exact match and F1\n\n- EM **{a['em']:.3f}**, F1 **{a['f1']:.3f}** over {a['n']} scored "
            f"answers (SQuAD/HotpotQA normalisation, best gold); missing answers: {a['missing_answer']} (scored 0); "
            f"answer spam penalised: {a['spam']}\n\n| hops | answers | EM | F1 | missing |\n|---|---|---|---|---|\n"
            f"{rows}\n")


def metrics(trajectories: list[Trajectory], samples: int, tasks: list[Task] | None = None) -> dict:
    by_task: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        by_task.setdefault(t.instance_id, []).append(t)
    out = episode_stats(trajectories)
    out["tasks"] = len(by_task)
    out["pass_at_k"] = {}
    # ungraded samples are left out: n counts a task's graded samples; a task with none has no estimate, and
    # one with fewer than k is estimated at k = n (no better is known)
    graded = [[t for t in ts if not is_ungraded(t)] for ts in by_task.values()]
    for k in sorted({1, samples} | ({5} if samples >= 5 else set())):
        scores = [pass_at_k(len(ts), sum(t.resolved == "RESOLVED_FULL" for t in ts), min(k, len(ts)))
                  for ts in graded if ts]
        out["pass_at_k"][str(k)] = round(sum(scores) / len(scores), 4) if scores else 0.0
    out["resolved_tasks"] = sorted(i for i, ts in by_task.items() if any(t.resolved == "RESOLVED_FULL" for t in ts))
    by_id = {t.instance_id: t for t in tasks or []}
    judge = judge_metrics(trajectories, by_id)
    if judge is not None:
        out["judge"] = judge
    answers = answer_metrics(trajectories, by_id)
    if answers is not None:
        out["answers"] = answers
    return out


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def judge_markdown(j: dict) -> str:
    who = f"{j['judge']}" + (f" `{j['model']}`" if j.get("model") else "")
    lexical = ("\n\nThe lexical judge counts shared words with the reference and rubric: a smoke test, not a "
               "model's judgement." if j["judge"] == "lexical" else "")
    axes = " | ".join(AXES)
    rows = "\n".join(f"| {qa} | {s['n']} | {s['graded']} | {s['judge_failed']} | {_num(s['total'])} | "
                     f"{_num(s['reward'], 3)} | " + " | ".join(_num(s['axes'][a]) for a in AXES) + " |"
                     for qa, s in j["by_qa_type"].items())
    return (f"\n## Judge: {who}{lexical}\n\n- score (the sum of the five axes, 5-50): **{_num(j['total'])}** mean "
            f"over {j['graded']} judged answers; reward (weighted, 0-1): {_num(j['reward'], 3)}\n"
            f"- judge failures: {j['judge_failed']} (no score: left out of the means, not counted as 0); missing "
            f"answers: {j['missing_answer']} (scored at the floor); from the cache: {j['cached']}\n\n"
            f"| axis | mean (1-10) |\n|---|---|\n" + "\n".join(f"| {a} | {_num(j['axes'][a])} |" for a in AXES) +
            f"\n\n| qa_type | answers | judged | failed | total | reward | {axes} |\n"
            f"|---|---|---|---|---|---|{'---|' * len(AXES)}\n{rows}\n")


def summary_markdown(name: str, config: EvalConfig, m: dict) -> str:
    rows = "\n".join(f"| {status} | {count} |" for status, count in sorted(m["exit_status"].items()))
    passes = ", ".join(f"pass@{k} = {v:.3f}" for k, v in m["pass_at_k"].items())
    policy_args = json.dumps(redact_secrets(config.policy_args))
    return (f"# {name}\n\npolicy `{config.policy}` {policy_args} on {m['tasks']} tasks x {config.samples} samples"
            f"\n\n- resolved: {m['resolved']} / {m['episodes'] - m['ungraded']} graded "
            f"episodes ({m['resolved_rate']:.1%})\n- ungraded: {m['ungraded']} / {m['episodes']} episodes "
            f"({m['ungraded_rate']:.1%}; the grader could not judge them: not counted as wrong)\n- {passes}"
            f"\n- mean turns: {m['mean_turns']}, tokens: {m['tokens']}, "
            f"tool errors: {m['tool_errors']}\n\n| exit status | episodes |\n|---|---|\n{rows}\n"
            + (judge_markdown(m["judge"]) if "judge" in m else "")
            + (answers_markdown(m["answers"]) if "answers" in m else ""))


def run_eval(config: EvalConfig, store: ArtifactStore) -> Artifact:
    source, tasks, trajectories, work = run_episodes(config, store, "eval")
    m = metrics(trajectories, config.samples, tasks)
    model_name = config.model_name or str(config.policy_args.get("model") or config.policy)
    data = config.model_dump(mode="json")
    data["tasks"] = source.id
    producer = producer_record("eval", data, seed=config.seed)
    with store.write(config.name, "eval", producer=producer, parents=input_parents(config, store, source.id)) as w:
        write_trajectories(w.path, trajectories)
        (w.path / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
        with open(w.path / "predictions.jsonl", "w") as f:
            for t in trajectories:
                if t.sample == 0:  # SWE-bench takes one prediction per instance
                    row = {"instance_id": t.instance_id, "model_name_or_path": model_name, "model_patch": t.final_diff}
                    if t.answer is not None:  # an answering task (codeqa): the answer itself
                        row["answer"] = t.answer
                    f.write(json.dumps(row) + "\n")
        (w.path / "summary.md").write_text(summary_markdown(config.name, config, m))
        w.stats.update({k: m[k] for k in ("episodes", "resolved", "resolved_rate", "ungraded", "ungraded_rate",
                                          "mean_turns", "tokens")})
        w.stats["pass_at_1"] = m["pass_at_k"]["1"]
        if "judge" in m:
            w.stats.update(judge_total=m["judge"]["total"], judge_reward=m["judge"]["reward"],
                           judge_failed=m["judge"]["judge_failed"])
        if "answers" in m:
            w.stats.update(em=m["answers"]["em"], f1=m["answers"]["f1"])
        w.stats["quarantined"] = publish_quarantine(work, w.path)
    shutil.rmtree(work, ignore_errors=True)
    return w.artifact
