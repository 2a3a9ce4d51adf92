"""Supervised fine-tuning of a chat model on multi-turn tool-using trajectories: a thin adapter on TRL's SFTTrainer.

Loss on assistant tokens only. TRL's `assistant_only_loss` trains every assistant turn and has no per-message
switch, so conversations are tokenized here, with the training chat template TRL provides (the model's template
with `{% generation %}` markers, patched in by TRL for the templates it knows), and handed to SFTTrainer
pre-tokenized as `input_ids` + `labels`:

* `apply_chat_template(..., return_assistant_tokens_mask=True)` marks the tokens of every assistant turn: its
  content, its tool calls and its end-of-turn `<|im_end|>`; system, user and tool messages stay unmarked.
* An assistant message with `"train": false` stays in the context but is unmarked: its character span is where
  the rendering of the conversation up to it (`messages[:i]`) ends and the rendering up to and including it
  (`messages[:i+1]`) ends; both are prefixes of the full rendering (checked), and every token starting inside the
  span (by the tokenizer's offsets) loses its label.
* labels = input_ids on marked tokens, -100 elsewhere. SFTTrainer keeps a `labels` column as is and packs
  (best-fit decreasing, padding-free) or pads it.

Everything heavy (torch, transformers, trl, peft, datasets) is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from swepost.errors import BadInput, WorkFailed
from swepost.train.launch import deepspeed_config_path, mark_finished, resume_point

STATS_FILE = "sft_stats.json"
FINAL = "final"


# --- tokenization -------------------------------------------------------------------------------------------

def training_chat_template(tokenizer) -> str:
    """The chat template to tokenize with: the model's own when it has `{% generation %}` markers, else TRL's
    patched training copy (known templates only: Qwen2.5/3, Llama 3.x, GLM, GPT-OSS, ...)."""
    from trl.chat_template_utils import get_training_chat_template

    if not tokenizer.chat_template:
        raise BadInput("the model's tokenizer has no chat template", key="model")
    try:
        template = get_training_chat_template(tokenizer)
    except ValueError as e:
        raise BadInput(f"the model's chat template cannot mark assistant tokens ({e}); add `{{% generation %}}` "
                       "markers around assistant output in its chat template", key="model") from None
    if template is None:
        template = tokenizer.chat_template
        if isinstance(template, dict):
            template = template["default"]
    return template


def _clean_messages(messages: list[dict]) -> tuple[list[dict], list[bool]]:
    """Drop the `train` flag and None-valued keys (Arrow fills absent struct keys with None); per message: is it
    trained (only assistant messages without `"train": false`)."""
    msgs, trained = [], []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"a message must be an object with a role, got {m!r:.80}")
        flag = m.get("train")
        clean = {k: v for k, v in m.items() if k != "train" and v is not None}
        if clean["role"] == "assistant" and "content" not in clean:
            clean["content"] = ""
        msgs.append(clean)
        trained.append(clean["role"] == "assistant" and flag is not False)
    return msgs, trained


def tokenize_conversation(tokenizer, template: str, messages: list[dict], tools: list | None = None) -> dict:
    """One conversation -> {"input_ids", "labels", "excluded_turns"}: labels on assistant turns only, none on
    assistant messages marked `"train": false`."""
    msgs, trained = _clean_messages(messages)
    kwargs = {"tools": tools or None, "chat_template": template}
    out = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                        **kwargs)
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    excluded = [i for i, m in enumerate(msgs) if m["role"] == "assistant" and not trained[i]]
    if excluded:
        text = tokenizer.apply_chat_template(msgs, tokenize=False, **kwargs)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) != ids:
            raise WorkFailed("re-tokenizing the rendered conversation gave different tokens; cannot locate the "
                             "assistant turns marked train: false")
        offsets = enc["offset_mapping"]
        for i in excluded:
            start = len(tokenizer.apply_chat_template(msgs[:i], tokenize=False, **kwargs)) if i else 0
            upto = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False, **kwargs)
            if not text.startswith(upto) or start > len(upto):
                raise WorkFailed("the chat template is not prefix-preserving (rendering the conversation up to a "
                                 "message is not a prefix of the whole); cannot exclude turns marked train: false")
            end = len(upto)
            for t, (s, _) in enumerate(offsets):
                if start <= s < end:
                    mask[t] = 0
    labels = [tok if m else -100 for tok, m in zip(ids, mask, strict=True)]
    return {"input_ids": ids, "labels": labels, "excluded_turns": len(excluded)}


def build_dataset(data_path: Path, tokenizer, template: str, max_length: int | None, cache_dir: Path | None = None):
    """train.jsonl -> (a Dataset of input_ids + labels, stats). Conversations longer than max_length are cut
    (keeping the start); those left without a trained token are dropped."""
    from datasets import Dataset, load_dataset
    from datasets.utils.logging import disable_progress_bar

    data_path = Path(data_path)
    if not data_path.is_file() or not data_path.read_text().strip():
        raise BadInput("no training examples (missing or empty file)", file=str(data_path))
    disable_progress_bar()
    # load_dataset("json") keeps tool-call arguments verbatim (mixed keys become a Json column, no null filling)
    raw = load_dataset("json", data_files=str(data_path), split="train",
                       cache_dir=str(cache_dir) if cache_dir else None)
    if "messages" not in raw.column_names:
        raise BadInput(f"expected rows with a 'messages' list, found columns {raw.column_names}", file=str(data_path))
    rows: dict[str, list] = {"input_ids": [], "labels": []}
    stats = {"examples": 0, "dataset_tokens": 0, "trained_tokens": 0, "excluded_turns": 0, "truncated": 0,
             "dropped": 0}
    for n, example in enumerate(raw, start=1):
        tools = example.get("tools")
        if isinstance(tools, str):
            tools = json.loads(tools)
        try:
            out = tokenize_conversation(tokenizer, template, example["messages"] or [], tools)
        except (ValueError, TypeError, KeyError) as e:
            raise BadInput(f"cannot render this conversation with the chat template: {e}", file=str(data_path),
                           line=n) from None
        ids, labels = out["input_ids"], out["labels"]
        if max_length and len(ids) > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
            stats["truncated"] += 1
        stats["excluded_turns"] += out["excluded_turns"]
        trained = sum(1 for x in labels if x != -100)
        if not trained:
            stats["dropped"] += 1
            continue
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        stats["examples"] += 1
        stats["dataset_tokens"] += len(ids)
        stats["trained_tokens"] += trained
    if not rows["input_ids"]:
        raise BadInput(f"none of the {len(raw)} conversation(s) has an assistant token to train on",
                       file=str(data_path))
    return Dataset.from_dict(rows), stats


# --- training -----------------------------------------------------------------------------------------------

def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def is_adapter(model_path: str) -> bool:
    return (Path(model_path) / "adapter_config.json").is_file()


def use_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def single_process_env() -> None:
    """DeepSpeed outside a launcher wants the torch.distributed variables (else it tries MPI)."""
    import socket

    if "RANK" in os.environ or "LOCAL_RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(key, value)


def training_model(model_path: str, cfg: Any) -> tuple[Any, dict[str, Any] | None]:
    """What to hand a TRL trainer as `model`, and its `model_init_kwargs`: the path (the trainer loads it in
    `dtype`), or for a LoRA checkpoint the base with the adapter merged in, every weight trainable."""
    import torch

    dtype = _get(cfg, "dtype", "float32")
    init_kwargs: dict[str, Any] = {"dtype": dtype}
    if _get(cfg, "attn_implementation"):
        init_kwargs["attn_implementation"] = _get(cfg, "attn_implementation")
    if not is_adapter(model_path):
        return model_path, init_kwargs
    from peft import AutoPeftModelForCausalLM

    load_kwargs = {**init_kwargs, "dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    model = AutoPeftModelForCausalLM.from_pretrained(model_path, **load_kwargs).merge_and_unload()
    model.requires_grad_(True)  # PEFT froze the base weights; full fine-tuning trains them all
    return model, None


def lora_config(cfg: Any):
    """A peft LoraConfig when the stage config asks for LoRA, else None."""
    if not _get(cfg, "lora", False):
        return None
    from peft import LoraConfig

    targets = _get(cfg, "lora_target_modules", "all-linear")
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=_get(cfg, "lora_r", 16), lora_alpha=_get(cfg, "lora_alpha", 32),
                      lora_dropout=_get(cfg, "lora_dropout", 0.05), target_modules=targets, task_type="CAUSAL_LM")


def check_world(trainer) -> None:
    """Processes started together that did not join one distributed run (e.g. multi_gpu on a machine without
    GPUs: each would train alone, all in the same folder) stop here."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if trainer.args.world_size != launched:
        raise WorkFailed(f"{launched} processes were launched but each trains alone (world size "
                         f"{trainer.args.world_size}): no GPU for this accelerate config? On CPUs use "
                         "accelerate_config: cpu")


