"""The vocabulary of the whole house: the records every stage reads and writes."""

from __future__ import annotations

import ipaddress
from enum import Enum
from functools import lru_cache
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_serializer, field_validator

from swepost.errors import BadInput
from swepost.registry import TASK_KINDS, check_component


class SandboxLimits(BaseModel):
    """Sandbox limits a task (`env.limits`) or a stage (`sandbox_limits`) sets; unset keys keep the layer below.

    Merged by swepost.sandbox.task_sandbox.limits_for: defaults <- task <- stage.
    """

    model_config = ConfigDict(extra="forbid")

    cpus: float | None = Field(None, gt=0, description="CPU cores (docker: a quota; bwrap: a cgroup quota)")
    memory_mb: int | None = Field(None, ge=64, description="memory including swap, in MiB")
    pids: int | None = Field(None, ge=16, description="processes and threads at once")
    disk_mb: int | None = Field(None, ge=16, description="writable disk, in MiB")
    timeout_s: float | None = Field(None, gt=0, description="default seconds for one command")
    network_allow: list[str] | None = Field(None, description="local ADDR, CIDR, ADDR:PORT or CIDR:PORT a sandbox "
                                            "with network may reach (a proxy, a mirror); all else local is fenced")

    @field_validator("network_allow")
    @classmethod
    def _addresses(cls, value: list[str] | None) -> list[str] | None:
        for entry in value or []:
            host, sep, port = entry.rpartition(":") if ":" in entry else (entry, "", "")
            try:
                ipaddress.IPv4Network(host, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IPv4 address or CIDR, optionally with :PORT") from None
            if sep and not (port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(f"{entry!r}: the port must be 1-65535")
        return value


class TaskEnv(BaseModel):
    """Where a task runs: a docker image holding the repo, or a repo checked out from a local mirror."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, description="docker image with the repo at `workdir` (SWE-Gym style)")
    workdir: str = Field("/testbed", description="the repo's folder inside the sandbox")
    install: list[str] = Field(default_factory=list, description="commands run once before the agent starts")
    test_cmd: str | None = Field(None, description="test command; None means the default pytest run")
    network: bool = Field(False, description="whether the sandbox may reach the network")
    limits: SandboxLimits | None = Field(None, description="this task's sandbox limits (unset: the defaults)")


class TaskVerify(BaseModel):
    """What decides success: tests for swe tasks, a reference answer / rubric or gold answers otherwise."""

    model_config = ConfigDict(extra="forbid")

    fail_to_pass: list[str] = Field(default_factory=list)
    pass_to_pass: list[str] = Field(default_factory=list)
    reference_answer: str | None = None
    rubric: list[str] = Field(default_factory=list)
    gold_answers: list[str] = Field(default_factory=list)
    timeout: float | None = Field(None, gt=0, description="seconds the graded test run may take (default 1800); "
                                  "past it the episode is UNGRADED, not wrong")


@lru_cache(maxsize=256)
def _find_task_kind(name: str) -> None:
    """Cached: a `module:NAME` kind's module is looked for once, not once per task of a large file."""
    try:
        check_component(name, TASK_KINDS, "task kind")
    except BadInput as e:
        raise ValueError(e.detail) from None


def _known_task_kind(name: str) -> str:
    if name not in TASK_KINDS:
        _find_task_kind(name)
    return name


# A name of registry.TASK_KINDS or the import path module:NAME of a swepost.taskkinds.TaskKind (checked to be
# importable, not imported: records stay below the kinds that build them)
TaskKindName = Annotated[str, AfterValidator(_known_task_kind)]


class Task(BaseModel):
    """One task. SWE-bench columns keep their meaning; FAIL_TO_PASS / PASS_TO_PASS live in `verify`."""

    model_config = ConfigDict(extra="forbid")

    instance_id: str
    kind: TaskKindName = Field("swe", description="swe, codeqa, search (registry.TASK_KINDS) or module:NAME")
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


class ExitStatus(str, Enum):
    """How an episode ended. A str enum: written to JSON as its value and equal to it (`== "submitted"` holds)."""

    SUBMITTED = "submitted"
    MAX_TURNS = "max_turns"
    CONTEXT_OVERFLOW = "context_overflow"
    TIMEOUT = "timeout"
    FORMAT_ERROR = "format_error"
    SANDBOX_ERROR = "sandbox_error"
    POLICY_ERROR = "policy_error"
    DEADLINE = "deadline"  # rl's rollout engine cut the episode at the step's deadline

    def __str__(self) -> str:  # the value in f-strings and messages, on every Python (StrEnum is 3.11+)
        return self.value


class TurnError(str, Enum):
    """Why the agent loop answered a tool call (or a reply without one) with an error; marked on the answering
    message under ERROR_KEY, so readers never guess it from the text."""

    FORMAT = "format"  # the call was malformed (bad JSON, unknown tool, bad arguments), or the reply had none
    TOOL = "tool"  # a well-formed call the tool could not carry out (old_str not found, no such file)
    SANDBOX = "sandbox"  # the environment itself broke: the episode ends as sandbox_error

    def __str__(self) -> str:
        return self.value


# Format 2 marks per-turn errors: the tool message (or the no-tool-call nudge) the loop answered with carries
# ERROR_KEY. Format 1 records have no mark; their errors are read from the text (ERROR_PREFIX, NO_TOOL_CALL).
TRAJECTORY_FORMAT = 2
ERROR_KEY = "error"
ERROR_PREFIX = "Error: "  # how the agent loop begins every error observation
NO_TOOL_CALL = ("Your reply had no tool call. Use one of the tools to work on the repository, "
                "or call `submit` when you are done.")


class Trajectory(BaseModel):
    """One episode, saved after every step: a crash leaves a usable partial record (exit_status None)."""

    model_config = ConfigDict(extra="forbid")

    format: int = Field(TRAJECTORY_FORMAT, description="record version: 2 marks per-turn errors, 1 did not")
    episode_id: str = Field(description="instance_id#sample: unique within a collection")
    instance_id: str
    sample: int = 0
    policy: dict[str, Any] = Field(default_factory=dict, description="name, model, sampling parameters")
    environment: str = "swe"
    tools: list[dict[str, Any]] = Field(default_factory=list, description="tool schemas offered (OpenAI format)")
    messages: list[dict[str, Any]] = Field(default_factory=list, description="OpenAI chat format, tool turns too; the "
                                          "answer to a failed call carries ERROR_KEY (format 2)")
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

    @field_serializer("exit_status")
    def _exit_status_value(self, status: ExitStatus | str | None) -> str | None:
        # written as its value, also where a plain string was assigned after validation (no validate_assignment)
        return None if status is None else str(status)
