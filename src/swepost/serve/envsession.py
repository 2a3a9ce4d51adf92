"""One trajectory's environment on the environment server, driven by the model's raw text.

A `Session` is opened on the first request of a trajectory id (`env.reset(task)`), takes each action as the model
wrote it (Hermes/Qwen `<tool_call>` blocks, read by the parser the policies share, or a text action such as
Search-R1's `<search>q</search>`), and ends on a submit, an answer, `finish` / `is_last_step` or a broken sandbox:
then it is graded (unless the client asks not to), the sandbox is closed, and the reply carries the reward. What a
step does, how an error is classed (format, tool, sandbox) and what is graded are the agent loop's own rules
(`swepost.agent`), so an episode served here is the episode `run_episode` would have run.

`SessionPool` holds the sessions of one process (the server's, a worker process's or a Ray actor's). Replies are
plain dicts (`Reply`), picklable, so they cross process and Ray boundaries unchanged. Nothing here speaks HTTP.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from swepost.agent import parse_call
from swepost.envs.base import EnvironmentBroken, MalformedCall, ToolError
from swepost.errors import BadInput, WorkFailed
from swepost.policies.toolcalls import parse_tool_calls
from swepost.records import ERROR_PREFIX, NO_TOOL_CALL, Task

MAX_ARGUMENT_CHARS = 200_000  # the agent loop's own cap on one call's arguments


@dataclass
class EnvSpec:
    """How to build the served environment: what `agent.environment_factory` takes. Picklable, so worker processes
    and Ray actors build their own environments from it."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)
    judge: dict[str, Any] | None = None  # a rewards.judge.JudgeConfig, dumped
    judge_cache: str | None = None
    grading_timeout: float = 600.0
    max_argument_chars: int = MAX_ARGUMENT_CHARS

    def factory(self):
        from swepost.agent import environment_factory
        from swepost.rewards.judge import JudgeConfig

        judge = JudgeConfig(**self.judge) if self.judge is not None else None
        return environment_factory(self.name, settings=self.settings, args=self.args, judge=judge,
                                   judge_cache=self.judge_cache)


def reply(observation: Any, *, done: bool, valid: bool) -> dict[str, Any]:
    """What a session answers for one action: the observation (a str, or a dict with `obs`), done, valid."""
    return {"observation": observation, "done": done, "valid": valid}


def error_reply(kind: str, message: str, *, details: bool, valid: bool = False) -> dict[str, Any]:
    """An episode that ends without a verdict (a broken sandbox, an unknown task, a dead worker, a timeout): the
    final observation says why, with reward null (ungraded: never a wrong answer)."""
    text = f"{ERROR_PREFIX}{message}"
    observation: dict[str, Any] = {"obs": text, "reward": None,
                                   "metrics": {"graded": 0, "ungraded": 1, f"error_{kind}": 1}}
    if details:
        observation.update(event="error", error={"kind": kind, "message": message})
    return reply(observation, done=True, valid=valid)


