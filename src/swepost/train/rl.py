"""GRPO / DAPO training of an agent on swepost environments: a thin adapter on TRL's GRPOTrainer.

`rollout_func`, not `environment_factory`: TRL's own tool loop executes the tool calls of a batch one rollout
after another, and it knows nothing of swepost's episode rules (exit statuses, the grader's fresh sandbox, format
errors). With `rollout_func` TRL hands over the batch's prompts and takes back token ids and an `env_mask`;
everything in between is swepost's: `swepost.train.rollout` runs the episodes concurrently, the reward comes from
the environment's grade, and this module adds what TRL lacks:

* dynamic sampling: groups whose task rewards are all equal are dropped (their tokens leave the loss and the
  DAPO token count) or resampled on other tasks; counts logged per step;
* truncated episodes (out of turns, tokens or time): masked out of the loss but kept in their group's baseline
  (running out of room is no evidence the actions were wrong, yet a success among truncated attempts is still
  better than they are), or given DAPO's soft overlong penalty;
* a linear penalty per model turn;
* judge failures (RLAIF on codeqa): the failed rollout gets its group's mean reward, so no advantage
  (`judge.on_failure: group_mean`, SWE-QA-Pro), or is masked (`mask`); counted as rl/judge_failed;
* a step-level rollout deadline: episodes still running when it passes are cut, and left out of the loss and of
  their group's baseline (as ungraded ones are), so one slow episode does not idle every GPU.

On several processes each one rolls out whole groups; the `rl/*` and `time/*` metrics are summed over all of them
(one gather per step, outside the resample loop, so every process makes the same collective calls), and resampled
groups are drawn from disjoint shares of the spare tasks.

Each reward part is its own TRL reward function (logged as rewards/<part>/mean); the parts come precomputed from
the rollout as extra fields. TRL's dataset rows carry only the task's instance_id (as the prompt text): the
environment writes the real prompt.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from swepost.errors import BadInput, WorkFailed
from swepost.records import ExitStatus, Task
from swepost.rewards.filters import UNGRADED, is_ungraded
from swepost.train.context import fit_context
from swepost.train.launch import mark_finished, resume_point
from swepost.train.trl_compat import log_completion_column, log_metric

STATS_FILE = "rl_stats.json"
FINAL = "final"
TRUNCATED_STATUSES = (ExitStatus.CONTEXT_OVERFLOW, ExitStatus.MAX_TURNS, ExitStatus.TIMEOUT)
REWARD_PARTS = ("task", "turn_penalty", "overlong_penalty")


# --- rewards ------------------------------------------------------------------------------------------------

def episode_reward(name: str):
    """The reward of a finished episode: 'env' (the environment's grade), 'judge' (the same, for an environment
    whose grade is its judge's: RLAIF, checked where the environment is chosen) or module:function(trajectory,
    task)."""
    if name in ("env", "judge"):
        return lambda trajectory, task: trajectory.reward
    from swepost.registry import load_component

    fn = load_component(name, {}, "reward")
    if not callable(fn):
        raise BadInput(f"reward {name!r} is not callable", key="reward")
    return fn


def soft_overlong_penalty(length: int, max_length: int, buffer: int, factor: float) -> float:
    """DAPO's soft overlong punishment: 0 up to max_length - buffer, then down linearly to -factor at
    max_length (and beyond)."""
    start = max_length - buffer
    if length <= start:
        return 0.0
    return -factor * min(1.0, (length - start) / buffer)


def _trl_reward(part: str):
    key = f"rl_{part}"

    def reward(completions, **kwargs):
        return kwargs[key]

    reward.__name__ = part
    return reward


# --- one rollout batch --------------------------------------------------------------------------------------

class RolloutLog:
    """Per-rollout rows and trajectories (trajectories/step-N.jsonl) in the work folder. Rows go to one file
    per process (`rollouts.jsonl` for the first, `rollouts-pN.jsonl` for the others), so processes never
    interleave their appends, and a line torn by a kill -9 is dropped on reading, never a crash on resume."""

    def __init__(self, folder: Path, save_trajectories: bool):
        self.folder = folder
        self.path = folder / "rollouts.jsonl"
        self.trajectories = folder / "trajectories" if save_trajectories else None

    def file_for(self, process: int) -> Path:
        return self.path if not process else self.folder / f"rollouts-p{process}.jsonl"

    def truncate_after(self, step: int) -> None:
        """Drop what steps after `step` logged (they are trained again after a resume), and any torn line."""
        for f in rollout_files(self.folder):
            keep = [row for row in _rows(f) if row["step"] <= step]
            f.write_text("".join(json.dumps(row) + "\n" for row in keep))
        if self.trajectories and self.trajectories.is_dir():
            for f in self.trajectories.glob("step-*.jsonl"):
                if int(f.stem.split("-")[1]) > step:
                    f.unlink()

    def write(self, step: int, rows: list[dict], trajectories: list, process: int = 0) -> None:
        """Rows are appended with one write to this process's file; trajectories go to a file per step, and per
        process beyond the first."""
        with open(self.file_for(process), "a") as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
        if self.trajectories is not None:
            self.trajectories.mkdir(exist_ok=True)
            name = f"step-{step:06d}" + (f"-p{process}" if process else "")
            with open(self.trajectories / f"{name}.jsonl", "w") as f:
                for t in trajectories:
                    f.write(t.model_dump_json() + "\n")


def rollout_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("rollouts.jsonl")) + sorted(folder.glob("rollouts-p*.jsonl"))


def _rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            break  # a line torn by a kill: it and anything after it never finished
    return rows


def read_rollout_rows(folder: Path) -> list[dict]:
    """Every process's rollout rows, in step order (then process), torn lines dropped."""
    rows = [row for f in rollout_files(folder) for row in _rows(f)]
    return sorted(rows, key=lambda r: (r["step"], r.get("process", 0)))


