"""The swe environment in real docker sandboxes: tools, the editor's conventions, the diff, grading, fuzzing."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from swepost.envs.base import EnvironmentBroken, Observation, ToolError
from swepost.envs.swe import SweEnvironment, load_prompts
from swepost.errors import BadInput
from swepost.stages.tasks import read_task_file

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tasks():
    return read_task_file(REPO_ROOT / "data" / "minicalc_tasks.jsonl")


@pytest.fixture
def make_env(base_image):
    made = []

    def make(**kw) -> SweEnvironment:
        env = SweEnvironment(repos=REPO_ROOT / "data" / "repos", backend="docker", **kw)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


@pytest.fixture
def env(make_env, tasks):
    env = make_env()
    env.reset(tasks[0])
    return env


def edit(env, **args) -> str:
    return env.step("str_replace_editor", args).content


def bash(env, command: str) -> str:
    return env.step("bash", {"command": command}).content


# --- without a sandbox ------------------------------------------------------------------------------------
def test_tool_schemas_are_fixed():
    tools = {t["function"]["name"]: t for t in SweEnvironment().tools()}
    assert list(tools) == ["bash", "str_replace_editor", "submit"]
    assert all(t["type"] == "function" and t["function"]["description"] for t in tools.values())
    params = {name: t["function"]["parameters"] for name, t in tools.items()}
    assert list(params["bash"]["properties"]) == ["command"] and params["bash"]["required"] == ["command"]
    assert list(params["str_replace_editor"]["properties"]) == [
        "command", "path", "file_text", "old_str", "new_str", "insert_line", "view_range"]
    assert params["str_replace_editor"]["required"] == ["command", "path"]
    assert params["str_replace_editor"]["properties"]["command"]["enum"] == [
        "view", "create", "str_replace", "insert", "undo_edit"]
    assert params["submit"]["properties"] == {}
    json.dumps(tools)


def test_prompt_templates_are_checked(tmp_path):
    prompts = load_prompts()
    assert "{problem_statement}" in prompts["user"] and "{workdir}" in prompts["user"]
    with pytest.raises(BadInput, match="not found"):
        SweEnvironment(prompts_dir=tmp_path / "nowhere")
    (tmp_path / "swe_system.md").write_text("sys {workdir}")
    with pytest.raises(BadInput, match="swe_user.md"):
        SweEnvironment(prompts_dir=tmp_path)
    (tmp_path / "swe_user.md").write_text("fix {problem_stement}")
    with pytest.raises(BadInput, match="problem_stement"):
        SweEnvironment(prompts_dir=tmp_path)


def test_no_episode_is_broken():
    env = SweEnvironment()
    with pytest.raises(EnvironmentBroken):
        env.step("bash", {"command": "true"})
    env.close()
    env.close()


def test_argument_errors_are_format_errors_in_the_loop(tasks):
    """Missing, ill-typed, unexpected or out-of-schema arguments are malformed calls (TurnError.FORMAT); a
    well-formed call that cannot be carried out is a tool error (the local backend: no docker needed)."""
    from swepost.agent import AgentLimits, run_episode
    from swepost.policies.scripted import ScriptedPolicy
    from swepost.records import ERROR_KEY, TurnError

    def call(name, arguments):
        return {"tool_calls": [{"name": name, "arguments": arguments}]}

    malformed = [call("bash", {}), call("bash", {"command": 3}), call("bash", {"command": "ls", "timeout": 3}),
                 call("str_replace_editor", {"command": "view"}),
                 call("str_replace_editor", {"command": "delete", "path": "a.py"}),
                 call("str_replace_editor", {"command": "view", "path": "README.md", "view_range": "1-3"}),
                 call("str_replace_editor", {"command": "insert", "path": "README.md", "new_str": "x"}),
                 call("str_replace_editor", {"command": "insert", "path": "README.md", "new_str": "x",
                                             "insert_line": "2"})]
    refused = [call("str_replace_editor", {"command": "view", "path": "nope.py"}),
               call("str_replace_editor", {"command": "str_replace", "path": "nope.py", "old_str": "a"})]
    policy = ScriptedPolicy(turns=[*malformed, *refused, call("submit", {})])
    # a long message is truncated and keeps its kind
    env = SweEnvironment(repos=REPO_ROOT / "data" / "repos", backend="local", max_observation_chars=80)
    traj = run_episode(policy, env, tasks[0], grade=False, limits=AgentLimits(max_consecutive_errors=20))
    assert traj.exit_status == "submitted", (traj.exit_status, traj.error)
    answers = [m for m in traj.messages if m["role"] == "tool"]
    assert [m.get(ERROR_KEY) for m in answers] == ([TurnError.FORMAT.value] * len(malformed)
                                                   + [TurnError.TOOL.value] * len(refused) + [None])
    assert "characters truncated" in answers[4]["content"]  # the unrecognized command's long message


# --- in a sandbox ------------------------------------------------------------------------------------------
docker = pytest.mark.docker


@docker
def test_reset_messages_and_custom_prompts(make_env, tasks, tmp_path):
    task = tasks[0]
    messages = make_env().reset(task)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert task.problem_statement in messages[1]["content"] and "/testbed" in messages[1]["content"]
    assert "submit" in messages[0]["content"]
    (tmp_path / "swe_system.md").write_text("You fix {repo}.")
    (tmp_path / "swe_user.md").write_text("{instance_id} in {workdir}{hints}: {problem_statement}")
    messages = make_env(prompts_dir=tmp_path).reset(task.model_copy(update={"hints_text": "look at mean"}))
    assert messages[0]["content"] == "You fix swepost/minicalc."
    assert messages[1]["content"] == (f"swepost__minicalc-1 in /testbed\n<hints>\nlook at mean\n</hints>\n: "
                                      f"{task.problem_statement}")


@docker
def test_bash(env):
    assert bash(env, "echo hello").strip() == "hello"
    assert bash(env, "true") == "Your command ran successfully and did not produce any output."
    bash(env, "cd minicalc && export FOO=bar")
    assert bash(env, "pwd; echo $FOO").split() == ["/testbed/minicalc", "bar"]
    out = bash(env, "echo oops; exit 3")
    assert out.startswith("oops\n") and "[exit code 3]" in out and "restarted" in out
    assert bash(env, "ls nope").endswith("[exit code 2]")
    env.tool_timeout = 1.0
    assert "[timed out after 1 s]" in bash(env, "sleep 30")
    env.tool_timeout = 120.0
    assert bash(env, "echo alive").strip() == "alive"
    env.max_observation_chars = 1000
    out = bash(env, "seq 1 100000")
    assert len(out) <= 1000 and out.startswith("1\n2\n") and out.rstrip().endswith("100000")
    assert re.search(r"\[\.\.\. \d+ characters truncated \.\.\.\]", out)
    with pytest.raises(ToolError, match="Unknown tool"):
        env.step("python", {"code": "1"})
    for bad in ({}, {"command": 3}, {"command": ""}, {"command": "ls", "timeout": 3}, ["ls"]):
        with pytest.raises(ToolError):
            env.step("bash", bad)
    assert env.step("bash", '{"command": "echo json"}').content.strip() == "json"  # arguments as raw JSON text
    obs = env.step("submit", {})
    assert isinstance(obs, Observation) and obs.done


@docker
def test_editor_view(env):
    out = edit(env, command="view", path="minicalc/stats.py")
    assert out.startswith("Here's the result of running `cat -n` on /testbed/minicalc/stats.py:\n")
    assert "     6\tdef mean(values):" in out.splitlines()
    assert edit(env, command="view", path="/testbed/minicalc/stats.py") == out
    ranged = edit(env, command="view", path="minicalc/stats.py", view_range=[6, 8]).splitlines()
    assert ranged[1:] == ["     6\tdef mean(values):",
                          '     7\t    """Arithmetic mean of any iterable, consumed once; ValueError for empty '
                          'data."""',
                          "     8\t    total = 0"]
    n = int(bash(env, "wc -l < minicalc/stats.py"))
    to_end = edit(env, command="view", path="minicalc/stats.py", view_range=[n - 1, -1]).splitlines()
    assert [line.split("\t")[0].strip() for line in to_end[1:]] == [str(n - 1), str(n)]
    for bad in ([0, 3], [n + 1, -1], [5, 2], [1, n + 1], [1], [1, 2, 3], ["1", "2"], [True, 2], "1,2", 7):
        with pytest.raises(ToolError, match="view_range"):
            edit(env, command="view", path="minicalc/stats.py", view_range=bad)
    listing = edit(env, command="view", path="/testbed")
    assert "excluding hidden items" in listing and "/testbed/minicalc/stats.py" in listing
    assert "/testbed/tests/test_stats.py" in listing and ".git" not in listing
    with pytest.raises(ToolError, match="does not exist"):
        edit(env, command="view", path="nope.py")
    with pytest.raises(ToolError, match="not allowed"):
        edit(env, command="view", path="minicalc", view_range=[1, 2])
    with pytest.raises(ToolError, match="Unrecognized command"):
        edit(env, command="edit", path="minicalc/stats.py")
    with pytest.raises(ToolError, match="`path` is required"):
        edit(env, command="view")


