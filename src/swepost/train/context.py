"""What fits a model: its context window (with RoPE scaling), the prompt / completion budgets, and whether a
colocated vLLM engine gets enough GPU memory for the weights and one full-length sequence.

These checks run before any GPU is touched, so that a week-long run refuses at once what would otherwise fail
hours in (an HTTP 400 for an over-long request, vLLM refusing to start, KV-cache thrashing).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from swepost.errors import BadInput

ROPE_TYPES = ("yarn", "dynamic", "linear", "longrope", "llama3")
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def check_rope_scaling(rope: dict[str, Any] | None) -> dict[str, Any] | None:
    """The rope_scaling setting in the one spelling swepost writes: rope_type, factor and (when given)
    original_max_position_embeddings. Raises ValueError on anything else."""
    if rope is None:
        return None
    kind = rope.get("rope_type", rope.get("type"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling.rope_type must be one of {', '.join(ROPE_TYPES)}, got {kind!r}")
    factor = rope.get("factor")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 1:
        raise ValueError(f"rope_scaling.factor must be a number above 1, got {factor!r}")
    original = rope.get("original_max_position_embeddings")
    if original is not None and (not isinstance(original, int) or isinstance(original, bool) or original < 16):
        raise ValueError(f"rope_scaling.original_max_position_embeddings must be an integer, got {original!r}")
    out = {k: v for k, v in rope.items() if k != "type"}
    out["rope_type"] = kind
    return out


def _model_config(model_path: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError):
        return None


def _config_value(config, name: str):
    value = getattr(config, name, None)
    if value is None:
        value = getattr(getattr(config, "text_config", None), name, None)
    return value


def native_context(config) -> tuple[int | None, str]:
    for name in _CONTEXT_KEYS:
        value = _config_value(config, name)
        if isinstance(value, int) and value > 0:
            return value, f"the model's {name}"
    return None, ""


def model_context(cfg: Any, model_path: str) -> tuple[int, str]:
    """(tokens, where that number came from): the model's context window as this run will use it."""
    if getattr(cfg, "max_model_len", None):
        return int(cfg.max_model_len), "max_model_len"
    if getattr(cfg, "vllm_max_model_length", None):
        return int(cfg.vllm_max_model_length), "vllm_max_model_length"
    native, source = native_context(_model_config(model_path))
    rope = getattr(cfg, "rope_scaling", None)
    if rope:
        base = rope.get("original_max_position_embeddings") or native
        if base:
            return int(base * rope["factor"]), f"rope_scaling ({rope['rope_type']} x{rope['factor']:g} of {base})"
    if native:
        return native, source
    return 32768, "the default (the model names no context length; set max_model_len)"


