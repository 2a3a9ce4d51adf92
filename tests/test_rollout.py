"""The RL rollout engine without docker: the token ledger (generated ids kept as sampled, environment tokens
masked), the completion budget, generation batching, how many episodes do environment work at once, and the step
deadline (tests/test_rollout_deadline.py cuts a real docker sandbox)."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("transformers")

from swepost.agent import AgentLimits  # noqa: E402
from swepost.envs.base import Observation  # noqa: E402
from swepost.envs.swe import TOOLS  # noqa: E402
from swepost.policies.base import ContextOverflow  # noqa: E402
from swepost.policies.chat import template_messages  # noqa: E402
from swepost.records import Task  # noqa: E402
from swepost.train.rl import soft_overlong_penalty  # noqa: E402
from swepost.train.rollout import (  # noqa: E402
    Batcher,
    Generated,
    ScriptedGenerator,
    TokenPolicy,
    cut_at_stop,
    run_rollouts,
)

CALL = '<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>'
SUBMIT = '<tool_call>\n{"name": "submit", "arguments": {}}\n</tool_call>'


class ReplayIds:
    """A scripted generator at the token level: replays fixed id lists, turn after turn, and records batches."""

    concurrent = False

    def __init__(self, turns: list[list[int]]):
        self.turns, self.calls, self.batches = turns, 0, []

    def generate(self, requests):
        self.batches.append(len(requests))
        out = []
        for _, budget, _ in requests:
            ids = self.turns[min(self.calls, len(self.turns) - 1)]
            self.calls += 1
            kept, stopped = ids[:budget], len(ids) <= budget
            out.append(Generated(kept, None, stopped))
        return out


class Served:
    """Runs a Batcher's serving loop on a thread for tests that call the policy directly."""

    def __init__(self, batcher: Batcher):
        self.batcher, self.done = batcher, False
        self.thread = threading.Thread(target=batcher.serve, args=(lambda: self.done,), daemon=True)

    def __enter__(self):
        self.batcher.enter()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.batcher.leave()
        self.done = True
        self.thread.join(5)


