"""A policy served by any OpenAI-compatible chat-completions server: vLLM, SGLang, hosted APIs.

Tool calls go either natively (`tools=` in the request, the server's tool parser fills `tool_calls`) or as
text in the Hermes/Qwen format (`<tools>` in the system message, `<tool_call>` blocks in the reply) for
servers started without a tool parser. `auto` starts native and switches to text for good the first time
the server says it cannot take tools, or takes them but answers with `<tool_call>` text and no native calls;
`describe()` then says `tool_mode_active: text`. Text is read by `toolcalls.parse_tool_calls`, as in every policy.

Each turn's `max_tokens` is the per-turn cap `max_turn_tokens`, at most what `max_model_len` leaves after the
prompt (as RL's rollouts do). The prompt is counted by the server's `/tokenize` (vLLM) where it answers, else
from the last turn's usage plus an estimate of the new messages; an estimate too low is corrected from the
server's own "context exceeded" answer. A conversation with too little room left ends as context_overflow
without a request.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from swepost.artifacts import REDACTED
from swepost.errors import api_error_text, retry_after
from swepost.policies.base import MIN_TURN_TOKENS, ContextOverflow, PolicyError, PolicyReply, one_name, turn_budget
from swepost.policies.toolcalls import OPEN, assistant_turn, call_id, parse_tool_calls, render_tool_call
from swepost.records import Task

log = logging.getLogger(__name__)

TOOL_MODES = ("native", "text", "auto")
RETRYABLE_STATUS = {408, 409, 429}
MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 600.0
MIN_SECRET_CHARS = 4  # a shorter "key" is a placeholder; cutting it out would garble every error message

_CONTEXT_OVERFLOW = re.compile(
    r"context[ _-]?length|context window|maximum model length|max_model_len|model's context|"
    r"prompt is too long|too many tokens|reduce the length|is longer than the model|exceeds the model",
    re.IGNORECASE)
# the prompt's size as servers state it in a "context exceeded" answer (vLLM old and new, SGLang, OpenAI)
_PROMPT_TOKENS_IN_ERROR = re.compile(r"(\d+) in the messages|has (\d+) input tokens|(\d+) tokens from the input|"
                                     r"messages resulted in (\d+) tokens", re.IGNORECASE)
_CONTEXT_IN_ERROR = re.compile(r"maximum context length (?:is|of) (\d+)", re.IGNORECASE)
# the estimate errs high (code runs 3-4 characters a token) so that a turn is not cut by a count too low
EST_CHARS_PER_TOKEN = 3
EST_TOKENS_PER_MESSAGE = 8  # role markers and separators of a chat template
_TOOLS_UNSUPPORTED = re.compile(
    r"enable-auto-tool-choice|tool-call-parser|tool[ _-]?choice[^.]*?(?:not supported|unsupported)|"
    r"\btools? (?:use )?(?:are|is) not supported|does not support (?:tools|tool|function)",
    re.IGNORECASE)

TOOLS_PROMPT_HEAD = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                     "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_PROMPT_TAIL = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                     "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                     '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


class OpenAIArgs(BaseModel):
    """policy_args of `openai`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="the model name the server serves (vLLM: --served-model-name)")
    base_url: str | None = Field(None, description="the API's /v1 URL, e.g. http://localhost:8000/v1; none: "
                                 "$OPENAI_BASE_URL, else OpenAI's")
    api_key: SecretStr | None = Field(None, description="the key; none: $OPENAI_API_KEY, else `EMPTY` (vLLM). "
                                      "Never written to an artifact, a log or an error")
    temperature: float = Field(0.0, ge=0, description="sampling temperature; 0 is greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    max_turn_tokens: int | None = Field(None, ge=1, description="tokens one turn may generate (default 1024), at "
                                        "most what max_model_len leaves")
    max_tokens: int | None = Field(None, ge=1, description="the API's name for max_turn_tokens: give one")
    max_model_len: int | None = Field(None, ge=2, description="the served context length; with it a turn's "
                                      "max_tokens shrinks to what the prompt leaves")
    min_turn_tokens: int = Field(MIN_TURN_TOKENS, ge=1, description="below this much room left the episode ends "
                                 "as context_overflow, without a request")
    seed: int | None = Field(None, description="sampling seed sent to the server")
    extra_body: dict[str, Any] | None = Field(None, description="extra request fields (vLLM: top_k, "
                                              "repetition_penalty, chat_template_kwargs, ...)")
    tool_mode: Literal["native", "text", "auto"] = Field(
        "auto", description="native: the server's tool parser; text: `<tool_call>` blocks in the text; auto: native "
        "until the server shows it cannot, then text")
    timeout: float = Field(120.0, gt=0, description="seconds for one request")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to connect")
    episode_timeout: float | None = Field(1800.0, gt=0, description="seconds for all requests, retries and "
                                          "backoff of one episode; none: unbounded")
    max_retries: int = Field(5, ge=0, description="retries of a request after a 408/409/429/5xx or a lost "
                             "connection")
    backoff: float = Field(0.5, ge=0, description="seconds before the first retry, doubling (a Retry-After "
                           "header wins)")

    @model_validator(mode="after")
    def _consistent(self) -> OpenAIArgs:
        one_name(("max_turn_tokens", "max_tokens"), (self.max_turn_tokens, self.max_tokens), None)
        if self.max_model_len is not None and self.max_model_len <= self.min_turn_tokens:
            raise ValueError(f"max_model_len ({self.max_model_len}) must be > min_turn_tokens "
                             f"({self.min_turn_tokens})")
        return self