class RolloutFunc:
    """TRL's `rollout_func(prompts, trainer)`: runs this process's slice of the generation batch (whole groups of
    num_generations), scores it, applies dynamic sampling and truncation masking, and logs it."""

    def __init__(self, cfg: Any, tasks: list[Task], log: RolloutLog):
        from swepost.agent import AgentLimits, environment_factory, pick_environment, remote_settings, takes_judge
        from swepost.sandbox.task_sandbox import sandbox_kwargs

        self.cfg, self.log = cfg, log
        self.tasks = {t.instance_id: t for t in tasks}
        self.order = [t.instance_id for t in tasks]
        self.reward = episode_reward(cfg.reward)
        settings = {"repos": cfg.repos, "backend": cfg.backend, "tool_timeout": cfg.tool_timeout, "grade": True,
                    **sandbox_kwargs(cfg.sandbox_limits)}
        if getattr(cfg, "index", None):  # the index artifact's folder (stages/rl.py resolved it)
            settings["index"] = cfg.index
        environment = pick_environment(cfg.environment, [t.kind for t in tasks])
        settings.update(remote_settings(environment, getattr(cfg, "env_url", None), cfg.environment_args))
        self.make_env = environment_factory(environment, settings=settings, args=cfg.environment_args,
                                            judge=cfg.judge)
        if cfg.reward == "judge" and not takes_judge(environment):
            raise BadInput(f"reward 'judge' needs an environment graded by a judge (codeqa); {environment!r} is "
                           "graded by its own tests: use reward env", key="reward")
        self.on_judge_failure = cfg.judge.on_failure
        self.limits = AgentLimits(max_turns=cfg.max_turns, max_context_tokens=10 ** 9, max_seconds=cfg.max_seconds,
                                  max_consecutive_errors=cfg.max_consecutive_errors)
        self.generator = None
        self.seconds = {"rollout": 0.0, "generation": 0.0, "environment": 0.0}
        self.quarantined: dict[str, dict] = {}  # instance_id -> {"failures", "last_cause"}: not drawn again

    # the generation backend is built on first use: it needs the trainer
    def _generator(self, trainer):
        from swepost.train.rollout import CompletionsGenerator, TransformersGenerator, VllmColocateGenerator

        if self.generator is not None:
            return self.generator
        cfg, tok = self.cfg, trainer.processing_class
        stop_ids = set(trainer.eos_token_ids)
        sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p}
        if cfg.generation == "transformers":
            from trl.models import unwrap_model_for_generation

            def model_context():
                return unwrap_model_for_generation(
                    trainer.model_wrapped, trainer.accelerator,
                    gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                    generation_kwargs=trainer.generation_kwargs,
                    gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs)

            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            self.generator = TransformersGenerator(model_context, trainer.generation_config, stop_ids, pad)
        elif cfg.generation == "vllm_colocate":
            sampling.update(top_k=cfg.top_k or -1, stop_token_ids=sorted(stop_ids))
            self.generator = VllmColocateGenerator(trainer.vllm_generation.llm, sampling, stop_ids)
        else:
            if cfg.top_k:
                sampling["top_k"] = cfg.top_k
            self.generator = CompletionsGenerator(cfg.vllm_server_url.rstrip("/") + "/v1", None, sampling, stop_ids)
        return self.generator

    def _run(self, trainer, instance_ids: list[str], seed: str):
        from swepost.train.rollout import run_rollouts

        G = trainer.num_generations
        rollouts, stats = run_rollouts(
            [self.tasks[i] for i in instance_ids], make_env=self.make_env, generator=self._generator(trainer),
            tokenizer=trainer.processing_class, limits=self.limits, max_prompt_tokens=self.cfg.max_prompt_tokens,
            max_completion_tokens=self.cfg.max_completion_tokens, concurrency=self.cfg.concurrency,
            max_turn_tokens=self.cfg.max_turn_tokens,
            max_wait=self.cfg.max_batch_wait, samples=[n % G for n in range(len(instance_ids))],
            deadline=self.cfg.rollout_deadline,
            describe={"model": "policy under training", "generation": self.cfg.generation,
                      "temperature": self.cfg.temperature, "top_p": self.cfg.top_p},
            seed=f"{seed}:{trainer.accelerator.process_index}")
        self.seconds["rollout"] += stats.wall
        self.seconds["generation"] += stats.generation
        self.seconds["environment"] += stats.environment
        return rollouts, stats

    def _task_reward(self, rollout) -> float | None:
        """The episode's reward, computed once (a judge may be slow, or not repeat itself)."""
        if "task" not in rollout.rewards:
            t = rollout.trajectory
            # a failed sandbox, a grader that could not judge (UNGRADED: a timeout, the memory limit) or an episode
            # cut by the deadline is no verdict on the model: no signal, whatever the reward function would say
            value = None
            if t.exit_status not in (ExitStatus.SANDBOX_ERROR, ExitStatus.DEADLINE) and not is_ungraded(t):
                try:
                    value = self.reward(t, self.tasks[t.instance_id])
                    value = None if value is None else float(value)
                except Exception as e:  # noqa: BLE001 - a reward function (a judge) that raises: this rollout is
                    value = None  # ungraded, recorded, and the step goes on
                    t.error = f"the reward function raised {type(e).__name__}: {e}"[:2000]
            rollout.rewards["task"] = value
        return rollout.rewards["task"]

    def _group_rewards(self, group: list) -> list[float | None]:
        """The task rewards of one group, judge failures filled in by `judge.on_failure` (rewards.judge's
        group_rewards): group_mean gives a failed one the mean of the group's graded rewards, so it carries no
        advantage (SWE-QA-Pro); mask leaves it None (ungraded). Other rollouts keep their own reward."""
        from swepost.rewards.judge import Judgement, group_rewards

        own = [self._task_reward(r) for r in group]
        if not any(judge_failed(r.trajectory) for r in group):
            return own
        judgements = [Judgement.failure("judge", "judge failed") if judge_failed(r.trajectory)
                      else Judgement(judge="env", reward=value, failed=False) if value is not None
                      else None for r, value in zip(group, own, strict=True)]
        graded = [j for j in judgements if j is not None]
        filled = iter(group_rewards(graded, on_failure=self.on_judge_failure).rewards)
        return [None if j is None else next(filled) for j in judgements]

    def _truncated(self, rollout) -> bool:
        return rollout.trajectory.exit_status in TRUNCATED_STATUSES

    @staticmethod
    def _zero_variance(values: list[float | None]) -> bool:
        scored = [v for v in values if v is not None]
        return len(set(scored)) <= 1

    def __call__(self, prompts: list, trainer) -> dict[str, list]:
        cfg = self.cfg
        G = trainer.num_generations
        ids = [str(p[-1]["content"]) if isinstance(p, list) else str(p) for p in prompts]
        if len(ids) % G or any(ids[g] != ids[g - g % G] for g in range(len(ids))):
            raise WorkFailed(f"rl: this process got {len(ids)} rollouts that are not whole groups of {G}: make "
                             "tasks_per_step a multiple of the number of processes")
        step = trainer.state.global_step + 1
        acc = trainer.accelerator
        process = acc.process_index
        t0 = time.monotonic()
        # the whole batch's tasks, from every process (a collective: every step, never inside the resample loop)
        spare = self._spare_tasks(_gather(ids), process, acc.num_processes)
        random.Random(f"{cfg.seed}:{step}:{process}").shuffle(spare)
        ids, spare, substituted = self._replace_quarantined(ids, spare, G)
        rollouts, stats = self._run(trainer, ids, f"{cfg.seed}:{step}")
        totals = _stats_totals(stats)
        groups = [rollouts[g: g + G] for g in range(0, len(rollouts), G)]
        resampled: set[int] = set()
        if cfg.dynamic_sampling == "resample":
            for round_ in range(1, cfg.max_resample_rounds + 1):
                flat = [g for g, group in enumerate(groups) if self._zero_variance(self._group_rewards(group))]
                flat = flat[: len(spare)]
                if not flat:
                    break
                fresh, spare = spare[: len(flat)], spare[len(flat):]
                new, more = self._run(trainer, [i for i in fresh for _ in range(G)], f"{cfg.seed}:{step}:{round_}")
                totals = {k: v + _stats_totals(more)[k] for k, v in totals.items()}
                for k, g in enumerate(flat):
                    groups[g] = new[k * G: (k + 1) * G]
                    resampled.add(g)

        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "env_mask": [],
                                "instance_id": [], **{f"rl_{p}": [] for p in REWARD_PARTS}}
        rows, trajectories = [], []
        counts = {"dropped_groups": 0, "resampled_groups": len(resampled), "masked_truncated": 0, "ungraded": 0,
                  "masked_deadline": 0, "quarantine_substituted": substituted, "judge_failed": 0}
        for g, group in enumerate(groups):
            scored = self._group_rewards(group)
            drop = cfg.dynamic_sampling != "off" and self._zero_variance(scored)
            counts["dropped_groups"] += drop
            for k, r in enumerate(group):
                t = r.trajectory
                task_reward = scored[k]
                failed_judge = judge_failed(t)
                counts["judge_failed"] += failed_judge
                why = None
                if t.exit_status == ExitStatus.DEADLINE:
                    why = "deadline"
                    counts["masked_deadline"] += 1
                elif task_reward is None:
                    why = "ungraded"
                    counts["ungraded"] += 1
                elif cfg.truncated == "mask" and self._truncated(r):
                    why = "truncated"
                    counts["masked_truncated"] += 1
                elif drop:
                    why = "zero_variance"
                mask = [0] * len(r.mask) if why else r.mask
                turn_pen = -cfg.turn_penalty * t.turns
                over_pen = (soft_overlong_penalty(len(r.completion_ids), cfg.max_completion_tokens,
                                                  cfg.overlong_buffer, cfg.overlong_penalty)
                            if cfg.truncated == "soft_penalty" else 0.0)
                left_out = why in ("ungraded", "deadline")  # out of the group baseline too
                out["prompt_ids"].append(r.prompt_ids)
                out["completion_ids"].append(r.completion_ids)
                out["logprobs"].append(r.logprobs if r.logprobs is not None else [0.0] * len(r.completion_ids))
                out["env_mask"].append(mask)
                out["instance_id"].append(t.instance_id)
                out["rl_task"].append(None if left_out else task_reward)
                out["rl_turn_penalty"].append(None if left_out else turn_pen)
                out["rl_overlong_penalty"].append(None if left_out else over_pen)
                rows.append({"step": step, "process": process, "group": g, "sample": k,
                             "instance_id": t.instance_id, "reward": task_reward, "resolved": t.resolved,
                             "exit_status": t.exit_status, "turns": t.turns, "tool_calls": t.tool_calls,
                             "tool_errors": t.tool_errors, "prompt_tokens": len(r.prompt_ids),
                             "completion_tokens": len(r.completion_ids), "model_tokens": r.model_tokens,
                             "masked": why, "group_dropped": drop, "resampled": g in resampled,
                             "judge_failed": failed_judge,
                             "error": t.error or ((t.evidence.get("reason") or t.evidence.get("cause"))
                                                  if t.resolved == UNGRADED else None),
                             "seconds": t.seconds})
                trajectories.append(t)
        if not any(any(lp) for lp in out["logprobs"]) or cfg.generation == "transformers":
            out["logprobs"] = None  # transformers: TRL recomputes them (no importance-sampling correction)
        # TRL's completions table (log_completions) shows the prompt it sent: name the task each row really ran
        log_completion_column(trainer, "instance_id", list(out["instance_id"]))
        self.log.write(step, rows, trajectories, process)
        self._update_quarantine()
        counts["quarantined"] = len(self.quarantined)
        self._log_step_metrics(trainer, rows, counts, totals, time.monotonic() - t0)
        return out

    def _replace_quarantined(self, ids: list[str], spare: list[str], G: int) -> tuple[list[str], list[str], int]:
        """Groups of quarantined tasks run on spare tasks instead (whole groups; while spares last)."""
        if not self.quarantined:
            return ids, spare, 0
        spare = [i for i in spare if i not in self.quarantined]
        out, substituted = list(ids), 0
        for g in range(0, len(ids), G):
            if ids[g] in self.quarantined and spare:
                out[g: g + G] = [spare.pop(0)] * G
                substituted += 1
        return out, spare, substituted

    def _update_quarantine(self) -> None:
        """Re-read every process's rollout rows (this step's included) and quarantine the tasks that failed for
        infrastructure reasons in quarantine_after steps. Each process reads the shared log on its own, so the
        processes agree up to the rows a neighbour has not written yet; no collective is needed."""
        if not self.cfg.quarantine_after:
            return
        for instance_id, entry in quarantine_from_rows(read_rollout_rows(self.log.folder),
                                                       self.cfg.quarantine_after).items():
            if instance_id not in self.quarantined and instance_id in self.tasks:
                print(f"rl: quarantined {instance_id}: failed for infrastructure reasons in {entry['failures']} "
                      f"steps; last cause: {entry['last_cause']}", file=sys.stderr)
            self.quarantined[instance_id] = entry

    def _spare_tasks(self, batch: list[str], process: int, processes: int) -> list[str]:
        """This process's share of the tasks outside the whole batch: every process computes the same list and
        keeps every processes-th task from its own index on, so no two processes resample the same task. Tasks
        this process knows to be quarantined are left out after the split (processes may know different ones)."""
        used = set(batch)
        share = [i for i in self.order if i not in used][process::processes]
        return [i for i in share if i not in self.quarantined]

    def _log_step_metrics(self, trainer, rows: list[dict], counts: dict, totals: dict[str, float],
                          wall: float) -> None:
        """Append this step's rl/* and time/* metrics, over all processes: raw sums are gathered (one collective,
        every process, once per step), then the rates are computed from them."""
        # a judge failure's filled-in group mean is trained on, but is no verdict: out of the reward metric
        verdicts = [r["reward"] for r in rows if r["reward"] is not None and not r["judge_failed"]]
        local = {
            "rollouts": len(rows), "graded": len(verdicts), "reward": sum(verdicts),
            "resolved": sum(r["resolved"] == "RESOLVED_FULL" for r in rows), "turns": sum(r["turns"] for r in rows),
            "trained": sum(r["masked"] is None for r in rows), **counts, "wall": wall, **totals,
            **{f"exit_{s}": sum(r["exit_status"] == s for r in rows) for s in EXIT_STATUSES},
        }
        parts = _gather([local])
        total = {key: sum(p[key] for p in parts) for key in local}
        n = len(parts)  # TRL averages each metric over the logging step
        log_metric(trainer, "rl/task_reward", total["reward"] / total["graded"] if total["graded"] else 0.0)
        log_metric(trainer, "rl/resolved_rate", total["resolved"] / max(total["graded"], 1))
        log_metric(trainer, "rl/mean_turns", total["turns"] / max(total["rollouts"], 1))
        log_metric(trainer, "rl/trained_rollouts", float(total["trained"]))
        for key in counts:  # quarantine is the run's (every process reads the same log): its largest count
            log_metric(trainer, f"rl/{key}", float(max(p[key] for p in parts) if key == "quarantined" else total[key]))
        for status in EXIT_STATUSES:
            log_metric(trainer, f"rl/exit_{status}", total[f"exit_{status}"] / max(total["rollouts"], 1))
        log_metric(trainer, "rl/cut", float(total["cut"]))
        log_metric(trainer, "rl/lost_episode_fraction",
                   total["lost_seconds"] / total["episode_seconds"] if total["episode_seconds"] else 0.0)
        # a process that finished its rollouts first waits for the slowest one: that wait is idle time too
        slowest = max(p["wall"] for p in parts)
        log_metric(trainer, "time/rollout", slowest)
        log_metric(trainer, "time/generation", total["generation"] / n)
        log_metric(trainer, "time/environment", total["environment"] / n)
        log_metric(trainer, "time/gpu_idle", sum(p["idle_seconds"] + slowest - p["wall"] for p in parts) / n)


