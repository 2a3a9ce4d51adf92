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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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


def run(tasks, samples, turns: list[str], expect: str, concurrency: int, tok, args) -> dict:
    from swepost.agent import AgentLimits
    from swepost.envs.swe import SweEnvironment
    from swepost.train.rollout import ScriptedGenerator, run_rollouts

    def make_env():
        return SweEnvironment(repos=ROOT / "data" / "repos", backend="docker", tool_timeout=args.tool_timeout,
                              grade=True)

    before = cpu_jiffies()
    # max_wait well above any turn: generation waits for every live episode, one batch per turn, as in TRL
    rollouts, stats = run_rollouts(tasks, make_env=make_env, generator=ScriptedGenerator(tok, turns, args.gen_delay),
                                   tokenizer=tok, limits=AgentLimits(max_turns=len(turns) + 2),
                                   max_prompt_tokens=16384, max_completion_tokens=8192, concurrency=concurrency,
                                   max_wait=600.0, samples=samples)
    after = cpu_jiffies()
    trajs = [r.trajectory for r in rollouts]
    tool_results = [next((m["content"] for m in t.messages if m["role"] == "tool"), "") for t in trajs]
    out = {"concurrency": concurrency, "wall_s": round(stats.wall, 2), "generation_s": round(stats.generation, 3),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=8, help="rollouts in the batch (and concurrent episodes)")
    parser.add_argument("--tasks", type=int, default=4, help="distinct tasks, each repeated into a group")
    parser.add_argument("--profile", choices=[*PROFILES, "both"], default="both")
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
    for name in PROFILES if args.profile == "both" else [args.profile]:
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
    emit(result, args.out)


if __name__ == "__main__":
    main()
