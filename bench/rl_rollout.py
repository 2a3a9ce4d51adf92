"""RL rollout phase: wall time of one batch of rollouts whose tool calls take sandbox time, as JSON.

The same batch (the first bundled tasks repeated into groups, 8 rollouts by default) runs through
`swepost.train.rollout.run_rollouts` twice in one run:

- sequential, concurrency=1: TRL's own tool loop, which runs the tool calls of a batch one rollout after
  another while generation is batched per turn;
- concurrent, concurrency=rollouts: every episode does its sandbox work at the same time.

Generation is a `ScriptedGenerator` (fixed assistant turns replayed as token ids, no model), batched per turn
in both modes, so the two differ only in how the sandbox work overlaps. Every rollout also starts a fresh
sandbox (container + checkout) and is graded in another fresh one, which is sandbox time too. Profiles:

- sleep:  `sleep 1 && ls`, `sleep 1 && git status --short`, submit: time spent in the sandbox but not on this
          machine's CPU (a remote sandbox, I/O-bound work, a node with cores to spare);
- pytest: the repo's test suite, then submit: CPU-bound work on this machine, so bounded by its cores.

Goal: the rollout phase >= 4x faster concurrent than sequential at 8 rollouts. Machine CPU use during each run
(from /proc/stat, docker's daemon and containers included) is reported to tell a CPU-bound profile apart.

Two more sections:

- straggler: the sleep profile, concurrent, with one episode whose tool call sleeps `--straggler-factor` (20)
  times longer than the rest's; run without a deadline, then with `deadline` set halfway between the others'
  slowest episode and the straggler's time in that first run. The ratio is the step's wall time without / with.
  Generation waits at most 1 s for other requests (rl's `max_batch_wait` default), not for every episode.
- trl_environment_factory: TRL 1.16's own tool loop (a real GRPOTrainer with `environment_factory`, one
  generation batch, bench/trl_tool_loop.py) beside `run_rollouts` (concurrency=rollouts, and 1) on the same
  tasks, tools, sandboxes and model: the tiny model with its generate scripted (bench/scripted_model.py), so
  both sides run `model.generate` and make the same tool calls, which the section checks call by call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from report import emit

ROOT = Path(__file__).resolve().parents[1]
GOAL = 4.0


def call(name: str, arguments: dict) -> str:
    """An assistant turn as Qwen2.5 (Hermes) writes a tool call."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def bash(command: str) -> str:
    return call("bash", {"command": command})


SUBMIT = call("submit", {})
# bash commands, one per turn (then submit), and a text every rollout's first tool result must contain, so a
# command that failed to run (and took no time) does not pass unnoticed
PROFILES = {
    "sleep": (["sleep 1 && ls", "sleep 1 && git status --short"], "README.md"),
    "pytest": (["python3 -m pytest -q -x tests 2>&1 | tail -3"], " passed"),  # the image has python3, not python
}


def skip_reason() -> str | None:
    from swepost.sandbox.docker import docker_available

    if not docker_available():
        return "no docker engine"
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "transformers is not installed (needed for the tokenizer)"
    return None


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine so far, or None off Linux."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU capacity in use between two `cpu_jiffies()` readings."""
    if not before or not after:
        return None
    return round((after[0] - before[0]) / max(after[1] - before[1], 1), 2)


def idle_check(seconds: float = 1.0) -> float | None:
    """CPU share in use by other work just before the benchmark (it skews the ratio)."""
    before = cpu_jiffies()
    time.sleep(seconds)
    return busy_share(before, cpu_jiffies())


def make_env(args):
    from swepost.envs.swe import SweEnvironment

    return SweEnvironment(repos=ROOT / "data" / "repos", backend="docker", tool_timeout=args.tool_timeout, grade=True)