# every status, in the order the rl/exit_* metrics are logged
EXIT_STATUSES = (ExitStatus.SUBMITTED, *TRUNCATED_STATUSES, ExitStatus.DEADLINE, ExitStatus.FORMAT_ERROR,
                 ExitStatus.SANDBOX_ERROR, ExitStatus.POLICY_ERROR)


def _stats_totals(stats) -> dict[str, float]:
    """The numbers of one run_rollouts call that add up over a step's calls (the first batch and resamples)."""
    return {"generation": stats.generation, "environment": stats.environment, "cut": stats.cut,
            "episode_seconds": stats.episode_seconds, "lost_seconds": stats.lost_seconds,
            "idle_seconds": stats.idle_seconds}


def _gather(values: list) -> list:
    """Every process's list, concatenated in process order (a collective: every process must call it, in the
    same order); the list itself in a single process."""
    from accelerate.utils import gather_object

    return list(gather_object(list(values)))


# --- training -----------------------------------------------------------------------------------------------

def _batch_shape(cfg: Any, world: int) -> tuple[int, int]:
    """(per-device micro batch, gradient accumulation steps) so that one optimizer step = one rollout batch of
    tasks_per_step x num_generations over all processes, every process holding whole groups."""
    if cfg.tasks_per_step % world:
        raise BadInput(f"tasks_per_step {cfg.tasks_per_step} must be a multiple of the number of processes "
                       f"({world}) so that every process rolls out whole groups", key="tasks_per_step")
    local = cfg.tasks_per_step // world * cfg.num_generations
    micro = cfg.micro_batch_size or local
    if local % micro:
        raise BadInput(f"micro_batch_size {micro} must divide the {local} rollouts of each process",
                       key="micro_batch_size")
    return micro, local // micro