class OpenAIPolicy:
    name = "openai"
    Args = OpenAIArgs

    def __init__(self, *, model: str, base_url: str | None = None, api_key: str | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, max_tokens: int | None = None,
                 max_turn_tokens: int | None = None, max_model_len: int | None = None,
                 min_turn_tokens: int = MIN_TURN_TOKENS, seed: int | None = None,
                 extra_body: dict[str, Any] | None = None, tool_mode: str = "auto", timeout: float = 120.0,
                 connect_timeout: float = 10.0, episode_timeout: float | None = 1800.0,
                 max_retries: int = 5, backoff: float = 0.5):
        if tool_mode not in TOOL_MODES:
            raise ValueError(f"tool_mode must be one of {', '.join(TOOL_MODES)}, not {tool_mode!r}")
        for key, value in (("timeout", timeout), ("connect_timeout", connect_timeout),
                           ("episode_timeout", episode_timeout)):
            if value is not None and value <= 0:
                raise ValueError(f"{key} must be > 0 seconds, not {value!r}")
        # max_turn_tokens is RL's name for the per-turn cap; max_tokens the API's (and older recipes')
        max_tokens = one_name(("max_turn_tokens", "max_tokens"), (max_turn_tokens, max_tokens), 1024)
        for key, value in (("max_turn_tokens", max_tokens), ("min_turn_tokens", min_turn_tokens)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a whole number >= 1, not {value!r}")
        if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len <= min_turn_tokens):
            raise ValueError(f"max_model_len must be a whole number of tokens > min_turn_tokens "
                             f"({min_turn_tokens}), not {max_model_len!r}")
        import openai  # here, not at module import: only this policy needs the client

        self._openai = openai
        self.model = model
        self.temperature, self.top_p, self.max_tokens, self.seed = temperature, top_p, max_tokens, seed
        self.max_model_len, self.min_turn_tokens = max_model_len, min_turn_tokens
        # what the conversation's first `_known[0]` messages count, from the last turn's usage
        self._known: tuple[int, int] | None = None
        self._tokenize: bool | None = None  # does the server answer /tokenize? None: not asked yet
        self.extra_body = dict(extra_body or {})
        self.tool_mode = tool_mode
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        # connect_timeout: a dead or firewalled host fails fast; episode_timeout: every request, retry and backoff
        # of one episode together, so a hung server costs a bounded time, not timeout x attempts per turn
        self.connect_timeout, self.episode_timeout = connect_timeout, episode_timeout
        self._deadline: float | None = None
        # auto starts native; the first "tools not supported" answer moves it to text for the rest of its life
        self.active_tool_mode = "text" if tool_mode == "text" else "native"
        if isinstance(api_key, SecretStr):
            api_key = api_key.get_secret_value()
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        # what a server's error may echo back (its view of the Authorization header): cut out of every message
        self._secrets = (api_key,) if api_key != "EMPTY" and len(api_key) >= MIN_SECRET_CHARS else ()
        # max_retries=0: our retry loop is the only one, so attempts and backoff are what describe() says
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                                    timeout=openai.Timeout(timeout, connect=min(connect_timeout, timeout)))
        self.base_url = str(self.client.base_url)
        # vLLM serves /tokenize at the root, beside /v1
        root = self.base_url.rstrip("/")
        self.tokenize_url = (root[: -len("/v1")] if root.endswith("/v1") else root) + "/tokenize"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "base_url": self.base_url,
            "tool_mode": self.tool_mode,
            "tool_mode_active": self.active_tool_mode,
            "sampling": {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                         "seed": self.seed, "extra_body": dict(self.extra_body)},
            "context": {"max_turn_tokens": self.max_tokens, "max_model_len": self.max_model_len,
                        "min_turn_tokens": self.min_turn_tokens},
        }

    def start(self, task: Task) -> None:
        self._deadline = None if self.episode_timeout is None else time.monotonic() + self.episode_timeout
        self._known = None

    def _remaining(self) -> float | None:
        """Seconds left of this episode's budget (None: unbounded); starts at the first request if start() was
        not called."""
        if self.episode_timeout is None:
            return None
        if self._deadline is None:
            self._deadline = time.monotonic() + self.episode_timeout
        return self._deadline - time.monotonic()

    def close(self) -> None:
        self.client.close()

    # -- one turn -------------------------------------------------------------------------------------------

    def reply(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> PolicyReply:
        try:
            return self._reply(messages, tools)
        except PolicyError as e:
            # the message becomes the trajectory's `error`: a server that echoes the request headers in its error
            # body must not put the key there, nor in the exceptions chained to it
            if not any(s in f"{e} {e.__cause__}" for s in self._secrets):
                raise
            clean = type(e)(self._scrub(str(e)))
        raise clean  # outside the except: nothing chained

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def _reply(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> PolicyReply:
        openai = self._openai
        attempt = 0
        last: Exception | None = None
        budget: int | None = None
        while True:
            mode = self.active_tool_mode
            delay: float | None = None
            remaining = self._remaining()
            if remaining is not None and remaining <= 0:
                raise self._out_of_time(attempt, last)
            if budget is None:  # counted once a turn (again after a switch to text tool calls)
                budget = self._budget(messages, tools, mode, remaining)
            try:
                response = self._create(messages, tools, mode, remaining, budget)
            except openai.APIStatusError as e:
                status, text = e.status_code, api_error_text(e)
                if status in RETRYABLE_STATUS or status >= 500:
                    last = e
                    delay = retry_after(e, MAX_RETRY_AFTER_S)
                elif _CONTEXT_OVERFLOW.search(text):
                    smaller = self._budget_from_error(text, budget)
                    if smaller is None:
                        raise ContextOverflow(f"{self.model}: context exceeded ({status}): {text}") from e
                    log.info("%s: the prompt counted more than estimated; max_tokens %d -> %d", self.model,
                             budget, smaller)
                    budget = smaller
                    continue
                elif self.tool_mode == "auto" and mode == "native" and _TOOLS_UNSUPPORTED.search(text):
                    log.warning("%s at %s does not take native tools (%s); using text tool calls from now on",
                                self.model, self.base_url, self._scrub(text))
                    self.active_tool_mode = "text"
                    budget = None
                    continue
                else:
                    hint = ""
                    if mode == "native" and _TOOLS_UNSUPPORTED.search(text):
                        hint = " (the server takes no native tools: use tool_mode text or auto)"
                    raise PolicyError(f"{self.model} at {self.base_url} refused the request ({status}): "
                                      f"{text}{hint}") from e
            except openai.APIConnectionError as e:  # timeouts included
                last = e
            except openai.OpenAIError as e:
                raise PolicyError(f"{self.model} at {self.base_url}: {type(e).__name__}: {e}") from e
            except ValueError as e:  # a body that claims JSON and is not
                raise PolicyError(f"{self.model} at {self.base_url} answered with a body that is not JSON: "
                                  f"{e}") from e
            else:
                try:
                    reply = self._to_reply(response, mode, attempt + 1, assistant_turn(messages))
                except (AttributeError, TypeError, IndexError) as e:  # JSON, but no chat completion
                    raise PolicyError(f"{self.model} at {self.base_url} answered with a malformed chat "
                                      f"completion: {type(e).__name__}: {e}") from e
                reply.extra["max_tokens"] = budget
                # the conversation so far plus this reply: the next turn counts only what comes after
                if reply.prompt_tokens:
                    self._known = (len(messages) + 1, reply.prompt_tokens + reply.completion_tokens)
                return reply
            assert last is not None
            if attempt >= self.max_retries:
                raise PolicyError(f"{self.model} at {self.base_url}: gave up after {attempt + 1} attempts; "
                                  f"last error: {_describe_error(last)}") from last
            if delay is None:
                delay = min(self.backoff * 2 ** attempt, MAX_BACKOFF_S) * (1 + 0.5 * random.random())
            remaining = self._remaining()
            if remaining is not None and delay >= remaining:
                raise self._out_of_time(attempt + 1, last)
            log.info("%s: attempt %d failed (%s); retrying in %.2fs", self.model, attempt + 1,
                     self._scrub(_describe_error(last)), delay)
            time.sleep(delay)
            attempt += 1

    def _out_of_time(self, attempts: int, last: Exception | None) -> PolicyError:
        cause = f"; last error: {_describe_error(last)}" if last is not None else ""
        return PolicyError(f"{self.model} at {self.base_url}: the episode's time budget (episode_timeout "
                           f"{self.episode_timeout:g} s) ran out after {attempts} failed attempt(s) this turn{cause}")

    # -- the context budget -----------------------------------------------------------------------------------

    def _budget(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], mode: str,
                remaining: float | None) -> int:
        """This turn's max_tokens (ContextOverflow when the context has too little left)."""
        if self.max_model_len is None:
            return self.max_tokens
        sent = [_clean_message(m) for m in messages] if mode == "native" else to_text_mode(messages, tools)
        counted = self._count_by_server(sent, tools if mode == "native" else [], remaining)
        how = "counted by the server's /tokenize"
        if counted is None:
            counted, how = self._estimate(messages, tools), "estimated"
        return turn_budget(self.max_tokens, self.max_model_len, counted, min_turn_tokens=self.min_turn_tokens,
                           counted=how)

    def _count_by_server(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                         remaining: float | None) -> int | None:
        """The prompt's exact tokens from vLLM's /tokenize, or None where the server has none (asked once) or
        does not answer now (the chat request then meets the same trouble and handles it)."""
        if self._tokenize is False:
            return None
        body: dict[str, Any] = {"model": self.model, "messages": messages, "add_generation_prompt": True}
        if tools:
            body["tools"] = tools
        timeout = min(self.timeout, remaining) if remaining is not None else self.timeout
        openai = self._openai
        try:
            answer = self.client.post(self.tokenize_url, cast_to=object, body=body, options={
                "timeout": openai.Timeout(timeout, connect=min(self.connect_timeout, timeout))})
        except openai.APIStatusError as e:
            if e.status_code in (404, 405, 501):
                log.info("%s has no /tokenize (%d): prompts are estimated from usage", self.base_url, e.status_code)
                self._tokenize = False
            return None
        except (openai.OpenAIError, ValueError):
            return None
        count = answer.get("count") if isinstance(answer, dict) else None
        if not isinstance(count, int) or isinstance(count, bool):
            self._tokenize = False  # something answered, not vLLM's tokenizer
            return None
        self._tokenize = True
        return count

    def _estimate(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
        """The last turn's prompt + completion as the server counted them, plus an estimate of what came after;
        the whole conversation estimated where no usage is known (the first turn, a server without usage)."""
        known = self._known
        if known is not None and known[0] <= len(messages):
            return known[1] + estimate_tokens(messages[known[0]:])
        return estimate_tokens(messages) + (estimate_text_tokens(json.dumps(tools)) if tools else 0)

    def _budget_from_error(self, text: str, sent: int) -> int | None:
        """A smaller max_tokens that fits, from the prompt size the server's "context exceeded" answer states
        (our estimate was low); None when it states none, or nothing useful fits."""
        found = _PROMPT_TOKENS_IN_ERROR.search(text)
        if self.max_model_len is None or found is None:
            return None
        prompt = int(next(g for g in found.groups() if g))
        context = self.max_model_len
        if (server := _CONTEXT_IN_ERROR.search(text)) is not None:
            context = min(context, int(server.group(1)))
        try:
            budget = turn_budget(self.max_tokens, context, prompt, min_turn_tokens=self.min_turn_tokens,
                                 counted="counted by the server")
        except ContextOverflow:
            return None
        return budget if budget < sent else None

    def _create(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], mode: str,
                remaining: float | None, max_tokens: int):
        kwargs: dict[str, Any] = {"model": self.model, "temperature": self.temperature, "top_p": self.top_p,
                                  "max_tokens": max_tokens}
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if self.extra_body:
            kwargs["extra_body"] = dict(self.extra_body)
        if mode == "native":
            kwargs["messages"] = [_clean_message(m) for m in messages]
            if tools:
                kwargs["tools"] = tools
        else:
            kwargs["messages"] = to_text_mode(messages, tools)
        if remaining is not None and remaining < self.timeout:  # the last request may not outlive the budget
            kwargs["timeout"] = self._openai.Timeout(remaining, connect=min(self.connect_timeout, remaining))
        return self.client.chat.completions.create(**kwargs)

    def _to_reply(self, response: Any, mode: str, attempts: int, turn: int) -> PolicyReply:
        if isinstance(response, str):  # the client hands back the text of a reply that is not JSON
            snippet = " ".join(response.split())[:200]
            raise PolicyError(f"{self.model} at {self.base_url} answered with something that is not a JSON "
                              f"chat completion (is base_url the API's /v1?): {snippet!r}")
        if not getattr(response, "choices", None):
            raise PolicyError(f"{self.model} at {self.base_url} answered with no choices")
        choice = response.choices[0]
        message = choice.message
        content = message.content
        tool_calls = [_plain_tool_call(tc, turn, i) for i, tc in enumerate(message.tool_calls or [])]
        if mode == "native" and not tool_calls and self.tool_mode == "auto" and OPEN in (content or ""):
            log.warning("%s at %s takes tools but answered a tool call as text; using text tool calls from now on",
                        self.model, self.base_url)
            self.active_tool_mode = mode = "text"
        if mode == "text":
            content, tool_calls = parse_tool_calls(content, turn=turn)
            content = content or None
        out: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            out["tool_calls"] = tool_calls
        extra: dict[str, Any] = {"tool_mode": mode, "attempts": attempts, "response_id": response.id,
                                 "served_model": response.model}
        reasoning = (message.model_extra or {}).get("reasoning_content")
        if reasoning:
            extra["reasoning_content"] = reasoning
        usage = response.usage
        return PolicyReply(message=out,
                           prompt_tokens=(getattr(usage, "prompt_tokens", None) or 0) if usage else 0,
                           completion_tokens=(getattr(usage, "completion_tokens", None) or 0) if usage else 0,
                           finish_reason=choice.finish_reason, extra=extra)


# -- text mode: the Hermes / Qwen2.5 tool-call format ---------------------------------------------------------


def tools_system_block(tools: list[dict[str, Any]]) -> str:
    lines = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
    return TOOLS_PROMPT_HEAD + lines + TOOLS_PROMPT_TAIL


def to_text_mode(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What Qwen2.5's chat template renders: tools in the system message, calls and results as plain text."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "tool":
            block = f"<tool_response>\n{_text(m.get('content'))}\n</tool_response>"
            if out and out[-1].get("_tool_responses"):
                out[-1]["content"] += "\n" + block  # consecutive results share one user turn
            else:
                out.append({"role": "user", "content": block, "_tool_responses": True})
        elif role == "assistant" and m.get("tool_calls"):
            parts = [_text(m.get("content"))] if m.get("content") else []
            parts += [render_tool_call(tc) for tc in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(parts)})
        else:
            out.append(_clean_message(m))
    for m in out:
        m.pop("_tool_responses", None)
    if tools:
        block = tools_system_block(tools)
        if out and out[0].get("role") == "system":
            system = _text(out[0].get("content"))
            out[0] = {**out[0], "content": f"{system}\n\n{block}" if system else block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


# -- helpers ------------------------------------------------------------------------------------------------


def estimate_text_tokens(text: str) -> int:
    return -(-len(text) // EST_CHARS_PER_TOKEN)


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """An estimate, on the high side, of what messages take in a chat template."""
    total = 0
    for m in messages:
        total += EST_TOKENS_PER_MESSAGE + estimate_text_tokens(_text(m.get("content")))
        for call in m.get("tool_calls") or []:
            total += estimate_text_tokens(json.dumps(call, ensure_ascii=False, default=str))
    return total


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _clean_message(m: dict[str, Any]) -> dict[str, Any]:
    m = dict(m)
    if "tool_calls" in m and not m["tool_calls"]:
        del m["tool_calls"]  # OpenAI rejects an empty tool_calls array
    elif m.get("tool_calls"):  # a malformed call's "error" is swepost's, not the API's: an API may reject it
        m["tool_calls"] = [{k: v for k, v in c.items() if k != "error"} if isinstance(c, dict) else c
                           for c in m["tool_calls"]]
    return m


def _plain_tool_call(tc: Any, turn: int, index: int) -> dict[str, Any]:
    fn = getattr(tc, "function", None)
    return {"id": getattr(tc, "id", None) or call_id(turn, index), "type": "function",
            "function": {"name": getattr(fn, "name", None) or "",
                         "arguments": getattr(fn, "arguments", None) or ""}}




def _describe_error(e: Exception) -> str:
    status = getattr(e, "status_code", None)
    detail = api_error_text(e) if status is not None else str(e)
    return f"{type(e).__name__}{f' {status}' if status else ''}: {detail}"