@docker
def test_editor_create_replace_insert_undo(env):
    assert edit(env, command="create", path="pkg/new.py", file_text="a = 1\nb = 2\na = 1\n") == \
        "File created successfully at: /testbed/pkg/new.py"
    assert bash(env, "cat /testbed/pkg/new.py") == "a = 1\nb = 2\na = 1\n"
    with pytest.raises(ToolError, match="File already exists at: /testbed/pkg/new.py"):
        edit(env, command="create", path="/testbed/pkg/new.py", file_text="x")
    with pytest.raises(ToolError, match="`file_text` is required"):
        edit(env, command="create", path="other.py")

    out = edit(env, command="str_replace", path="pkg/new.py", old_str="b = 2", new_str="b = 3\nc = 4")
    assert out.startswith("The file /testbed/pkg/new.py has been edited.") and "     3\tc = 4" in out
    assert bash(env, "cat pkg/new.py") == "a = 1\nb = 3\nc = 4\na = 1\n"
    with pytest.raises(ToolError) as e:
        edit(env, command="str_replace", path="pkg/new.py", old_str="zzz", new_str="y")
    assert str(e.value) == "No replacement was performed, old_str `zzz` did not appear verbatim in /testbed/pkg/new.py."
    with pytest.raises(ToolError) as e:
        edit(env, command="str_replace", path="pkg/new.py", old_str="a = 1", new_str="y")
    assert str(e.value) == ("No replacement was performed. Multiple occurrences of old_str `a = 1` in lines [1, 4]. "
                            "Please ensure it is unique")
    with pytest.raises(ToolError, match="does not exist"):
        edit(env, command="str_replace", path="missing.py", old_str="a", new_str="b")

    out = edit(env, command="insert", path="pkg/new.py", insert_line=0, new_str="# top")
    assert "     1\t# top" in out
    edit(env, command="insert", path="pkg/new.py", insert_line=5, new_str="# end\n")
    assert bash(env, "cat pkg/new.py") == "# top\na = 1\nb = 3\nc = 4\na = 1\n# end\n"
    for bad in (7, -1, "2", 1.5, None):
        with pytest.raises(ToolError, match="insert_line"):
            edit(env, command="insert", path="pkg/new.py", insert_line=bad, new_str="x")

    out = edit(env, command="undo_edit", path="pkg/new.py")
    assert out.startswith("Last edit to /testbed/pkg/new.py undone successfully.")
    assert bash(env, "cat pkg/new.py") == "# top\na = 1\nb = 3\nc = 4\na = 1\n"
    edit(env, command="undo_edit", path="/testbed/pkg/new.py")
    edit(env, command="undo_edit", path="pkg/new.py")
    assert bash(env, "cat pkg/new.py") == "a = 1\nb = 2\na = 1\n"
    edit(env, command="undo_edit", path="pkg/new.py")  # undoing the create removes the file
    assert "No such file" in bash(env, "cat pkg/new.py")
    with pytest.raises(ToolError, match="No edit history found for /testbed/pkg/new.py"):
        edit(env, command="undo_edit", path="pkg/new.py")

    # bytes that are not UTF-8 survive an edit elsewhere in the file
    bash(env, r"printf 'x = 1\n# caf\xe9\n' > latin.py")
    edit(env, command="str_replace", path="latin.py", old_str="x = 1", new_str="x = 2")
    assert bash(env, "head -c 6 latin.py; tail -c 2 latin.py | od -An -tx1").split() == ["x", "=", "2", "e9", "0a"]


