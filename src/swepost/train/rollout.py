"""Multi-turn rollouts for RL: many episodes at once, their sandbox work concurrent, their model turns batched,
and every token the trainer sees taken from generation.

Why not TRL's own tool loop (`environment_factory` / `tools`): it runs the tool calls of a generation batch one
rollout after another, so with sandboxes that take seconds per call (a test run, a container start, grading in a
fresh sandbox) the whole batch waits on the sum of them. Here every rollout is an ordinary swepost episode
(`agent.run_episode`: the same tools, limits, exit statuses and grader as `collect` and `eval`) on its own thread,
and the model is a `TokenPolicy` that:

* keeps the episode's token ledger: the rendered prompt, then each turn's generated ids exactly as sampled (mask
  1, never decoded and re-encoded), then the chat-template text the environment's replies add (tool results, a
  "no tool call" nudge; mask 0), found by rendering the conversation before and after and taking the difference
  at the end-of-turn token, as TRL does;
* hands generation requests to a `Batcher`, which runs them together: once every live episode is waiting on the
  model, or `max_wait` seconds after the first request, whichever comes first. A generator that serves requests
  concurrently itself (an OpenAI-compatible server: vLLM with continuous batching) is called from the episode
  threads directly;
* ends the episode as `context_overflow` when the completion budget (model and tool tokens together, TRL's
  `max_completion_length`) runs out, mid-turn or before a tool result would be added.

`concurrency` bounds how many episodes do sandbox work (reset, tool calls, grading) at the same moment;
`concurrency=1` is TRL's behaviour (one rollout's tool calls after another, generation batched per turn), kept
for the benchmark that compares the two (`bench/rl_rollout.py`).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from swepost.agent import AgentLimits, run_episode
from swepost.envs.base import Environment, Observation
from swepost.policies.base import ContextOverflow, PolicyError, PolicyReply
from swepost.policies.hf import _template_messages, parse_tool_calls
from swepost.records import Task, Trajectory


@dataclass
class Generated:
    ids: list[int]
    logprobs: list[float] | None = None
    stopped: bool = True  # ended with a stop token (else the token budget ran out)


class Generator(Protocol):
    concurrent: bool  # True: safe and efficient to call from many threads at once (an HTTP server)

    def generate(self, requests: list[tuple[list[int], int, int]]) -> list[Generated]:
        """One continuation per (context ids, max new tokens, seed), each cut after its first stop token. The
        seed makes a request's sampling reproducible whatever else shares its batch."""
        ...


