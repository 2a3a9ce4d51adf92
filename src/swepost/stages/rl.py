"""Stage `rl`: reinforcement learning of an agent in its environment, on TRL's GRPOTrainer (checkpoint).

RLVR by default: the reward is the environment's own grade (for `swe`, the task's hidden tests run on the final
diff in a fresh sandbox). On codeqa tasks it is RLAIF: the reward is the `judge`'s score of the final answer, and
a judge failure gets its group's mean reward (no advantage) or is masked (`judge.on_failure`). The defaults
follow the published SWE-agent RL recipes (DAPO, DeepSWE, SkyRL-SWE): token-level DAPO loss, clip 0.2 / 0.28, no
KL term and no reference model, group-normalised advantages, dynamic sampling (groups whose rewards are all equal
carry no signal: dropped from the loss, or resampled on other tasks), truncated trajectories masked out of the
loss. Every default is a config key below.

Rollouts are ordinary swepost episodes run many at once (see `swepost.train.rollout`); training runs in a work
folder `$SWEPOST_HOME/work/rl-<key>` with a checkpoint every `save_steps`: run the same command again after a
crash and it resumes from the newest complete one. The checkpoint artifact holds `model/`, the trainer's log
history, `rollouts.jsonl` (one row per rollout: step, task, reward, exit status, turns, tokens, why it was
masked) and every rollout's trajectory under `trajectories/`; its parents are the tasks and the base checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from swepost.agent import EnvironmentFields
from swepost.artifacts import Artifact, ArtifactStore, canonical_json, producer_record
from swepost.config import ArtifactInput, ModelInput, StageConfig
from swepost.errors import BadInput
from swepost.fingerprint import hash_memo, with_file_contents
from swepost.records import SandboxLimits
from swepost.stages.sft import resolve_model
from swepost.train.launch import LaunchFields, check_launch, train_or_launch

# fields that do not change what is trained: a run killed under one value resumes under another
_NOT_IN_KEY = {"name", "report_to", "logging_steps", "launch_args", "save_steps", "max_batch_wait", "concurrency"}


class RlConfig(StageConfig, LaunchFields, EnvironmentFields):
    NOT_IN_KEY = frozenset(_NOT_IN_KEY - {"name"})  # the name names the artifact: it stays in recipe cache keys

    tasks: str = ArtifactInput(description="the tasks to train on (validated tasks: their tests must work)")
    model: str = ModelInput(description="the policy to train: a checkpoint artifact (sft, rft), a folder, a hub id")
    name: str = Field("rl", description="output artifact name")
    seed: int = 0
    # --- environment
    tool_timeout: float = Field(120.0, gt=0, description="seconds for one bash command")
    sandbox_limits: SandboxLimits = Field(default_factory=SandboxLimits, description="sandbox limits over every "
                                          "task's own (cpus, memory_mb, pids, disk_mb, timeout_s, network_allow)")
    reward: str = Field("env", description="env (the environment's grade: hidden tests for swe, the judge for "
                        "codeqa), judge (the same, refused unless a judge grades the environment) or "
                        "module:function(trajectory, task) -> float | None (answer matching, ...)")
    # --- batch and optimisation
    max_steps: int = Field(200, ge=1, description="optimizer steps (one rollout batch each)")
    tasks_per_step: int = Field(32, ge=1, description="tasks (prompts) per step, over all processes")
    num_generations: int = Field(8, ge=2, description="rollouts per task: the group advantages are relative to")
    micro_batch_size: int | None = Field(None, ge=1, description="rollouts per forward/backward pass (default: "
                                         "all of a process's rollouts); the rest is gradient accumulation")
    num_iterations: int = Field(1, ge=1, description="optimisation passes over each rollout batch (mu)")
    learning_rate: float = Field(1e-6, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    # --- loss (DAPO defaults)
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo"] = Field(
        "dapo", description="dapo: token-level, normalised by the active tokens of the whole batch")
    epsilon: float = Field(0.2, gt=0, description="lower clip of the importance ratio")
    epsilon_high: float = Field(0.28, gt=0, description="upper clip (DAPO clip-higher)")
    beta: float = Field(0.0, ge=0, description="KL coefficient; 0 loads no reference model")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="advantage = (r - group mean) / std of the group | batch | not scaled (Dr. GRPO)")
    dynamic_sampling: Literal["drop", "resample", "off"] = Field(
        "drop", description="groups whose task rewards are all equal: drop (no loss, out of the token count), "
        "resample (new groups on other tasks, up to max_resample_rounds, then drop), off")
    max_resample_rounds: int = Field(2, ge=1)
    truncated: Literal["mask", "soft_penalty", "keep"] = Field(
        "mask", description="episodes that ran out of turns, tokens or time: mask (no loss; their reward still "
        "counts in the group baseline), soft_penalty (DAPO's overlong penalty on the completion length), "
        "keep (as graded)")
    overlong_buffer: int = Field(4096, ge=1, description="soft_penalty: tokens before max_completion_tokens where "
                                 "the penalty ramps from 0 to overlong_penalty")
    overlong_penalty: float = Field(1.0, ge=0)
    turn_penalty: float = Field(0.0, ge=0, description="subtracted from the reward per model turn")
    # --- rollouts
    max_turns: int = Field(50, ge=1, description="model turns per episode")
    max_prompt_tokens: int | None = Field(None, ge=16, description="tokens of the first prompt (system, tools, "
                                          "task); unset: min(8192, half the model's context), or what "
                                          "max_completion_tokens leaves")
    max_completion_tokens: int | None = Field(None, ge=16, description="tokens after the prompt: model turns and "
                                              "tool results together (TRL's max_completion_length); unset: what "
                                              "the prompt leaves of the model's context, at most 32768")
    max_turn_tokens: int = Field(4096, ge=16, description="tokens one model turn may generate (each turn also "
                                 "stops at what is left of the completion budget)")
    max_model_len: int | None = Field(None, ge=32, description="the model's context in tokens; unset: "
                                      "vllm_max_model_length, else the model config's max_position_embeddings. "
                                      "Prompt + completion must fit it")
    rope_scaling: dict[str, Any] | None = Field(None, description="RoPE scaling written into the model's config "
                                                "for this run, e.g. {rope_type: yarn, factor: 4.0, "
                                                "original_max_position_embeddings: 32768} (Qwen2.5 at 131k); the "
                                                "trainer, vLLM and the saved checkpoint all use it")
    gpu_memory_gb: float | None = Field(None, gt=0, description="memory of one GPU, for the vllm_colocate fit check "
                                        "when it runs where no GPU is visible (default: the GPU's own)")
    max_seconds: float = Field(1800.0, gt=0, description="wall-clock limit of one episode")
    max_consecutive_errors: int = Field(5, ge=1)
    quarantine_after: int = Field(3, ge=0, description="a task whose group failed for infrastructure reasons (its "
                                  "sandbox or grader, not the model) in this many steps is not drawn again: its "
                                  "groups run on spare tasks, and it is listed in the artifact (0: never)")
    rollout_deadline: float | None = Field(None, gt=0, description="seconds after a step's rollouts start when "
                                           "still-running episodes are cut and masked out of loss and baseline "
                                           "(logged: rl/cut, rl/lost_episode_fraction, time/gpu_idle); unset: "
                                           "every episode runs to its own end")
    concurrency: int = Field(16, ge=1, le=1024, description="episodes doing sandbox work at the same time, "
                             "per process (1: TRL's one-rollout-after-another tool execution)")
    max_batch_wait: float = Field(1.0, gt=0, description="seconds a generation request waits for others to join "
                                  "its batch (transformers / vLLM colocate)")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    # --- generation backend
    generation: Literal["transformers", "vllm_colocate", "vllm_server"] = Field(
        "transformers", description="transformers (model.generate, CPU or GPU), vllm_colocate (vLLM in the "
        "training processes), vllm_server (a `trl vllm-serve` server; weights pushed every step)")
    vllm_server_url: str = Field("http://127.0.0.1:8000", description="vllm_server: the server's address")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vllm_colocate: share of GPU memory")
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    vllm_max_model_length: int | None = Field(None, ge=16)
    # --- model and training
    lora: bool = False
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: str | list[str] = "all-linear"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    attn_implementation: str | None = None
    gradient_checkpointing: bool = Field(True, description="trade compute for memory (long SWE contexts need it)")
    report_to: str = Field("none", description="none, tensorboard, wandb (comma-separated for several)")
    save_steps: int = Field(10, ge=1, description="checkpoint every N steps (resume point after a crash)")
    logging_steps: int = Field(1, ge=1)
    save_trajectories: bool = Field(True, description="keep every rollout's trajectory in the artifact")
    # deepspeed, launch, accelerate_config, num_processes, launch_args: LaunchFields

    @model_validator(mode="after")
    def _batch_shape(self) -> RlConfig:
        if self.micro_batch_size and (self.tasks_per_step * self.num_generations) % self.micro_batch_size:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} must divide tasks_per_step x "
                             f"num_generations = {self.tasks_per_step * self.num_generations}")
        from swepost.train.context import check_rope_scaling

        self.rope_scaling = check_rope_scaling(self.rope_scaling)
        if self.epsilon_high < self.epsilon:
            raise ValueError(f"epsilon_high {self.epsilon_high} is below epsilon {self.epsilon}")
        if self.generation == "vllm_colocate" and self.vllm_tensor_parallel_size > 1:
            raise ValueError(
                f"generation vllm_colocate with vllm_tensor_parallel_size {self.vllm_tensor_parallel_size} is not "
                "supported: each process sends its own episodes' turns to its own engine, and a tensor-parallel "
                "group would need its prompts gathered and the results sliced. Use generation: vllm_server with a "
                "tensor-parallel `trl vllm-serve`, or vllm_tensor_parallel_size: 1")
        if self.generation == "transformers" and self.launch == "accelerate" and self._sharded() and (
                self.num_processes is None or self.num_processes > 1):
            raise ValueError(
                "generation transformers with sharded weights (ZeRO-3 or FSDP) on several processes would hang: "
                "every generate call needs all processes, and each process's episodes ask for different numbers "
                "of turns. Use generation: vllm_colocate or vllm_server, or accelerate_config multi_gpu / zero2")
        return self

    def _sharded(self) -> bool:
        """Are parameters sharded over processes (ZeRO-3 or FSDP)?"""
        if self.accelerate_config in ("zero3", "fsdp") or "zero3" in str(self.deepspeed or ""):
            return True
        for ref in (self.deepspeed, self.accelerate_config):
            path = Path(str(ref or ""))
            if path.suffix in (".json", ".yaml", ".yml") and path.is_file():
                text = path.read_text(errors="replace")
                if re.search(r'"stage"\s*:\s*3|zero_stage:\s*3|distributed_type:\s*FSDP', text):
                    return True
        return False


def work_key(config: RlConfig, tasks_id: str, model: str, memo: Path | None = None) -> str:
    body = config.model_dump(mode="json", exclude=_NOT_IN_KEY | {"tasks", "model", "repos"})
    body = with_file_contents(config, body, memo)
    body.update(tasks=tasks_id, model=model, stage="rl")
    return hashlib.sha256(canonical_json(body)).hexdigest()[:20]


def run_rl(config: RlConfig, store: ArtifactStore) -> Artifact | None:
    """Train (or resume) in the work folder, then publish the checkpoint artifact. Returns None in the processes
    `accelerate launch` started and on machines of rank > 0."""
    from swepost.stages.tasks import load_tasks
    from swepost.train.context import check_colocate_memory, fit_context, rope_scaled_model
    from swepost.train.rl import FINAL, STATS_FILE, read_rollout_rows, train_rl

    check_launch(config)
    source = store.resolve(config.tasks)
    if source.kind != "tasks":
        raise BadInput(f"artifact {source.id} is a {source.kind!r} artifact, not tasks", key="tasks")
    tasks = load_tasks(source)
    if not tasks:
        raise BadInput(f"tasks artifact {source.id} holds no task", key="tasks")
    index = None
    if config.index is not None:  # by id in the work key; the training processes get its folder
        from swepost.stages.collect import index_artifact

        index = index_artifact(config.index, store)
        config = config.model_copy(update={"index": index.id})
    model_path, base = resolve_model(config.model, store)
    model_ref = base.id if base else model_path
    work = store.root / "work" / f"rl-{work_key(config, source.id, model_ref, hash_memo(store.root))}"
    if config.rope_scaling:
        model_path = rope_scaled_model(model_path, config.rope_scaling, work / "model-rope")
    check_colocate_memory(fit_context(config, model_path), model_path)  # refuse what cannot fit, before launching
    resolved = config.model_copy(update={"tasks": source.id, "model": model_ref})
    training = config if index is None else config.model_copy(update={"index": str(index.path)})
    if config.judge.cache_dir is None:  # after the work key: where the cache lives changes no reward
        training = training.model_copy(update={"judge": config.judge.model_copy(
            update={"cache_dir": store.root / "cache" / "judge"})})
    if not train_or_launch("rl", resolved, store, work, STATS_FILE, FINAL,
                           lambda: train_rl(tasks, model_path, work, training), run=run_rl):
        return None

    stats = json.loads((work / STATS_FILE).read_text())
    producer = producer_record("rl", config.model_dump(mode="json"), seed=config.seed,
                               inputs={"tasks": source.id, "model": model_ref})
    parents = [source.id] + ([base.id] if base else []) + ([index.id] if index else [])
    with store.write(config.name, "checkpoint", producer=producer, parents=parents) as w:
        w.adopt(work / FINAL, "model")  # moved, not copied: a large checkpoint is read once, by the hash
        if (work / "log_history.json").is_file():
            shutil.copy2(work / "log_history.json", w.path / "log_history.json")
        # every process's rollout rows in one file, in step order
        (w.path / "rollouts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in read_rollout_rows(work)))
        if stats.get("quarantined"):
            (w.path / "quarantined.jsonl").write_text("".join(json.dumps(q) + "\n" for q in stats["quarantined"]))
            print(f"rl: {len(stats['quarantined'])} task(s) quarantined (failed for infrastructure reasons in "
                  f"{config.quarantine_after} steps), listed in quarantined.jsonl", file=sys.stderr)
        if config.save_trajectories and (work / "trajectories").is_dir():
            shutil.copytree(work / "trajectories", w.path / "trajectories")
        if (work / "runs").is_dir():
            shutil.copytree(work / "runs", w.path / "tensorboard")
        w.stats.update(stats)
    shutil.rmtree(work, ignore_errors=True)
    return w.artifact


run = run_rl
