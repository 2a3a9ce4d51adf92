"""The judge's settings and the one place a judge is made from them.

With no endpoint (no base_url, no model) the judge is the lexical one, and says so; as soon as a base_url or a
model is given the judge is an endpoint, and an incomplete endpoint is bad input, never a quiet lexical judge.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from swepost.config import validate
from swepost.errors import BadInput
from swepost.rewards.judge.base import DEFAULT_MAX_ANSWER_CHARS, Judge
from swepost.rewards.judge.scores import DEFAULT_WEIGHTS, check_weights

log = logging.getLogger(__name__)


class JudgeConfig(BaseModel):
    """Settings of the judge (the `judge:` block of an eval or rl config)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: Literal["openai", "lexical"] | None = Field(
        None, description="openai: an OpenAI-compatible endpoint; lexical: word overlap, for tests and the demo; "
        "none: openai when base_url or model is given, else lexical")
    base_url: str | None = Field(None, description="the endpoint's /v1 URL, e.g. http://localhost:8000/v1")
    model: str | None = Field(None, description="the judge model the endpoint serves")
    api_key: SecretStr | None = Field(None, description="the key; none: $OPENAI_API_KEY, else `EMPTY` (vLLM). "
                                      "Never written to an artifact, a log or a failure cause")
    prompt: Path | None = Field(None, description="a prompt template file with {question}, {answer}, {reference}, "
                                "{rubric}; none: the shipped rewards/prompts/judge.md")
    temperature: float = Field(0.0, ge=0, description="sampling temperature of the judge; 0 is greedy")
    max_tokens: int | None = Field(2048, ge=1, description="tokens the judge's reply may take; none: the server's")
    extra_body: dict[str, Any] | None = Field(None, description="extra request fields (vLLM: chat_template_kwargs "
                                              "to turn a reasoning model's thinking off, ...)")
    timeout: float = Field(120.0, gt=0, description="seconds for one request")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to connect")
    max_retries: int = Field(4, ge=0, description="resends of a request after a 408/409/429/5xx, a timeout or a "
                             "lost connection, with backoff")
    backoff: float = Field(0.5, ge=0, description="seconds before the first resend, doubling (Retry-After wins)")
    max_attempts: int = Field(3, ge=1, description="replies asked for before a reply that is not the five scores "
                              "counts as a judge failure")
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    cache_dir: Path | None = Field(None, description="folder of cached judgements (e.g. $SWEPOST_HOME/cache/judge); "
                                   "none: no cache")
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS), description="the RL reward's "
                                      "weight per axis (an axis left out weighs 0); the reward is the weighted mean "
                                      "/ 10. The eval score (the sum of the axes) does not use them")
    missing_answer_reward: float = Field(0.0, ge=0, le=1, description="reward of a missing or empty answer "
                                         "(judged without a request)")
    max_answer_chars: int = Field(DEFAULT_MAX_ANSWER_CHARS, ge=100, description="an answer longer than this is "
                                  "cut, with a note, before the judge sees it")
    on_failure: Literal["group_mean", "mask"] = Field(
        "group_mean", description="a judge failure's reward: its group's mean (no advantage), or none (masked)")

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        return check_weights(value)


def make_judge(config: JudgeConfig | Mapping[str, Any] | None = None, *, key: str = "judge") -> Judge:
    """The judge `config` asks for. BadInput (naming `key`.field) when the config is invalid or an endpoint is
    half given."""
    if not isinstance(config, JudgeConfig):
        config = validate(JudgeConfig, dict(config or {}), prefix=(key,))
    endpoint = {name: getattr(config, name) for name in ("base_url", "model") if getattr(config, name)}
    kind = config.kind or ("openai" if endpoint else "lexical")
    shared = {"weights": config.weights, "missing_answer_reward": config.missing_answer_reward,
              "max_answer_chars": config.max_answer_chars}
    if kind == "lexical":
        if endpoint:
            raise BadInput(f"kind is lexical but {' and '.join(endpoint)} name an endpoint: drop one or the other",
                           key=f"{key}.kind")
        log.warning("judge: lexical (word overlap against the reference), no model judge: for tests and demos")
        from swepost.rewards.judge.lexical import LexicalJudge

        return LexicalJudge(**shared)
    for name, what in (("base_url", "the endpoint's /v1 URL"), ("model", "the model the endpoint serves")):
        if not getattr(config, name):
            raise BadInput(f"the openai judge needs {name} ({what}); it never falls back to the lexical judge",
                           key=f"{key}.{name}")
    from swepost.rewards.judge.chat import OpenAIJudge

    return OpenAIJudge(base_url=config.base_url, model=config.model,
                       api_key=config.api_key.get_secret_value() if config.api_key else None, prompt=config.prompt,
                       temperature=config.temperature, max_tokens=config.max_tokens, extra_body=config.extra_body,
                       timeout=config.timeout, connect_timeout=config.connect_timeout,
                       max_retries=config.max_retries, backoff=config.backoff, max_attempts=config.max_attempts,
                       concurrency=config.concurrency, cache=config.cache_dir, **shared)
