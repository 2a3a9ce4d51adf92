"""HFPolicy: a local transformers causal LM (a folder, a hub name, or a swepost checkpoint artifact).

The conversation is rendered with the tokenizer's chat template (Qwen2.5 style: tool calls are
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks) and the reply is parsed back into
OpenAI tool calls. Sampling draws from a torch.Generator seeded from `seed + call index`, so a run is
reproducible without touching the global RNG.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from swepost.errors import BadInput
from swepost.policies.base import MIN_TURN_TOKENS, PolicyError, PolicyReply, one_name, turn_budget
from swepost.records import Task

_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


def parse_tool_calls(text: str, *, id_prefix: str = "call") -> tuple[str, list[dict[str, Any]]]:
    """Split generated text into (content, OpenAI tool calls).

    Each `<tool_call>...</tool_call>` block (an unclosed one at the end too: a truncated generation) becomes
    one call. A block holding a JSON object with a string "name" gives that name and its "arguments" as a
    JSON string (a string value is passed through as written; no "arguments" gives "{}"). Anything else gives
    a call named "" whose arguments are the block's raw text, so the agent loop answers with a format error.
    The text outside the blocks (stripped, the gaps they leave closed to one blank line) is the content.
    """
    calls: list[dict[str, Any]] = []
    for i, match in enumerate(_TOOL_CALL_RE.finditer(text)):
        raw = match.group(1).strip()
        name, arguments = "", raw
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("name"), str) and obj["name"]:
            args = obj.get("arguments", obj.get("parameters", {}))
            name = obj["name"]
            arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        calls.append({"id": f"{id_prefix}_{i}", "type": "function",
                      "function": {"name": name, "arguments": arguments}})
    content = re.sub(r"\n{3,}", "\n\n", _TOOL_CALL_RE.sub("", text)).strip()
    return content, calls


def _template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages -> what the Qwen2.5 template expects.

    The template writes `tool_call.arguments | tojson`: a JSON string would come out quoted a second time,
    so arguments that parse as JSON are turned back into objects. None content becomes "" (the template
    concatenates it).
    """
    out = []
    for m in messages:
        m = dict(m)
        content = m.get("content")
        if content is None:
            m["content"] = ""
        elif isinstance(content, list):  # OpenAI content parts: keep the text
            m["content"] = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        if m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                call = dict(call)
                fn = dict(call.get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args) if args.strip() else {}
                    except ValueError:
                        pass  # malformed: rendered as the string the model wrote
                call["function"] = fn
                calls.append(call)
            m["tool_calls"] = calls
        out.append(m)
    return out


def _resolve_model(model: str) -> tuple[str, str | None]:
    """A model reference -> (what to load, artifact id or None). Artifacts must be checkpoints."""
    from swepost.artifacts import ArtifactStore

    try:
        art = ArtifactStore().resolve(model)
    except BadInput:
        return model, None
    if art.kind != "checkpoint":
        raise BadInput(f"artifact {art.id} is a {art.kind!r} artifact, not a checkpoint", key="model")
    path = art.path / "model"
    if not path.is_dir():
        raise BadInput(f"checkpoint artifact {art.id} has no model/ folder", key="model")
    return str(path), art.id


