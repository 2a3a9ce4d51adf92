"""Launching a training stage (sft, rl): here, or in every process of `accelerate launch` (multi-GPU, multi-node).

The launched processes run `python -m swepost.train.entry STAGE launch-config.json`; the JSON names the stage's
run function and config model by import path, so this layer runs a stage without importing `swepost.stages`.
Every process trains, resuming from the work folder's newest checkpoint (`resume_point`); the process that launched
them publishes the artifact (machine rank 0 on a multi-node run) once the run is marked finished (`mark_finished`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from swepost.artifacts import ArtifactStore
from swepost.config import FileInput
from swepost.errors import BadInput, WorkFailed

CHILD_ENV = "SWEPOST_LAUNCH_CHILD"  # set in the processes `accelerate launch` starts: train, do not publish
# accelerate's own MULTI_CPU type starts one process per machine (it expects mpirun), so the shipped `cpu` config
# starts its processes the way multi_gpu does (torchrun) and these variables put them on the CPUs, over gloo
LAUNCH_ENV = {"cpu": {"ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": ""}}
LAUNCH_FILE = "launch-config.json"
CONFIGS = Path(__file__).resolve().parent / "configs"
DEEPSPEED_CONFIGS = ("zero2", "zero3")
ACCELERATE_CONFIGS = ("single_gpu", "multi_gpu", "zero2", "zero3", "fsdp", "cpu")


class LaunchFields(BaseModel):
    """The settings of how a training stage (sft, rl) runs: here, or through `accelerate launch`, and with which
    DeepSpeed config. Declared once, here; each training stage's config inherits them."""

    # a shipped config by name (swepost's code covers its content), or the user's file: keyed by its content
    deepspeed: str | None = FileInput(None, names=DEEPSPEED_CONFIGS, description="zero2, zero3 (shipped configs) "
                                      "or a DeepSpeed JSON path")
    launch: Literal["none", "accelerate"] = Field("none", description="none: train in this process; accelerate: "
                                                  "through `accelerate launch` (multi-GPU, multi-node)")
    accelerate_config: str = FileInput("multi_gpu", names=ACCELERATE_CONFIGS, description="single_gpu, multi_gpu, "
                                       "zero2, zero3, fsdp, cpu (shipped; cpu: processes on CPUs over gloo) or an "
                                       "accelerate YAML path")
    num_processes: int | None = Field(None, ge=1, description="processes over all machines (default: the "
                                      "accelerate config's)")
    launch_args: list[str] = Field(default_factory=list, description="more `accelerate launch` flags, e.g. "
                                   "[--num_machines, '2', --machine_rank, '0', --main_process_ip, 10.0.0.1]")


def is_launched_child() -> bool:
    """Is this one of the processes `accelerate launch` started (they train and leave publishing)?"""
    return os.environ.get(CHILD_ENV) == "1"


def import_path(obj) -> str:
    """`module:qualname` of a module-level function or class: what the launched processes import."""
    return f"{obj.__module__}:{obj.__qualname__}"


def machine_rank(launch_args: list[str]) -> int:
    """The --machine_rank (or --machine-rank) among accelerate flags; 0 when absent."""
    for i, arg in enumerate(launch_args):
        flag, eq, value = arg.partition("=")
        if flag in ("--machine_rank", "--machine-rank"):
            value = value if eq else (launch_args[i + 1] if i + 1 < len(launch_args) else "")
            try:
                return int(value)
            except ValueError:
                raise BadInput(f"launch_args: --machine_rank needs an integer, got {value!r}",
                               key="launch_args") from None
    return 0


