"""The agent loop marks every error answer with its kind (format, tool, sandbox), the policy never sees the
marks, and exit statuses are ExitStatus members that read and write as the strings they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swepost.agent import AgentLimits, policy_messages, run_episode
from swepost.envs.base import EnvironmentBroken, MalformedCall, Observation, ToolError
from swepost.policies.base import PolicyReply
from swepost.policies.scripted import ScriptedPolicy
from swepost.records import ERROR_KEY, NO_TOOL_CALL, ExitStatus, Task, Trajectory, TurnError
from swepost.rewards import filters

REPO_ROOT = Path(__file__).resolve().parents[1]
TASK = Task(instance_id="t", problem_statement="Fix it.")
TOOLS = [{"type": "function", "function": {"name": n, "description": n, "parameters": {"type": "object"}}}
         for n in ("bash", "edit", "submit")]


class FakeEnvironment:
    """bash answers, `edit` refuses (ToolError) or rejects its arguments (MalformedCall), `bash` with
    command "crash" breaks the sandbox, `bash` with "bug" raises a plain exception."""

    name = "fake"

    def reset(self, task):
        return [{"role": "system", "content": "sys"}, {"role": "user", "content": task.problem_statement}]

    def tools(self):
        return TOOLS

    def step(self, name, arguments):
        if name == "submit":
            return Observation("Submitted.", done=True)
        if name == "edit":
            if "path" not in arguments:
                raise MalformedCall("Parameter `path` is required")
            raise ToolError("No replacement was performed: old_str did not appear in the file.")
        if arguments.get("command") == "crash":
            raise EnvironmentBroken("the container is gone")
        if arguments.get("command") == "bug":
            raise KeyError("oops")
        return Observation("Error: printed by the command, not an error of the loop")

    def final_diff(self):
        return ""

    def score(self):
        return {"reward": 0.0, "resolved": "RESOLVED_NO"}

    def close(self):
        pass


class Recording(ScriptedPolicy):
    """A scripted policy that keeps every conversation it was shown."""

    def __init__(self, turns):
        super().__init__(turns=turns)
        self.seen: list[list[dict]] = []

    def reply(self, messages, tools) -> PolicyReply:
        self.seen.append(json.loads(json.dumps(messages)))
        return super().reply(messages, tools)


def call(name: str, arguments) -> dict:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


def answers(traj: Trajectory) -> list[tuple[str, str | None]]:
    return [(m["role"], m.get(ERROR_KEY)) for m in traj.messages[2:] if m["role"] != "assistant"]


def test_each_error_is_marked_with_its_kind():
    policy = Recording([call("bash", '{"command": "ls'),  # bad JSON
                        call("nope", {}),  # unknown tool
                        call("edit", {}),  # arguments the environment rejects
                        call("edit", {"path": "a.py"}),  # a well-formed call the tool cannot carry out
                        "no call, just thinking",
                        call("bash", {"command": "ls"}),  # output that merely starts with "Error: "
                        call("bash", {"command": "crash"})])
    traj = run_episode(policy, FakeEnvironment(), TASK, limits=AgentLimits(max_consecutive_errors=10))
    assert answers(traj) == [("tool", "format"), ("tool", "format"), ("tool", "format"), ("tool", "tool"),
                             ("user", "format"), ("tool", None), ("tool", "sandbox")]
    nudge = traj.messages[2 + 9]
    assert nudge["content"] == NO_TOOL_CALL
    assert traj.exit_status is ExitStatus.SANDBOX_ERROR and traj.exit_status == "sandbox_error"
    assert traj.tool_errors == 5
    # the policy saw every error's text, never a mark
    assert "Error: Tool arguments are not valid JSON" in policy.seen[1][-1]["content"]
    assert not any(ERROR_KEY in m for conversation in policy.seen for m in conversation)
    # format-error turns: the four malformed or refused calls and the reply without a call; not the command
    # whose output starts with "Error: ", not the broken sandbox (format 1 reading counted both)
    assert filters.format_error_turns(traj) == [2, 4, 6, 8, 10]
    unmarked = traj.model_copy(update={"format": 1, "messages": policy_messages(traj.messages)})
    assert filters.format_error_turns(unmarked) == [2, 4, 6, 8, 10, 12, 14]


def test_an_environment_bug_is_marked_sandbox_and_the_record_round_trips():
    traj = run_episode(ScriptedPolicy(turns=[call("bash", {"command": "bug"})]), FakeEnvironment(), TASK)
    assert traj.exit_status == ExitStatus.SANDBOX_ERROR and "KeyError" in traj.error
    assert answers(traj) == [("tool", "sandbox")] and filters.format_error_turns(traj) == []
    line = traj.model_dump_json()
    data = json.loads(line)
    assert data["exit_status"] == "sandbox_error" and data["format"] == 2
    assert data["messages"][-1][ERROR_KEY] == "sandbox"
    assert Trajectory.model_validate_json(line) == traj


class ParsedText(ScriptedPolicy):
    """Replies with one call as a text parser gives it when it could not read the block: carrying "error"."""

    def reply(self, messages, tools) -> PolicyReply:
        reply = super().reply(messages, tools)
        for call in reply.message["tool_calls"]:
            call["error"] = "The block is not JSON. Write each call as <tool_call>...</tool_call>."
        return reply


def test_a_call_the_parser_could_not_read_is_a_format_error():
    traj = run_episode(ParsedText(turns=[call("bash", '{"command": "ls"')]), FakeEnvironment(), TASK)
    assert answers(traj)[0] == ("tool", "format")
    assert traj.messages[3]["content"] == "Error: The block is not JSON. Write each call as <tool_call>...</tool_call>."
    assert filters.format_error_turns(traj)[0] == 2


@pytest.mark.parametrize("status", list(ExitStatus))
def test_exit_status_reads_and_writes_as_its_string(status):
    assert status == status.value and str(status) == status.value and f"{status}" == status.value
    assert json.dumps({"s": status}) == json.dumps({"s": status.value})
    traj = Trajectory(episode_id="t#0", instance_id="t", exit_status=status.value)
    assert traj.exit_status is status
    assert json.loads(traj.model_dump_json())["exit_status"] == status.value
    assert filters.require_submitted(traj) == (None if status is ExitStatus.SUBMITTED
                                               else f"not_submitted:{status.value}")
    assert filters.is_infra_failure(traj) == (status in filters.INFRA_EXIT_STATUSES)


def test_an_old_format_record_loads_and_is_read_by_its_text():
    """A line written before marks and enums: "format": 1, plain strings, errors only in the text."""
    line = json.dumps({
        "format": 1, "episode_id": "t#0", "instance_id": "t", "exit_status": "format_error",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Fix it."},
                     {"role": "assistant", "content": "", "tool_calls": [
                         {"id": "c0", "type": "function", "function": {"name": "bash", "arguments": "{bad"}}]},
                     {"role": "tool", "tool_call_id": "c0", "name": "bash",
                      "content": "Error: Tool arguments are not valid JSON (Expecting value at column 2)."},
                     {"role": "assistant", "content": "hmm"},
                     {"role": "user", "content": NO_TOOL_CALL}]})
    traj = Trajectory.model_validate_json(line)
    assert traj.format == 1 and traj.exit_status is ExitStatus.FORMAT_ERROR
    assert not filters.errors_marked(traj)
    assert filters.format_error_turns(traj) == [2, 4]
    written = json.loads(traj.model_dump_json())  # written back as it was read: still format 1, plain strings
    assert {k: written[k] for k in json.loads(line)} == json.loads(line)
    assert TurnError.FORMAT == "format"


def test_rewards_do_not_import_the_agent():
    source = (REPO_ROOT / "src" / "swepost" / "rewards" / "filters.py").read_text()
    assert "swepost.agent" not in source


def test_the_record_says_the_tool_mode_an_episode_switched_to():
    """A real server that takes `tools=` but answers with `<tool_call>` text: an openai policy in tool_mode auto
    switches to the text parser mid-episode, and that episode's own record says so."""
    from openai_server import ScriptedChatServer

    from swepost.policies.openai import OpenAIPolicy

    ls = 'Looking.\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>'
    submit = '<tool_call>\n{"name": "submit", "arguments": {}}\n</tool_call>'
    with ScriptedChatServer([{"content": ls}, {"content": submit}]) as server:
        policy = OpenAIPolicy(model="m", base_url=server.base_url, api_key="test", tool_mode="auto", backoff=0.01)
        assert policy.describe()["tool_mode_active"] == "native"
        traj = run_episode(policy, FakeEnvironment(), TASK, grade=False)
    assert server.requests[0]["tools"] and "tools" not in server.requests[1]  # it did switch, mid-episode
    assert traj.exit_status == ExitStatus.SUBMITTED and traj.tool_errors == 0
    assert traj.policy["tool_mode"] == "auto" and traj.policy["tool_mode_active"] == "text"
    assert Trajectory.model_validate_json(traj.model_dump_json()).policy["tool_mode_active"] == "text"


