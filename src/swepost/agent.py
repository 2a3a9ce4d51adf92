"""The multi-turn loop: a policy talks to an environment through tools until it submits or a limit ends it.

Every episode ends with an ExitStatus (submitted, max_turns, context_overflow, timeout, format_error,
sandbox_error, policy_error; the last two are infrastructure failures and never graded; rl's rollout engine adds
`deadline`, an episode it cut at the step's deadline, also never graded). A malformed tool call
(bad JSON, unknown tool, missing or wrong arguments) is answered with an error observation and counted; too
many in a row end the episode as format_error. Every error observation carries its TurnError under ERROR_KEY
(format, tool, sandbox), which the policy never sees. The trajectory is handed to `on_step` after every step, so
a crash leaves a usable partial record.

`pick_environment` and `environment_factory` say which environment a stage's episodes run in and build it from the
stage's settings (collect, eval and rl share them): the tasks' kind's own environment unless one is named, the
judge for an environment that takes one, and `environment_args` checked against the constructor.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from swepost.config import ArtifactInput, PathInput
from swepost.envs.base import Environment, EnvironmentBroken, MalformedCall, Observation, ToolError
from swepost.errors import BadInput, WorkFailed
from swepost.policies.base import ContextOverflow, Policy, PolicyError
from swepost.records import ERROR_KEY, ERROR_PREFIX, NO_TOOL_CALL, ExitStatus, Task, Trajectory, TurnError
from swepost.rewards.judge import JudgeConfig


@dataclass
class AgentLimits:
    max_turns: int = 30
    max_context_tokens: int = 32768
    max_seconds: float = 1800.0
    max_consecutive_errors: int = 5
    max_argument_chars: int = 200_000  # a tool call bigger than this is refused, not parsed


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def parse_call(call: Any, tool_names: set[str], limit: int) -> tuple[str, dict[str, Any]]:
    """A tool call from the model -> (name, arguments); MalformedCall says what is wrong with it (a text parser
    that could not read a call says why in the call's "error")."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise MalformedCall("Malformed tool call: expected {\"function\": {\"name\": ..., \"arguments\": ...}}.")
    if isinstance(call.get("error"), str) and call["error"]:
        raise MalformedCall(call["error"])
    name, raw = call["function"].get("name"), call["function"].get("arguments", "{}")
    if not isinstance(name, str) or name not in tool_names:
        raise MalformedCall(f"Unknown tool {str(name)[:100]!r}. Available tools: {', '.join(sorted(tool_names))}.")
    if isinstance(raw, dict):
        return name, raw
    if not isinstance(raw, str):
        raise MalformedCall("Tool arguments must be a JSON object.")
    if len(raw) > limit:
        raise MalformedCall(f"Tool arguments are {len(raw)} characters long; the limit is {limit}.")
    try:
        args = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as e:
        raise MalformedCall(f"Tool arguments are not valid JSON ({e.msg} at column {e.colno}).") from None
    if not isinstance(args, dict):
        raise MalformedCall("Tool arguments must be a JSON object.")
    return name, args


def policy_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as the policy sees it: plain OpenAI chat messages, without the ERROR_KEY marks (an API
    may reject a key it does not know). Unmarked messages are passed as they are."""
    return [{k: v for k, v in m.items() if k != ERROR_KEY} if ERROR_KEY in m else m for m in messages]


def run_episode(policy: Policy, env: Environment, task: Task, *, sample: int = 0,
                limits: AgentLimits | None = None, grade: bool = True,
                on_step: Callable[[Trajectory], None] = lambda t: None) -> Trajectory:
    """Run one episode to its end, grade it, and return the trajectory (also passed to on_step each step)."""
    limits = limits or AgentLimits()
    traj = Trajectory(episode_id=f"{task.instance_id}#{sample}", instance_id=task.instance_id, sample=sample,
                      policy=policy.describe(), environment=env.name, started=now())
    started = time.monotonic()
    policy_s = env_s = 0.0
    try:
        t0 = time.monotonic()
        try:
            traj.messages = env.reset(task)
            traj.tools = env.tools()
            traj.environment = env.name  # a remote environment learns its name (the server's) at reset
        except EnvironmentBroken as e:
            traj.exit_status, traj.error = ExitStatus.SANDBOX_ERROR, str(e)
            return traj
        except WorkFailed as e:  # one task that cannot be set up (its install or checkout failed): not the run's end
            traj.exit_status, traj.error = ExitStatus.SANDBOX_ERROR, f"the task could not be set up: {e}"
            return traj
        finally:
            traj.seconds["reset"] = round(time.monotonic() - t0, 3)
        start_policy(policy, task, traj.episode_id)
        names = {t["function"]["name"] for t in traj.tools}
        errors_in_row = 0
        on_step(traj)
        while traj.exit_status is None:
            if traj.turns >= limits.max_turns:
                traj.exit_status = ExitStatus.MAX_TURNS
                break
            if time.monotonic() - started > limits.max_seconds:
                traj.exit_status = ExitStatus.TIMEOUT
                break
            t0 = time.monotonic()
            try:
                reply = policy.reply(policy_messages(traj.messages), traj.tools)
            except ContextOverflow as e:
                traj.exit_status, traj.error = ExitStatus.CONTEXT_OVERFLOW, str(e)
                break
            except PolicyError as e:
                traj.exit_status, traj.error = ExitStatus.POLICY_ERROR, str(e)
                break
            finally:
                policy_s += time.monotonic() - t0
            traj.turns += 1
            traj.prompt_tokens += reply.prompt_tokens
            traj.completion_tokens += reply.completion_tokens
            message = {"role": "assistant", "content": reply.message.get("content") or ""}
            calls = reply.message.get("tool_calls") or []
            if calls:
                message["tool_calls"] = calls
            traj.messages.append(message)
            if reply.prompt_tokens > limits.max_context_tokens:
                traj.exit_status = ExitStatus.CONTEXT_OVERFLOW
                break
            if not calls:
                ended = _text_reply(env, message["content"], traj)
                if ended is None:
                    errors_in_row += 1
                    traj.tool_errors += 1
                    nudge = getattr(env, "no_tool_call", None) or NO_TOOL_CALL  # an environment's own words
                    traj.messages.append({"role": "user", "content": nudge, ERROR_KEY: TurnError.FORMAT.value})
                elif ended.done:
                    traj.exit_status, traj.answer = ExitStatus.SUBMITTED, ended.answer
                elif ended.content and traj.exit_status is None:  # an action written as text (<search>q</search>)
                    errors_in_row = 0
                    traj.messages.append({"role": "user", "content": ended.content})
            for call in calls:
                traj.tool_calls += 1
                call_id = call.get("id") if isinstance(call, dict) else None
                t0 = time.monotonic()
                error: TurnError | None = None
                try:
                    name, args = parse_call(call, names, limits.max_argument_chars)
                    observation = env.step(name, args)
                    content, errors_in_row = observation.content, 0
                    if observation.done:
                        traj.exit_status, traj.answer = ExitStatus.SUBMITTED, observation.answer
                except ToolError as e:
                    error = TurnError.FORMAT if isinstance(e, MalformedCall) else TurnError.TOOL
                    content = f"{ERROR_PREFIX}{e}"
                    errors_in_row += 1
                    traj.tool_errors += 1
                except EnvironmentBroken as e:
                    traj.exit_status, traj.error = ExitStatus.SANDBOX_ERROR, str(e)
                    error, content = TurnError.SANDBOX, f"{ERROR_PREFIX}the sandbox failed: {e}"
                except Exception as e:  # noqa: BLE001 - an environment's own bug ends this episode, not the run
                    traj.exit_status = ExitStatus.SANDBOX_ERROR
                    traj.error = f"the environment raised {type(e).__name__}: {e}"[:2000]
                    error, content = TurnError.SANDBOX, f"{ERROR_PREFIX}the environment failed: {type(e).__name__}"
                finally:
                    env_s += time.monotonic() - t0
                answer = {"role": "tool", "tool_call_id": call_id or f"call_{traj.tool_calls}",
                          "name": _call_name(call), "content": content}
                if error is not None:
                    answer[ERROR_KEY] = error.value
                traj.messages.append(answer)
                if traj.exit_status is not None:
                    break
            if traj.exit_status is None and errors_in_row >= limits.max_consecutive_errors:
                traj.exit_status = ExitStatus.FORMAT_ERROR
            on_step(traj)
        if traj.exit_status != ExitStatus.SANDBOX_ERROR:
            try:
                traj.final_diff = env.final_diff()
                # a policy error is the server's failure, not the model's answer: kept, never graded
                if grade and traj.exit_status != ExitStatus.POLICY_ERROR:
                    t0 = time.monotonic()
                    scored = env.score()
                    traj.seconds["grading"] = round(time.monotonic() - t0, 3)
                    traj.reward, traj.resolved = scored.get("reward"), scored.get("resolved")
                    traj.evidence = scored.get("evidence") or {}
            except EnvironmentBroken as e:
                traj.exit_status, traj.error = ExitStatus.SANDBOX_ERROR, str(e)
            except WorkFailed as e:  # the grader's own sandbox failed: the episode stands, ungraded
                traj.error = f"grading failed: {e}"
                traj.resolved, traj.reward = "UNGRADED", None
                traj.evidence = {"reason": traj.error}
            except Exception as e:  # noqa: BLE001 - a scorer (grader, judge) that raises: ungraded, and the run goes on
                traj.error = f"grading failed: {type(e).__name__}: {e}"[:2000]
                traj.resolved, traj.reward = "UNGRADED", None
                traj.evidence = {"reason": traj.error}
        return traj
    finally:
        t0 = time.monotonic()
        env.close()
        traj.seconds["close"] = round(time.monotonic() - t0, 3)
        traj.seconds.update(policy=round(policy_s, 3), env=round(env_s, 3),
                            total=round(time.monotonic() - started, 3))
        traj.finished = now()
        traj.policy = policy.describe()  # what the policy became (tool_mode auto -> text), not what it began as
        on_step(traj)


def start_policy(policy: Policy, task: Task, episode: str) -> None:
    """`policy.start(task)`, with `episode=` (task#sample) for a policy whose start takes it: a sampling policy
    seeds each episode from it, so the k samples of a task differ, and do not depend on which worker thread ran
    them (a per-thread call count repeated them across threads)."""
    try:
        takes = "episode" in inspect.signature(policy.start).parameters
    except (TypeError, ValueError):
        takes = False
    if takes:
        policy.start(task, episode=episode)
    else:
        policy.start(task)


def _text_reply(env: Environment, content: str, traj: Trajectory) -> Observation | None:
    """A reply with no tool call, offered to an environment that reads actions from text (`text_reply`: a search
    environment's `<answer>...</answer>` or `<search>...</search>`): its Observation (done: the answer; else its
    content is the next user turn), or None when it has no such hook or declines (the loop then nudges the model to
    call a tool). A hook that breaks ends the episode as the environment's failure."""
    hook = getattr(env, "text_reply", None)
    if hook is None:
        return None
    try:
        return hook(content)
    except EnvironmentBroken as e:
        traj.exit_status, traj.error = ExitStatus.SANDBOX_ERROR, str(e)
    except Exception as e:  # noqa: BLE001 - an environment's own bug ends this episode, not the run
        traj.exit_status = ExitStatus.SANDBOX_ERROR
        traj.error = f"the environment raised {type(e).__name__}: {e}"[:2000]
    return Observation("", done=False)


def _call_name(call: Any) -> str:
    try:
        return str(call["function"]["name"])[:100]
    except (TypeError, KeyError):
        return ""


# --- which environment, built how -----------------------------------------------------------------------------

# an environment's arguments a stage fills from its own settings (sandbox_limits -> limits)
STAGE_SETTINGS = ("repos", "backend", "tool_timeout", "grade", "limits", "judge", "env_url")
REMOTE = "remote"  # the environment that runs episodes in an environment server (`swepost serve env`)


def pick_environment(name: str | None, kinds: Iterable[str]) -> str:
    """The environment a stage runs its tasks in: `name` when given, else the one environment of the tasks' kinds
    (swe tasks in `swe`, codeqa tasks in `codeqa`). BadInput when the kinds' environments differ or one has none,
    and when `name` is another built-in environment than the kinds' own (a swe environment cannot answer a code
    question); a plugged-in module:Class, and `remote` (a server's environment), are taken at their word."""
    from swepost.registry import ENVIRONMENTS
    from swepost.taskkinds import task_kind

    own = {kind: task_kind(kind).environment for kind in sorted(set(kinds))}
    if name is None:
        homeless = [kind for kind, env in own.items() if env is None]
        if homeless:
            raise BadInput(f"tasks of kind {', '.join(homeless)} have no environment of their own: set environment "
                           "(module:Class)", key="environment")
        envs = sorted(set(own.values()))
        if len(envs) > 1:
            kinds_in = ", ".join(f"{kind} in {env}" for kind, env in own.items())
            raise BadInput(f"the tasks are of kinds that run in different environments ({kinds_in}): import them "
                           "as separate tasks artifacts, or set environment", key="environment")
        return envs[0] if envs else "swe"
    if name in ENVIRONMENTS and name != REMOTE:
        wrong = {kind: env for kind, env in own.items() if env in ENVIRONMENTS and env != name}
        if wrong:
            kind, env = next(iter(wrong.items()))
            raise BadInput(f"environment {name!r} cannot run {kind} tasks (they run in {env!r}): leave environment "
                           f"unset to run each kind in its own, or set it to {env}", key="environment")
    return name


class EnvironmentFields(BaseModel):
    """The settings of where episodes run, declared once for every stage that runs them (collect, eval, rl)."""

    environment: str | None = Field(None, description="swe | codeqa | search | remote | module:Class; unset: the "
                                    "tasks' kind's own (swe for bug fixing, codeqa for code questions, search for "
                                    "questions over an index); remote: an environment server's (env_url)")
    environment_args: dict[str, Any] = Field(default_factory=dict, description="more keyword arguments of the "
                                             "environment (codeqa: resolved_threshold, max_observation_chars, "
                                             "prompts_dir; swe: max_observation_chars, prompts_dir); one it does "
                                             "not take is an error")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="the judge of an environment that has one "
                               "(codeqa): an OpenAI-compatible endpoint (base_url, model), or with neither the "
                               "lexical judge. In rl (RLAIF), on_failure: a judge failure's reward is its group's "
                               "mean (no advantage; counted as rl/judge_failed) or none (masked). Judgements are "
                               "cached under $SWEPOST_HOME/cache/judge unless cache_dir says otherwise")
    repos: Path | None = PathInput(description="mirror folder of owner__name repos (tasks without an image)")
    backend: str = Field("auto", description="sandbox backend: auto, docker, bwrap, local")
    index: str | None = ArtifactInput(None, description="an index artifact (`swepost corpus index`) the "
                                      "environment searches (search); a parent of the stage's artifact")
    env_url: str | None = Field(None, description="the environment server's URL (`swepost serve env`), for "
                                "environment remote: the episodes run there, graded there")


def remote_settings(name: str, env_url: str | None, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings that say where a remote environment's server is: {"env_url": ...} for environment remote, {}
    for any other. BadInput naming env_url when remote has none or another environment has one, and naming
    `environment_args.<key>` for a remote one's argument that is the server's (its environment's own arguments are
    given to `swepost serve env`)."""
    if name != REMOTE:
        if env_url is not None:
            raise BadInput(f"env_url is the environment server's, for environment remote; these episodes run in "
                           f"{name!r} here: drop env_url, or set environment remote", key="env_url")
        return {}
    if not env_url:
        raise BadInput("environment remote runs the episodes in an environment server: set env_url to the URL "
                       "`swepost serve env` prints (http://host:port)", key="env_url")
    from swepost.registry import ENVIRONMENTS, load_component

    own = [p for p, v in inspect.signature(load_component(REMOTE, ENVIRONMENTS, "environment")).parameters.items()
           if v.kind is inspect.Parameter.KEYWORD_ONLY and p not in STAGE_SETTINGS]
    for key in args or {}:
        if key not in own and key not in STAGE_SETTINGS:  # a stage's own setting is refused by environment_factory
            raise BadInput(f"environment remote takes {', '.join(own)}; {key!r} is the server's environment's "
                           "argument: give it to `swepost serve env`", key=f"environment_args.{key}")
    return {"env_url": env_url}


def takes_judge(name: str) -> bool:
    """Whether the environment `name` (a short name or module:Class) is graded by a judge: its constructor takes
    `judge`."""
    from swepost.registry import ENVIRONMENTS, load_component

    try:
        return "judge" in inspect.signature(load_component(name, ENVIRONMENTS, "environment")).parameters
    except (TypeError, ValueError):
        return False


def environment_factory(name: str, *, settings: Mapping[str, Any], args: Mapping[str, Any] | None = None,
                        judge: Any = None, judge_cache: str | Path | None = None) -> Callable[[], Any]:
    """`make_env()` for the environment `name` (a short name or module:Class): its class called with the stage's
    `settings` (repos, backend, tool_timeout, grade, limits), the judge (a rewards.judge.JudgeConfig; its
    cache_dir, when unset, becomes `judge_cache`) when the constructor takes `judge`, and `args`, the stage's
    `environment_args`. BadInput, naming `environment_args.<key>` or `judge`, for an argument the constructor does
    not take, one the stage sets itself, or a judge other than the default given to an environment without one.
    One environment is built here, so a bad value (an endpoint judge without a model) stops the stage before any
    episode."""
    from swepost.registry import ENVIRONMENTS, load_component

    cls = load_component(name, ENVIRONMENTS, "environment")
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # a builtin or C class: nothing to check against
        params = {}
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [p for p, v in params.items() if v.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                            inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    args = dict(args or {})
    for key in args:
        if key in settings or key in STAGE_SETTINGS:
            raise BadInput(f"{key} comes from the stage's own settings (repos, backend, tool_timeout, "
                           "sandbox_limits, grade, judge, env_url), not from environment_args",
                           key=f"environment_args.{key}")
        if not open_ended and key not in accepted:
            known = ", ".join(k for k in accepted if k not in settings and k not in STAGE_SETTINGS) or "none"
            raise BadInput(f"environment {name!r} takes no argument {key!r} (it takes: {known})",
                           key=f"environment_args.{key}")
    kwargs = {**settings, **args}
    if "judge" in params:
        if judge is not None and judge_cache is not None and getattr(judge, "cache_dir", "") is None:
            judge = judge.model_copy(update={"cache_dir": Path(judge_cache)})
        kwargs["judge"] = judge
    elif judge is not None and _not_default(judge, exclude={"cache_dir"}):
        raise BadInput(f"environment {name!r} takes no judge (its reward is its own grade): drop the judge "
                       "setting, or run an environment that has one (codeqa)", key="judge")

    def make_env():
        try:
            return cls(**kwargs)
        except TypeError as e:  # a setting the constructor does not take (a plugged-in environment)
            raise BadInput(f"environment {name!r}: {e}", key="environment") from None
        except BadInput as e:  # a bad value of one of environment_args: named as the user wrote it
            if e.key in args and not e.file:
                raise BadInput(e.detail, key=f"environment_args.{e.key}") from None
            raise

    make_env()
    return make_env


def _not_default(config: Any, exclude: set[str]) -> bool:
    """Does a settings model (a JudgeConfig) differ from its defaults, `exclude` aside?"""
    return config.model_dump(exclude=exclude) != type(config)().model_dump(exclude=exclude)
