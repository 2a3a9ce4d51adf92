"""Environments plugged into the environment server by tests (`--env tests.env_server_plugins:Class`): one whose
tool, grader or start can be made slow or broken on purpose, to show that a failure is never a reward."""

from __future__ import annotations

import time
from typing import Any

from swepost.envs.base import EnvironmentBroken, Observation

TOOLS = [{"type": "function", "function": {"name": name, "description": name, "parameters": {
    "type": "object", "properties": {"seconds": {"type": "number"}}}}} for name in ("sleep", "break", "submit")]


class SlowEnvironment:
    """sleep(seconds) sleeps, break() breaks the sandbox, submit() ends; the task's question says how grading goes
    ("grade=slow", "grade=raise"; else fine) and "reset=raise" breaks the start."""

    name = "slow"

    def __init__(self, **settings: Any):
        self.task = None

    def reset(self, task):
        self.task = task
        if "reset=raise" in task.problem_statement:
            raise RuntimeError("this task's setup always fails")
        return [{"role": "system", "content": "test"}, {"role": "user", "content": task.problem_statement}]

    def tools(self):
        return TOOLS

    def step(self, name: str, arguments: dict) -> Observation:
        if name == "sleep":
            time.sleep(float(arguments.get("seconds", 0)))
            return Observation("slept")
        if name == "break":
            raise EnvironmentBroken("the test broke the sandbox")
        return Observation("submitted", done=True)

    def final_diff(self) -> str:
        return ""

    def score(self) -> dict:
        if "grade=slow" in self.task.problem_statement:
            time.sleep(8)
        if "grade=raise" in self.task.problem_statement:
            raise RuntimeError("the grader crashed")
        return {"reward": 1.0, "resolved": "RESOLVED_FULL", "evidence": {}}

    def close(self) -> None:
        pass