class _QuietMaskedRows:
    """TRL warns about every batch holding a row whose rewards are all None; here those are the rollouts masked
    on purpose (truncated, ungraded), counted in the rl/ metrics instead."""

    def filter(self, record) -> bool:
        return "All reward functions returned None" not in record.getMessage()


def build_trainer(tasks: list[Task], model_path: str, out_dir: Path, cfg: Any, log: RolloutLog):
    import logging

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from swepost.train.launch import deepspeed_config_path
    from swepost.train.sft import (
        lora_config,
        single_process_env,
        training_model,
        use_bf16,
    )

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is flagged experimental
    logging.getLogger("trl.trainer.grpo_trainer").addFilter(_QuietMaskedRows())
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load the tokenizer of {model_path!r}: {e}", key="model") from None
    if not tokenizer.chat_template:
        raise BadInput(f"model {model_path!r}: the tokenizer has no chat template", key="model")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    micro, accum = _batch_shape(cfg, world)
    model, init_kwargs = training_model(model_path, cfg)
    deepspeed = cfg.deepspeed
    if deepspeed:
        deepspeed = deepspeed_config_path(deepspeed)
        single_process_env()
    bf16 = use_bf16()
    vllm = cfg.generation != "transformers"
    args = GRPOConfig(
        output_dir=str(out_dir),
        seed=cfg.seed,
        data_seed=cfg.seed,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        num_generations=cfg.num_generations,
        num_iterations=cfg.num_iterations,
        max_completion_length=cfg.max_completion_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k or 0,
        loss_type=cfg.loss_type,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        beta=cfg.beta,
        scale_rewards=cfg.scale_rewards,
        mask_truncated_completions=False,  # truncation is judged per episode here, not by the last token
        reward_weights=[1.0] * len(REWARD_PARTS),
        use_vllm=vllm,
        vllm_mode="server" if cfg.generation == "vllm_server" else "colocate",
        vllm_server_base_url=cfg.vllm_server_url if cfg.generation == "vllm_server" else None,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=cfg.vllm_tensor_parallel_size,
        vllm_max_model_length=cfg.vllm_max_model_length,
        bf16=bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        model_init_kwargs=init_kwargs,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        report_to=[r.strip() for r in str(cfg.report_to).split(",") if r.strip()],
        deepspeed=deepspeed,
        dataloader_pin_memory=torch.cuda.is_available(),
        log_completions=False,
    )
    rows = [{"prompt": [{"role": "user", "content": t.instance_id}], "instance_id": t.instance_id} for t in tasks]
    rollout = RolloutFunc(cfg, tasks, log)
    trainer = GRPOTrainer(model=model, reward_funcs=[_trl_reward(p) for p in REWARD_PARTS], args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          peft_config=lora_config(cfg), rollout_func=rollout)
    return trainer, rollout