class AnswersInText(FakeEnvironment):
    """Reads `<answer>...</answer>` from a reply without a tool call, as the search environment does; "boom"
    breaks it."""

    def text_reply(self, content):
        if "boom" in content:
            raise RuntimeError("the hook broke")
        if "<answer>" in content:
            return Observation("", done=True, answer=content.split("<answer>")[-1].split("</answer>")[0])
        return None


def test_an_environment_may_take_an_answer_from_a_reply_without_a_tool_call():
    policy = ScriptedPolicy(turns=[{"content": "thinking, no answer yet"}, {"content": "so <answer>Bonn</answer>"},
                                   call("bash", {"command": "ls"})])
    traj = run_episode(policy, AnswersInText(), TASK)
    assert traj.exit_status is ExitStatus.SUBMITTED and traj.answer == "Bonn" and traj.turns == 2
    # the first reply was declined: nudged and counted as a format error, as in any environment
    assert answers(traj) == [("user", "format")] and traj.messages[3]["content"] == NO_TOOL_CALL
    # an environment without the hook nudges on every text reply
    traj = run_episode(ScriptedPolicy(turns=[{"content": "<answer>Bonn</answer>"}]), FakeEnvironment(), TASK,
                       limits=AgentLimits(max_turns=1))
    assert traj.exit_status is ExitStatus.MAX_TURNS and traj.answer is None
    # a hook that raises ends the episode as the environment's failure, never as an answer
    traj = run_episode(ScriptedPolicy(turns=[{"content": "boom"}]), AnswersInText(), TASK)
    assert traj.exit_status is ExitStatus.SANDBOX_ERROR and "the hook broke" in traj.error and traj.reward is None


