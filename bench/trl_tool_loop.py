"""TRL 1.16's own `environment_factory` tool loop beside swepost's rollout engine, on the same tasks, tools and model.

TRL's side is its real code: a `GRPOTrainer(environment_factory=SweTools)` whose `_generate_and_score_completions`
runs one generation batch (every rollout's `reset`, batched `model.generate` turns, `_tool_call_loop` running the
tool calls, `get_reward` grading each rollout). `SweTools` is swepost's `SweEnvironment` in the shape TRL wants:
`reset(**row)` opens the task's sandbox, each public method is one of the swe tools (TRL renders their docstrings
as the tool schemas) calling the same `SweEnvironment.step`, and `get_reward` grades in a fresh sandbox.
swepost's side is `run_rollouts` with a `TransformersGenerator` over the same weights.

The model is the tiny local model made to follow a script (bench/scripted_model.py): every rollout calls bash,
then submit, then (only TRL gets there: its loop ends on a turn without a tool call) says "Done.". Each
`SweTools` instance records the calls it ran, so the two sides' tool calls can be compared one by one.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

BASH = "sleep 1 && ls"


class SweTools:
    """swepost's swe environment for TRL's `environment_factory`: reset(**row) plus one method per tool."""

    tasks: dict = {}  # instance_id -> Task, set by the benchmark
    _make_env = None  # private: every public function of the class becomes a TRL tool
    instances: list[SweTools] = []
    seconds = {"reset": 0.0, "tools": 0.0, "reward": 0.0}

    def __init__(self):
        self.env = type(self)._make_env()
        self.instance_id: str | None = None
        self.calls: list[tuple[str, dict]] = []  # the calls this rollout ran, in order
        self.results: list[str] = []
        self.reward: float | None = None
        type(self).instances.append(self)

    def _timed(self, part: str, fn, *args):
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            type(self).seconds[part] += time.monotonic() - t0

    def _step(self, name: str, arguments: dict) -> str:
        self.calls.append((name, arguments))
        content = self._timed("tools", self.env.step, name, arguments).content
        self.results.append(content)
        return content

    def reset(self, **row) -> None:
        self.instance_id, self.calls, self.results, self.reward = row["instance_id"], [], [], None
        self._timed("reset", self.env.reset, self.tasks[row["instance_id"]])

    def bash(self, command: str) -> str:
        """Run a command in a bash shell at the repository root; the shell keeps its state between calls.

        Args:
            command: The bash command to run.
        """
        return self._step("bash", {"command": command})

    def str_replace_editor(self, command: str, path: str, file_text: str | None = None, old_str: str | None = None,
                           new_str: str | None = None, insert_line: int | None = None) -> str:
        """View, create and edit files.

        Args:
            command: One of view, create, str_replace, insert, undo_edit.
            path: Path of the file or folder.
            file_text: The content of the file to create.
            old_str: The text to replace (must occur exactly once).
            new_str: The replacement text, or the text to insert.
            insert_line: The line after which to insert new_str.
        """
        args = {k: v for k, v in dict(command=command, path=path, file_text=file_text, old_str=old_str,
                                       new_str=new_str, insert_line=insert_line).items() if v is not None}
        return self._step("str_replace_editor", args)

    def submit(self) -> str:
        """Submit the repository's current state as your fix; the episode is over."""
        return self._step("submit", {})

    def get_reward(self) -> float | None:
        scored = self._timed("reward", self.env.score)
        self._timed("reward", self.env.close)
        self.reward = scored.get("reward")
        return self.reward


def trl_tool_schemas() -> list[dict]:
    from transformers.utils import get_json_schema

    return [get_json_schema(fn) for name, fn in inspect.getmembers(SweTools, inspect.isfunction)
            if not name.startswith("_") and name not in ("reset", "get_reward")]


def run_trl(model, tokenizer, rows: list[dict], group: int, max_completion: int, temperature: float,
            out_dir: Path):
    """One generation batch through TRL's GRPOTrainer with environment_factory; returns (seconds, outputs,
    the trainer's tools/ and rewards/ metrics)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from swepost.train.trl_compat import logged_metrics

    args = GRPOConfig(output_dir=str(out_dir), use_cpu=True, bf16=False, gradient_checkpointing=False,
                      report_to="none", save_strategy="no", max_steps=1, logging_steps=1,
                      per_device_train_batch_size=len(rows) * group, num_generations=group,
                      max_completion_length=max_completion, max_tool_calling_iterations=4, temperature=temperature,
                      top_p=1.0, use_vllm=False)
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, args=args, train_dataset=Dataset.from_list(rows),
                          environment_factory=SweTools)
    inputs = [row for row in rows for _ in range(group)]  # what TRL's sampler hands one step: each prompt G times
    t0 = time.monotonic()
    out = trainer._generate_and_score_completions(inputs)
    seconds = time.monotonic() - t0
    metrics = {k: v[-1] for k, v in logged_metrics(trainer).items() if v and k.startswith(("tools/", "rewards/"))}
    return seconds, out, metrics