def train_rl(tasks: list[Task], model_path: str, out_dir: Path, cfg: Any) -> dict:
    """Train; resume from the newest checkpoint in out_dir if there is one; save the final model in out_dir/final
    and the stats in out_dir/rl_stats.json. Returns the stats."""
    with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its logs; stdout belongs to --json
        return _train(tasks, str(model_path), Path(out_dir), cfg)


def _train(tasks: list[Task], model_path: str, out_dir: Path, cfg: Any) -> dict:
    from swepost.train.sft import check_world, save_merged_lora

    cfg = fit_context(cfg, model_path)  # the budgets it trains with (run_rl checked the GPU memory already)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = RolloutLog(out_dir, cfg.save_trajectories)
    trainer, rollout = build_trainer(tasks, model_path, out_dir, cfg, log)
    check_world(trainer)
    main = trainer.is_world_process_zero()
    resume, resumed_from = resume_point(out_dir)
    if main and resume is not None:
        print(f"rl: resuming from {resume.name} (global_step {resumed_from})", file=sys.stderr)
    if main:
        log.truncate_after(resumed_from)
        if (out_dir / FINAL).exists():
            shutil.rmtree(out_dir / FINAL)  # left by a kill while saving
    start = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.monotonic() - start
    if cfg.lora:
        save_merged_lora(trainer, model_path, cfg, out_dir / FINAL)  # every rank: ZeRO-3 gathers the weights
    else:
        trainer.save_model(str(out_dir / FINAL))
    trainer.accelerator.wait_for_everyone()
    if main:
        stats = summarize(out_dir, trainer.state.log_history, cfg.quarantine_after)
        stats.update(steps=trainer.state.global_step, resumed_from_step=resumed_from, seconds=round(seconds, 2),
                     world_size=trainer.args.world_size, bf16=trainer.args.bf16, lora=bool(cfg.lora),
                     time_split=_time_split(rollout.seconds, seconds))
        mark_finished(out_dir, STATS_FILE, stats, trainer.state.log_history)
        return stats
    return {}