class Session:
    """One trajectory: its environment, task and counters. `act` is serialised by the session's lock."""

    def __init__(self, trajectory_id: str, task: Task, env: Any, spec: EnvSpec):
        self.id, self.task, self.env, self.spec = trajectory_id, task, env, spec
        self.lock = threading.Lock()
        self.turn = 0  # assistant turns seen: the parser's call ids are call_{turn}_{i}, as in the agent loop
        self.tool_calls = self.tool_errors = 0
        self.env_seconds = 0.0
        self.names: set[str] = set()
        self.ended = False
        self.opened = time.monotonic()

    # --- start ---------------------------------------------------------------------------------------------------

    def open(self, details: bool) -> dict[str, Any]:
        """`env.reset(task)`: the initial observation (the task's first user message), or an error reply."""
        t0 = time.monotonic()
        try:
            messages = self.env.reset(self.task)
            tools = self.env.tools()
        except (EnvironmentBroken, WorkFailed) as e:
            return self._broken(f"the task could not be set up: {e}", details)
        except BadInput as e:
            return self._broken(f"the task is not valid here: {e}", details, kind="bad_task")
        except Exception as e:  # noqa: BLE001 - an environment's own bug ends this trajectory, not the server
            return self._broken(f"the environment raised {type(e).__name__}: {e}", details)
        finally:
            self.env_seconds += time.monotonic() - t0
        self.names = {t["function"]["name"] for t in tools}
        users = [m for m in messages if m.get("role") == "user"]
        text = str(users[-1].get("content") or "") if users else ""
        if not details:
            return reply(text, done=False, valid=True)
        return reply({"obs": text, "event": "reset", "environment": getattr(self.env, "name", self.spec.name),
                      "messages": messages, "tools": tools,
                      "no_tool_call": getattr(self.env, "no_tool_call", None)}, done=False, valid=True)

    # --- one action ----------------------------------------------------------------------------------------------

    def act(self, action: str, finish: bool, extra: dict[str, Any]) -> dict[str, Any]:
        """Run one action (possibly empty) and, when the episode ends here, grade it and close the environment."""
        details = extra.get("details") is True
        grade = extra.get("grade", True) is not False
        with self.lock:
            if self.ended:
                return error_reply("ended", f"trajectory {self.id} has already ended", details=details)
            if not action.strip():
                if finish:
                    return self._end("", {"event": "final"}, details, grade, valid=True)
                return reply({"obs": "", "event": "empty"} if details else "", done=False, valid=False)
            self.turn += 1
            content, calls = parse_tool_calls(action, turn=self.turn)
            t0 = time.monotonic()
            try:
                if calls:
                    text, body, done, valid, broken = self._tools(calls)
                else:
                    text, body, done, valid, broken = self._text(content)
            finally:
                self.env_seconds += time.monotonic() - t0
            if broken is not None:
                self._close()
                observation = error_reply("sandbox", broken, details=details)["observation"]
                observation["obs"] = text
                if details:
                    observation.update(body)
                    observation["event"] = body["event"]
                return reply(observation, done=True, valid=valid)
            if done or finish:
                return self._end(text, body, details, grade, valid=valid)
            if not details:
                return reply(text, done=False, valid=valid)
            return reply({"obs": text, **body}, done=False, valid=valid)

    def _tools(self, calls: list[dict[str, Any]]) -> tuple[str, dict[str, Any], bool, bool, str | None]:
        results, done, valid, broken = [], False, True, None
        for call in calls:
            self.tool_calls += 1
            name = str((call.get("function") or {}).get("name") or "")[:100]
            result = {"name": name, "content": "", "message": "", "error": None, "done": False, "answer": None}
            try:
                tool, arguments = parse_call(call, self.names, self.spec.max_argument_chars)
                observation = self.env.step(tool, arguments)
                result.update(content=observation.content, done=bool(observation.done), answer=observation.answer)
                done = done or bool(observation.done)
            except ToolError as e:
                kind = "format" if isinstance(e, MalformedCall) else "tool"
                result.update(content=f"{ERROR_PREFIX}{e}", message=str(e), error=kind)
                self.tool_errors += 1
                valid = valid and kind != "format"
            except EnvironmentBroken as e:
                result.update(content=f"{ERROR_PREFIX}the sandbox failed: {e}", message=str(e), error="sandbox")
                broken = str(e)
            except Exception as e:  # noqa: BLE001 - an environment's own bug ends this episode, as in the agent loop
                broken = f"the environment raised {type(e).__name__}: {e}"[:2000]
                result.update(content=f"{ERROR_PREFIX}the environment failed: {type(e).__name__}", message=broken,
                              error="sandbox")
            results.append(result)
            if done or broken is not None:
                break  # the agent loop runs no call after a submit or a broken sandbox
        text = "\n".join(f"<tool_response>\n{r['content']}\n</tool_response>" for r in results)
        return text, {"event": "tools", "results": results}, done, valid, broken

    def _text(self, content: str) -> tuple[str, dict[str, Any], bool, bool, str | None]:
        """A reply with no tool call: the environment's text hook (an answer, a text action), else the nudge."""
        hook = getattr(self.env, "text_reply", None)
        observation = None
        if hook is not None:
            try:
                observation = hook(content)
            except EnvironmentBroken as e:
                return "", {"event": "text", "text_result": None}, False, True, str(e)
            except Exception as e:  # noqa: BLE001 - as the agent loop: the environment's failure
                return "", {"event": "text", "text_result": None}, False, True, \
                    f"the environment raised {type(e).__name__}: {e}"[:2000]
        if observation is None:
            self.tool_errors += 1
            nudge = getattr(self.env, "no_tool_call", None) or NO_TOOL_CALL
            return nudge, {"event": "nudge"}, False, False, None
        result = {"content": observation.content, "done": bool(observation.done), "answer": observation.answer}
        return observation.content, {"event": "text", "text_result": result}, bool(observation.done), True, None

    # --- the end -------------------------------------------------------------------------------------------------

    def _end(self, text: str, body: dict[str, Any], details: bool, grade: bool, *, valid: bool) -> dict[str, Any]:
        """Grade (unless told not to) and close; the final observation carries the reward."""
        final: dict[str, Any] = {"final_diff": "", "reward": None, "resolved": None, "evidence": {}, "graded": False}
        try:
            final["final_diff"] = self.env.final_diff() or ""
            if grade:
                scored = self._score()
                final.update(reward=scored.get("reward"), resolved=scored.get("resolved"),
                             evidence=scored.get("evidence") or {}, graded=scored.get("reward") is not None)
        except EnvironmentBroken as e:
            self._close()
            return error_reply("sandbox", f"the sandbox failed at the end of the episode: {e}", details=details,
                               valid=valid)
        finally:
            self._close()
        metrics = {"turns": self.turn, "tool_calls": self.tool_calls, "tool_errors": self.tool_errors,
                   "graded": int(final["graded"]), "ungraded": int(grade and not final["graded"]),
                   "resolved": int(final["resolved"] == "RESOLVED_FULL"),
                   "env_seconds": round(self.env_seconds, 3)}
        observation: dict[str, Any] = {"obs": text, "reward": final["reward"], "metrics": metrics}
        if grade and not final["graded"]:  # why there is no reward, for a client that reads no details
            observation["cause"] = str(final["evidence"].get("reason") or final["evidence"].get("cause") or
                                       "the grader gave no reward")[:2000]
        if details:
            observation.update(body)
            observation["final"] = final
        return reply(observation, done=True, valid=valid)

    def _score(self) -> dict[str, Any]:
        """env.score() within the grading timeout; a grader that fails or overruns is ungraded, never a 0."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["scored"] = self.env.score()
            except EnvironmentBroken:
                raise
            except BaseException as e:  # noqa: BLE001 - WorkFailed, a judge that raises: reported below
                box["error"] = e

        t0 = time.monotonic()
        worker = threading.Thread(target=run, name=f"grade-{self.id}", daemon=True)
        worker.start()
        worker.join(self.spec.grading_timeout)
        self.env_seconds += time.monotonic() - t0
        if worker.is_alive():
            cause = f"grading timed out after {self.spec.grading_timeout:g} s"
            return {"reward": None, "resolved": "UNGRADED", "evidence": {"reason": cause}}
        if "error" in box:
            e = box["error"]
            cause = f"grading failed: {e}" if isinstance(e, WorkFailed) else \
                f"grading failed: {type(e).__name__}: {e}"[:2000]
            return {"reward": None, "resolved": "UNGRADED", "evidence": {"reason": cause}}
        if "scored" not in box:  # the grader raised EnvironmentBroken in its thread
            return {"reward": None, "resolved": "UNGRADED", "evidence": {"reason": "grading failed: sandbox"}}
        return box["scored"]

    def _broken(self, message: str, details: bool, kind: str = "sandbox") -> dict[str, Any]:
        self._close()
        return error_reply(kind, message, details=details)

    def close(self) -> None:
        with self.lock:
            self._close()

    def _close(self) -> None:
        if self.ended:
            return
        self.ended = True
        try:
            self.env.close()
        except Exception:  # noqa: BLE001 - a close that fails leaves labelled sandboxes for `swepost sandbox gc`
            pass


class SessionPool:
    """The sessions of one process, by trajectory id. `handle` is thread-safe; different trajectories run at once,
    one trajectory's actions one after another."""

    def __init__(self, spec: EnvSpec):
        self.spec = spec
        self._make_env = None
        self._lock = threading.Lock()
        self.sessions: dict[str, Session] = {}

    def make_env_factory(self):
        """Build (once) and return `make_env`: the environment's settings are checked here, before any trajectory."""
        with self._lock:
            if self._make_env is None:
                self._make_env = self.spec.factory()
            return self._make_env

    def make_env(self):
        return self.make_env_factory()()

    def handle(self, trajectory_id: str, task: Task | None, action: str, finish: bool,
               extra: dict[str, Any]) -> dict[str, Any]:
        """One action of one trajectory. `task` opens the trajectory (its first request); an id this pool does not
        hold and no task is an error reply (the front decides what is new)."""
        details = extra.get("details") is True
        with self._lock:
            session = self.sessions.get(trajectory_id)
        if session is None:
            if task is None:
                return error_reply("expired", f"no environment is open for trajectory {trajectory_id}",
                                   details=details)
            try:
                env = self.make_env()
            except Exception as e:  # noqa: BLE001 - a constructor that fails (an index gone): this trajectory's end
                return error_reply("sandbox", f"the environment could not be built: {type(e).__name__}: {e}",
                                   details=details)
            session = Session(trajectory_id, task, env, self.spec)
            with session.lock:  # a second request for the id waits for the opening to finish
                with self._lock:
                    self.sessions[trajectory_id] = session
                first = session.open(details)
            if first["done"] or not action.strip() and not finish:
                if first["done"]:
                    self.drop(trajectory_id)
                return first
        result = session.act(action, finish, extra)
        if result["done"]:
            self.drop(trajectory_id)
        return result

    def drop(self, trajectory_id: str) -> None:
        with self._lock:
            session = self.sessions.pop(trajectory_id, None)
        if session is not None:
            session.close()

    def close(self, trajectory_id: str) -> None:
        """Close a trajectory's environment without grading (idle TTL, a timeout, shutdown)."""
        with self._lock:
            session = self.sessions.pop(trajectory_id, None)
        if session is not None:
            # an action still running holds the lock: close the environment under it, so its sandbox goes too
            if session.lock.acquire(timeout=0.05):
                try:
                    session._close()
                finally:
                    session.lock.release()
            else:
                session._close()

    def close_all(self) -> None:
        with self._lock:
            ids = list(self.sessions)
        for tid in ids:
            self.close(tid)

    def __len__(self) -> int:
        return len(self.sessions)


class WorkerDied(Exception):
    """The process or Ray actor that held a trajectory's environment died: that trajectory is lost (its sandbox is
    cleared by `swepost sandbox gc`, which the server runs itself), the others go on."""