def request_seed(key: str, episode: int, turn: int) -> int:
    """The sampling seed of one model turn: a function of the run's key, the episode and the turn only."""
    digest = hashlib.sha256(f"{key}:{episode}:{turn}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2 ** 63 - 1)


def cut_at_stop(ids: list[int], stop_ids: set[int], budget: int) -> tuple[list[int], bool]:
    """The generated ids up to and including the first stop token, at most `budget` of them."""
    for i, tok in enumerate(ids[:budget]):
        if tok in stop_ids:
            return ids[: i + 1], True
    return ids[:budget], False


class Batcher:
    """Collects generation requests from episode threads and runs them as batches on the serving thread."""

    def __init__(self, generator: Generator, max_wait: float = 1.0):
        self.generator, self.max_wait = generator, max_wait
        self._cv = threading.Condition()
        self._pending: list[tuple[list[int], int, int, Future]] = []
        self._first_at = 0.0
        self.live = 0
        self.generate_seconds = 0.0
        self.batches: list[int] = []

    def enter(self) -> None:
        with self._cv:
            self.live += 1

    def leave(self) -> None:
        with self._cv:
            self.live -= 1
            self._cv.notify_all()

    def submit(self, ids: list[int], budget: int, seed: int = 0) -> Generated:
        if self.generator.concurrent:
            t0 = time.monotonic()
            out = self.generator.generate([(ids, budget, seed)])[0]
            with self._cv:
                self.generate_seconds += time.monotonic() - t0
                self.batches.append(1)
            return out
        future: Future = Future()
        with self._cv:
            if not self._pending:
                self._first_at = time.monotonic()
            self._pending.append((ids, budget, seed, future))
            self._cv.notify_all()
        return future.result()

    def serve(self, finished: Callable[[], bool]) -> None:
        """Run batches on this thread until `finished()` and nothing is pending."""
        while True:
            with self._cv:
                while True:
                    if self._pending:
                        waited = time.monotonic() - self._first_at
                        if len(self._pending) >= self.live or waited >= self.max_wait:
                            batch, self._pending = self._pending, []
                            break
                        self._cv.wait(timeout=self.max_wait - waited)
                    elif finished():
                        return
                    else:
                        self._cv.wait(timeout=0.05)
            t0 = time.monotonic()
            try:
                results = self.generator.generate([(ids, budget, seed) for ids, budget, seed, _ in batch])
            except BaseException as e:  # every waiting episode learns of it as a policy error
                for *_, future in batch:
                    future.set_exception(PolicyError(f"generation failed: {e}"))
                if not isinstance(e, Exception):
                    raise
                continue
            finally:
                self.generate_seconds += time.monotonic() - t0
                self.batches.append(len(batch))
            for (*_, future), result in zip(batch, results, strict=True):
                future.set_result(result)


class TokenPolicy:
    """The policy of one RL episode: renders, asks the batcher to generate, and keeps the token ledger."""

    name = "rl"

    def __init__(self, tokenizer, batcher: Batcher, *, max_prompt_tokens: int, max_completion_tokens: int,
                 max_turn_tokens: int | None = None, describe: dict[str, Any] | None = None, seed_key: str = "0",
                 episode: int = 0):
        self.tokenizer, self.batcher = tokenizer, batcher
        self.max_prompt_tokens, self.max_completion_tokens = max_prompt_tokens, max_completion_tokens
        self.max_turn_tokens = max_turn_tokens
        self._describe = describe or {}
        self.seed_key, self.episode = seed_key, episode
        eos = tokenizer.eos_token
        if not eos:
            raise PolicyError("the tokenizer has no eos_token (the end-of-turn token, e.g. <|im_end|>)")
        self.eos_text = eos
        self.stop_ids = {tokenizer.eos_token_id}
        self.prompt_ids: list[int] = []
        self.completion_ids: list[int] = []
        self.mask: list[int] = []
        self.logprobs: list[float] = []
        self.has_logprobs = True
        self._rendered = 0  # messages covered by the ledger before the last assistant turn
        self._turns = 0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self._describe}

    def start(self, task: Task) -> None:
        self.prompt_ids, self.completion_ids, self.mask, self.logprobs = [], [], [], []
        self._rendered, self._turns, self.has_logprobs = 0, 0, True

    def _render(self, messages: list[dict[str, Any]], tools, generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(_template_messages(messages), tools=tools or None,
                                                      add_generation_prompt=generation_prompt, tokenize=False)
        except Exception as e:  # a message the template cannot render
            raise PolicyError(f"cannot render the conversation with the chat template: {e}") from None

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _suffix(self, messages: list[dict[str, Any]], tools) -> list[int]:
        """Token ids of what the environment added since the last assistant turn, with the generation prompt."""
        before = self._render(messages[: self._rendered + 1], tools, False)
        end = before.rfind(self.eos_text)
        if end < 0:
            raise PolicyError(f"the chat template does not end an assistant turn with {self.eos_text!r}")
        before = before[: end + len(self.eos_text)]
        after = self._render(messages, tools, True)
        if not after.startswith(before):
            raise PolicyError("the chat template is not prefix-preserving: rendering more messages changed the "
                              "text of earlier ones, so generated tokens cannot be kept as they were sampled")
        return self._encode(after[len(before):])

    def _extend(self, ids: list[int], mask: int, logprobs: list[float] | None) -> None:
        self.completion_ids += ids
        self.mask += [mask] * len(ids)
        if logprobs is None or len(logprobs) != len(ids):
            self.has_logprobs = self.has_logprobs and mask == 0
            logprobs = [0.0] * len(ids)
        self.logprobs += logprobs

    def reply(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> PolicyReply:
        if self._turns == 0:
            self.prompt_ids = self._encode(self._render(messages, tools, True))
            if len(self.prompt_ids) > self.max_prompt_tokens:
                raise ContextOverflow(f"the prompt has {len(self.prompt_ids)} tokens; max_prompt_tokens is "
                                      f"{self.max_prompt_tokens}")
        else:
            suffix = self._suffix(messages, tools)
            if len(self.completion_ids) + len(suffix) >= self.max_completion_tokens:
                raise ContextOverflow(f"the environment's reply ({len(suffix)} tokens) does not fit the completion "
                                      f"budget of {self.max_completion_tokens} tokens")
            self._extend(suffix, 0, None)
        left = self.max_completion_tokens - len(self.completion_ids)
        budget = min(left, self.max_turn_tokens) if self.max_turn_tokens else left  # what is left, per-turn cap
        out = self.batcher.submit(self.prompt_ids + self.completion_ids, budget,
                                  request_seed(self.seed_key, self.episode, self._turns))
        self._extend(out.ids, 1, out.logprobs)
        self._rendered, self._turns = len(messages), self._turns + 1
        if not out.stopped:
            if budget < left:
                raise ContextOverflow(f"one turn ran past max_turn_tokens ({self.max_turn_tokens} tokens)")
            raise ContextOverflow(f"the completion budget of {self.max_completion_tokens} tokens ran out mid-turn")
        text = self.tokenizer.decode([t for t in out.ids if t not in self.stop_ids], skip_special_tokens=True)
        content, calls = parse_tool_calls(text, id_prefix=f"call_{self._turns}")
        return PolicyReply(message={"role": "assistant", "content": content, "tool_calls": calls},
                           prompt_tokens=len(self.prompt_ids) + len(self.completion_ids) - len(out.ids),
                           completion_tokens=len(out.ids), finish_reason="tool_calls" if calls else "stop")


class GatedEnvironment:
    """An environment whose every call holds a slot of a shared semaphore: at most N episodes do sandbox work
    at the same moment (their containers stay up while they wait for the model)."""

    def __init__(self, env: Environment, gate: threading.Semaphore):
        self.env, self.gate = env, gate
        self.name = getattr(env, "name", "env")

    def _call(self, fn, *args):
        with self.gate:
            return fn(*args)

    def reset(self, task: Task) -> list[dict[str, Any]]:
        return self._call(self.env.reset, task)

    def tools(self) -> list[dict[str, Any]]:
        return self.env.tools()

    def step(self, name: str, arguments: dict[str, Any]) -> Observation:
        return self._call(self.env.step, name, arguments)

    def final_diff(self) -> str:
        return self._call(self.env.final_diff)

    def score(self) -> dict[str, Any]:
        return self._call(self.env.score)

    def close(self) -> None:
        self._call(self.env.close)


@dataclass
class Rollout:
    """One finished episode and its token ledger (what the trainer trains on)."""

    trajectory: Trajectory
    prompt_ids: list[int]
    completion_ids: list[int]
    mask: list[int]  # 1: generated by the model (trained); 0: environment / template tokens (no loss)
    logprobs: list[float] | None
    rewards: dict[str, float | None] = field(default_factory=dict)  # filled by whoever scores the rollout

    @property
    def model_tokens(self) -> int:
        return sum(self.mask)


@dataclass
class RolloutStats:
    wall: float = 0.0
    generation: float = 0.0
    batches: list[int] = field(default_factory=list)

    @property
    def environment(self) -> float:
        """Wall time the batch spent not generating: sandbox work the model waited on."""
        return max(self.wall - self.generation, 0.0)


def run_rollouts(tasks: list[Task], *, make_env: Callable[[], Environment], generator: Generator, tokenizer,
                 limits: AgentLimits, max_prompt_tokens: int, max_completion_tokens: int, concurrency: int,
                 max_turn_tokens: int | None = None, max_wait: float = 1.0, samples: list[int] | None = None,
                 describe: dict[str, Any] | None = None, seed: str = "0") -> tuple[list[Rollout], RolloutStats]:
    """One episode per entry of `tasks` (repeat a task for a group), all at once; generation on this thread.
    Episode i's turns are sampled with seeds from (seed, i, turn): the same call gives the same rollouts."""
    batcher = Batcher(generator, max_wait=max_wait)
    gate = threading.Semaphore(max(1, concurrency))
    samples = samples if samples is not None else list(range(len(tasks)))
    started = time.monotonic()
    remaining = [len(tasks)]
    lock = threading.Lock()

    def episode(i: int) -> Rollout:
        policy = TokenPolicy(tokenizer, batcher, max_prompt_tokens=max_prompt_tokens,
                             max_completion_tokens=max_completion_tokens, max_turn_tokens=max_turn_tokens,
                             describe=describe, seed_key=seed, episode=i)
        try:
            traj = run_episode(policy, GatedEnvironment(make_env(), gate), tasks[i], sample=samples[i],
                               limits=limits, grade=True)
        finally:
            batcher.leave()
            with lock:
                remaining[0] -= 1
        completion, mask, logprobs = policy.completion_ids, policy.mask, policy.logprobs
        if not policy.prompt_ids:  # the episode ended before its first turn (a sandbox that failed to start)
            policy.prompt_ids = [tokenizer.eos_token_id]
        if not completion:  # the trainer needs one token per row: an end-of-turn token that carries no loss
            completion, mask, logprobs = [tokenizer.eos_token_id], [0], [0.0]
        return Rollout(traj, policy.prompt_ids, completion, mask, logprobs if policy.has_logprobs else None)

    for _ in tasks:
        batcher.enter()
    with ThreadPoolExecutor(max_workers=max(1, len(tasks)), thread_name_prefix="rollout") as pool:
        futures = [pool.submit(episode, i) for i in range(len(tasks))]
        batcher.serve(lambda: remaining[0] == 0)
        rollouts = [f.result() for f in futures]
    stats = RolloutStats(wall=time.monotonic() - started, generation=batcher.generate_seconds,
                         batches=batcher.batches)
    return rollouts, stats


# --- generators ---------------------------------------------------------------------------------------------

class TransformersGenerator:
    """Batched `model.generate` on the policy being trained (left-padded contexts, sampling as configured)."""

    concurrent = False

    def __init__(self, model_context: Callable[[], Any], generation_config, stop_ids: set[int], pad_id: int):
        self.model_context, self.config = model_context, generation_config
        self.stop_ids, self.pad_id = stop_ids, pad_id

    def generate(self, requests: list[tuple[list[int], int, int]]) -> list[Generated]:
        import copy

        import torch
        from transformers import LogitsProcessorList

        from swepost.policies.hf import SeededSampler

        width = max(len(ids) for ids, _, _ in requests)
        input_ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(requests), width), dtype=torch.long)
        for row, (ids, _, _) in enumerate(requests):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        config = copy.deepcopy(self.config)
        config.max_new_tokens = max(budget for _, budget, _ in requests)
        sample = bool(config.do_sample)
        if sample:  # sampled row by row with the requests' own seeds (below); greedy then takes that token
            temperature, top_p, top_k = config.temperature or 1.0, config.top_p or 1.0, config.top_k or None
            config.do_sample = False
            config.temperature = config.top_p = config.top_k = config.min_p = None
        with self.model_context() as model, torch.no_grad():
            device = next(model.parameters()).device
            processors = LogitsProcessorList()
            if sample:
                generators = [torch.Generator(device=device).manual_seed(seed) for _, _, seed in requests]
                processors.append(SeededSampler(temperature, top_p, generators, top_k=top_k))
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                 generation_config=config, logits_processor=processors)
        results = []
        for row, (_, budget, _) in enumerate(requests):
            ids, stopped = cut_at_stop(out[row, width:].tolist(), self.stop_ids, budget)
            results.append(Generated(ids, None, stopped))
        return results


