"""The vocabulary of the whole house: the records every stage reads and writes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TaskKind = Literal["swe", "codeqa", "search"]


class TaskEnv(BaseModel):
    """Where a task runs: a docker image holding the repo, or a repo checked out from a local mirror."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, description="docker image with the repo at `workdir` (SWE-Gym style)")
    workdir: str = Field("/testbed", description="the repo's folder inside the sandbox")
    install: list[str] = Field(default_factory=list, description="commands run once before the agent starts")
    test_cmd: str | None = Field(None, description="test command; None means the default pytest run")
    network: bool = Field(False, description="whether the sandbox may reach the network")


class TaskVerify(BaseModel):
    """What decides success: tests for swe tasks, a reference answer / rubric or gold answers otherwise."""

    model_config = ConfigDict(extra="forbid")

    fail_to_pass: list[str] = Field(default_factory=list)
    pass_to_pass: list[str] = Field(default_factory=list)
    reference_answer: str | None = None
    rubric: list[str] = Field(default_factory=list)
    gold_answers: list[str] = Field(default_factory=list)


class Task(BaseModel):
    """One task. SWE-bench columns keep their meaning; FAIL_TO_PASS / PASS_TO_PASS live in `verify`."""

    model_config = ConfigDict(extra="forbid")

    instance_id: str
    kind: TaskKind = "swe"
    problem_statement: str
    repo: str | None = None
    base_commit: str | None = None
    patch: str = ""
    test_patch: str = ""
    version: str | None = None
    created_at: str | None = None
    hints_text: str = ""
    environment_setup_commit: str | None = None
    env: TaskEnv = Field(default_factory=TaskEnv)
    verify: TaskVerify = Field(default_factory=TaskVerify)
    metadata: dict[str, Any] = Field(default_factory=dict, description="source columns swepost has no field for")


ExitStatus = Literal["submitted", "max_turns", "context_overflow", "timeout", "format_error", "sandbox_error",
                     "policy_error"]


class Trajectory(BaseModel):
    """One episode, saved after every step: a crash leaves a usable partial record (exit_status None)."""

    model_config = ConfigDict(extra="forbid")

    format: int = 1
    episode_id: str = Field(description="instance_id#sample: unique within a collection")
    instance_id: str
    sample: int = 0
    policy: dict[str, Any] = Field(default_factory=dict, description="name, model, sampling parameters")
    environment: str = "swe"
    tools: list[dict[str, Any]] = Field(default_factory=list, description="tool schemas offered (OpenAI format)")
    messages: list[dict[str, Any]] = Field(default_factory=list, description="OpenAI chat format, tool turns too")
    exit_status: ExitStatus | None = None
    final_diff: str = ""
    answer: str | None = None
    reward: float | None = None
    resolved: str | None = None
    evidence: dict[str, Any] = Field(default_factory=dict, description="grader evidence: statuses, apply log")
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = Field(0, description="malformed or failing tool calls answered with an error")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: dict[str, float] = Field(default_factory=dict, description="policy, env, grading, total")
    error: str | None = None
    started: str | None = None
    finished: str | None = None
