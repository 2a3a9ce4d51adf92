"""Stage `tiny-model`: the embedded default model, built locally because nothing is downloaded here."""

from __future__ import annotations

from pydantic import Field

from swepost.artifacts import Artifact, ArtifactStore, producer_record
from swepost.config import StageConfig


class TinyModelConfig(StageConfig):
    name: str = Field("tiny-qwen2", description="output artifact name")
    seed: int = Field(0, description="weights are a function of the seed alone")
    vocab_size: int = Field(2048, ge=300, description="BPE vocabulary size (byte alphabet is 256)")
    hidden_size: int = Field(64, ge=8)
    intermediate_size: int = Field(128, ge=8)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    max_position_embeddings: int = Field(4096, ge=128)


def run(config: TinyModelConfig, store: ArtifactStore) -> Artifact:
    from swepost.train.tiny_model import build_tiny_model

    producer = producer_record("tiny-model", config.model_dump(mode="json"), seed=config.seed)
    with store.write(config.name, "checkpoint", producer=producer) as w:
        sizes = config.model_dump(exclude={"name", "seed"})
        stats = build_tiny_model(w.path / "model", seed=config.seed, **sizes)
        w.stats.update(stats)
    return w.artifact