def gathered_state_dict(trainer) -> dict | None:
    """The trained model's whole state dict on the main process (None on the others). Every process must call
    it: under ZeRO-3 and FSDP each holds a shard of every weight (the unwrapped model's own tensors are empty)
    and gathering them is a collective."""
    acc = trainer.accelerator
    if getattr(trainer, "is_deepspeed_enabled", False):
        try:
            state = acc.get_state_dict(trainer.deepspeed)  # ZeRO-3: gathered module by module
        except ValueError:  # a user's ZeRO-3 JSON without stage3_gather_16bit_weights_on_model_save
            state = _gather_zero3_parameters(acc.unwrap_model(trainer.model), acc.is_main_process)
    else:
        state = acc.get_state_dict(trainer.model)  # FSDP: a full state dict; DDP / one process: the model's own
    return {k: v.detach().to("cpu").clone() for k, v in state.items()} if acc.is_main_process else None


def _gather_zero3_parameters(model, main: bool) -> dict:
    """ZeRO-3 weights one at a time (a whole large model would not fit one GPU at once), every process taking
    part in each gather; kept on the main process."""
    import deepspeed

    state = {}
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            if main:
                state[name] = param.detach().to("cpu").clone()
    if main:
        state.update({name: b.detach().to("cpu").clone() for name, b in model.named_buffers()})
    return state