class VllmColocateGenerator:
    """vLLM inside the training process (TRL's colocate mode): TRL keeps its weights in sync before every
    rollout phase; requests go to the in-process engine with their own token budgets and come back with
    logprobs (for TRL's importance-sampling correction)."""

    concurrent = False

    def __init__(self, llm, sampling: dict[str, Any], stop_ids: set[int]):
        self.llm, self.sampling, self.stop_ids = llm, sampling, stop_ids

    def generate(self, requests: list[tuple[list[int], int, int]]) -> list[Generated]:
        from vllm import SamplingParams

        params = [SamplingParams(**self.sampling, max_tokens=budget, logprobs=0, seed=seed)
                  for _, budget, seed in requests]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids, _, _ in requests], params, use_tqdm=False)
        results = []
        for (_, budget, _), output in zip(requests, outputs, strict=True):
            choice = output.outputs[0]
            ids, stopped = cut_at_stop(list(choice.token_ids), self.stop_ids, budget)
            logprobs = None
            if choice.logprobs is not None:
                logprobs = [float(step[tok].logprob) for step, tok in zip(choice.logprobs, ids, strict=False)]
            results.append(Generated(ids, logprobs, stopped))
        return results


class CompletionsGenerator:
    """An OpenAI-compatible `/v1/completions` endpoint that takes token-id prompts and returns token ids
    (`return_token_ids`, vLLM >= 0.10.2; `trl vllm-serve` / `vllm serve` in TRL's server mode, whose weights
    TRL pushes before every rollout phase). Called from the episode threads at once: the server batches."""

    concurrent = True

    def __init__(self, base_url: str, model: str | None, sampling: dict[str, Any], stop_ids: set[int],
                 timeout: float = 600.0, retries: int = 3):
        self.url = base_url.rstrip("/") + "/completions"
        self.model, self.sampling, self.stop_ids = model, sampling, stop_ids
        self.timeout, self.retries = timeout, retries

    def generate(self, requests: list[tuple[list[int], int, int]]) -> list[Generated]:
        return [self._one(ids, budget, seed) for ids, budget, seed in requests]

    def _post(self, body: dict[str, Any]) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self.url, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _one(self, ids: list[int], budget: int, seed: int) -> Generated:
        body = {"prompt": ids, "max_tokens": budget, "logprobs": 0, "return_token_ids": True,
                "skip_special_tokens": False, "seed": seed, **self.sampling}
        if self.model:  # else the server's only model
            body["model"] = self.model
        error: Exception | str = ""
        for attempt in range(self.retries):
            try:
                status, data = self._post(body)
            except OSError as e:  # refused, reset, timed out
                error = e
            else:
                if 400 <= status < 500:  # our request is wrong: retrying will not help
                    raise PolicyError(f"{self.url}: HTTP {status}: {data[:300].decode(errors='replace')}")
                if status < 400:
                    choice = json.loads(data)["choices"][0]
                    break
                error = f"HTTP {status}: {data[:300].decode(errors='replace')}"
            time.sleep(min(0.5 * 2 ** attempt, 10))
        else:
            raise PolicyError(f"{self.url}: {error}")
        if "token_ids" not in choice:
            raise PolicyError(f"{self.url} returned no token_ids: the server must support `return_token_ids` "
                              "(vLLM >= 0.10.2)")
        ids_out, stopped = cut_at_stop(list(choice["token_ids"]), self.stop_ids, budget)
        lp = (choice.get("logprobs") or {}).get("token_logprobs")
        logprobs = [float(x) if x is not None and not math.isnan(float(x)) else 0.0
                    for x in lp[: len(ids_out)]] if lp else None
        return Generated(ids_out, logprobs, stopped)


class ScriptedGenerator:
    """Replays fixed assistant turns as token ids, by turn number (tests and benchmarks of the environment side:
    no model, same token bookkeeping). `turns` are texts as the model would write them, e.g.
    '<tool_call>\\n{"name": "submit", "arguments": {}}\\n</tool_call>'; the end-of-turn token is added."""

    concurrent = False

    def __init__(self, tokenizer, turns: list[str], delay: float = 0.0):
        self.tokenizer, self.delay = tokenizer, delay
        self.turns = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
                      for t in turns]
        self.marker = list(tokenizer("<|im_start|>assistant", add_special_tokens=False)["input_ids"])

    def _turn(self, ids: list[int]) -> int:
        m, n = self.marker, len(self.marker)
        return sum(1 for i in range(len(ids) - n + 1) if ids[i:i + n] == m) - 1

    def generate(self, requests: list[tuple[list[int], int, int]]) -> list[Generated]:
        if self.delay:
            time.sleep(self.delay)
        out = []
        for ids, budget, _ in requests:
            turn = self.turns[min(self._turn(ids), len(self.turns) - 1)]
            out.append(Generated(turn[:budget], None, len(turn) <= budget))
        return out