def test_rl_s_gated_environment_passes_the_text_hook_through_only_when_there_is_one():
    import threading

    from swepost.train.rollout import GatedEnvironment

    gate = threading.Semaphore(1)
    assert GatedEnvironment(AnswersInText(), gate).text_reply("<answer>x</answer>").answer == "x"
    assert gate.acquire(blocking=False)  # the slot was given back
    assert not hasattr(GatedEnvironment(FakeEnvironment(), gate), "text_reply")


def test_an_environment_nudges_in_its_own_words():
    class OwnWords(FakeEnvironment):
        no_tool_call = "Call answer(text)."

    traj = run_episode(ScriptedPolicy(turns=[{"content": "hmm"}]), OwnWords(), TASK, limits=AgentLimits(max_turns=1))
    assert traj.messages[-1] == {"role": "user", "content": "Call answer(text).", ERROR_KEY: "format"}
    assert filters.format_error_turns(traj) == [2]
    traj = run_episode(ScriptedPolicy(turns=[{"content": "hmm"}]), FakeEnvironment(), TASK,
                       limits=AgentLimits(max_turns=1))
    assert traj.messages[-1]["content"] == NO_TOOL_CALL


def test_an_action_written_as_text_gets_its_result_as_the_next_user_turn():
    class SearchesInText(AnswersInText):
        def text_reply(self, content):
            if "<search>" in content:
                return Observation("<information>Doc 1(Title: \"Bonn\") a city</information>")
            return super().text_reply(content)

    policy = ScriptedPolicy(turns=[{"content": "<search>capital</search>"}, {"content": "<answer>Bonn</answer>"}])
    traj = run_episode(policy, SearchesInText(), TASK)
    assert traj.exit_status is ExitStatus.SUBMITTED and traj.answer == "Bonn" and traj.tool_errors == 0
    assert traj.messages[3] == {"role": "user", "content": "<information>Doc 1(Title: \"Bonn\") a city</information>"}
    assert filters.format_error_turns(traj) == []