@docker
@pytest.mark.parametrize("index", range(7))
def test_gold_fix_by_str_replace_resolves(make_env, tasks, index):
    task = tasks[index]
    env = make_env()
    env.reset(task)
    for path, old, new in hunks(task.patch):
        out = edit(env, command="str_replace", path=path, old_str=old, new_str=new)
        assert "has been edited" in out
    diff = env.final_diff()
    assert diff.startswith("diff --git") and changed_lines(diff) == changed_lines(task.patch)
    result = env.score()
    assert (result["reward"], result["resolved"]) == (1.0, "RESOLVED_FULL"), result["evidence"]["reason"]


@docker
def test_no_edit_is_unresolved_and_diff_leaves_index_alone(make_env, tasks):
    env = make_env()
    env.reset(tasks[1])
    assert env.final_diff() == ""
    result = env.score()
    assert (result["reward"], result["resolved"]) == (0.0, "RESOLVED_NO")
    assert result["evidence"]["instance_id"] == tasks[1].instance_id

    bash(env, "echo staged > staged.txt && git add staged.txt && echo new > untracked.txt && "
              "echo '# more' >> README.md && cd minicalc")
    diff = env.final_diff()
    assert {"b/staged.txt", "b/untracked.txt", "b/README.md"} <= set(re.findall(r"^diff --git a/\S+ (\S+)", diff,
                                                                                 flags=re.M))
    assert bash(env, "git diff --cached --name-only").split() == ["staged.txt"]  # the index as the agent left it
    assert bash(env, "git status --porcelain").split() == ["M", "README.md", "A", "staged.txt", "??",
                                                           "untracked.txt"]
    assert bash(env, "pwd").strip() == "/testbed/minicalc"
    env.close()
    assert env.final_diff() == diff  # kept from the last call once the sandbox is gone
    env.close()
    assert make_env(grade=False).score() == {"reward": None, "resolved": None, "evidence": {}}