def test_generated_ids_are_kept_as_sampled_and_environment_tokens_carry_no_mask(tok):
    eos = tok.eos_token_id
    canonical = tok(CALL, add_special_tokens=False)["input_ids"]
    odd = [t for ch in CALL for t in tok(ch, add_special_tokens=False)["input_ids"]]  # one token per character
    assert odd != canonical and tok.decode(odd) == CALL  # same text, ids a re-tokenisation would not give back
    gen = ReplayIds([odd + [eos], tok(SUBMIT, add_special_tokens=False)["input_ids"] + [eos]])
    policy = TokenPolicy(tok, Batcher(gen), max_prompt_tokens=4096, max_completion_tokens=4096)
    policy.start(None)
    messages = [{"role": "system", "content": "You fix bugs."}, {"role": "user", "content": "Fix the bug."}]
    with Served(policy.batcher):
        first = policy.reply(messages, TOOLS)
        assert first.message["tool_calls"][0]["function"]["name"] == "bash"
        messages += [{"role": "assistant", **first.message},
                     {"role": "tool", "tool_call_id": "call_1_0", "name": "bash", "content": "setup.py\nsrc"}]
        second = policy.reply(messages, TOOLS)
    assert second.message["tool_calls"][0]["function"]["name"] == "submit"

    prompt_text = tok.apply_chat_template(messages[:2], tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert policy.prompt_ids == tok(prompt_text, add_special_tokens=False)["input_ids"]
    ids, mask = policy.completion_ids, policy.mask
    assert ids[: len(odd) + 1] == odd + [eos] and all(mask[: len(odd) + 1])  # verbatim, trained
    env_part = [t for t, m in zip(ids, mask, strict=True) if m == 0]
    assert tok.decode(env_part) == ("\n<|im_start|>user\n<tool_response>\nsetup.py\nsrc\n</tool_response><|im_end|>\n"
                                    "<|im_start|>assistant\n")
    model_part = [t for t, m in zip(ids, mask, strict=True) if m == 1]
    assert tok.decode(model_part) == CALL + "<|im_end|>" + SUBMIT + "<|im_end|>"
    # prompt + completion is the whole conversation as the template renders it (the model's token choices aside)
    full = tok.apply_chat_template(template_messages(messages + [{"role": "assistant", **second.message}]),
                                   tools=TOOLS, tokenize=False)
    assert tok.decode(policy.prompt_ids + ids) + "\n" == full


def test_token_policy_reads_tool_calls_as_the_served_policy_does(tok):
    """RL and collect/eval through a server see one model output as the same calls, malformed ones included."""
    from openai_server import ScriptedChatServer

    from swepost.policies.openai import OpenAIPolicy

    text = ("Trying.\n" + CALL + '\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"</tool_call>\n'
            "<tool_call>oops")
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    policy = TokenPolicy(tok, Batcher(ReplayIds([ids])), max_prompt_tokens=4096, max_completion_tokens=4096)
    policy.start(None)
    messages = [{"role": "user", "content": "Fix the bug."}]
    with Served(policy.batcher):
        rl = policy.reply(messages, TOOLS)
    with ScriptedChatServer([{"content": text}]) as server:
        served = OpenAIPolicy(model="m", base_url=server.base_url, api_key="test", tool_mode="text").reply(messages,
                                                                                                          TOOLS)
    assert rl.message["content"] == served.message["content"] == "Trying."
    assert rl.message["tool_calls"] == served.message["tool_calls"]
    assert [(c["id"], c["function"]["name"], "error" in c) for c in rl.message["tool_calls"]] == [
        ("call_1_0", "bash", False), ("call_1_1", "bash", True), ("call_1_2", "", True)]


def test_the_completion_budget_ends_the_episode_mid_turn(tok):
    eos = tok.eos_token_id
    long_turn = tok(CALL * 5, add_special_tokens=False)["input_ids"] + [eos]
    policy = TokenPolicy(tok, Batcher(ReplayIds([long_turn])), max_prompt_tokens=4096, max_completion_tokens=20)
    policy.start(None)
    with Served(policy.batcher), pytest.raises(ContextOverflow, match="ran out mid-turn"):
        policy.reply([{"role": "user", "content": "hi"}], TOOLS)
    assert policy.completion_ids == long_turn[:20] and policy.mask == [1] * 20  # what was sampled stays

    small = TokenPolicy(tok, Batcher(ReplayIds([[eos]])), max_prompt_tokens=10, max_completion_tokens=20)
    small.start(None)
    with pytest.raises(ContextOverflow, match="max_prompt_tokens"):
        small.reply([{"role": "user", "content": "a long prompt " * 20}], TOOLS)


def test_a_turn_stops_at_max_turn_tokens_well_inside_the_completion_budget(tok):
    eos = tok.eos_token_id
    long_turn = tok(CALL * 5, add_special_tokens=False)["input_ids"] + [eos]
    policy = TokenPolicy(tok, Batcher(ReplayIds([long_turn])), max_prompt_tokens=4096, max_completion_tokens=4096,
                         max_turn_tokens=12)
    policy.start(None)
    with Served(policy.batcher), pytest.raises(ContextOverflow, match="max_turn_tokens"):
        policy.reply([{"role": "user", "content": "hi"}], TOOLS)
    assert policy.completion_ids == long_turn[:12]  # the generator was asked for 12 tokens, not 4096


def test_context_budgets_fit_the_model(tmp_path):
    from swepost.errors import BadInput
    from swepost.stages.rl import RlConfig
    from swepost.train.context import fit_context
    from swepost.train.tiny_model import build_tiny_model

    build_tiny_model(tmp_path / "m")  # a 4096-token context
    model = str(tmp_path / "m")

    def fit(**kw):
        cfg = fit_context(RlConfig(tasks="t", model=model, **kw), model)
        return cfg.max_prompt_tokens, cfg.max_completion_tokens, cfg.max_turn_tokens

    assert fit() == (2048, 2048, 2048)  # unset: half the context for the prompt, the rest for the completion
    assert fit(max_completion_tokens=256) == (3840, 256, 256)  # the prompt gets what the completion leaves
    assert fit(max_prompt_tokens=1000, max_turn_tokens=64) == (1000, 3096, 64)
    assert fit(max_model_len=40960) == (8192, 32768, 4096)  # a long-context model: the usual 8k + 32k
    with pytest.raises(BadInput, match=r"8192\) \+ max_completion_tokens \(32768\) = 40960 .* 4096 tokens"):
        fit(max_prompt_tokens=8192, max_completion_tokens=32768)  # today's old defaults, on a small model


def test_cut_at_stop_keeps_the_stop_token():
    assert cut_at_stop([5, 6, 2, 7], {2}, 10) == ([5, 6, 2], True)
    assert cut_at_stop([5, 6, 7, 8], {2}, 3) == ([5, 6, 7], False)


def test_the_batcher_runs_waiting_episodes_as_one_batch(tok):
    gen = ReplayIds([[tok.eos_token_id]])
    batcher = Batcher(gen, max_wait=30.0)
    results = []
    for _ in range(4):
        batcher.enter()

    def worker():
        results.append(batcher.submit([1, 2, 3], 5))
        batcher.leave()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    batcher.serve(lambda: batcher.live == 0)
    for t in threads:
        t.join()
    assert gen.batches == [4] and len(results) == 4  # all four live episodes waited: one batch, no timeout


class SlowEnv:
    """A minimal environment (no sandbox) whose tool calls take time and count how many run at once."""

    name = "slow"
    lock = threading.Lock()
    running = 0
    peak = 0

    def reset(self, task):
        return [{"role": "user", "content": task.problem_statement}]

    def tools(self):
        return TOOLS

    def step(self, name, arguments):
        cls = type(self)
        with cls.lock:
            cls.running += 1
            cls.peak = max(cls.peak, cls.running)
        time.sleep(0.2)
        with cls.lock:
            cls.running -= 1
        return Observation("ok", done=name == "submit")

    def final_diff(self):
        return ""

    def score(self):
        return {"reward": 1.0, "resolved": "RESOLVED_FULL"}

    def close(self):
        pass


@pytest.mark.parametrize("concurrency", [1, 4])
def test_concurrency_bounds_environment_work_and_turns_are_batched(tok, concurrency):
    SlowEnv.peak = 0
    gen = ScriptedGenerator(tok, [CALL, SUBMIT])
    tasks = [Task(instance_id=f"t{i}", problem_statement="fix") for i in range(4)]
    rollouts, stats = run_rollouts(tasks, make_env=SlowEnv, generator=gen, tokenizer=tok,
                                   limits=AgentLimits(max_turns=5), max_prompt_tokens=4096,
                                   max_completion_tokens=1024, concurrency=concurrency, max_wait=30.0)
    assert SlowEnv.peak == concurrency
    assert stats.batches == [4, 4]  # every turn's generation ran for the four episodes together
    for r in rollouts:
        assert r.trajectory.exit_status == "submitted" and r.trajectory.reward == 1.0
        assert len(r.completion_ids) == len(r.mask) and 0 < r.model_tokens < len(r.mask)


def test_soft_overlong_penalty_ramps_in_the_buffer():
    assert soft_overlong_penalty(100, 1000, 200, 1.0) == 0.0
    assert soft_overlong_penalty(800, 1000, 200, 1.0) == 0.0
    assert soft_overlong_penalty(900, 1000, 200, 1.0) == pytest.approx(-0.5)
    assert soft_overlong_penalty(1200, 1000, 200, 0.5) == pytest.approx(-0.5)


def test_completions_generator_against_a_loopback_server(tok):
    """The vllm_server path: token-id prompts to /v1/completions, token ids and logprobs back, retries on 5xx."""
    from openai_server import ScriptedChatServer

    from swepost.policies.base import PolicyError
    from swepost.train.rollout import CompletionsGenerator

    eos = tok.eos_token_id
    script = [{"status": 503}, {"token_ids": [11, 12, eos, 13], "logprobs": [-0.5, -0.25, -0.1, -1.0]},
              {"token_ids": [11, 12, 14]}, {"status": 400, "error": "bad prompt"}, {"finish_reason": "stop"}]
    with ScriptedChatServer(script) as server:
        gen = CompletionsGenerator(server.base_url, None, {"temperature": 1.0}, {eos})
        first = gen.generate([([1, 2, 3], 8, 7)])[0]
        assert (first.ids, first.logprobs, first.stopped) == ([11, 12, eos], [-0.5, -0.25, -0.1], True)
        body = server.requests[-1]
        assert body["prompt"] == [1, 2, 3] and body["max_tokens"] == 8 and body["return_token_ids"] is True
        assert "model" not in body and body["temperature"] == 1.0 and body["seed"] == 7
        assert len(server.requests) == 2  # one retry after the 503
        cut = gen.generate([([1], 2, 7)])[0]
        assert (cut.ids, cut.stopped) == ([11, 12], False)  # the budget ran out before a stop token
        with pytest.raises(PolicyError, match="400"):
            gen.generate([([1], 4, 7)])
        with pytest.raises(PolicyError, match="return_token_ids"):
            gen.generate([([1], 4, 7)])


def test_sampling_follows_the_request_seed_whatever_shares_the_batch(tok, tmp_path_factory):
    """Batches form by thread timing; each request's own seed keeps rollouts reproducible anyway."""
    import contextlib

    from transformers import AutoModelForCausalLM, GenerationConfig

    from swepost.train.rollout import TransformersGenerator
    from swepost.train.tiny_model import build_tiny_model

    folder = tmp_path_factory.mktemp("tiny-lm")
    build_tiny_model(folder)
    lm = AutoModelForCausalLM.from_pretrained(folder).eval()
    config = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, eos_token_id=[tok.eos_token_id],
                              pad_token_id=tok.pad_token_id)
    gen = TransformersGenerator(lambda: contextlib.nullcontext(lm), config, {tok.eos_token_id}, tok.pad_token_id)
    a = tok("def parse(value):", add_special_tokens=False)["input_ids"]
    b = tok("$ pytest -q tests/test_core.py", add_special_tokens=False)["input_ids"]
    alone = gen.generate([(a, 12, 5)])[0].ids
    batched = gen.generate([(b, 12, 9), (a, 12, 5)])[1].ids
    assert alone == batched and len(alone) > 0
    assert gen.generate([(a, 12, 6)])[0].ids != alone  # another seed samples otherwise


