"""Stage `filter`: trajectories -> SFT data (rejection sampling), with the reason every dropped episode went.

Rules, in order (the first that fails names the reason): an episode the grader could not judge (UNGRADED)
is always dropped as `ungraded`, never kept nor counted unresolved; require_resolved / min_reward, require_submitted,
max_turns, max_tokens; then episodes left with no trainable turn; then dedupe and the per-task cap, on what
is left. Writes an `sft-data` artifact:

* `train.jsonl`: one row per kept episode in TRL's conversational format with tools:
  `{"messages": [...], "tools": [...], "instance_id": ..., "episode_id": ...}`. Messages are the trajectory's
  OpenAI-format messages; an assistant tool call's `function.arguments` is a dict (a JSON-object string in
  the trajectory is parsed; chat templates such as Qwen2.5's render it with `tojson`; an unparseable string,
  from a malformed call, is kept as it was). `load_dataset("json", data_files=...)` reads `messages` (and
  the tools' `parameters`) as Json columns, so every call's arguments come back exactly, with no null keys.
* Format-error turns (an assistant message whose every tool result the agent loop marked a `format` or `tool`
  error, or that the loop answered with its no-tool-call nudge; a broken sandbox is no format error; format 1
  trajectories, which have no marks, are read by the text: "Error: " results): with `format_errors: mask` the
  message stays in the context and carries `"train": false`, which tells the SFT stage to leave it out of the
  loss (no key, or any other value, means train on it); with `drop` the message and its answers are removed
  from the conversation. The marks themselves (`error`) are not written: rows are plain OpenAI messages.
* `report.json`: the stats below, the config, and every episode's decision (kept, or the drop reason).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any, Literal

from pydantic import Field, model_validator

from swepost.artifacts import Artifact, ArtifactStore, producer_record
from swepost.config import ArtifactInput, ModelInput, StageConfig
from swepost.errors import BadInput, BadInputs, WorkFailed
from swepost.records import ERROR_KEY, Trajectory
from swepost.rewards import filters
from swepost.stages.collect import TRAJECTORIES_FILE

TRAIN_FILE = "train.jsonl"
REPORT_FILE = "report.json"
INPUT_KINDS = ("trajectories", "eval")  # both hold trajectories.jsonl


class FilterConfig(StageConfig):
    trajectories: str = ArtifactInput(description="the trajectories (or eval) artifact to filter")
    name: str = Field("sft-data", description="output artifact name")
    require_resolved: bool = Field(True, description="keep only RESOLVED_FULL episodes (or reward >= min_reward)")
    min_reward: float | None = Field(None, description="keep episodes with reward >= this instead of requiring "
                                     "RESOLVED_FULL (applies even with require_resolved false)")
    require_submitted: bool = Field(True, description="keep only episodes the agent ended with `submit`")
    max_turns: int | None = Field(None, ge=1, description="drop episodes with more model turns")
    max_tokens: int | None = Field(None, ge=1, description="drop episodes whose conversation, as one SFT "
                                   "sequence, is longer than this many tokens (counted with `tokenizer` when "
                                   "given, else estimated from its text)")
    tokenizer: str | None = ModelInput(None, description="the model SFT will train (a folder, a checkpoint artifact "
                                  "or a hub id): max_tokens then counts the conversation exactly as SFT will "
                                  "tokenize it (its tokenizer, the training chat template, the tool schemas, "
                                  "masked and dropped turns applied), so a kept episode is never cut at the end")
    dedupe: bool = Field(True, description="drop episodes identical to an earlier one (tool call ids aside)")
    max_per_task: int | None = Field(None, ge=1, description="keep at most N episodes per task (see `prefer`)")
    prefer: Literal["shortest", "longest"] = Field("shortest", description="which episodes max_per_task keeps: "
                                                   "the fewest turns (shortest) or the most (longest, as "
                                                   "BrowserAgent's RFT keeps one per question)")
    min_solve_rate: float = Field(0.0, ge=0, le=1, description="keep only tasks resolved in at least this fraction "
                                  "of their graded episodes (counted over all of them, before any other rule)")
    max_solve_rate: float = Field(1.0, ge=0, le=1, description="keep only tasks resolved in at most this fraction "
                                  "of their graded episodes: below 1, questions the model always solves are left "
                                  "out (RFT on what it solves only partly)")
    format_errors: Literal["mask", "drop"] = Field(
        "mask", description="turns answered only with errors: mask (keep in context, `train: false`) or drop")


    @model_validator(mode="after")
    def _band(self) -> FilterConfig:
        if self.min_solve_rate > self.max_solve_rate:
            raise ValueError(f"min_solve_rate {self.min_solve_rate:g} is above max_solve_rate "
                             f"{self.max_solve_rate:g}: no task could be kept")
        return self


def episode_reason(traj: Trajectory, config: FilterConfig) -> str | None:
    """The first per-episode rule that drops `traj`, or None."""
    if reason := filters.require_graded(traj):
        return reason
    if config.require_resolved or config.min_reward is not None:
        if reason := filters.require_resolved(traj, config.min_reward):
            return reason
    if config.require_submitted and (reason := filters.require_submitted(traj)):
        return reason
    if config.max_turns is not None and (reason := filters.max_turns(traj, config.max_turns)):
        return reason
    if config.max_tokens is not None and config.tokenizer is None and (
            reason := filters.max_tokens(traj, config.max_tokens)):
        return reason  # with a tokenizer the exact count is taken later, on the messages SFT will see
    return None


def token_counter(ref: str, store: ArtifactStore):
    """`count(messages, tools) -> int`: the length of the conversation as SFT tokenizes it, with the tokenizer
    of `ref` (a checkpoint artifact, a model folder or a hub id) and SFT's training chat template."""
    from transformers import AutoTokenizer

    from swepost.train.sft import tokenize_conversation, training_chat_template

    path = ref
    try:
        art = store.resolve(ref)
    except BadInput:
        art = None
    if art is not None:
        if art.kind != "checkpoint":
            raise BadInput(f"{art.id} is a {art.kind} artifact, not a checkpoint", key="tokenizer")
        path = str(art.path / "model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any loading failure is the user's reference
        raise BadInput(f"cannot load a tokenizer from {ref!r}: {str(e).splitlines()[0]}", key="tokenizer") from None
    template = training_chat_template(tokenizer)
    return lambda messages, tools: len(tokenize_conversation(tokenizer, template, messages, tools)["input_ids"])


def training_messages(traj: Trajectory, format_errors: str) -> tuple[list[dict[str, Any]], int]:
    """The trajectory's messages ready for SFT, and how many format-error turns were masked or dropped."""
    messages = copy.deepcopy(traj.messages)
    bad, marked = set(filters.format_error_turns(traj)), filters.errors_marked(traj)
    out: list[dict[str, Any]] = []
    skip: set[int] = set()
    for i, m in enumerate(messages):
        if i in skip:
            continue
        m.pop(ERROR_KEY, None)  # swepost's mark, not part of the chat format
        if m.get("content") is None:
            m["content"] = ""  # chat templates concatenate content
        for call in m.get("tool_calls") or []:
            if isinstance(call, dict):
                call.pop("error", None)  # a text parser's note on a malformed call: not part of the format
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                call["function"]["arguments"] = filters.parse_arguments(call["function"].get("arguments"))
        if i in bad:
            if format_errors == "drop":
                skip.update(i + 1 + j for j, a in enumerate(filters.turn_answers(traj.messages, i))
                            if a.get("role") == "tool" or filters.is_no_tool_call_nudge(a, marked))
                continue
            m["train"] = False
        out.append(m)
    return out, len(bad)


def to_row(traj: Trajectory, messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"messages": messages, "tools": traj.tools, "instance_id": traj.instance_id,
            "episode_id": traj.episode_id}


def load_trajectories(art: Artifact) -> list[Trajectory]:
    if art.kind not in INPUT_KINDS:
        raise BadInput(f"{art.id} is a {art.kind} artifact; filter reads {' or '.join(INPUT_KINDS)}",
                       key="trajectories")
    path = art.path / TRAJECTORIES_FILE
    if not path.is_file():
        raise BadInput(f"{art.id} has no {TRAJECTORIES_FILE}", file=str(art.path))
    out, problems = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(Trajectory.model_validate_json(line))
            except ValueError as e:
                problems.append(BadInput(f"not a trajectory: {str(e).splitlines()[0]}", file=str(path), line=n))
    if problems:
        raise BadInputs(problems)
    return out


def select(trajectories: list[Trajectory], config: FilterConfig,
           count_tokens=None) -> tuple[list[str | None], dict[int, tuple]]:
    """Every episode's drop reason (None: kept) and, for the kept ones, (messages, format-error turns).
    `count_tokens(messages, tools)`, when given, measures max_tokens exactly on the messages SFT will see."""
    reasons: list[str | None] = [episode_reason(t, config) for t in trajectories]
    if config.min_solve_rate > 0 or config.max_solve_rate < 1:  # rates over every episode, before other rules
        band = filters.solve_rate_band(trajectories, config.min_solve_rate, config.max_solve_rate)
        reasons = [r or b for r, b in zip(reasons, band, strict=True)]
    prepared: dict[int, tuple] = {}
    for i, t in enumerate(trajectories):
        if reasons[i] is None:
            messages, bad = training_messages(t, config.format_errors)
            if not any(m.get("role") == "assistant" and m.get("train") is not False for m in messages):
                reasons[i] = "no_trainable_turns"
            elif count_tokens is not None and config.max_tokens is not None and \
                    count_tokens(messages, t.tools) > config.max_tokens:
                reasons[i] = "too_many_tokens"
            else:
                prepared[i] = (messages, bad)
    for rule in ([filters.dedupe] if config.dedupe else []) + (
            [lambda ts: filters.per_task_cap(ts, config.max_per_task, config.prefer)] if config.max_per_task else []):
        alive = [i for i, r in enumerate(reasons) if r is None]
        for i, reason in zip(alive, rule([trajectories[i] for i in alive]), strict=True):
            if reason:
                reasons[i] = reason
    return reasons, {i: v for i, v in prepared.items() if reasons[i] is None}


def run_filter(config: FilterConfig, store: ArtifactStore) -> Artifact:
    source = store.resolve(config.trajectories)
    trajectories = load_trajectories(source)
    counter = token_counter(config.tokenizer, store) if config.tokenizer and config.max_tokens else None
    reasons, kept = select(trajectories, config, counter)
    dropped = Counter(r for r in reasons if r is not None)
    bad_turns = sum(bad for _, bad in kept.values())
    stats = {"episodes": len(trajectories), "kept": len(kept), "dropped": sum(dropped.values()),
             "dropped_by_reason": dict(sorted(dropped.items())),
             "masked_turns": bad_turns if config.format_errors == "mask" else 0,
             "dropped_turns": bad_turns if config.format_errors == "drop" else 0,
             "tasks": len({trajectories[i].instance_id for i in kept})}
    if not kept:
        why = ", ".join(f"{r}: {n}" for r, n in sorted(dropped.items())) or "no episodes"
        raise WorkFailed(f"filter: no episode of {source.id} passed ({why}); nothing to train on")
    data = config.model_dump(mode="json")
    data["trajectories"] = source.id
    with store.write(config.name, "sft-data", producer=producer_record("filter", data),
                     parents=[source.id]) as w:
        with open(w.path / TRAIN_FILE, "w", encoding="utf-8") as f:
            for i in sorted(kept):
                f.write(json.dumps(to_row(trajectories[i], kept[i][0]), ensure_ascii=False) + "\n")
        report = {**stats, "source": source.id, "config": data,
                  "decisions": [{"episode_id": t.episode_id, "kept": r is None, **({"reason": r} if r else {})}
                                for t, r in zip(trajectories, reasons, strict=True)]}
        (w.path / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        w.stats.update(stats)
    return w.artifact
