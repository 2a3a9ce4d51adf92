"""TRL 1.16's own `environment_factory` tool loop beside swepost's rollout engine, on the same tasks, tools and model.

TRL's side is its real code: a `GRPOTrainer(environment_factory=SweTools)` whose `_generate_and_score_completions`
runs one generation batch (every rollout's `reset`, batched `model.generate` turns, `_tool_call_loop` running the
tool calls, `get_reward` grading each rollout). `SweTools` is swepost's `SweEnvironment` in the shape TRL wants:
`reset(**row)` opens the task's sandbox, each public method is one of the swe tools (TRL renders their docstrings
as the tool schemas) calling the same `SweEnvironment.step`, and `get_reward` grades in a fresh sandbox.
swepost's side is `run_rollouts` with a `TransformersGenerator` over the same weights, every episode at once.

The model is the tiny local model taught first (a few hundred steps on the bundled tasks' own episodes) to call
bash, then submit (then, for TRL, whose loop only ends on a turn without a tool call, to say "Done."), so both
sides run the same tool calls; a random model would never emit one.
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
        type(self).instances.append(self)

    def _timed(self, part: str, fn, *args):
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            type(self).seconds[part] += time.monotonic() - t0

    def reset(self, **row) -> None:
        self._timed("reset", self.env.reset, self.tasks[row["instance_id"]])

    def bash(self, command: str) -> str:
        """Run a command in a bash shell at the repository root; the shell keeps its state between calls.

        Args:
            command: The bash command to run.
        """
        return self._timed("tools", self.env.step, "bash", {"command": command}).content

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
        return self._timed("tools", self.env.step, "str_replace_editor", args).content

    def submit(self) -> str:
        """Submit the repository's current state as your fix; the episode is over."""
        return self._timed("tools", self.env.step, "submit", {}).content

    def get_reward(self) -> float | None:
        scored = self._timed("reward", self.env.score)
        self.env.close()
        return scored.get("reward")


def trl_tool_schemas() -> list[dict]:
    from transformers.utils import get_json_schema

    return [get_json_schema(fn) for name, fn in inspect.getmembers(SweTools, inspect.isfunction)
            if not name.startswith("_") and name not in ("reset", "get_reward")]


def teach(folder: Path, conversations: list[tuple[list[dict], list[dict]]], steps: int = 120,
          window: int = 512) -> dict:
    """Train the tiny model in `folder` in place on (messages, tools) conversations, loss on assistant turns only.
    Only each conversation's last `window` tokens are trained on (the whole ~1.8k-token prompt costs ~2.5 s a step
    on two cores): the turns to learn depend on the few tokens before them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swepost.policies.hf import _template_messages

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    rows = []
    for messages, tools in conversations:
        msgs = _template_messages(messages)
        ids = tok.apply_chat_template(msgs, tools=tools, tokenize=False)
        ids = tok(ids, add_special_tokens=False)["input_ids"]
        labels = [-100] * len(ids)
        for k, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            start = len(tok(tok.apply_chat_template(msgs[:k], tools=tools, add_generation_prompt=True,
                                                    tokenize=False), add_special_tokens=False)["input_ids"])
            end = len(tok(tok.apply_chat_template(msgs[:k + 1], tools=tools, tokenize=False),
                          add_special_tokens=False)["input_ids"])
            labels[start:end] = ids[start:end]
        rows.append((ids[-window:], labels[-window:]))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [tok.pad_token_id] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    attention = (torch.arange(width)[None, :] < torch.tensor([len(ids) for ids, _ in rows])[:, None]).long()
    optim = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    t0 = time.monotonic()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    model.save_pretrained(folder)
    return {"steps": steps, "final_loss": round(float(loss), 4), "seconds": round(time.monotonic() - t0, 1),
            "sequences": len(rows), "tokens": width}


def conversations(trajectories, env_tools: list[dict]) -> list[tuple[list[dict], list[dict]]]:
    """Each real episode twice: as swepost renders it (its tool schemas) and as TRL does (the methods' schemas,
    and a closing "Done." turn that ends TRL's loop)."""
    out = []
    for t in trajectories:
        messages = [m for m in t.messages if m["role"] in ("system", "user", "assistant", "tool")]
        out.append((messages, env_tools))
        out.append((messages + [{"role": "assistant", "content": "Done."}], trl_tool_schemas()))
    return out


def run_trl(model_dir: Path, rows: list[dict], group: int, max_completion: int, out_dir: Path):
    """One generation batch through TRL's GRPOTrainer with environment_factory; returns (seconds, outputs)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=str(out_dir), use_cpu=True, bf16=False, gradient_checkpointing=False,
                      report_to="none", save_strategy="no", max_steps=1, logging_steps=1,
                      per_device_train_batch_size=len(rows) * group, num_generations=group,
                      max_completion_length=max_completion, max_tool_calling_iterations=4, temperature=0.1,
                      use_vllm=False)
    trainer = GRPOTrainer(model=str(model_dir), args=args, train_dataset=Dataset.from_list(rows),
                          environment_factory=SweTools)
    inputs = [row for row in rows for _ in range(group)]  # what TRL's sampler hands one step: each prompt G times
    t0 = time.monotonic()
    out = trainer._generate_and_score_completions(inputs)
    seconds = time.monotonic() - t0
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if v and k.startswith(("tools/", "rewards/"))}
    return seconds, out, metrics, trainer