def fit_context(cfg: Any, model_path: str) -> Any:
    """The config with max_prompt_tokens and max_completion_tokens filled in to fit the model's context, or
    BadInput when the given ones cannot fit. Unset: the prompt gets min(8192, context / 2) and the completion
    the rest, up to 32768; one set: the other gets what is left."""
    context, source = model_context(cfg, model_path)
    prompt, completion = cfg.max_prompt_tokens, cfg.max_completion_tokens
    if prompt is None and completion is None:
        prompt = min(8192, context // 2)
    if prompt is None:
        prompt = min(8192, context - completion)
    if completion is None:
        completion = min(32768, context - prompt)
    if prompt < 16 or completion < 16 or prompt + completion > context:
        raise BadInput(f"max_prompt_tokens ({prompt}) + max_completion_tokens ({completion}) = {prompt + completion} "
                       f"tokens does not fit the model's context of {context} tokens ({source}); lower them, or "
                       "extend the context with rope_scaling (e.g. YaRN) or max_model_len if the model is served "
                       "with a longer one", key="max_completion_tokens")
    vllm_len = getattr(cfg, "vllm_max_model_length", None)
    if vllm_len and getattr(cfg, "generation", "transformers") != "transformers" and prompt + completion > vllm_len:
        raise BadInput(f"max_prompt_tokens + max_completion_tokens = {prompt + completion} is more than "
                       f"vllm_max_model_length {vllm_len}: vLLM would refuse the longest episodes",
                       key="vllm_max_model_length")
    turn = min(cfg.max_turn_tokens, completion) if cfg.max_turn_tokens else completion
    return cfg.model_copy(update={"max_prompt_tokens": prompt, "max_completion_tokens": completion,
                                  "max_turn_tokens": turn})


# --- RoPE scaling ------------------------------------------------------------------------------------------------

def rope_scaled_model(model_path: str, rope: dict[str, Any], folder: Path) -> str:
    """A model folder that is `model_path` with `rope` written into its config.json (Qwen's documented way to
    turn on YaRN): every other file is a symlink. The trainer, vLLM colocate (which loads the folder by name) and
    the saved checkpoint all see the same setting. Built once, atomically; reused after that."""
    src = Path(model_path)
    if not (src / "config.json").is_file():
        from huggingface_hub import snapshot_download

        try:
            src = Path(snapshot_download(model_path))
        except Exception as e:  # noqa: BLE001 - offline, unknown id: say which setting needs the files
            raise BadInput(f"rope_scaling needs the model's files to write its config, and {model_path!r} is not "
                           f"a local folder that has them ({type(e).__name__}: {e})", key="rope_scaling") from None
    config = json.loads((src / "config.json").read_text())
    scaled = dict(config)
    scaled["rope_scaling"] = dict(rope)
    params = dict(config.get("rope_parameters") or {})
    if config.get("rope_theta") is not None:
        params.setdefault("rope_theta", config["rope_theta"])
    scaled["rope_parameters"] = {**params, **rope}
    if folder.is_dir() and json.loads((folder / "config.json").read_text()) == scaled:
        return str(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in src.iterdir():
        if item.name != "config.json":
            (tmp / item.name).symlink_to(item.resolve())
    (tmp / "config.json").write_text(json.dumps(scaled, indent=2) + "\n")
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    if folder.exists():
        folder.rename(old)
    try:
        tmp.rename(folder)
    except OSError:  # another process of the same launch got there first with the same content
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return str(folder)


# --- GPU memory of a colocated vLLM engine --------------------------------------------------------------------------

def model_footprint(model_path: str, dtype: str) -> dict[str, int] | None:
    """Bytes of the weights and of the KV cache per token, from the model's config (None when it does not say)."""
    config = _model_config(model_path)
    if config is None:
        return None
    get = lambda name: _config_value(config, name)  # noqa: E731
    hidden, layers, vocab = get("hidden_size"), get("num_hidden_layers"), get("vocab_size")
    if not all(isinstance(v, int) and v > 0 for v in (hidden, layers, vocab)):
        return None
    heads = get("num_attention_heads") or 1
    kv_heads = get("num_key_value_heads") or heads
    head_dim = get("head_dim") or hidden // heads
    inter = get("intermediate_size") or 4 * hidden
    per_layer = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2 + 3 * hidden * inter
    embeddings = vocab * hidden * (1 if get("tie_word_embeddings") else 2)
    experts = get("num_local_experts") or get("num_experts") or 1
    if experts > 1:  # mixture of experts: every expert's MLP is held, whatever routes to it
        per_layer += 3 * hidden * (get("moe_intermediate_size") or inter) * (experts - 1)
    width = _DTYPE_BYTES.get(dtype, 2)  # vLLM serves "auto" (and float32 checkpoints) in 16 bits
    return {"weights": (embeddings + layers * per_layer) * width,
            "kv_per_token": 2 * layers * kv_heads * head_dim * width}


def gpu_memory_bytes(cfg: Any) -> tuple[int | None, str]:
    if getattr(cfg, "gpu_memory_gb", None):
        return int(cfg.gpu_memory_gb * 2 ** 30), "gpu_memory_gb"
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory), torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - no driver: nothing to check against
        pass
    return None, ""


def check_colocate_memory(cfg: Any, model_path: str) -> dict[str, Any] | None:
    """vllm_colocate gives vLLM `vllm_gpu_memory_utilization` of each GPU: it must hold the weights (split over
    the tensor-parallel group) and the KV cache of at least one sequence of the full context, or vLLM refuses to
    start (or, with less room for concurrency, the rollouts crawl). BadInput when it cannot; returns the figures
    (None when the GPU's memory is unknown: no GPU here and no gpu_memory_gb)."""
    if getattr(cfg, "generation", None) != "vllm_colocate":
        return None
    total, gpu = gpu_memory_bytes(cfg)
    foot = model_footprint(model_path, cfg.dtype)
    if total is None or foot is None:
        return None
    context = cfg.max_prompt_tokens + cfg.max_completion_tokens
    tp = max(1, cfg.vllm_tensor_parallel_size)
    share = cfg.vllm_gpu_memory_utilization * total
    need = (foot["weights"] + foot["kv_per_token"] * context) / tp
    figures = {"share_gb": round(share / 2 ** 30, 2), "weights_gb": round(foot["weights"] / tp / 2 ** 30, 2),
               "kv_one_sequence_gb": round(foot["kv_per_token"] * context / tp / 2 ** 30, 2), "gpu": gpu}
    if need > share:
        raise BadInput(f"vllm_gpu_memory_utilization {cfg.vllm_gpu_memory_utilization} of {gpu} "
                       f"({total / 2 ** 30:.0f} GiB) gives vLLM {figures['share_gb']} GiB, but the weights need "
                       f"{figures['weights_gb']} GiB and one {context}-token sequence's KV cache "
                       f"{figures['kv_one_sequence_gb']} GiB: raise vllm_gpu_memory_utilization (leaving less for "
                       "training), shorten the context, or use generation: vllm_server on GPUs of its own",
                       key="vllm_gpu_memory_utilization")
    return figures