def _time_split(rollout: dict[str, float], total: float) -> dict[str, float]:
    """Seconds of this run (since the last resume) spent generating, waiting on sandboxes, and training
    (scoring the log-probabilities, backward, optimizer)."""
    return {"generation": round(rollout["generation"], 2), "environment": round(rollout["environment"], 2),
            "training": round(max(total - rollout["rollout"], 0.0), 2)}


def judge_failed(traj) -> bool:
    """The environment's judge could not score this episode's answer (an endpoint down, garbage replies)."""
    return traj.resolved == UNGRADED and traj.evidence.get("judge_failed") is True


def infra_failed(row: dict) -> bool:
    """A rollout the task's own infrastructure failed: its sandbox (an install, a checkout) or its grader (a
    timeout, the memory limit). Not policy errors: generation failing is the trainer's or the server's fault."""
    return row.get("exit_status") == ExitStatus.SANDBOX_ERROR or row.get("resolved") == UNGRADED


def quarantine_from_rows(rows: list[dict], after: int) -> dict[str, dict]:
    """instance_id -> {"failures", "last_cause"} for the tasks whose group failed for infrastructure reasons
    (at least half of its rollouts) in `after` or more steps. A step in which every group of a process failed
    that way is an outage (docker down, a full disk), not the tasks' fault: it counts for none of them."""
    batches: dict[tuple[int, int], dict[int, list[dict]]] = {}
    for row in rows:
        batches.setdefault((row["step"], row.get("process", 0)), {}).setdefault(row["group"], []).append(row)
    failures: dict[str, list[str]] = {}
    for groups in batches.values():
        failed = {g: group for g, group in groups.items()
                  if 2 * sum(infra_failed(r) for r in group) >= len(group)}
        if len(failed) == len(groups) and len(groups) > 1:
            continue  # every group of the batch: an outage
        for group in failed.values():
            cause = next((r.get("error") for r in reversed(group) if infra_failed(r) and r.get("error")), None)
            failures.setdefault(group[0]["instance_id"], []).append(cause or "no cause recorded")
    return {i: {"failures": len(c), "last_cause": str(c[-1])[:500]} for i, c in failures.items() if len(c) >= after}