def run(tasks, samples, turns: list[str], expect: str, concurrency: int, tok, args, *, generator=None,
        max_wait: float = 600.0, deadline: float | None = None, keep: list | None = None) -> dict:
    from swepost.agent import AgentLimits
    from swepost.train.rollout import ScriptedGenerator, run_rollouts

    before = cpu_jiffies()
    # max_wait well above any turn: generation waits for every live episode, one batch per turn, as in TRL
    rollouts, stats = run_rollouts(tasks, make_env=lambda: make_env(args),
                                   generator=generator or ScriptedGenerator(tok, turns, args.gen_delay),
                                   tokenizer=tok, limits=AgentLimits(max_turns=len(turns) + 2),
                                   max_prompt_tokens=16384, max_completion_tokens=8192, concurrency=concurrency,
                                   max_wait=max_wait, samples=samples, deadline=deadline)
    after = cpu_jiffies()
    trajs = [r.trajectory for r in rollouts]
    if keep is not None:
        keep.extend(rollouts)
    tool_results = [next((m["content"] for m in t.messages if m["role"] == "tool"), "") for t in trajs]
    out = {"concurrency": concurrency, "wall_s": round(stats.wall, 2), "generation_s": round(stats.generation, 3),
           "idle_s": round(stats.idle_seconds, 2), "episode_s": round(stats.episode_seconds, 2),
           "cut": stats.cut, "lost_s": round(stats.lost_seconds, 2), "lost_fraction": round(stats.lost_fraction, 3),
           "batches": stats.batches, "exit_status": dict(Counter(t.exit_status for t in trajs)),
           "resolved": dict(Counter(str(t.resolved) for t in trajs)),
           "tool_errors": sum(t.tool_errors for t in trajs),
           "tool_ran": sum(expect in text for text in tool_results)}
    if concurrency >= len(tasks):  # no episode waits on another for the gate: these are the episodes' own times
        out["rollout_s_median"] = {k: round(statistics.median(t.seconds.get(k, 0.0) for t in trajs), 3)
                                   for k in ("reset", "env", "grading", "close", "total")}
    if before and after:
        out["cpu_s"] = round((after[0] - before[0]) / os.sysconf("SC_CLK_TCK"), 2)  # all cores together
        out["cpu_busy"] = busy_share(before, after)
    return out


MARKER = "(the straggler)"


def straggler(tasks, samples, tok, args) -> dict:
    """The step's wall time with one episode `factor` times slower than the rest, without and with a deadline."""
    from swepost.train.rollout import ScriptedGenerator

    base = 1.0
    turns = [bash(f"sleep {base:g} && ls"), SUBMIT]
    slow_turns = [bash(f"sleep {base * args.straggler_factor:g} && ls"), SUBMIT]
    last = tasks[-1]
    batch = [*tasks[:-1], last.model_copy(update={"problem_statement": f"{last.problem_statement}\n{MARKER}"})]

    def once(deadline: float | None, kept: list) -> dict:
        generator = ScriptedGenerator(tok, turns, args.gen_delay, variants={MARKER: slow_turns})
        return run(batch, samples, turns, "README.md", len(batch), tok, args, generator=generator, max_wait=1.0,
                   deadline=deadline, keep=kept)

    first: list = []
    without = once(None, first)
    others = max(r.trajectory.seconds["total"] for r in first[:-1])
    slowest = first[-1].trajectory.seconds["total"]
    deadline = round((others + slowest) / 2, 1)
    second: list = []
    with_deadline = once(deadline, second)
    cut_is_straggler = [r.trajectory.exit_status == "deadline" for r in second] == [False] * (len(second) - 1) + [True]
    return {"commands": [turns[0], "submit"], "straggler_command": slow_turns[0], "factor": args.straggler_factor,
            "others_slowest_episode_s": others, "straggler_episode_s": slowest, "deadline_s": deadline,
            "without_deadline": without, "with_deadline": with_deadline,
            "ratio": round(without["wall_s"] / with_deadline["wall_s"], 2),
            "only_the_straggler_cut": cut_is_straggler}


def episode_calls(traj) -> list[tuple[str, dict]]:
    """The tool calls an episode's model made, in order: (name, arguments)."""
    return [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for m in traj.messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]