# --- the step deadline -------------------------------------------------------------------------------------------

class BlockingEnv:
    """Tool calls of a task marked 'slow' block until the environment is closed (a 30-minute test run); others
    answer at once. Closing from another thread unblocks the call, as closing a docker sandbox does."""

    name = "blocking"

    def __init__(self):
        self.closed = threading.Event()
        self.slow = False

    def reset(self, task):
        self.slow = "slow" in task.problem_statement
        return [{"role": "user", "content": task.problem_statement}]

    def tools(self):
        return TOOLS

    def step(self, name, arguments):
        if self.slow and name == "bash" and self.closed.wait(60):
            from swepost.envs.base import EnvironmentBroken

            raise EnvironmentBroken("the sandbox was closed")
        return Observation("ok", done=name == "submit")

    def final_diff(self):
        return ""

    def score(self):
        return {"reward": 1.0, "resolved": "RESOLVED_FULL"}

    def close(self):
        self.closed.set()


def run_with_deadline(tok, tasks, deadline, concurrency=4, generator=None):
    envs = []

    def make_env():
        envs.append(BlockingEnv())
        return envs[-1]

    generator = generator or ScriptedGenerator(tok, [CALL, SUBMIT])
    t0 = time.monotonic()
    rollouts, stats = run_rollouts(tasks, make_env=make_env, generator=generator, tokenizer=tok,
                                   limits=AgentLimits(max_turns=5), max_prompt_tokens=4096,
                                   max_completion_tokens=1024, concurrency=concurrency, max_wait=0.2,
                                   deadline=deadline)
    return rollouts, stats, envs, time.monotonic() - t0


