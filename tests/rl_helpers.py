"""A small environment and a pluggable reward for RL tests that need no sandbox (imported by path:
`tests.rl_helpers:...`, the way a user plugs in their own components)."""

from __future__ import annotations

import json
from pathlib import Path

from swepost.envs.base import Observation
from swepost.envs.swe import TOOLS


def import_echo_tasks(swepost, folder: Path, names: list[str], name: str = "echo") -> str:
    """Import sandbox-free tasks (one question each, nothing to check out) as tasks artifact `name`, and build
    the tiny model: returns the model's artifact id."""
    rows = [{"instance_id": n, "problem_statement": f"Answer {n}.", "repo": "none/none", "base_commit": "0" * 40,
             "patch": "", "test_patch": "", "FAIL_TO_PASS": [], "PASS_TO_PASS": []} for n in names]
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    swepost("tasks", "import", path, "--name", name, check=0)
    return json.loads(swepost("model", "tiny", "--json", check=0).stdout)["id"]


class EchoEnvironment:
    """Any tool call ends the episode; nothing to grade (the reward comes from `alternating_reward`)."""

    name = "echo"

    def reset(self, task):
        return [{"role": "user", "content": task.problem_statement}]

    def tools(self):
        return TOOLS

    def step(self, name, arguments):
        return Observation("done", done=True)

    def final_diff(self):
        return ""

    def score(self):
        return {"reward": None}

    def close(self):
        pass

    def __init__(self, **kwargs):
        pass


def alternating_reward(trajectory, task) -> float:
    """Tasks named flat-* always score 0; any other task scores by sample parity (a group of 2 or more always
    has both rewards): a deterministic stand-in for a judge or answer matching."""
    if task.instance_id.startswith("flat"):
        return 0.0
    return float(trajectory.sample % 2)


def parity_or_ungraded(trajectory, task) -> float | None:
    """alternating_reward, except that on tasks named ungraded-* the first sample of each group has no verdict
    (None: out of the loss and the group baseline) and the others score by parity."""
    if task.instance_id.startswith("ungraded") and trajectory.sample == 0:
        return None
    return alternating_reward(trajectory, task)


class SlowEchoEnvironment(EchoEnvironment):
    """EchoEnvironment whose slow-* tasks take 30 s to set up: a straggler for the rollout deadline."""

    def reset(self, task):
        if task.instance_id.startswith("slow"):
            import time

            time.sleep(30)
        return super().reset(task)


class BrokenSetupEnvironment(EchoEnvironment):
    """EchoEnvironment whose broken-* tasks cannot be set up (as a task whose install fails): sandbox_error."""

    def reset(self, task):
        if task.instance_id.startswith("broken"):
            from swepost.envs.base import EnvironmentBroken

            raise EnvironmentBroken("the task's install failed: the mirror is down")
        return super().reset(task)
