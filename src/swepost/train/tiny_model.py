"""Build a tiny, randomly initialised Qwen2-style model with a locally trained tokenizer.

Used for fast offline tests and smoke runs of the SFT/GRPO pipelines; no downloads needed.
"""

from __future__ import annotations

import json
import pathlib

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

_NAMES = (
    "parse config result items value path count buffer request token handler session cache index "
    "record schema stream window offset limit header payload message status error column field"
).split()
_FILES = [
    "src/app/core.py",
    "src/app/utils.py",
    "tests/test_core.py",
    "setup.cfg",
    "README.md",
    "pyproject.toml",
]
_COMMANDS = [
    "git diff",
    "git status",
    "pytest -q",
    "pytest -x tests/test_core.py",
    "ls -la src",
    "cat src/app/core.py",
    "sed -n 1,40p src/app/utils.py",
    "grep -rn 'def parse' src",
    "python -m pip install -e .",
    "git apply fix.patch",
    "find . -name '*.py'",
    "python -c 'import app'",
]
_WORDS = (
    "the test fails because function returns wrong value when input is empty fix off by one error loop "
    "rerun tests read file first then edit check that all pass traceback shows KeyError missing entry "
    "after patch reports every passed regression issue expected actual assert raises module import "
    "should handle None correctly update docstring refactor helper validate argument type string list "
    "dictionary integer unicode café naïve résumé ✓ → λ 日本語 server client request response timeout retry "
    "database query connection pool thread lock memory leak performance benchmark latency version release "
    "dependency package install upgrade deprecated warning logging debug verbose output format encoding"
).split()


def _agent_texts() -> list[str]:
    """The texts every agent prompt repeats: the swe environment's prompts and tool schemas, as the chat
    template writes them. A vocabulary that knows them keeps prompts short, and tests fast."""
    from swepost.envs.swe import TOOLS, load_prompts

    texts = [json.dumps(tool) for tool in TOOLS]
    texts += list(load_prompts().values())
    return texts


def _corpus():
    """Yield a deterministic mix of code, shell, prose, JSON tool calls and diffs, and the agent prompts."""
    for _ in range(20):
        yield from _agent_texts()
    n, w = len(_NAMES), len(_WORDS)
    for i in range(400):
        a, b = _NAMES[i % n], _NAMES[(i * 7 + 3) % n]
        f, cmd = _FILES[i % len(_FILES)], _COMMANDS[i % len(_COMMANDS)]
        yield (
            f"def get_{a}_{b}(self, {b}, *args, **kwargs):\n    if {b} is None:\n        return []\n"
            f"    return [{a} for {a} in {b} if {a}.{b} > {i}]\n"
        )
        yield f'class {a.title()}{b.title()}Error(Exception):\n    """Raised when {a} fails."""\n'
        yield f"$ {cmd}\n{i} passed, {i % 3} failed in 0.{i:02d}s\n"
        yield (
            f'  File "src/{a}/{b}_{i % 50}.py", line {i * 7 % 997}, in {a}_{b}\n    {b}.{a}[{i % 10}] = {i}\n'
        )
        yield " ".join(_WORDS[(i * k * 13 + k) % w] for k in range(1, 16)).capitalize() + "."
        yield json.dumps({"name": "bash", "arguments": {"command": cmd}})
        yield (
            f"--- a/{f}\n+++ b/{f}\n@@ -{i},3 +{i},4 @@\n-    return self.{a}\n+    return self.{b} or {a}\n"
        )


def build_tiny_model(
    out_dir: str | pathlib.Path,
    *,
    seed: int = 0,
    vocab_size: int = 4096,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 4096,
) -> dict:
    """Write a complete Hugging Face model folder (weights, config, tokenizer) into `out_dir`."""
    import importlib.resources

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Tokenizer: byte-level BPE, so any text (unicode included) round-trips.
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    raw.train_from_iterator(_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=max_position_embeddings,
    )
    tok.add_tokens(TOOL_TOKENS)
    # Exact TRL text: TRL matches templates by string equality (response parser, training template).
    tok.chat_template = (importlib.resources.files("trl") / "chat_templates" / "qwen2_5.jinja").read_text(
        encoding="utf-8"
    )
    eos_id, pad_id = tok.convert_tokens_to_ids(EOS_TOKEN), tok.convert_tokens_to_ids(PAD_TOKEN)

    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None, do_sample=False
    )
    hf_logging.disable_progress_bar()  # a one-shard "Writing model shards" bar is noise in a CLI
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)

    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tok),
        "eos_token": EOS_TOKEN,
        "architecture": "Qwen2ForCausalLM",
    }