class HFPolicy:
    name = "hf"

    def __init__(self, *, model: str, temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int | None = None,
                 max_context_tokens: int | None = None, max_turn_tokens: int | None = None,
                 max_model_len: int | None = None, min_turn_tokens: int = MIN_TURN_TOKENS, seed: int = 0,
                 device: str = "auto", dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if temperature < 0:
            raise BadInput(f"temperature {temperature} must be >= 0", key="temperature")
        if not 0 < top_p <= 1:
            raise BadInput(f"top_p {top_p} must be in (0, 1]", key="top_p")
        # RL's and the OpenAI policy's names (max_turn_tokens, max_model_len) or transformers' own
        try:
            max_new_tokens = one_name(("max_turn_tokens", "max_new_tokens"), (max_turn_tokens, max_new_tokens), 256)
            max_context_tokens = one_name(("max_model_len", "max_context_tokens"), (max_model_len, max_context_tokens),
                                          4096)
        except ValueError as e:
            raise BadInput(str(e), key="max_turn_tokens") from None
        if max_new_tokens < 1 or max_context_tokens < 2:
            raise BadInput("max_new_tokens must be >= 1 and max_context_tokens >= 2", key="max_new_tokens")
        if min_turn_tokens < 1:
            raise BadInput(f"min_turn_tokens {min_turn_tokens} must be >= 1", key="min_turn_tokens")
        self.min_turn_tokens = int(min_turn_tokens)
        self.model_ref = str(model)
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.max_new_tokens, self.max_context_tokens = int(max_new_tokens), int(max_context_tokens)
        self.seed = int(seed)

        self.path, self.artifact = _resolve_model(self.model_ref)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype == "auto":
            if self.device.type == "cuda":
                torch_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            else:
                torch_dtype = torch.float32
        else:
            torch_dtype = getattr(torch, str(dtype), None)
            if not isinstance(torch_dtype, torch.dtype):
                raise BadInput(f"unknown dtype {dtype!r} (auto, float32, bfloat16, float16)", key="dtype")
        self.dtype = str(torch_dtype).removeprefix("torch.")

        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        local = offline or Path(self.path).is_dir()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=local)
            self.model = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=local, dtype=torch_dtype)
        except (OSError, ValueError) as e:
            raise BadInput(f"cannot load model {self.model_ref!r}: {e}", key="model") from None
        self.model.to(self.device).eval()
        if not getattr(self.tokenizer, "chat_template", None):
            raise BadInput(f"model {self.model_ref!r}: the tokenizer has no chat template", key="model")

        stop = {self.tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS if t in self.tokenizer.get_vocab()}
        if self.tokenizer.eos_token_id is not None:
            stop.add(self.tokenizer.eos_token_id)
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        stop.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self.stop_ids = sorted(i for i in stop if isinstance(i, int) and i >= 0)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0] if self.stop_ids else 0
        self.calls = 0
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model_ref, "model_path": self.path, "artifact": self.artifact,
                "device": str(self.device), "dtype": self.dtype, "temperature": self.temperature,
                "top_p": self.top_p if self.temperature > 0 else 1.0, "do_sample": self.temperature > 0,
                "max_new_tokens": self.max_new_tokens, "max_context_tokens": self.max_context_tokens,
                "context": {"max_turn_tokens": self.max_new_tokens, "max_model_len": self.max_context_tokens,
                            "min_turn_tokens": self.min_turn_tokens},
                "seed": self.seed, "seeding": "torch.Generator per call: seed + call index"}

    def start(self, task: Task) -> None:
        pass

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        return self.tokenizer.apply_chat_template(_template_messages(messages), tools=tools or None,
                                                  add_generation_prompt=True, tokenize=False)

    def reply(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> PolicyReply:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        try:
            prompt = self.render(messages, tools)
        except Exception as e:  # jinja errors: a message the template cannot render
            raise PolicyError(f"cannot render the conversation with the chat template: {e}") from None
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        n_prompt = ids.shape[1]
        # the same budget as the OpenAI policy's and RL's, counted exactly with the model's own template
        budget = turn_budget(self.max_new_tokens, self.max_context_tokens, n_prompt,
                             min_turn_tokens=self.min_turn_tokens, counted="counted with the chat template")
        with self._lock:
            index, self.calls = self.calls, self.calls + 1
            processors = LogitsProcessorList()
            if self.temperature > 0:
                generator = torch.Generator(device=self.device).manual_seed(self.seed + index)
                processors.append(SeededSampler(self.temperature, self.top_p, [generator]))
            config = GenerationConfig(max_new_tokens=budget, do_sample=False,
                                      eos_token_id=self.stop_ids or None, pad_token_id=self.pad_id)
            try:
                with torch.inference_mode():
                    out = self.model.generate(input_ids=ids.to(self.device),
                                              attention_mask=torch.ones_like(ids).to(self.device),
                                              generation_config=config, logits_processor=processors)
            except (RuntimeError, ValueError) as e:  # CUDA OOM, device errors
                raise PolicyError(f"generation failed: {e}") from None
        new = out[0, n_prompt:].tolist()
        finish = "length"
        for i, tok in enumerate(new):
            if tok in self.stop_ids:
                new, finish = new[: i + 1], "stop"
                break
        text = self.tokenizer.decode([t for t in new if t not in self.stop_ids], skip_special_tokens=True)
        content, calls = parse_tool_calls(text, id_prefix=f"call_{index}")
        if calls and finish == "stop":
            finish = "tool_calls"
        return PolicyReply(message={"role": "assistant", "content": content, "tool_calls": calls},
                           prompt_tokens=n_prompt, completion_tokens=len(new), finish_reason=finish,
                           extra={"call_index": index, "raw": text, "max_tokens": budget})


class SeededSampler:
    """A logits processor that samples each row's next token with that row's own generator and leaves only that
    token possible, so greedy decoding picks it: sampling reproducible per request whatever else shares the
    batch, global RNG untouched."""

    def __init__(self, temperature: float, top_p: float, generators: list, top_k: int | None = None):
        self.temperature, self.top_p, self.top_k, self.generators = temperature, top_p, top_k, generators

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float() / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            drop = cum - sorted_logits.softmax(dim=-1) >= self.top_p  # keep the smallest set reaching top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        probs = logits.softmax(dim=-1)
        chosen = torch.cat([torch.multinomial(probs[row: row + 1], 1, generator=gen)
                            for row, gen in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, chosen, 0.0)