@docker
def test_dead_sandbox_is_broken(env):
    # the model's shell cannot kill the agent (it runs as another uid): the engine does, as a crash would
    assert "not permitted" in bash(env, "kill -9 $PPID").lower()
    env.box.container.kill()
    with pytest.raises(EnvironmentBroken):
        env.step("bash", {"command": "echo still there?"})
    with pytest.raises(EnvironmentBroken):
        env.step("str_replace_editor", {"command": "view", "path": "."})


@docker
def test_fuzz_only_tool_errors(make_env, tasks):
    env = make_env(tool_timeout=5.0)
    env.reset(tasks[2])
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for i in range(300):
        name, arguments = random_call(rng)
        try:
            obs = env.step(name, arguments)
        except ToolError as e:
            assert str(e)
            outcomes["error"] += 1
        except Exception as e:  # noqa: BLE001 - anything else fails the test, with the call that caused it
            pytest.fail(f"call {i} {name!r} {str(arguments)[:300]} raised {type(e).__name__}: {e}")
        else:
            assert isinstance(obs, Observation) and isinstance(obs.content, str)
            assert len(obs.content) <= env.max_observation_chars
            outcomes["ok"] += 1
    assert outcomes["ok"] >= 30 and outcomes["error"] >= 100, outcomes
    assert bash(env, "echo ok").strip() == "ok"
    assert isinstance(env.final_diff(), str)


# --- helpers -------------------------------------------------------------------------------------------------
def hunks(patch: str):
    """(path, old text, new text) per hunk of a unified diff: what str_replace calls a fixer would make."""
    path, old, new, out = None, None, None, []
    for line in patch.splitlines():
        if line.startswith("+++ "):
            path = line[6:]
        elif line.startswith("@@"):
            old, new = [], []
            out.append((path, old, new))
        elif old is not None and line[:1] in (" ", "-", "+"):
            if line[0] in " -":
                old.append(line[1:])
            if line[0] in " +":
                new.append(line[1:])
    return [(p, "\n".join(o) + "\n", "\n".join(n) + "\n") for p, o, n in out]


def changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]


PATHS = ["minicalc/text.py", "/testbed/minicalc/text.py", "minicalc", "/testbed", "tests/test_text.py", "new.py",
         "a/b/c.txt", "nope/x.py", "", " ", "/dev/null", "/tmp", ".", "..", "README.md", "\x00", "é/ü.py",
         "x" * 5000, "minicalc/__init__.py"]
