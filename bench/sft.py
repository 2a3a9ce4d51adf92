"""SFT batches on a long-tailed length distribution: packed (padding-free) vs padded, in one run, as JSON.

Trajectories are long-tailed: most are short, a few are very long. Padded batches then spend most of their
tokens on padding. This trains the tiny model with TRL's SFTTrainer both ways on the same synthetic
conversations (lengths drawn from a log-normal) and reports, for each: the share of real (non-pad) tokens
in the batches, and real tokens per second. Goals: packed >= 95% real tokens and >= 1.5x the tokens/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from pathlib import Path

from report import emit

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

WORDS = "the test fails because the function returns a wrong value when the input is empty".split()


def conversations(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = min(int(rng.lognormvariate(4.6, 0.9)), 1500)  # median ~100 words, a long tail
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        rows.append({"messages": [{"role": "user", "content": "Fix the bug."},
                                  {"role": "assistant", "content": text}]})
    return rows


class CountingCollator:
    """Wraps TRL's collator to count real and total tokens of every batch it builds."""

    def __init__(self, inner, pad_id: int):
        self.inner, self.pad_id = inner, pad_id
        self.real = self.total = 0

    def __call__(self, examples):
        batch = self.inner(examples)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        self.total += ids.numel()
        self.real += int(mask.sum()) if mask is not None else int((ids != self.pad_id).sum())
        return batch


def train(model_dir: Path, rows: list[dict], packing: bool, steps: int, max_length: int, out: Path,
          batch_size: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=1e-4,
                     packing=packing, max_length=max_length, use_cpu=True, bf16=False, report_to="none",
                     save_strategy="no", logging_steps=steps, gradient_checkpointing=False,
                     dataloader_drop_last=True, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    counter = CountingCollator(trainer.data_collator, tok.pad_token_id)
    trainer.data_collator = counter
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {"packing": packing, "steps": steps, "batch_size": batch_size, "real_tokens": counter.real,
            "batch_tokens": counter.total,
            "real_share": round(counter.real / max(counter.total, 1), 4), "seconds": round(seconds, 2),
            "real_tokens_per_s": round(counter.real / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from swepost.train.tiny_model import build_tiny_model

    rows = conversations(args.examples, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny"
        build_tiny_model(model_dir, seed=0)
        # the same real-token budget per step: 8 padded conversations ~ one packed row of max_length tokens
        padded = train(model_dir, rows, False, args.steps, args.max_length, Path(tmp) / "padded", 8)
        packed = train(model_dir, rows, True, args.steps, args.max_length, Path(tmp) / "packed", 1)
    result = {"benchmark": "sft", "python": platform.python_version(), "cpus": os.cpu_count(),
              "model": "tiny-qwen2", "max_length": args.max_length, "padded": padded, "packed": packed,
              "tokens_per_s_ratio": round(packed["real_tokens_per_s"] / padded["real_tokens_per_s"], 2)}
    result["goals"] = {"packed_real_share_ge_95pct": packed["real_share"] >= 0.95,
                       "tokens_per_s_ratio_ge_1_5": result["tokens_per_s_ratio"] >= 1.5}
    emit(result, args.out)


if __name__ == "__main__":
    main()