def summarize(folder: Path, log_history: list[dict], quarantine_after: int = 0) -> dict[str, Any]:
    """Run-level stats from every process's rollout log: rewards per step, how many groups were dropped, why
    rollouts were masked, exit statuses, the quarantined tasks."""
    rows = read_rollout_rows(folder)
    per_step: dict[int, list[dict]] = {}
    for r in rows:
        per_step.setdefault(r["step"], []).append(r)
    reward_by_step = []
    dropped = 0
    for step, group_rows in sorted(per_step.items()):
        graded = [r["reward"] for r in group_rows if r["reward"] is not None and not r.get("judge_failed")]
        reward_by_step.append({"step": step, "reward": round(sum(graded) / len(graded), 4) if graded else None,
                               "rollouts": len(group_rows),
                               "trained": sum(r["masked"] is None for r in group_rows)})
        dropped += len({(r["process"], r["group"]) for r in group_rows if r["group_dropped"]})
    masked: dict[str, int] = {}
    exits: dict[str, int] = {}
    for r in rows:
        if r["masked"]:
            masked[r["masked"]] = masked.get(r["masked"], 0) + 1
        exits[r["exit_status"] or "unfinished"] = exits.get(r["exit_status"] or "unfinished", 0) + 1
    losses = [e["loss"] for e in log_history if "loss" in e]
    return {"rollouts": len(rows), "dropped_groups": dropped, "masked": masked, "exit_status": exits,
            "judge_failed": sum(bool(r.get("judge_failed")) for r in rows),
            "resolved": sum(r["resolved"] == "RESOLVED_FULL" for r in rows),
            "reward_by_step": reward_by_step, "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "quarantined": [{"instance_id": i, **e} for i, e in
                            sorted(quarantine_from_rows(rows, quarantine_after).items())] if quarantine_after else []}
