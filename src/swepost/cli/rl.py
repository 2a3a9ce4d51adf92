"""`swepost rl`: GRPO / DAPO of an agent in its environment on TRL, rewards from hidden tests (RLVR) or a judge."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from swepost.cli.common import (
    ConfigOpt,
    JsonOpt,
    PrintConfigOpt,
    SetOpt,
    console,
    print_config,
    report,
    resolve_config,
    store,
)


def _opt(help: str, *names: str):
    return typer.Option(*names, help=help, show_default=False)


def rl_cmd(
    tasks: Annotated[str | None, typer.Argument(help="Tasks artifact to train on.", show_default=False)] = None,
    model: Annotated[str | None, _opt("Policy to train: a checkpoint artifact, a folder or a hub id.")] = None,
    max_steps: Annotated[int | None, _opt("Optimizer steps, one rollout batch each [default: 200].")] = None,
    tasks_per_step: Annotated[int | None, _opt("Tasks per step over all processes [default: 32].")] = None,
    num_generations: Annotated[int | None, _opt("Rollouts per task (the group) [default: 8].", "--num-generations",
                                                "-G")] = None,
    learning_rate: Annotated[float | None, _opt("Learning rate [default: 1e-06].")] = None,
    repos: Annotated[Path | None, _opt("Folder of owner__name git repos (or .bundle files).")] = None,
    backend: Annotated[str | None, _opt("Sandbox backend: auto | docker | bwrap | local.")] = None,
    concurrency: Annotated[int | None, _opt("Episodes doing sandbox work at once, per process [default: 16].",
                                            "--concurrency", "-j")] = None,
    generation: Annotated[str | None, _opt("transformers | vllm_colocate | vllm_server [default: transformers].")
                          ] = None,
    launch: Annotated[str | None, _opt("none (this process) | accelerate (multi-GPU, multi-node).")] = None,
    reward: Annotated[str | None, _opt("env (the environment's grade) | judge (RLAIF: codeqa's judge) | "
                                       "module:function [default: env].")] = None,
    name: Annotated[str | None, _opt("Output artifact name [default: rl].", "--name", "-n")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_config_: PrintConfigOpt = False,
    as_json: JsonOpt = False,
):
    """Reinforcement learning on TRL's GRPOTrainer: episodes run concurrently in sandboxes, rewards from the
    tasks' hidden tests (RLVR) or, on codeqa tasks, a judge (RLAIF); DAPO loss, clip 0.2/0.28, no KL, dynamic
    sampling and truncation masking by default. Resumable (run the same command again after a crash). Writes a
    checkpoint artifact. Every setting: --print-config; change one with --set KEY=VALUE."""
    from swepost.stages.rl import RlConfig, run_rl

    cfg = resolve_config(RlConfig, config, set_, {
        "tasks": tasks, "model": model, "max_steps": max_steps, "tasks_per_step": tasks_per_step,
        "num_generations": num_generations, "learning_rate": learning_rate, "repos": repos, "backend": backend,
        "concurrency": concurrency, "generation": generation, "launch": launch, "reward": reward, "name": name})
    if print_config_:
        return print_config(cfg)
    art = run_rl(cfg, store())
    if art is None:
        console.print("rl: training done on this machine; machine rank 0 writes the artifact")
        return
    report(art, as_json)