def launch_command(config: LaunchFields, config_json: Path, stage: str = "sft") -> list[str]:
    """`accelerate launch --config_file YAML [--num_processes N] [launch_args] -m swepost.train.entry STAGE JSON`
    (run with this interpreter: `python -m accelerate.commands.launch` is `accelerate launch`)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", accelerate_config_path(config.accelerate_config)]
    if config.num_processes:
        cmd += ["--num_processes", str(config.num_processes)]
    cmd += [str(a) for a in config.launch_args]
    cmd += ["-m", "swepost.train.entry", stage, str(config_json)]
    return cmd


def write_launch_file(path: Path, resolved, home: Path, run: Callable) -> None:
    """What every launched process needs to run the stage again: its resolved config, the store, and the stage's
    run function and config model by import path."""
    path.write_text(json.dumps({"config": resolved.model_dump(mode="json"), "home": str(home),
                                "run": import_path(run), "config_model": import_path(type(resolved))},
                               indent=2) + "\n")


def train_or_launch(stage: str, resolved, store: ArtifactStore, work: Path, stats_file: str, final: str,
                    train: Callable[[], object], run: Callable) -> bool:
    """Train in the work folder (resuming there), here or through `accelerate launch` (config.launch). Returns
    whether this process should publish the artifact: not the launched children, not machines of rank > 0.
    `resolved` is the stage config with its inputs resolved to artifact ids or paths; `run` is the stage's
    `run(config, store)`, which every launched process runs with it."""
    child = is_launched_child()
    done = (work / stats_file).is_file() and (work / final).is_dir()
    if not done and resolved.launch == "accelerate" and not child:
        work.mkdir(parents=True, exist_ok=True)
        config_json = work / LAUNCH_FILE
        write_launch_file(config_json, resolved, store.root, run)
        cmd = launch_command(resolved, config_json, stage)
        print(f"{stage}: {' '.join(cmd)}", file=sys.stderr)
        env = {**os.environ, CHILD_ENV: "1", **LAUNCH_ENV.get(resolved.accelerate_config, {})}
        rc = subprocess.run(cmd, env=env).returncode
        if rc != 0:
            raise WorkFailed(f"{stage}: `accelerate launch` exited with {rc}; run the same command again to resume "
                             f"from the last checkpoint in {work}")
        rank = machine_rank(resolved.launch_args)
        if rank != 0:
            print(f"{stage}: machine rank {rank} done; machine rank 0 publishes", file=sys.stderr)
            return False
        if not (work / stats_file).is_file():
            raise WorkFailed(f"{stage}: training ended without {stats_file} in {work}")
        return True
    if not done:
        train()
    return not child


# --- shipped configs ----------------------------------------------------------------------------------------

def _shipped_or_path(value: str, folder: str, names, suffix: str, key: str, what: str) -> str:
    """A config shipped with swepost, by name, or a path to the user's own file."""
    if value in names:
        return str(CONFIGS / folder / f"{value}{suffix}")
    path = Path(value).expanduser()
    if not path.is_file():
        raise BadInput(f"{what} {value!r}: expected one of {', '.join(names)} or a path to a {what} file", key=key)
    return str(path.resolve())


def deepspeed_config_path(value: str) -> str:
    """'zero2' / 'zero3' -> the JSON shipped with swepost; anything else must be a path to a DeepSpeed JSON."""
    return _shipped_or_path(value, "deepspeed", DEEPSPEED_CONFIGS, ".json", "deepspeed", "DeepSpeed config")


def accelerate_config_path(value: str) -> str:
    """A shipped accelerate config name (single_gpu, multi_gpu, zero2, zero3, fsdp, cpu) or a path to a YAML file."""
    return _shipped_or_path(value, "accelerate", ACCELERATE_CONFIGS, ".yaml", "accelerate_config",
                            "accelerate config")


# --- the work folder: resume points, and the marker of a finished run --------------------------------------

def last_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` (trainer_state.json is written last); incomplete ones are removed."""
    found = []
    for p in Path(out_dir).glob("checkpoint-*"):
        step = p.name.partition("-")[2]
        if p.is_dir() and step.isdigit():
            found.append((int(step), p))
    for _, p in sorted(found, reverse=True):
        if (p / "trainer_state.json").is_file():
            return p
        shutil.rmtree(p, ignore_errors=True)  # a kill while saving: retrain from the one before
    return None


def resume_point(out_dir: Path) -> tuple[Path | None, int]:
    """The checkpoint to resume from (None: start afresh) and its global step."""
    resume = last_checkpoint(out_dir)
    if resume is None:
        return None, 0
    return resume, json.loads((resume / "trainer_state.json").read_text()).get("global_step", 0)


def mark_finished(out_dir: Path, stats_file: str, stats: dict, log_history: list) -> None:
    """Write the trainer's log history, then the stats file, atomically and last: the marker `train_or_launch`
    reads as "trained" (a run killed before it resumes from its last checkpoint)."""
    (out_dir / "log_history.json").write_text(json.dumps(log_history, indent=1) + "\n")
    tmp = out_dir / f".{stats_file}.tmp"
    tmp.write_text(json.dumps(stats, indent=2) + "\n")
    os.replace(tmp, out_dir / stats_file)


def check_launch(config: LaunchFields) -> None:
    """The DeepSpeed and accelerate settings of a training stage (sft, rl) name configs that exist and agree."""
    if config.deepspeed:
        deepspeed_config_path(config.deepspeed)
    if config.launch == "accelerate":
        accelerate_config_path(config.accelerate_config)
        if config.deepspeed and config.accelerate_config in ("zero2", "zero3", "fsdp"):
            raise BadInput(f"accelerate config {config.accelerate_config!r} already sets up "
                           f"{'FSDP' if config.accelerate_config == 'fsdp' else 'DeepSpeed'}: leave out deepspeed "
                           "(or use accelerate_config multi_gpu with deepspeed)", key="deepspeed")
