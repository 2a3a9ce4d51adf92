"""Seeded sampling for transformers `generate`: each request draws from its own torch.Generator, so a sampled
run reproduces whatever else shares its batch (used by the hf policy and RL's local generator)."""

from __future__ import annotations


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
