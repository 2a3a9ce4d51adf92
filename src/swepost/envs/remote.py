"""RemoteEnvironment: episodes run in a swepost environment server (`swepost serve env`) over HTTP, with the
standard library only, giving the same trajectory as the environment run here.

It speaks VerlTool's `POST /get_observation` with swepost's detailed observations (`details: true`): the reset's
messages and tools, each tool call's result with its error kind, the text hook's result, and the final grade. A
server that is down, times out, answers an `error` event or anything else than that protocol raises
EnvironmentBroken: an infrastructure failure, never a wrong answer. A full server (503) is waited for, as long as
its Retry-After says, up to `connect_retry_s`.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

from swepost.envs.base import EnvironmentBroken, MalformedCall, Observation, ToolError
from swepost.errors import BadInput
from swepost.policies.toolcalls import render_tool_call
from swepost.records import Task

ENDPOINT = "/get_observation"
MARGIN_S = 60.0  # the server's own overhead over a tool call or a grading (queueing, the sandbox's round trips)
CLOSE_TIMEOUT_S = 10.0
DEFAULT_RETRY_AFTER_S = 1.0


def server_url(url: str) -> str:
    """The server's base URL: http(s)://host:port, a trailing slash or `/get_observation` (VerlTool configs name
    the endpoint) dropped; BadInput naming env_url for anything else."""
    text = str(url).strip().rstrip("/")
    if text.endswith(ENDPOINT):
        text = text[: -len(ENDPOINT)]
    parts = urllib.parse.urlsplit(text)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.query or parts.fragment:
        raise BadInput(f"{url!r} is not an environment server's URL: expected http://host:port (what `swepost serve "
                       "env` prints)", key="env_url")
    return text


class RemoteEnvironment:
    """The Environment protocol over HTTP to `swepost serve env` at `env_url`. One episode at a time, each under a
    fresh trajectory id; the task is sent whole, so the server need not hold it in its --tasks. The stage's sandbox
    settings (repos, backend, limits, index) are the server's business: accepted and ignored."""

    def __init__(self, *, env_url: str, grade: bool = True, tool_timeout: float = 120.0,
                 grading_timeout: float = 900.0, connect_retry_s: float = 60.0, **settings: Any):
        self.url = server_url(env_url)
        self.grade = bool(grade)
        self.tool_timeout, self.grading_timeout = float(tool_timeout), float(grading_timeout)
        self.connect_retry_s = float(connect_retry_s)
        self.name = "remote"  # the server's environment's, once an episode has started
        self.no_tool_call: str | None = None
        self._tools: list[dict[str, Any]] = []
        self._id: str | None = None
        self._extra: dict[str, Any] = {}
        self._final: dict[str, Any] | None = None
        self._ended = True  # no episode open on the server
        self._opened = False  # the server may hold this id's environment (a request reached it)

    # --- the Environment protocol --------------------------------------------------------------------------------
    def reset(self, task: Task) -> list[dict[str, Any]]:
        self.close()  # an episode left open by the caller
        self._id = f"{task.instance_id}-{uuid.uuid4().hex[:12]}"
        self._extra = {"instance_id": task.instance_id, "task": task.model_dump(mode="json"), "details": True,
                       "grade": self.grade}
        self._final, self._ended, self._opened = None, False, False
        self._tools, self.no_tool_call = [], None
        obs = self._send("", timeout=self.grading_timeout + MARGIN_S)  # a task's setup may install for minutes
        if obs.get("event") != "reset":
            raise self._shape(f"expected a reset event for a new episode, got {obs.get('event')!r}", obs)
        messages, tools = obs.get("messages"), obs.get("tools")
        if not isinstance(messages, list) or not isinstance(tools, list) or not isinstance(obs.get("environment"), str):
            raise self._shape("a reset event needs messages (list), tools (list) and environment (str)", obs)
        self.name = obs["environment"]
        nudge = obs.get("no_tool_call")
        self.no_tool_call = nudge if isinstance(nudge, str) and nudge else None
        self._tools = tools
        return messages

    def tools(self) -> list[dict[str, Any]]:
        return self._tools

    def step(self, name: str, arguments: dict[str, Any]) -> Observation:
        action = render_tool_call({"function": {"name": name, "arguments": arguments}})
        obs = self._send(action, timeout=self._action_timeout())
        results = obs.get("results")
        if obs.get("event") != "tools" or not isinstance(results, list) or not results \
                or not isinstance(results[0], dict):
            raise self._shape(f"expected a tools event with one result, got {obs.get('event')!r}", obs)
        result = results[0]
        message = str(result.get("message") or "")
        error = result.get("error")
        if error == "format":
            raise MalformedCall(message)
        if error == "tool":
            raise ToolError(message)
        if error == "sandbox":
            raise EnvironmentBroken(message or "the server's sandbox failed")
        if error is not None:
            raise self._shape(f"unknown error kind {error!r}", obs)
        return _observation(result, obs)

    def text_reply(self, content: str) -> Observation | None:
        """The server's environment reads the reply's text (search: `<answer>`, `<search>`); None when it did not
        (the `nudge` event), so the loop nudges the model in `no_tool_call`'s words."""
        obs = self._send(content, timeout=self._action_timeout())
        event = obs.get("event")
        if event in ("nudge", "empty"):  # empty: an empty reply, which no environment reads
            return None
        if event != "text" or not isinstance(obs.get("text_result"), dict):
            raise self._shape(f"expected a text or nudge event, got {event!r}", obs)
        return _observation(obs["text_result"], obs)

    def final_diff(self) -> str:
        if self._final is None:
            self._send("", finish=True, timeout=self.grading_timeout + MARGIN_S)
            if self._final is None:
                raise EnvironmentBroken(f"environment server {self.url}: the finished episode {self._id} came "
                                        "back without its final observation")
        return str(self._final.get("final_diff") or "")

    def score(self) -> dict[str, Any]:
        if self._final is None:
            self.final_diff()
        final = self._final or {}
        evidence = final.get("evidence") if isinstance(final.get("evidence"), dict) else {}
        reward, resolved = final.get("reward"), final.get("resolved")
        if reward is None and resolved is None:  # not graded (asked not to, or could not): never a wrong answer
            evidence = {**evidence, "reason": evidence.get("reason") or "the environment server did not grade "
                        f"the episode (graded: {final.get('graded')})"}
            resolved = "UNGRADED"
        return {"reward": reward, "resolved": resolved, "evidence": evidence}

    def close(self) -> None:
        """End an episode the loop left open (a sandbox error, a policy error before the final diff), ungraded:
        the server frees its sandbox now, not at its idle timeout. Quick, and never raises."""
        if self._ended or not self._opened:
            self._ended = True
            return
        self._ended = True
        try:
            self._request(self._payload("", finish=True, grade=False), CLOSE_TIMEOUT_S, retry_full=False)
        except Exception:  # noqa: BLE001 - a server that is gone has nothing left to close
            pass

    # --- the wire ------------------------------------------------------------------------------------------------
    def _action_timeout(self) -> float:
        # an action may end the episode (submit, an answer) and is then graded in the same request
        return self.tool_timeout + (self.grading_timeout if self.grade else 0.0) + MARGIN_S

    def _payload(self, action: str, *, finish: bool = False, grade: bool | None = None) -> dict[str, Any]:
        extra = self._extra if grade is None else {**self._extra, "grade": grade}
        return {"trajectory_ids": [self._id], "actions": [action], "extra_fields": [extra], "finish": [finish]}

    def _send(self, action: str, *, timeout: float, finish: bool = False) -> dict[str, Any]:
        """One request for this episode: its detailed observation, the final one cached; EnvironmentBroken for an
        error event (the episode has ended on the server) or any failure of the server."""
        if self._id is None:
            raise EnvironmentBroken("no episode is running: call reset first")
        reply = self._request(self._payload(action, finish=finish), timeout, retry_full=True)
        observations, dones = reply.get("observations"), reply.get("dones")
        if not isinstance(observations, list) or len(observations) != 1 or not isinstance(dones, list) \
                or len(dones) != 1:
            raise self._shape("observations and dones should be lists of one", reply)
        obs = observations[0]
        if isinstance(obs, dict) and "event" not in obs and dones[0] and isinstance(obs.get("obs"), str):
            # an episode the server ended on its own (closed idle, its worker died) may answer without details
            self._ended = True
            raise EnvironmentBroken(f"environment server {self.url}: the episode ended there: {obs['obs']}"[:2000])
        if not isinstance(obs, dict) or not isinstance(obs.get("event"), str):
            raise self._shape("no detailed observation (a dict with an event): is it `swepost serve env`?", reply)
        if dones[0]:
            self._ended = True
        if isinstance(obs.get("final"), dict):
            self._final = obs["final"]
            self._ended = True
        error = obs.get("error")
        if obs["event"] == "error" or (obs["event"] != "tools" and isinstance(error, dict)):
            # a tools event says which call broke, in its results; any other event's error ends the episode here
            self._ended = True
            error = error if isinstance(error, dict) else {}
            kind, message = error.get("kind", "error"), str(error.get("message") or obs.get("obs") or "no message")
            if kind == "sandbox":  # the environment's own words, as the agent loop would record them
                raise EnvironmentBroken(message[:2000])
            raise EnvironmentBroken(f"environment server {self.url}: {kind}: {message}"[:2000])
        return obs

    def _request(self, payload: dict[str, Any], timeout: float, *, retry_full: bool) -> dict[str, Any]:
        """POST the payload; a 503 (the server's cap on live environments) is waited out up to connect_retry_s."""
        url = self.url + ENDPOINT
        data = json.dumps(payload).encode()
        deadline = time.monotonic() + self.connect_retry_s
        while True:
            request = urllib.request.Request(url, data=data, method="POST", headers={
                "Content-Type": "application/json", "Accept": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    self._opened = True
                    body = response.read()
                break
            except urllib.error.HTTPError as e:
                detail = _detail(e)
                left = deadline - time.monotonic()
                if e.code != 503 or not retry_full or left <= 0:
                    if e.code != 503:
                        self._opened = True  # it may have opened the id before failing
                    full = f" for {self.connect_retry_s:g} s" if e.code == 503 else ""
                    raise EnvironmentBroken(f"environment server {url}: HTTP {e.code}{full}: {detail}"[:2000]) \
                        from None
                time.sleep(min(_retry_after(e), left))
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, a garbled reply
                reason = getattr(e, "reason", e)
                if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
                    self._opened = True  # the server may be working on it still
                    raise EnvironmentBroken(f"environment server {url}: no reply in {timeout:g} s") from None
                if not isinstance(reason, ConnectionRefusedError):
                    self._opened = True
                raise EnvironmentBroken(f"environment server {url}: unreachable ({reason})") from None
        try:
            reply = json.loads(body)
        except ValueError:
            raise EnvironmentBroken(f"environment server {url}: the reply is not JSON: {body[:200]!r}") from None
        if not isinstance(reply, dict):
            raise self._shape("the reply should be a JSON object", reply)
        return reply

    def _shape(self, what: str, got: Any) -> EnvironmentBroken:
        return EnvironmentBroken(f"environment server {self.url}: not the protocol's reply: {what}; got "
                                 f"{_clip(got)}")


def _observation(result: dict[str, Any], obs: dict[str, Any]) -> Observation:
    answer = result.get("answer")
    if not isinstance(result.get("content"), str) or not (answer is None or isinstance(answer, str)):
        raise EnvironmentBroken(f"not the protocol's reply: a result needs content (str) and answer (str or null); "
                                f"got {_clip(obs)}")
    return Observation(result["content"], done=bool(result.get("done")), answer=answer)


def _retry_after(e: urllib.error.HTTPError) -> float:
    try:
        return max(float(e.headers.get("Retry-After", DEFAULT_RETRY_AFTER_S)), 0.05)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER_S


def _detail(e: urllib.error.HTTPError) -> str:
    try:
        raw = e.read()
    except OSError:
        return str(e.reason or "")
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:300].decode(errors="replace") or str(e.reason)
    if isinstance(body, dict):
        return _clip(body.get("message") or body.get("detail") or body, 500)
    return _clip(body)


def _clip(value: Any, n: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= n else text[:n] + "..."
