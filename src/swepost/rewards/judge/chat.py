"""A judge served by any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, hosted): one user message
rendered from the prompt file, temperature 0, the reply read as JSON.

Two kinds of retry. A request that meets a 408/409/429/5xx, a timeout or a lost connection is sent again after a
backoff (Retry-After wins), up to `max_retries` times. A reply that is not the five scores is asked again with a
reminder, up to `max_attempts` replies. Past either, or on any other refusal, the Judgement is a failure with
its cause, never a score. The API key is cut out of every cause and log line.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swepost.artifacts import REDACTED
from swepost.errors import api_error_text, retry_after
from swepost.rewards.judge.base import DEFAULT_MAX_ANSWER_CHARS, Judge, JudgeItem
from swepost.rewards.judge.cache import JudgeCache, judgement_key
from swepost.rewards.judge.prompt import load_prompt
from swepost.rewards.judge.scores import Judgement, MalformedReply, parse_reply, read_scores

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429}
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 120.0
MIN_SECRET_CHARS = 4  # a shorter "key" is a placeholder; cutting it out would garble every message
REMINDER = ("Your reply could not be read ({cause}). Reply with only the JSON object: a short \"rationale\" and "
            "the scores \"correctness\", \"completeness\", \"relevance\", \"clarity\" and \"reasoning\", each a "
            "whole number from 1 to 10.")


class _Unavailable(Exception):
    """The endpoint gave no reply: a refusal, or retries spent."""

    def __init__(self, cause: str, requests: int):
        super().__init__(cause)
        self.cause, self.requests = cause, requests


class OpenAIJudge(Judge):
    name = "openai"

    def __init__(self, *, base_url: str, model: str, api_key: str | None = None, prompt: str | Path | None = None,
                 temperature: float = 0.0, max_tokens: int | None = 2048, timeout: float = 120.0,
                 connect_timeout: float = 10.0, max_retries: int = 4, backoff: float = 0.5, max_attempts: int = 3,
                 concurrency: int = 8, cache: JudgeCache | str | Path | None = None,
                 extra_body: Mapping[str, Any] | None = None, weights: Mapping[str, float] | None = None,
                 missing_answer_reward: float = 0.0, max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS):
        super().__init__(weights=weights, missing_answer_reward=missing_answer_reward,
                         max_answer_chars=max_answer_chars, concurrency=concurrency)
        if max_retries < 0 or max_attempts < 1 or timeout <= 0 or connect_timeout <= 0 or backoff < 0:
            raise ValueError("max_retries >= 0, max_attempts >= 1, timeouts > 0 and backoff >= 0, please")
        import openai  # here, not at module import: only an endpoint judge needs the client

        self._openai = openai
        self.model, self.prompt = model, load_prompt(prompt)
        self.temperature, self.max_tokens, self.extra_body = temperature, max_tokens, dict(extra_body or {})
        self.timeout, self.max_retries, self.backoff, self.max_attempts = timeout, max_retries, backoff, max_attempts
        self.cache = JudgeCache(cache) if isinstance(cache, (str, Path)) else cache
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        # a server may echo the Authorization header in an error body: the key is cut out of every cause
        self._secrets = (api_key,) if api_key != "EMPTY" and len(api_key) >= MIN_SECRET_CHARS else ()
        # max_retries=0: our loop is the only one, so the requests a Judgement counts are the ones sent
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                                    timeout=openai.Timeout(timeout, connect=min(connect_timeout, timeout)))
        self.base_url = str(self.client.base_url)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base_url": self.base_url, "prompt": self.prompt.path,
                "prompt_sha256": self.prompt.sha256, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "extra_body": dict(self.extra_body), "max_attempts": self.max_attempts,
                "max_retries": self.max_retries, "cache": str(self.cache.folder) if self.cache else None}

    def close(self) -> None:
        self.client.close()

    def _grade(self, item: JudgeItem) -> Judgement:
        key = judgement_key(question=item.question, answer=item.answer or "", reference=item.reference,
                            rubric=item.rubric, model=self.model, prompt_sha256=self.prompt.sha256)
        if self.cache is not None and (hit := self._from_cache(key)) is not None:
            return hit
        messages: list[dict[str, str]] = [{"role": "user", "content": self.prompt.render(item)}]
        sent, cause = 0, ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                response, tries = self._request(messages)
            except _Unavailable as e:
                return Judgement.failure(self.name, self._scrub(f"{self.model} at {self.base_url}: {e.cause}"),
                                         model=self.model, requests=sent + e.requests)
            sent += tries
            text = ""
            try:
                text = _reply_text(response)
                scores, rationale = parse_reply(text)
            except MalformedReply as e:
                cause = str(e)
                log.info("judge %s: reply %d/%d not usable (%s)", self.model, attempt, self.max_attempts,
                         self._scrub(cause))
                # asked again with its reply and a reminder: at temperature 0 the same prompt gives the same reply
                messages = [messages[0]] + ([{"role": "assistant", "content": text},
                                             {"role": "user", "content": REMINDER.format(cause=cause)}] if text else [])
                continue
            if self.cache is not None:
                try:
                    self.cache.put(key, {"model": self.model, "scores": scores, "rationale": rationale})
                except OSError as e:  # a full disk costs a later re-run a request, not this judgement
                    log.warning("judge cache: cannot write %s (%s)", self.cache.path(key), e)
            return Judgement.scored(self.name, scores, self.weights, model=self.model, requests=sent,
                                    rationale=rationale)
        return Judgement.failure(self.name, self._scrub(f"{self.model} at {self.base_url}: no usable reply in "
                                                        f"{self.max_attempts} attempts; last: {cause}"),
                                 model=self.model, requests=sent)

    def _from_cache(self, key: str) -> Judgement | None:
        record = self.cache.get(key) if self.cache is not None else None
        if record is None:
            return None
        try:
            scores, rationale = read_scores({**record["scores"], "rationale": record.get("rationale")})
        except (KeyError, TypeError, MalformedReply):
            return None  # not a judgement this code wrote: judged afresh, and written over
        return Judgement.scored(self.name, scores, self.weights, model=self.model, cached=True, rationale=rationale)

    def _request(self, messages: list[dict[str, str]]) -> tuple[Any, int]:
        """The response and the requests it took; _Unavailable when there is none."""
        openai = self._openai
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.extra_body:
            kwargs["extra_body"] = dict(self.extra_body)
        for attempt in range(self.max_retries + 1):
            delay = None
            try:
                response = self.client.chat.completions.create(**kwargs)
            except openai.APIStatusError as e:
                if e.status_code not in RETRYABLE_STATUS and e.status_code < 500:
                    raise _Unavailable(f"refused the request ({e.status_code}): {api_error_text(e)}", attempt + 1) \
                        from None
                last, delay = f"{e.status_code}: {api_error_text(e)}", retry_after(e, MAX_RETRY_AFTER_S)
            except openai.APIConnectionError as e:  # timeouts included
                last = f"{type(e).__name__}: {e}"
            except openai.OpenAIError as e:
                raise _Unavailable(f"{type(e).__name__}: {e}", attempt + 1) from None
            except ValueError as e:  # a body that claims JSON and is not
                raise _Unavailable(f"answered with a body that is not JSON: {e}", attempt + 1) from None
            else:
                return response, attempt + 1
            if attempt == self.max_retries:
                break
            if delay is None:
                delay = min(self.backoff * 2 ** attempt, MAX_BACKOFF_S) * (1 + 0.5 * random.random())
            log.info("judge %s: request %d failed (%s); retrying in %.2fs", self.model, attempt + 1,
                     self._scrub(last), delay)
            time.sleep(delay)
        raise _Unavailable(f"gave up after {self.max_retries + 1} requests; last error: {last}", self.max_retries + 1)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


def _reply_text(response: Any) -> str:
    """The reply's content; MalformedReply when the response holds none."""
    if isinstance(response, str):  # the client hands back the text of a body that is not JSON
        snippet = " ".join(response.split())[:200]
        raise MalformedReply(f"not a chat completion (is base_url the API's /v1?): {snippet!r}")
    choices = getattr(response, "choices", None)
    if not choices:
        raise MalformedReply("a chat completion with no choices")
    content = choices[0].message.content
    if not content or not content.strip():
        raise MalformedReply(f"empty reply (finish_reason {choices[0].finish_reason})")
    return content




