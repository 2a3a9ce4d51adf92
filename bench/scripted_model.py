"""A real torch causal LM that follows a fixed script: the tiny Qwen2 model whose logits put all mass on the next
token of the current scripted assistant turn, so `model.generate` (TRL's tool loop and swepost's
TransformersGenerator alike) emits the same tool calls on every path without training.

The weights still run (every forward is the tiny model's own); only the last position's logits are replaced, and
only inside `generate`, which hands the full context to `prepare_inputs_for_generation` at every step. A forward
outside `generate` (a trainer's log-probabilities) returns the weights' own logits. The turn number is the number
of assistant turns in the row's context (generation prompts counted, as in swepost's ScriptedGenerator), the
position is the tokens generated since the last one; past the end of a turn comes the end-of-turn token, past the
last turn the last turn again. The script lives in the model folder's config (`script_turns`, `turn_start`).
"""

from __future__ import annotations

import time
from pathlib import Path

from transformers import Qwen2ForCausalLM

NEG = -1e9  # not -inf: a temperature or top-p step divides and sorts it without NaNs


def write_script(folder: Path, tokenizer, turns: list[str]) -> list[list[int]]:
    """Store `turns` (assistant texts as the model writes them; end-of-turn added) in the folder's config."""
    from transformers import AutoConfig

    ids = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id] for t in turns]
    config = AutoConfig.from_pretrained(folder)
    config.script_turns = ids
    config.turn_start = list(tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    config.save_pretrained(folder)
    return ids


class ScriptedQwen2ForCausalLM(Qwen2ForCausalLM):
    generate_seconds = 0.0  # set per instance by the first call: time in `generate`, whoever calls it
    generate_rows: list[int] = []

    def generate(self, *args, **kwargs):
        t0 = time.monotonic()
        try:
            out = super().generate(*args, **kwargs)
        finally:
            self.generate_seconds = self.generate_seconds + time.monotonic() - t0
        self.generate_rows = [*self.generate_rows, int(out.shape[0])]  # one entry per batched call
        return out

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        inputs["script_context"] = input_ids  # the whole row, whatever the cache left of input_ids
        return inputs

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, script_context=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              cache=cache, inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                              logits_to_keep=logits_to_keep, **kwargs)
        if script_context is None:
            return out
        logits = out.logits.clone()
        logits[:, -1, :] = NEG
        for row, ids in enumerate(script_context.tolist()):
            logits[row, -1, self.next_token(ids)] = 0.0
        out.logits = logits
        return out

    def next_token(self, ids: list[int]) -> int:
        start, turns = self.config.turn_start, self.config.script_turns
        n = len(start)
        at = [i for i in range(len(ids) - n + 1) if ids[i] == start[0] and ids[i:i + n] == start]
        if not at:
            return self.config.eos_token_id
        turn = turns[min(len(at) - 1, len(turns) - 1)]
        pos = len(ids) - (at[-1] + n)
        return turn[pos] if pos < len(turn) else self.config.eos_token_id
