"""Stage `sft`: supervised fine-tuning of a model on an sft-data artifact (TRL SFTTrainer; checkpoint).

Loss on assistant tokens only (their tool calls and end-of-turn token included); assistant messages marked
`"train": false` stay in the context without labels. Full fine-tuning or LoRA; packed (padding-free) or padded
batches; bf16 on GPUs that support it, else fp32; DeepSpeed ZeRO-2/3 by name or JSON file.

Training runs in a work folder `$SWEPOST_HOME/work/sft-<key>` (key: the config and the input ids), saving a
checkpoint every `save_steps`: run the same command again after a crash or a kill and it resumes from the newest
complete checkpoint. The checkpoint artifact holds `model/` (the full model, or for LoRA the adapter plus
`adapter_base.json`), the trainer's log history and the stats; its parents are the data and, when the base model
is a stored checkpoint, that checkpoint. The work folder goes once the artifact is published.

Multi-GPU / multi-node: `launch: accelerate` re-runs the training through
`accelerate launch --config_file <accelerate_config> [--num_processes N] [launch_args...] -m swepost.train.entry
sft <resolved config JSON>`; every process trains, and this process publishes the artifact when they are done. On a
multi-node run give every machine the same command plus its own launch_args, e.g.
`--num-machines 2 --machine-rank 1 --main-process-ip 10.0.0.1 --main-process-port 29500` (num_processes counts
the processes of all machines); machine rank 0 publishes, the others stop after training (`swepost.train.launch`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field

from swepost.artifacts import MANIFEST, Artifact, ArtifactStore, canonical_json, producer_record
from swepost.config import ArtifactInput, ModelInput, StageConfig
from swepost.errors import BadInput
from swepost.fingerprint import hash_memo, with_file_contents
from swepost.train.launch import LaunchFields, check_launch, train_or_launch

# fields that do not change the trained weights: a run killed under one value resumes under another
_NOT_IN_KEY = {"name", "report_to", "logging_steps", "launch_args", "save_steps"}


class SftConfig(StageConfig, LaunchFields):
    NOT_IN_KEY = frozenset(_NOT_IN_KEY - {"name"})  # the name names the artifact: it stays in recipe cache keys

    data: str = ArtifactInput(description="the sft-data artifact (train.jsonl of chat conversations)")
    model: str = ModelInput(description="the model to fine-tune: a checkpoint artifact, a local folder or a hub id")
    name: str = Field("sft", description="output artifact name")
    seed: int = 0
    epochs: float = Field(1.0, gt=0, description="passes over the data (ignored when max_steps is set)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    learning_rate: float = Field(1e-5, gt=0)
    batch_size: int = Field(1, ge=1, description="sequences (packed: bins of max_length tokens) per device per step")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    max_length: int = Field(8192, ge=16, description="tokens per sequence; longer conversations are cut at the end")
    packing: bool = Field(True, description="pack conversations into max_length bins (best-fit, padding-free)")
    lora: bool = Field(False, description="train a LoRA adapter instead of the full model")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: str | list[str] = Field("all-linear", description="all-linear, or module names "
                                                 "(a list or comma-separated)")
    lora_merge: bool = Field(False, description="save the merged full model instead of the adapter (always when "
                             "the base is itself an adapter)")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="dtype the weights are loaded in (bf16 mixed precision is used on GPUs anyway; "
        "bfloat16 halves the memory of the weights)")
    attn_implementation: str | None = Field(None, description="e.g. flash_attention_2 (default: the model's, "
                                            "sdpa, which builds a dense mask per packed bin: quadratic in max_length)")
    report_to: str = Field("none", description="none, tensorboard, wandb (comma-separated for several)")
    save_steps: int = Field(100, ge=1, description="checkpoint every N steps (resume point after a crash)")
    logging_steps: int = Field(1, ge=1)
    gradient_checkpointing: bool = False
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="fraction of the steps spent warming up the lr")
    # deepspeed, launch, accelerate_config, num_processes, launch_args: LaunchFields


def resolve_model(ref: str, store: ArtifactStore) -> tuple[str, Artifact | None]:
    """A model reference -> (what to load, the checkpoint artifact or None): a model folder, a checkpoint
    artifact (its `model/` folder) or else a hub id."""
    path = Path(ref).expanduser()
    if path.is_dir() and not (path / MANIFEST).is_file():
        if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
            raise BadInput(f"model {ref!r}: a folder without config.json or adapter_config.json", key="model")
        return str(path.resolve()), None
    try:
        art = store.resolve(ref)
    except BadInput:
        if path.exists() or ref.startswith((".", "~", "/")):
            raise
        return ref, None  # a hub id
    if art.kind != "checkpoint":
        raise BadInput(f"artifact {art.id} is a {art.kind!r} artifact, not a checkpoint", key="model")
    folder = art.path / "model"
    if not folder.is_dir():
        raise BadInput(f"checkpoint artifact {art.id} has no model/ folder", key="model")
    return str(folder), art


def work_key(config: SftConfig, data_id: str, model: str, memo: Path | None = None) -> str:
    body = with_file_contents(config, config.model_dump(mode="json", exclude=_NOT_IN_KEY | {"data", "model"}), memo)
    body.update(data=data_id, model=model, stage="sft")  # the resolved inputs, however they were named
    return hashlib.sha256(canonical_json(body)).hexdigest()[:20]


def run_sft(config: SftConfig, store: ArtifactStore) -> Artifact | None:
    """Train (or resume) in the work folder, then publish the checkpoint artifact. Returns None only in the
    processes started by `accelerate launch` and on machines of rank > 0 (they train, rank 0 publishes)."""
    from swepost.train.sft import FINAL, STATS_FILE, train_sft

    check_launch(config)
    data = store.resolve(config.data)
    if data.kind != "sft-data":
        raise BadInput(f"artifact {data.id} is a {data.kind!r} artifact, not sft-data", key="data")
    train_file = data.path / "train.jsonl"
    if not train_file.is_file():
        raise BadInput(f"sft-data artifact {data.id} has no train.jsonl", key="data")
    model_path, base = resolve_model(config.model, store)
    key = work_key(config, data.id, base.id if base else model_path, hash_memo(store.root))
    work = store.root / "work" / f"sft-{key}"
    resolved = config.model_copy(update={"data": data.id, "model": base.id if base else model_path})
    if not train_or_launch("sft", resolved, store, work, STATS_FILE, FINAL,
                           lambda: train_sft(train_file, model_path, work, config), run=run_sft):
        return None

    stats = json.loads((work / STATS_FILE).read_text())
    producer = producer_record("sft", config.model_dump(mode="json"), seed=config.seed,
                               inputs={"data": data.id, "model": base.id if base else model_path})
    parents = [data.id] + ([base.id] if base else [])
    with store.write(config.name, "checkpoint", producer=producer, parents=parents) as w:
        w.adopt(work / FINAL, "model")  # moved, not copied: a large checkpoint is read once, by the hash
        if config.lora and not stats.get("merged"):
            (w.path / "model" / "adapter_base.json").write_text(json.dumps(
                {"base_model": config.model, "base_artifact": base.id if base else None, "base_path": model_path},
                indent=2) + "\n")
        for name in ("log_history.json",):
            if (work / name).is_file():
                shutil.copy2(work / name, w.path / name)
        if (work / "runs").is_dir():  # report_to tensorboard
            shutil.copytree(work / "runs", w.path / "tensorboard")
        w.stats.update(stats)
    shutil.rmtree(work, ignore_errors=True)
    return w.artifact


run = run_sft