def save_merged_lora(trainer, model_path: str, cfg: Any, folder: Path) -> None:
    """Save the base model with the trained LoRA adapter merged in (full weights) and the tokenizer. Every
    process must call it (the weights are gathered first; see gathered_state_dict); the main process rebuilds
    the LoRA model on CPU from the base, loads the gathered weights into it, merges and saves."""
    state = gathered_state_dict(trainer)
    if state is None:
        return
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base, init_kwargs = training_model(model_path, cfg)
    if isinstance(base, str):
        base = AutoModelForCausalLM.from_pretrained(base, **(init_kwargs or {}))
    model = get_peft_model(base, lora_config(cfg))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # a base weight left out (a tied copy) keeps the base's value, which LoRA training never changes
    missing = [k for k in missing if "lora_" in k]
    if unexpected or missing:
        raise WorkFailed(f"the trained LoRA weights do not fit a fresh LoRA model of the base: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
    model.merge_and_unload().save_pretrained(folder)
    trainer.processing_class.save_pretrained(folder)


def build_trainer(data_path: Path, model_path: str, out_dir: Path, cfg: Any):
    """The SFTTrainer for this run (not started) and the dataset stats."""
    import torch
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load the tokenizer of {model_path!r}: {e}", key="model") from None
    template = training_chat_template(tokenizer)
    max_length = _get(cfg, "max_length", 8192)
    dataset, data_stats = build_dataset(Path(data_path), tokenizer, template, max_length, out_dir / "hf-datasets")

    bf16 = use_bf16()
    model, init_kwargs = training_model(model_path, cfg)
    peft_config = lora_config(cfg)

    deepspeed = _get(cfg, "deepspeed")
    if deepspeed:
        deepspeed = deepspeed_config_path(deepspeed)
        single_process_env()
    max_steps = _get(cfg, "max_steps")
    seed = _get(cfg, "seed", 0)
    args = SFTConfig(
        output_dir=str(out_dir),
        seed=seed,
        data_seed=seed,
        num_train_epochs=_get(cfg, "epochs", 1.0),
        max_steps=max_steps if max_steps else -1,
        learning_rate=_get(cfg, "learning_rate", 1e-5),
        warmup_steps=_get(cfg, "warmup_ratio", 0.0),  # a float in [0, 1) is a ratio of the total steps
        per_device_train_batch_size=_get(cfg, "batch_size", 1),
        gradient_accumulation_steps=_get(cfg, "grad_accum", 1),
        gradient_checkpointing=_get(cfg, "gradient_checkpointing", False),
        max_length=max_length,
        packing=_get(cfg, "packing", True),
        packing_strategy="bfd",  # best-fit decreasing, padding-free; documents stay separate
        assistant_only_loss=False,  # the labels already carry the assistant-only mask (see module docstring)
        bf16=bf16,
        model_init_kwargs=init_kwargs,
        logging_steps=_get(cfg, "logging_steps", 1),
        logging_first_step=True,
        save_strategy="steps",
        save_steps=_get(cfg, "save_steps", 100),
        save_total_limit=2,
        report_to=[r.strip() for r in str(_get(cfg, "report_to", "none")).split(",") if r.strip()],
        deepspeed=deepspeed,
        include_num_input_tokens_seen="non_padding",
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    return trainer, data_stats


def train_sft(data_path: Path, model_path: str, out_dir: Path, cfg: Any) -> dict:
    """Train; resume from the newest checkpoint in out_dir if there is one; save the final model (or the LoRA
    adapter) and tokenizer in out_dir/final and the stats in out_dir/sft_stats.json. Returns the stats."""
    with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its logs; stdout belongs to --json
        return _train(Path(data_path), str(model_path), Path(out_dir), cfg)


def _train(data_path: Path, model_path: str, out_dir: Path, cfg: Any) -> dict:
    trainer, data_stats = build_trainer(data_path, model_path, out_dir, cfg)
    check_world(trainer)
    main = trainer.is_world_process_zero()
    resume, resumed_from = resume_point(out_dir)
    if main:
        print(f"sft: {data_stats['examples']} conversation(s), {data_stats['dataset_tokens']} tokens "
              f"({data_stats['trained_tokens']} trained, {data_stats['excluded_turns']} turn(s) excluded, "
              f"{data_stats['truncated']} truncated, {data_stats['dropped']} dropped)", file=sys.stderr)
        if resume is not None:
            print(f"sft: resuming from {resume.name} (global_step {resumed_from})", file=sys.stderr)
    final = out_dir / FINAL
    if main and final.exists():
        shutil.rmtree(final)  # left by a kill while saving
    start = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.monotonic() - start

    merge = bool(_get(cfg, "lora", False)) and (bool(_get(cfg, "lora_merge", False)) or is_adapter(model_path))
    if merge:
        save_merged_lora(trainer, model_path, cfg, final)  # every rank: ZeRO-3 / FSDP gather the weights
    else:
        trainer.save_model(str(final))  # every rank: ZeRO-3 / FSDP gather the weights
    trainer.accelerator.wait_for_everyone()

    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    stats = {
        "train_loss": round(float(result.training_loss), 6),
        "steps": trainer.state.global_step,
        "tokens": int(trainer.state.num_input_tokens_seen),
        "first_loss": losses[0][1] if losses else None,
        "last_loss": losses[-1][1] if losses else None,
        "seconds": round(seconds, 2),
        "resumed_from_step": resumed_from,
        "lora": bool(_get(cfg, "lora", False)),
        "merged": merge,
        "bf16": trainer.args.bf16,
        "world_size": trainer.args.world_size,
        **data_stats,
    }
    if main:
        mark_finished(out_dir, STATS_FILE, stats, trainer.state.log_history)
    return stats