def trl_environment_factory(distinct, group: int, args) -> dict:
    """TRL's own environment_factory tool loop and run_rollouts: same tasks, tools, scripted model and sampling."""
    import contextlib
    from importlib.metadata import version

    from packaging.version import Version

    have = version("transformers")
    if Version(have) < Version("5.2.0"):
        return {"skipped": f"TRL's environment_factory needs transformers >= 5.2; {have} is installed"}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import trl_tool_loop as tl
    from scripted_model import ScriptedQwen2ForCausalLM, write_script
    from transformers import AutoTokenizer, GenerationConfig

    from swepost.agent import AgentLimits
    from swepost.train.rollout import TransformersGenerator, run_rollouts
    from swepost.train.tiny_model import build_tiny_model

    tasks = [t for t in distinct for _ in range(group)]
    max_turns, max_completion, temperature = 4, 1024, 1.0
    out: dict = {
        "trl": version("trl"), "transformers": have, "tasks": len(distinct), "group": group, "rollouts": len(tasks),
        "model": "the tiny Qwen2 model, its generate scripted (bench/scripted_model.py): the same weights and "
                 "generate on both sides, all logit mass on the script's next token",
        "script": [bash(tl.BASH), SUBMIT, "Done."],
        "settings": {
            "generation": "model.generate, one batch per turn over every live rollout (swepost: max_wait 600 s, "
                          "so the batcher waits for every live episode, as TRL's loop does)",
            "sampling": f"do_sample, temperature {temperature:g}, top_p 1 on both",
            "max_completion_tokens": max_completion, "max_turns": max_turns, "max_tool_calling_iterations": max_turns,
            "sandbox_concurrency": {"swepost": len(tasks), "swepost_trl_like": 1,
                                    "trl": "1: reset, each turn's tool calls and get_reward run one rollout after "
                                           "another (TRL's only mode)"},
            "sandboxes": "docker, one per rollout (reset) and one fresh per grading, on both"},
        "not_comparable": [
            "TRL generates one more turn per rollout ('Done.'): its loop ends only on a turn without a tool call, "
            "swepost's episode ends at submit (its generate time is in generate_s)",
            "tool schemas in the prompt: TRL renders SweTools' docstrings, swepost its own TOOLS (prompt_tokens)",
            "TRL's wall is all of _generate_and_score_completions (also rewards, advantages and its bookkeeping); "
            "swepost's ends when run_rollouts returns",
            "swepost takes the final diff at the episode's end and again in score(); TRL's get_reward once"]}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "model"
        build_tiny_model(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        write_script(folder, tok, out["script"])
        # the prompts (system, user) as the swe environment writes them, and a warm-up: not timed
        first: list = []
        run(distinct, [0] * len(distinct), [SUBMIT], "", len(distinct), tok, args, keep=first)
        prompts = {r.trajectory.instance_id: r.trajectory.messages[:2] for r in first}

        def swepost(concurrency: int) -> tuple[dict, list]:
            print(f"trl: swepost run_rollouts, concurrency {concurrency}", file=sys.stderr, flush=True)
            model = ScriptedQwen2ForCausalLM.from_pretrained(folder).eval()
            config = GenerationConfig(do_sample=True, temperature=temperature, top_p=1.0,
                                      eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
            generator = TransformersGenerator(lambda: contextlib.nullcontext(model), config, {tok.eos_token_id},
                                              tok.pad_token_id)
            rollouts, stats = run_rollouts(tasks, make_env=lambda: make_env(args), generator=generator,
                                           tokenizer=tok, limits=AgentLimits(max_turns=max_turns),
                                           max_prompt_tokens=3072, max_completion_tokens=max_completion,
                                           concurrency=concurrency, max_wait=600.0,
                                           samples=[i % group for i in range(len(tasks))])
            trajs = [r.trajectory for r in rollouts]
            calls = [(t.instance_id, episode_calls(t)) for t in trajs]
            results = [[m["content"] for m in t.messages if m["role"] == "tool"] for t in trajs]
            return {"concurrency": concurrency, "wall_s": round(stats.wall, 2),
                    "generate_s": round(model.generate_seconds, 2), "generate_batches": model.generate_rows,
                    "exit_status": dict(Counter(t.exit_status for t in trajs)),
                    "tool_calls": sum(len(c) for _, c in calls),
                    "bash_ran": sum(bool(r) and "README.md" in r[0] for r in results),
                    "prompt_tokens": round(statistics.mean(len(r.prompt_ids) for r in rollouts)),
                    "graded": sum(t.reward is not None for t in trajs),
                    "rewards": dict(Counter(str(t.reward) for t in trajs)),
                    "rollout_s_median": {k: round(statistics.median(t.seconds.get(k, 0.0) for t in trajs), 2)
                                         for k in ("reset", "env", "grading", "close", "total")}}, calls

        mine, mine_calls = swepost(len(tasks))
        one, one_calls = swepost(1)

        print("trl: TRL GRPOTrainer(environment_factory=SweTools)", file=sys.stderr, flush=True)
        tl.SweTools.tasks = {t.instance_id: t for t in distinct}
        tl.SweTools._make_env = staticmethod(lambda: make_env(args))
        rows = [{"prompt": [{"role": m["role"], "content": m["content"]} for m in prompts[t.instance_id]],
                 "instance_id": t.instance_id} for t in distinct]
        model = ScriptedQwen2ForCausalLM.from_pretrained(folder).train()  # as in trainer.train(): "train" metrics
        try:
            seconds, result, metrics = tl.run_trl(model, tok, rows, group, max_completion, temperature,
                                                  Path(scratch) / "trl")
        finally:
            for env in tl.SweTools.instances:
                env.env.close()
        used = [e for e in tl.SweTools.instances if e.instance_id is not None]
        trl_calls = [(e.instance_id, e.calls) for e in used]
        out["swepost_run_rollouts"] = mine
        out["swepost_run_rollouts_trl_like"] = one
        out["trl_environment_factory"] = {
            "wall_s": round(seconds, 2), "generate_s": round(model.generate_seconds, 2),
            "generate_batches": model.generate_rows,
            "parts_s": {k: round(v, 2) for k, v in tl.SweTools.seconds.items()},
            "tool_calls": sum(len(c) for _, c in trl_calls),
            "bash_ran": sum(bool(e.results) and "README.md" in e.results[0] for e in used),
            "prompt_tokens": round(float(result["prompt_mask"].sum(dim=1).float().mean())),
            "graded": sum(e.reward is not None for e in used),
            "rewards": dict(Counter(str(e.reward) for e in used)),
            "rollouts": int(result["completion_ids"].shape[0]),
            "metrics": {k: round(v, 3) for k, v in metrics.items()}}

    def canonical(calls: list) -> list:
        return sorted((iid, json.dumps(c, sort_keys=True)) for iid, c in calls)

    expected = [("bash", {"command": tl.BASH}), ("submit", {})]
    out["same_tool_calls"] = (canonical(mine_calls) == canonical(trl_calls) == canonical(one_calls)
                              == canonical([(t.instance_id, expected) for t in tasks]))
    out["all_bash_ran"] = all(side["bash_ran"] == len(tasks) for side in (mine, one, out["trl_environment_factory"]))
    out["ratio"] = round(out["trl_environment_factory"]["wall_s"] / mine["wall_s"], 2)
    out["ratio_trl_like"] = round(out["trl_environment_factory"]["wall_s"] / one["wall_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=8, help="rollouts in the batch (and concurrent episodes)")
    parser.add_argument("--tasks", type=int, default=4, help="distinct tasks, each repeated into a group")
    parser.add_argument("--profile", choices=[*PROFILES, "both", "straggler", "trl", "all"], default="all",
                        help="both: sleep and pytest; all: those, straggler and trl (environment_factory)")
    parser.add_argument("--straggler-factor", type=float, default=20.0,
                        help="how many times longer the straggler's tool call sleeps")
    parser.add_argument("--gen-delay", type=float, default=0.0,
                        help="seconds per generation batch, a stand-in for model time (same in both modes)")
    parser.add_argument("--tool-timeout", type=float, default=120.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result: dict = {"benchmark": "rl_rollout", "python": platform.python_version(), "cpus": os.cpu_count(),
                    "cpu_busy_before": idle_check(), "rollouts": args.rollouts,
                    "goal": f">= {GOAL:g}x at 8 rollouts (sequential / concurrent wall)"}
    why = skip_reason()
    if why:
        emit({**result, "skipped": why}, args.out)
        return

    from transformers import AutoTokenizer

    from swepost.stages.tasks import read_task_file
    from swepost.train.tiny_model import build_tiny_model

    distinct = read_task_file(ROOT / "data" / "minicalc_tasks.jsonl")[: max(1, args.tasks)]
    # groups: rollout i is task i // group, sample i % group (GRPO-style, several samples of one prompt)
    group = -(-args.rollouts // len(distinct))
    tasks = [distinct[i // group] for i in range(args.rollouts)]
    samples = [i % group for i in range(args.rollouts)]
    result.update(tasks=len({t.instance_id for t in tasks}), group=group, gen_delay_s=args.gen_delay)

    with tempfile.TemporaryDirectory() as folder:
        build_tiny_model(folder)  # only its tokenizer is used: the Qwen2.5 chat template and tool-call format
        tok = AutoTokenizer.from_pretrained(folder)

    # warm-up, not timed: the checkout cache (per process), the image and the grader, for both modes alike
    warm_tasks = list({t.instance_id: t for t in tasks}.values())
    run(warm_tasks, [0] * len(warm_tasks), [SUBMIT], "", len(warm_tasks), tok, args)

    result["profiles"] = {}
    names = [*PROFILES] if args.profile in ("both", "all") else [args.profile] if args.profile in PROFILES else []
    for name in names:
        commands, expect = PROFILES[name]
        turns = [bash(c) for c in commands] + [SUBMIT]
        sequential = run(tasks, samples, turns, expect, 1, tok, args)
        concurrent = run(tasks, samples, turns, expect, args.rollouts, tok, args)
        ratio = round(sequential["wall_s"] / concurrent["wall_s"], 2)
        submitted = all(r["exit_status"] == {"submitted": args.rollouts} for r in (sequential, concurrent))
        ran = all(r["tool_ran"] == args.rollouts for r in (sequential, concurrent))
        result["profiles"][name] = {
            "commands": [*commands, "submit"], "sequential": sequential, "concurrent": concurrent,
            "ratio": ratio, "all_submitted": submitted, "met": submitted and ran and ratio >= GOAL}
        if "cpu_s" in sequential:  # the best ratio the cores allow: the sequential run's CPU work spread on all
            floor = sequential["cpu_s"] / (os.cpu_count() or 1)
            result["profiles"][name]["ratio_cpu_ceiling"] = round(sequential["wall_s"] / max(floor, 0.01), 2)
    if args.profile in ("straggler", "all"):
        result["straggler"] = straggler(tasks, samples, tok, args)
    if args.profile in ("trl", "all"):
        result["trl_environment_factory"] = trl_environment_factory(distinct, group, args)
    emit(result, args.out)


if __name__ == "__main__":
    main()