WORDS = ["view", "create", "str_replace", "insert", "undo_edit", "def", "return", "import", "\n", "    ", "x"]


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(12)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 3, 7, 10 ** 30, -(10 ** 30), 2 ** 63, rng.randint(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.5, -1.0, 1e308, float("inf"), float("nan")])
    if kind == 4:
        return "".join(rng.choice("abc xyz\n\t'\"\\$`{}[]()é\u2603") for _ in range(rng.randrange(40)))
    if kind == 5:
        return rng.choice(["x" * (1 << 20), "é" * (1 << 19), "a = 1\n" * 150_000])
    if kind == 6:
        return rng.choice(PATHS)
    if kind == 7:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 6)))
    if kind == 8 and depth < 3:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 9 and depth < 3:
        return {rng.choice(["a", "path", "command", "", "0"]): random_value(rng, depth + 1)
                for _ in range(rng.randrange(4))}
    if kind == 10:
        return [rng.choice([1, -1, 0, 5, 10 ** 12, -(10 ** 12)]), rng.choice([1, -1, 0, 5, 10 ** 12, -(10 ** 12)])]
    return rng.choice(["\ud800", "\x00", "", "-1"])


def random_call(rng: random.Random):
    name = rng.choices(["str_replace_editor", "bash", "submit", "python", "", None, 42, "BASH"],
                       weights=[60, 20, 3, 2, 1, 1, 1, 1])[0]
    shape = rng.randrange(20)
    if shape == 0:
        return name, random_value(rng)  # not even an object
    if shape == 1:
        return name, json.dumps({"command": "echo hi"})[: rng.randrange(1, 20)]  # broken JSON text
    args = {}
    if name == "bash":
        args["command"] = rng.choice([random_value(rng), "echo fuzz", "ls -la", "cat minicalc/text.py | head -5",
                                      "cd minicalc", "cd /testbed", "git status --short", "x" * 150_000])
    elif name == "str_replace_editor":
        args["command"] = rng.choice(["view", "create", "str_replace", "insert", "undo_edit"]
                                     if rng.random() < 0.85 else [random_value(rng)])
        args["path"] = rng.choice(PATHS) if rng.random() < 0.85 else random_value(rng)
        for key in ("file_text", "old_str", "new_str", "insert_line", "view_range"):
            if rng.random() < 0.4:
                args[key] = random_value(rng)
        if rng.random() < 0.3:
            args["old_str"] = rng.choice(["def ", "return", "import re", "\n", "sep"])
            args["new_str"] = rng.choice(["def ", "return", "", "\n\n"])
        if rng.random() < 0.3:
            args["insert_line"] = rng.choice([0, 1, 2, -1, 10 ** 9, -(10 ** 9), 10 ** 30])
    if rng.random() < 0.1:
        args[rng.choice(["extra", "timeout", "", "path"])] = random_value(rng)
    return name, args


@docker
def test_one_bad_task_ends_its_episode_not_the_run(make_env, tasks):
    """Issue 12: a task whose install fails, an environment that raises, and a scorer that raises each end
    their own episode with the cause recorded (no exception escapes run_episode), and the infrastructure
    failures are not wrong answers."""
    from swepost.agent import run_episode
    from swepost.policies.scripted import ScriptedPolicy
    from swepost.records import TaskEnv

    submit = ScriptedPolicy(turns=[{"tool_calls": [{"name": "submit", "arguments": {}}]}])
    broken = tasks[0].model_copy(update={"env": TaskEnv(install=["echo no such package >&2; exit 3"])})
    traj = run_episode(submit, make_env(), broken)
    assert traj.exit_status == "sandbox_error" and "install command failed (3)" in traj.error
    assert "no such package" in traj.error and traj.reward is None
    # install commands run with the image's own environment (here the CA bundle pip needs behind a proxy)
    needs_image_env = tasks[0].model_copy(update={"env": TaskEnv(install=['test -n "$PIP_CERT"'])})
    env = make_env()
    env.reset(needs_image_env)
    env.close()

    class Raising(SweEnvironment):
        def step(self, name, arguments):
            raise KeyError("a bug in an environment")

    env = Raising(repos=REPO_ROOT / "data" / "repos", backend="docker")
    ls = ScriptedPolicy(turns=[{"tool_calls": [{"name": "bash", "arguments": {"command": "ls"}}]}])
    traj = run_episode(ls, env, tasks[0])
    assert traj.exit_status == "sandbox_error" and "KeyError" in traj.error and traj.reward is None

    class BadScorer(SweEnvironment):
        def score(self):
            raise ValueError("the judge's reply was not JSON")

    env = BadScorer(repos=REPO_ROOT / "data" / "repos", backend="docker")
    traj = run_episode(ScriptedPolicy(turns=[{"tool_calls": [{"name": "submit", "arguments": {}}]}]), env,
                       tasks[0])
    assert traj.exit_status == "submitted" and traj.resolved == "UNGRADED" and traj.reward is None
    assert "ValueError" in traj.evidence["reason"]
