"""HFPolicy: a local transformers causal LM (a folder, a hub name, or a swepost checkpoint artifact).

The conversation is rendered with the tokenizer's chat template (Qwen2.5 style: tool calls are
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks) and the reply is parsed back into
OpenAI tool calls by `toolcalls.parse_tool_calls`, as every policy does. Sampling draws from a torch.Generator
seeded from (seed, episode, turn) in an episode the agent loop started (`seed + call index` outside one), so a run
is reproducible without touching the global RNG, and the samples of a task differ on any thread.
"""

from __future__ import annotations

import os
import threading
import zlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from swepost.errors import BadInput
from swepost.policies.base import MIN_TURN_TOKENS, PolicyError, PolicyReply, one_name, turn_budget
from swepost.policies.chat import template_messages
from swepost.policies.sampling import SeededSampler
from swepost.policies.toolcalls import assistant_turn, parse_tool_calls
from swepost.records import Task

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
# transformers resolves its names lazily, and two threads resolving the same name at once can fail with
# "cannot import name 'AutoModelForCausalLM'": collect and eval build one policy per worker thread
_IMPORT_LOCK = threading.Lock()


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


class HFArgs(BaseModel):
    """policy_args of `hf`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="a local folder, a hub id, or a checkpoint artifact (name, name@version, id)")
    temperature: float = Field(0.0, ge=0, description="sampling temperature; 0 is greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (with temperature > 0)")
    max_new_tokens: int | None = Field(None, ge=1, description="transformers' name for max_turn_tokens: give one")
    max_context_tokens: int | None = Field(None, ge=2, description="transformers' name for max_model_len: give one")
    max_turn_tokens: int | None = Field(None, ge=1, description="tokens one turn may generate (default 256), at "
                                        "most what max_model_len leaves")
    max_model_len: int | None = Field(None, ge=2, description="the context length the prompt and the turn share "
                                      "(default 4096)")
    min_turn_tokens: int = Field(MIN_TURN_TOKENS, ge=1, description="below this much room left the episode ends "
                                 "as context_overflow")
    seed: int = Field(0, description="sampling seed: each turn samples with a torch.Generator seeded from (seed, "
                      "episode, turn)")
    device: str = Field("auto", description="auto (cuda when there is one, else cpu), cpu, cuda, cuda:1, ...")
    dtype: str = Field("auto", description="auto (bfloat16 or float16 on GPU, float32 on CPU), or a torch dtype "
                       "name: float32, bfloat16, float16")

    @model_validator(mode="after")
    def _one_name_each(self) -> HFArgs:
        one_name(("max_turn_tokens", "max_new_tokens"), (self.max_turn_tokens, self.max_new_tokens), None)
        one_name(("max_model_len", "max_context_tokens"), (self.max_model_len, self.max_context_tokens), None)
        return self


class HFPolicy:
    name = "hf"
    Args = HFArgs

    def __init__(self, *, model: str, temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int | None = None,
                 max_context_tokens: int | None = None, max_turn_tokens: int | None = None,
                 max_model_len: int | None = None, min_turn_tokens: int = MIN_TURN_TOKENS, seed: int = 0,
                 device: str = "auto", dtype: str = "auto"):
        with _IMPORT_LOCK:
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
            with _IMPORT_LOCK:  # loading resolves the model's classes lazily too
                self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=local)
                self.model = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=local,
                                                                  dtype=torch_dtype)
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
        self._episode: str | None = None
        self._turn = 0
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model_ref, "model_path": self.path, "artifact": self.artifact,
                "device": str(self.device), "dtype": self.dtype, "temperature": self.temperature,
                "top_p": self.top_p if self.temperature > 0 else 1.0, "do_sample": self.temperature > 0,
                "max_new_tokens": self.max_new_tokens, "max_context_tokens": self.max_context_tokens,
                "context": {"max_turn_tokens": self.max_new_tokens, "max_model_len": self.max_context_tokens,
                            "min_turn_tokens": self.min_turn_tokens},
                "seed": self.seed, "seeding": "torch.Generator per turn: crc32(seed:episode:turn), or seed + call "
                "index outside an episode"}

    def start(self, task: Task, episode: str | None = None) -> None:
        """An episode begins: with its id (task#sample, from the agent loop), each turn samples from a generator
        seeded by (seed, episode, turn), whatever thread or order the episodes run in."""
        self._episode, self._turn = episode, 0

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        return self.tokenizer.apply_chat_template(template_messages(messages), tools=tools or None,
                                                  add_generation_prompt=True, tokenize=False)

    def reply(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> PolicyReply:
        with _IMPORT_LOCK:
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
            turn, self._turn = self._turn, self._turn + 1
            processors = LogitsProcessorList()
            if self.temperature > 0:
                seed = (self.seed + index if self._episode is None
                        else zlib.crc32(f"{self.seed}:{self._episode}:{turn}".encode()))
                generator = torch.Generator(device=self.device).manual_seed(seed)
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
        content, calls = parse_tool_calls(text, turn=assistant_turn(messages))
        if calls and finish == "stop":
            finish = "tool_calls"
        return PolicyReply(message={"role": "assistant", "content": content, "tool_calls": calls},
                           prompt_tokens=n_prompt, completion_tokens=len(new), finish_reason=finish,
                           extra={"call_index": index, "raw": text, "max_tokens": budget})
