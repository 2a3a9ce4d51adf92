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

`deadline` (seconds after the batch starts) bounds the step: episodes still running then are cut, so one
30-minute test run does not idle every GPU. A cut episode's sandbox is closed from the deadline thread (which
wakes its thread out of a blocked tool call), its generation requests fail, and it comes back with exit status
`deadline`, the token ledger it had and no reward (an infrastructure cut, never a wrong answer). `RolloutStats`
says what the batch cost: the episode-time thrown away and how long the generator sat idle.
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

from swepost.agent import AgentLimits, now, run_episode
from swepost.envs.base import Environment, EnvironmentBroken, Observation
from swepost.policies.base import ContextOverflow, PolicyError, PolicyReply
from swepost.policies.chat import template_messages
from swepost.policies.toolcalls import parse_tool_calls
from swepost.records import ExitStatus, Task, Trajectory

CUT = "cut at the rollout deadline"


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
        self._pending: list[tuple[list[int], int, int, int | None, Future]] = []
        self._first_at = 0.0
        self._cut: set[int] = set()  # episodes cut at the deadline: their requests fail
        self._inflight = 0
        self._busy_since = 0.0
        self._busy_seconds = 0.0
        self.live = 0
        self.generate_seconds = 0.0  # inside generate calls, summed (a concurrent generator's calls overlap)
        self.batches: list[int] = []

    def enter(self) -> None:
        with self._cv:
            self.live += 1

    def leave(self) -> None:
        with self._cv:
            self.live -= 1
            self._cv.notify_all()

    def _busy(self, change: int) -> None:
        """Count a generate call in (+1) or out (-1); called holding self._cv."""
        if change > 0 and self._inflight == 0:
            self._busy_since = time.monotonic()
        self._inflight += change
        if change < 0 and self._inflight == 0:
            self._busy_seconds += time.monotonic() - self._busy_since

    def busy_seconds(self) -> float:
        """Seconds so far during which at least one generate call was running: the generator's busy time."""
        with self._cv:
            running = time.monotonic() - self._busy_since if self._inflight else 0.0
            return self._busy_seconds + running

    def cut(self, owners: list[int]) -> None:
        """Fail the pending and all later requests of these episodes (cut at the deadline)."""
        with self._cv:
            self._cut.update(owners)
            keep = []
            for item in self._pending:
                if item[3] in self._cut:
                    item[4].set_exception(PolicyError(CUT))
                else:
                    keep.append(item)
            self._pending = keep
            self._cv.notify_all()

    def submit(self, ids: list[int], budget: int, seed: int = 0, owner: int | None = None) -> Generated:
        """One continuation; `owner` (the episode) lets a cut at the deadline fail the request."""
        if self.generator.concurrent:
            with self._cv:
                if owner in self._cut:
                    raise PolicyError(CUT)
                self._busy(+1)
            t0 = time.monotonic()
            try:
                out = self.generator.generate([(ids, budget, seed)])[0]
            finally:
                with self._cv:
                    self._busy(-1)
                    self.generate_seconds += time.monotonic() - t0
                    self.batches.append(1)
            if owner in self._cut:  # the answer came after the cut: nobody is waiting for it
                raise PolicyError(CUT)
            return out
        future: Future = Future()
        with self._cv:
            if owner in self._cut:
                raise PolicyError(CUT)
            if not self._pending:
                self._first_at = time.monotonic()
            self._pending.append((ids, budget, seed, owner, future))
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
            with self._cv:
                self._busy(+1)
            t0 = time.monotonic()
            try:
                results = self.generator.generate([(ids, budget, seed) for ids, budget, seed, *_ in batch])
            except BaseException as e:  # every waiting episode learns of it as a policy error
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(PolicyError(f"generation failed: {e}"))
                if not isinstance(e, Exception):
                    raise
                continue
            finally:
                with self._cv:
                    self._busy(-1)
                    self.generate_seconds += time.monotonic() - t0
                    self.batches.append(len(batch))
            for (*_, future), result in zip(batch, results, strict=True):
                if not future.done():  # else cut at the deadline while its batch ran: dropped
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
        self._lock = threading.Lock()  # the ledger, read whole by the deadline thread
        self.frozen = False  # cut at the deadline: the ledger stays as it was

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self._describe}

    def start(self, task: Task) -> None:
        self.prompt_ids, self.completion_ids, self.mask, self.logprobs = [], [], [], []
        self._rendered, self._turns, self.has_logprobs = 0, 0, True

    def _render(self, messages: list[dict[str, Any]], tools, generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(template_messages(messages), tools=tools or None,
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
        with self._lock:
            if self.frozen:
                raise PolicyError(CUT)
            self.completion_ids += ids
            self.mask += [mask] * len(ids)
            if logprobs is None or len(logprobs) != len(ids):
                self.has_logprobs = self.has_logprobs and mask == 0
                logprobs = [0.0] * len(ids)
            self.logprobs += logprobs

    def freeze(self) -> tuple[list[int], list[int], list[int], list[float] | None]:
        """Stop the ledger where it is (the episode is cut) and return a copy: prompt, completion, mask,
        logprobs (None where some generated tokens came without them)."""
        with self._lock:
            self.frozen = True
            return (list(self.prompt_ids), list(self.completion_ids), list(self.mask),
                    list(self.logprobs) if self.has_logprobs else None)

    def reply(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> PolicyReply:
        if self.frozen:
            raise PolicyError(CUT)
        if self._turns == 0:
            prompt_ids = self._encode(self._render(messages, tools, True))
            with self._lock:
                if self.frozen:
                    raise PolicyError(CUT)
                self.prompt_ids = prompt_ids
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
                                  request_seed(self.seed_key, self.episode, self._turns), owner=self.episode)
        self._extend(out.ids, 1, out.logprobs)
        self._rendered, self._turns = len(messages), self._turns + 1
        if not out.stopped:
            if budget < left:
                raise ContextOverflow(f"one turn ran past max_turn_tokens ({self.max_turn_tokens} tokens)")
            raise ContextOverflow(f"the completion budget of {self.max_completion_tokens} tokens ran out mid-turn")
        text = self.tokenizer.decode([t for t in out.ids if t not in self.stop_ids], skip_special_tokens=True)
        content, calls = parse_tool_calls(text, turn=self._turns)
        return PolicyReply(message={"role": "assistant", "content": content, "tool_calls": calls},
                           prompt_tokens=len(self.prompt_ids) + len(self.completion_ids) - len(out.ids),
                           completion_tokens=len(out.ids), finish_reason="tool_calls" if calls else "stop")


class GatedEnvironment:
    """An environment whose every call holds a slot of a shared semaphore: at most N episodes do sandbox work
    at the same moment (their containers stay up while they wait for the model). `cut()` (the deadline, from
    another thread) closes the environment under a running call and fails every later one."""

    def __init__(self, env: Environment, gate: threading.Semaphore):
        self.env, self.gate = env, gate
        self.doing = "waiting to start"  # what the episode was doing, for a cut's message
        self._cut = threading.Event()

    @property
    def name(self) -> str:  # read through: a remote environment learns its name from the server at reset
        return getattr(self.env, "name", "env")

    def _call(self, doing: str, fn, *args):
        self.doing = f"waiting for a sandbox slot ({doing})"
        while not self.gate.acquire(timeout=0.1):
            if self._cut.is_set():
                raise EnvironmentBroken(CUT)
        try:
            if self._cut.is_set():
                raise EnvironmentBroken(CUT)
            self.doing = doing
            result = fn(*args)
        finally:
            self.gate.release()
            self.doing = "waiting for the model"
        if self._cut.is_set():  # cut while it ran: a sandbox it opened after the cut's close goes too
            self.env.close()
            raise EnvironmentBroken(CUT)
        return result

    def reset(self, task: Task) -> list[dict[str, Any]]:
        return self._call("starting its sandbox", self.env.reset, task)

    def tools(self) -> list[dict[str, Any]]:
        return self.env.tools()

    def step(self, name: str, arguments: dict[str, Any]) -> Observation:
        return self._call(f"running the tool call {str(name)[:40]!r}", self.env.step, name, arguments)

    def final_diff(self) -> str:
        return self._call("taking the final diff", self.env.final_diff)

    def __getattr__(self, name: str):
        # optional hooks of the wrapped environment (text_reply) pass through gated, and are absent when it has none
        if name == "text_reply" and hasattr(self.env, "text_reply"):
            return lambda content: self._call("reading an answer", self.env.text_reply, content)
        if name == "no_tool_call":  # the wrapped environment's own nudge, when it has one
            return getattr(self.env, name)
        raise AttributeError(name)

    def score(self) -> dict[str, Any]:
        return self._call("grading", self.env.score)

    def close(self) -> None:
        if not self._cut.is_set():
            try:
                return self._call("closing its sandbox", self.env.close)
            except EnvironmentBroken:  # cut meanwhile
                pass
        self.env.close()  # closed by the cut already: closing again is harmless and needs no slot

    def cut(self) -> None:
        """Close the environment now, from any thread: a call blocked in the sandbox returns with an error, and
        the episode's later calls fail. (A grading sandbox the scorer opened itself is not this one: it ends
        at its own timeout, in the background.)"""
        self._cut.set()
        try:
            self.env.close()
        except Exception:  # noqa: BLE001 - best effort: the container may be going already
            pass


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
    """What one batch of rollouts cost.

    `idle_seconds` is the wall time during which no generate call was running: the generator (the GPU) had
    nothing to do while episodes worked in their sandboxes. For a batching generator (transformers, vLLM
    colocate) that is wall - generation exactly. A concurrent generator (a vLLM server) serves requests from
    many episodes at once, so the sum of their latencies (`generation`) may exceed the wall time and says
    nothing about idleness; there it is the wall time during which not one request was in flight. That is a
    lower bound on the server's idle time: one request in flight keeps a server busy but far from full.
    """

    wall: float = 0.0
    generation: float = 0.0  # seconds inside generate calls, summed (overlapping for a concurrent generator)
    batches: list[int] = field(default_factory=list)  # requests per generate call
    cut: int = 0  # episodes cut at the deadline
    episode_seconds: float = 0.0  # every episode's wall seconds (start to end, or to its cut), summed
    lost_seconds: float = 0.0  # the cut episodes' seconds: work thrown away
    idle_seconds: float = 0.0  # wall seconds with no generate call running
    deadline: float | None = None

    @property
    def environment(self) -> float:
        """Wall time the batch spent not generating: sandbox work the model waited on (= idle_seconds)."""
        return self.idle_seconds

    @property
    def lost_fraction(self) -> float:
        """The share of episode-time thrown away by the deadline."""
        return self.lost_seconds / self.episode_seconds if self.episode_seconds > 0 else 0.0

    @property
    def idle_fraction(self) -> float:
        """The share of the batch's wall time the generator sat idle."""
        return self.idle_seconds / self.wall if self.wall > 0 else 0.0

    def add(self, other: RolloutStats) -> RolloutStats:
        """Count another batch of the same step (a resample round) in; returns self."""
        self.wall += other.wall
        self.generation += other.generation
        self.batches += other.batches
        self.cut += other.cut
        self.episode_seconds += other.episode_seconds
        self.lost_seconds += other.lost_seconds
        self.idle_seconds += other.idle_seconds
        return self


def _rollout(traj: Trajectory, prompt: list[int], completion: list[int], mask: list[int],
             logprobs: list[float] | None, eos: int) -> Rollout:
    if not prompt:  # the episode ended before its first turn (a sandbox that failed to start)
        prompt = [eos]
    if not completion:  # the trainer needs one token per row: an end-of-turn token that carries no loss
        completion, mask, logprobs = [eos], [0], None if logprobs is None else [0.0]
    return Rollout(traj, prompt, completion, mask, logprobs)


def run_rollouts(tasks: list[Task], *, make_env: Callable[[], Environment], generator: Generator, tokenizer,
                 limits: AgentLimits, max_prompt_tokens: int, max_completion_tokens: int, concurrency: int,
                 max_turn_tokens: int | None = None, max_wait: float = 1.0, samples: list[int] | None = None,
                 describe: dict[str, Any] | None = None, seed: str = "0",
                 deadline: float | None = None) -> tuple[list[Rollout], RolloutStats]:
    """One episode per entry of `tasks` (repeat a task for a group), all at once; generation on this thread.
    Episode i's turns are sampled with seeds from (seed, i, turn): the same call gives the same rollouts.

    With `deadline` (seconds after the call starts), episodes still running then are cut: their environments
    are closed from the deadline thread, their generation requests fail, and each comes back with exit status
    `deadline`, its messages and token ledger as they were at the cut, and no reward. The call returns once
    their sandboxes are gone (a generation batch already running finishes first; its answers for cut episodes
    are dropped); their threads wind down in the background."""
    if deadline is not None and not deadline > 0:
        raise ValueError(f"deadline must be a positive number of seconds, not {deadline!r}")
    n = len(tasks)
    batcher = Batcher(generator, max_wait=max_wait)
    gate = threading.Semaphore(max(1, concurrency))
    samples = samples if samples is not None else list(range(n))
    policies = [TokenPolicy(tokenizer, batcher, max_prompt_tokens=max_prompt_tokens,
                            max_completion_tokens=max_completion_tokens, max_turn_tokens=max_turn_tokens,
                            describe=describe, seed_key=seed, episode=i) for i in range(n)]
    envs = [GatedEnvironment(make_env(), gate) for _ in range(n)]
    eos = tokenizer.eos_token_id
    started = time.monotonic()
    begun: list[float] = [started] * n
    ended: list[float | None] = [None] * n  # set once, by the episode's end or by the cut
    latest: list[Trajectory | None] = [None] * n  # the live trajectory, from run_episode's on_step
    cut: dict[int, Rollout] = {}
    lock = threading.Lock()
    unfinished = [n]
    done = threading.Event()  # every episode ended or was cut (and its sandbox closed)
    if n == 0:
        done.set()

    def episode(i: int) -> Rollout:
        begun[i] = time.monotonic()
        policy = policies[i]
        try:
            traj = run_episode(policy, envs[i], tasks[i], sample=samples[i], limits=limits, grade=True,
                               on_step=lambda t: latest.__setitem__(i, t))
        finally:
            batcher.leave()
            with lock:
                if ended[i] is None:
                    ended[i] = time.monotonic()
                    unfinished[0] -= 1
                    if unfinished[0] == 0:
                        done.set()
        return _rollout(traj, policy.prompt_ids, policy.completion_ids, policy.mask,
                        policy.logprobs if policy.has_logprobs else None, eos)

    def cut_episode(i: int, at: float) -> Rollout:
        prompt, completion, mask, logprobs = policies[i].freeze()
        live = latest[i]
        if live is None:  # cut before its sandbox was up
            traj = Trajectory(episode_id=f"{tasks[i].instance_id}#{samples[i]}", instance_id=tasks[i].instance_id,
                              sample=samples[i], policy=policies[i].describe(), environment=envs[i].name)
        else:  # a copy as it stands: its thread may still be appending
            traj = live.model_copy(update={"messages": list(live.messages), "seconds": dict(live.seconds)})
        seconds = at - begun[i]
        traj.exit_status, traj.reward, traj.resolved, traj.evidence = ExitStatus.DEADLINE, None, None, {}
        traj.error = (f"{CUT} ({deadline:g} s after the batch started), {seconds:.1f} s into the episode, while "
                      f"{envs[i].doing}")
        traj.seconds["total"] = round(seconds, 3)
        traj.finished = now()
        return _rollout(traj, prompt, completion, mask, logprobs, eos)

    def watch() -> None:
        if done.wait(started + deadline - time.monotonic()):
            return
        at = time.monotonic()
        with lock:
            late = [i for i in range(n) if ended[i] is None]
            for i in late:
                ended[i] = at
            unfinished[0] = 0
        for i in late:  # their ledgers and messages as they are now, before the cut makes their threads move
            cut[i] = cut_episode(i, at)
        batcher.cut(late)
        closers = [threading.Thread(target=envs[i].cut, name=f"rollout-cut-{i}") for i in late]
        for t in closers:  # at once: removing a container takes a moment
            t.start()
        for t in closers:
            t.join()
        done.set()

    for _ in tasks:
        batcher.enter()
    if deadline is not None:
        threading.Thread(target=watch, name="rollout-deadline", daemon=True).start()
    pool = ThreadPoolExecutor(max_workers=max(1, n), thread_name_prefix="rollout")
    try:
        futures = [pool.submit(episode, i) for i in range(n)]
        batcher.serve(done.is_set)
        done.wait()
        rollouts = [cut[i] if i in cut else futures[i].result() for i in range(n)]
    finally:
        pool.shutdown(wait=not cut)  # cut episodes' threads end on their own once their sandbox is gone
    wall = time.monotonic() - started
    spans = [(ended[i] or started + wall) - begun[i] for i in range(n)]
    stats = RolloutStats(wall=wall, generation=batcher.generate_seconds, batches=list(batcher.batches),
                         cut=len(cut), episode_seconds=sum(spans), lost_seconds=sum(spans[i] for i in cut),
                         idle_seconds=max(wall - batcher.busy_seconds(), 0.0), deadline=deadline)
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

        from swepost.policies.sampling import SeededSampler

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
    '<tool_call>\\n{"name": "submit", "arguments": {}}\\n</tool_call>'; the end-of-turn token is added.
    `variants` maps a text to other turns, replayed for episodes whose context contains it (a marker in one
    task's problem statement: a straggler)."""

    concurrent = False

    def __init__(self, tokenizer, turns: list[str], delay: float = 0.0,
                 variants: dict[str, list[str]] | None = None):
        self.tokenizer, self.delay = tokenizer, delay
        self.turns = self._encode(turns)
        self.variants = {text: self._encode(script) for text, script in (variants or {}).items()}
        self.marker = list(tokenizer("<|im_start|>assistant", add_special_tokens=False)["input_ids"])

    def _encode(self, turns: list[str]) -> list[list[int]]:
        return [list(self.tokenizer(t, add_special_tokens=False)["input_ids"]) + [self.tokenizer.eos_token_id]
                for t in turns]

    def _script(self, ids: list[int]) -> list[list[int]]:
        if self.variants:
            context = self.tokenizer.decode(ids)
            for text, turns in self.variants.items():
                if text in context:
                    return turns
        return self.turns

    def _turn(self, ids: list[int]) -> int:
        m, n = self.marker, len(self.marker)
        return sum(1 for i in range(len(ids) - n + 1) if ids[i:i + n] == m) - 1

    def generate(self, requests: list[tuple[list[int], int, int]]) -> list[Generated]:
        if self.delay:
            time.sleep(self.delay)
        out = []
        for ids, budget, _ in requests:
            script = self._script(ids)
            turn = script[min(self._turn(ids), len(script) - 1)]
            out.append(Generated(turn[:budget], None, len(turn) <= budget))
        return out