def test_the_deadline_cuts_a_blocked_episode_and_leaves_the_others_alone(tok):
    from swepost.rewards.filters import is_ungraded

    tasks = [Task(instance_id=f"t{i}", problem_statement="fix") for i in range(3)]
    tasks.append(Task(instance_id="t3", problem_statement="fix, slow"))
    rollouts, stats, envs, wall = run_with_deadline(tok, tasks, deadline=1.5)
    assert wall < 10.0  # not the 60 s the blocked call would take (slack for a loaded 2-core CI machine)
    *fast, slow = rollouts
    for r in fast:
        assert r.trajectory.exit_status == "submitted" and r.trajectory.reward == 1.0
    t = slow.trajectory
    assert t.exit_status == "deadline" and t.reward is None and is_ungraded(t)
    assert "cut at the rollout deadline (1.5 s" in t.error and "running the tool call 'bash'" in t.error
    assert envs[3].closed.is_set()  # closed from the deadline thread, under the blocked call
    # the ledger as it was: the prompt, the bash call the model made (trained tokens), nothing after
    assert len(slow.completion_ids) == len(slow.mask) and slow.model_tokens > 0
    assert tok.decode([i for i, m in zip(slow.completion_ids, slow.mask, strict=True) if m]) == CALL + "<|im_end|>"
    assert [m["role"] for m in t.messages][-1] == "assistant" and t.seconds["total"] == pytest.approx(1.5, abs=1.5)
    # the numbers add up: the cut episode's time is the lost time, and every episode's time is counted once
    assert stats.cut == 1 and stats.deadline == 1.5
    assert stats.lost_seconds == pytest.approx(t.seconds["total"], abs=0.5)
    # (the rollout's clock and each episode's own clock are read a few ms apart on a loaded machine: 0.1 s slack)
    others = sum(r.trajectory.seconds["total"] for r in fast)
    assert others + stats.lost_seconds - 0.1 <= stats.episode_seconds <= others + stats.lost_seconds + 2.0
    assert stats.lost_fraction == pytest.approx(stats.lost_seconds / stats.episode_seconds)
    assert stats.generation <= stats.wall and stats.idle_seconds == pytest.approx(stats.wall - stats.generation,
                                                                                  abs=0.5)


def test_an_episode_waiting_for_a_sandbox_slot_is_cut_too(tok):
    tasks = [Task(instance_id=f"t{i}", problem_statement="fix, slow") for i in range(2)]
    rollouts, stats, envs, wall = run_with_deadline(tok, tasks, deadline=1.0, concurrency=1)
    assert wall < 10.0 and stats.cut == 2 and all(e.closed.is_set() for e in envs)
    errors = sorted(r.trajectory.error.split(", while ")[1] for r in rollouts)
    assert errors == ["running the tool call 'bash'", "waiting for a sandbox slot (running the tool call 'bash')"]


def test_no_episode_is_cut_when_all_end_before_the_deadline(tok):
    tasks = [Task(instance_id=f"t{i}", problem_statement="fix") for i in range(3)]
    rollouts, stats, _, _ = run_with_deadline(tok, tasks, deadline=60)
    assert [r.trajectory.exit_status for r in rollouts] == ["submitted"] * 3
    assert stats.cut == 0 and stats.lost_seconds == 0.0 and stats.lost_fraction == 0.0
    with pytest.raises(ValueError, match="deadline"):
        run_with_deadline(tok, tasks, deadline=0)


class ConcurrentSleeper(ScriptedGenerator):
    """A scripted server: requests from many threads at once, each taking `latency` seconds."""

    concurrent = True

    def __init__(self, tok, latency):
        super().__init__(tok, [CALL, SUBMIT])
        self.latency = latency

    def generate(self, requests):
        time.sleep(self.latency)
        return super().generate(requests)


def test_idle_time_of_a_concurrent_generator_counts_overlapping_requests_once(tok):
    tasks = [Task(instance_id=f"t{i}", problem_statement="fix") for i in range(4)]
    _, stats, _, _ = run_with_deadline(tok, tasks, deadline=30, generator=ConcurrentSleeper(tok, 0.4))
    assert stats.batches == [1] * 8  # 4 episodes x 2 turns, each request on its own
    assert stats.generation > stats.wall  # 8 x 0.4 s of latency summed, overlapping
    # about two rounds of 0.4 s with requests in flight: the rest of the wall time the server had none
    assert 0.6 < stats.wall - stats.idle_seconds < 1.6 and stats.idle_seconds > 0
