"""The scripted, oracle and local-transformers policies, real (no mocks): real git, a real tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from swepost.errors import BadInput
from swepost.policies.base import ContextOverflow, PolicyError
from swepost.policies.oracle import OraclePolicy, parse_patch, patch_to_calls
from swepost.policies.scripted import SCRIPT_ENDED, ScriptedPolicy
from swepost.policies.toolcalls import parse_tool_calls
from swepost.records import Task
from swepost.stages.tasks import read_task_file

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "data" / "repos" / "swepost__minicalc.bundle"
TASKS = read_task_file(REPO_ROOT / "data" / "minicalc_tasks.jsonl")
GIT_ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def task(instance_id: str = "t-1", patch: str = "") -> Task:
    return Task(instance_id=instance_id, problem_statement="p", patch=patch)


def git(cwd: Path, *args: str, input: str | None = None) -> str:
    r = subprocess.run(["git", "-c", "advice.detachedHead=false", "-c", "core.quotepath=true", *args], cwd=cwd,
                       env=GIT_ENV, input=input.encode() if input is not None else None, capture_output=True,
                       timeout=60)  # bytes: text mode would turn CRLF into LF
    assert r.returncode == 0, f"git {' '.join(args)}: {r.stderr.decode(errors='replace')}"
    return r.stdout.decode()


def calls_of(policy, n: int = 50) -> list[dict]:
    out = []
    for _ in range(n):
        reply = policy.reply([], [])
        if not reply.message["tool_calls"]:
            break
        out.extend(reply.message["tool_calls"])
    return out


# --- scripted --------------------------------------------------------------------------------------------------

SCRIPT = [
    {"content": "look", "tool_calls": [{"name": "bash", "arguments": {"command": "ls"}}]},
    {"tool_calls": [{"name": "bash", "arguments": '{"command": broken'},
                    {"type": "function", "function": {"name": "submit", "arguments": "{}"}}]},
]


def test_scripted_replays_turns_then_ends_and_rewinds():
    p = ScriptedPolicy(turns=SCRIPT)
    p.start(task())
    r1 = p.reply([], [])
    assert r1.message == {"role": "assistant", "content": "look", "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "bash", "arguments": '{"command": "ls"}'}}]}
    r2 = p.reply([], [])
    assert r2.message["content"] == ""
    assert [c["function"] for c in r2.message["tool_calls"]] == [
        {"name": "bash", "arguments": '{"command": broken'}, {"name": "submit", "arguments": "{}"}]
    assert [c["id"] for c in r2.message["tool_calls"]] == ["call_1", "call_2"]
    for _ in range(2):
        end = p.reply([], [])
        assert end.message == {"role": "assistant", "content": SCRIPT_ENDED, "tool_calls": []}
    p.start(task())
    assert p.reply([], []).message == r1.message


def test_scripted_submit_only_and_describe():
    p = ScriptedPolicy.submit_only()
    p.start(task())
    assert [c["function"] for c in p.reply([], []).message["tool_calls"]] == [{"name": "submit", "arguments": "{}"}]
    d = p.describe()
    assert d["name"] == "scripted" and d["path"] is None and d["delay"] == 0.0 and len(d["sha256"]) == 64
    assert ScriptedPolicy(turns=SCRIPT).describe()["sha256"] != d["sha256"]


def test_scripted_file_formats_and_per_task(tmp_path):
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text("- content: look\n  tool_calls:\n    - name: bash\n      arguments: {command: ls}\n"
                         "- tool_calls:\n    - name: bash\n      arguments: '{\"command\": broken'\n"
                         "    - type: function\n      function: {name: submit, arguments: '{}'}\n")
    json_file = tmp_path / "s.json"
    json_file.write_text(json.dumps(SCRIPT))
    jsonl_file = tmp_path / "s.jsonl"
    jsonl_file.write_text("".join(json.dumps(t) + "\n" for t in SCRIPT))
    in_memory = ScriptedPolicy(turns=SCRIPT)
    expected = calls_of(in_memory)
    for f in (yaml_file, json_file, jsonl_file):
        p = ScriptedPolicy(path=str(f))
        p.start(task())
        assert calls_of(p) == expected, f
        assert p.describe()["sha256"] == in_memory.describe()["sha256"]  # the script, not its format
        assert p.describe()["path"] == str(f)

    per_task = {"a": [{"tool_calls": [{"name": "bash", "arguments": {"command": "echo a"}}]}],
                "b": [{"content": "b1"}, {"content": "b2"}]}
    pj = tmp_path / "per.json"
    pj.write_text(json.dumps(per_task))
    pl = tmp_path / "per.jsonl"
    pl.write_text(json.dumps({"instance_id": "a", "turns": per_task["a"]}) + "\n" + json.dumps({"b": per_task["b"]}))
    for f in (pj, pl):
        p = ScriptedPolicy(path=str(f), per_task=True)
        p.start(task("b"))
        assert [p.reply([], []).message["content"] for _ in range(3)] == ["b1", "b2", SCRIPT_ENDED]
        p.start(task("a"))
        assert json.loads(p.reply([], []).message["tool_calls"][0]["function"]["arguments"]) == {"command": "echo a"}
        p.start(task("b"))  # rewinds
        assert p.reply([], []).message["content"] == "b1"
        p.start(task("zzz"))
        with pytest.raises(PolicyError, match="zzz"):
            p.reply([], [])


def test_scripted_bad_scripts(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"tool_calls": [{"arguments": {}}]}]')
    with pytest.raises(BadInput, match="bad.json"):
        ScriptedPolicy(path=str(bad))
    with pytest.raises(BadInput, match="instance_id"):
        ScriptedPolicy(turns=SCRIPT, per_task=True)
    with pytest.raises(BadInput):
        ScriptedPolicy(turns=[{"contnet": "typo"}])
    with pytest.raises(BadInput):
        ScriptedPolicy()
    (tmp_path / "x.jsonl").write_text("{not json\n")
    with pytest.raises(BadInput, match="x.jsonl:1"):
        ScriptedPolicy(path=str(tmp_path / "x.jsonl"))


@pytest.mark.parametrize(("name", "text", "per_task", "expected"), [
    ("s.yaml", "- content: look\n  tool_calls:\n    - name: bash\n      argument: {command: ls}\n", False,
     "s.yaml:4: turns[0].tool_calls[0].argument: unknown key 'argument' (a tool call has name, arguments and id"),
    ("s.json", '[\n  {"content": "x"},\n  {"tool_calls": [\n    {"name": 3}\n  ]}\n]\n', False,
     's.json:4: turns[1].tool_calls[0].name: a tool call needs a "name": a string, not a number'),
    ("s.jsonl", '{"content": "x"}\n\n{"tool_calls": "no"}\n', False,
     "s.jsonl:3: turns[1].tool_calls: must be a list of tool calls, not a string"),
    ("s.jsonl", '{"instance_id": "a", "turns": []}\n{"a": []}\n', True,
     "s.jsonl:2: instance 'a' is given twice (lines 1 and 2)"),
    ("s.jsonl", '{"instance_id": "a", "turn": []}\n', True, "s.jsonl:1: a per_task line is"),
    ("s.yaml", "a-1:\n  - content: [1]\n", True, "s.yaml:2: instance 'a-1' turns[0].content: must be a string"),
    ("s.json", '{"a": [{"role": "user"}]}', True,
     "s.json:1: instance 'a' turns[0].role: a script holds the assistant's turns only, not 'user'"),
    ("s.json", '{"a": []}', False, "s.json: expected a list of turns, not an object (a script per instance_id "
     "needs per_task: true)"),
    ("s.json", '[{"content": "x",}]', False, "s.json:1: not JSON: Expecting property name"),
    ("s.yaml", "", False, "s.yaml: the script is empty"),
])
def test_scripted_file_mistakes_name_the_file_the_line_and_the_place(tmp_path, name, text, per_task, expected):
    (tmp_path / name).write_text(text)
    with pytest.raises(BadInput) as e:
        ScriptedPolicy(path=str(tmp_path / name), per_task=per_task)
    assert str(e.value).startswith(f"{tmp_path / expected}"), str(e.value)
    with pytest.raises(BadInput, match=r"^turns\[0\]\.tool_calls\[0\]\.function: must be an object"):
        ScriptedPolicy(turns=[{"tool_calls": [{"type": "function", "function": "bash"}]}])


def test_scripted_delay():
    p = ScriptedPolicy(turns=SCRIPT, delay=0.05)
    p.start(task())
    t0 = time.monotonic()
    p.reply([], [])
    p.reply([], [])
    assert time.monotonic() - t0 >= 0.1
    assert p.describe()["delay"] == 0.05


# --- oracle ----------------------------------------------------------------------------------------------------

def apply_calls(root: Path, calls: list[dict]) -> None:
    """A tiny stand-in for the environment's tools, with SWE-agent semantics; bytes in, bytes out."""
    for call in calls:
        name = call["function"]["name"] if "function" in call else call["name"]
        args = call["function"]["arguments"] if "function" in call else call["arguments"]
        args = json.loads(args) if isinstance(args, str) else args
        if name == "submit":
            continue
        if name == "bash":
            subprocess.run(args["command"], shell=True, cwd=root, check=True)
            continue
        assert name == "str_replace_editor", name
        path = root / args["path"]
        if args["command"] == "create":
            assert not path.exists(), f"create over an existing {path}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(args["file_text"].encode())
            continue
        text = path.read_bytes().decode()
        if args["command"] == "str_replace":
            old, new = args["old_str"], args.get("new_str") or ""
            assert old and text.count(old) == 1, f"old_str occurs {text.count(old)} times in {path}:\n{old}"
            text = text.replace(old, new)
        elif args["command"] == "insert":
            lines, n = text.split("\n"), args["insert_line"]
            assert 0 <= n <= len(lines)
            text = "\n".join(lines[:n] + args["new_str"].split("\n") + lines[n:])
        else:
            raise AssertionError(args["command"])
        path.write_bytes(text.encode())


@pytest.fixture(scope="module")
def minicalc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("oracle") / "minicalc"
    git(root.parent, "clone", "-q", str(BUNDLE), str(root))
    return root


def tree_diff(root: Path) -> str:
    git(root, "add", "-A")
    return git(root, "diff", "--cached", "--binary")


@pytest.mark.parametrize("t", TASKS, ids=[t.instance_id for t in TASKS])
def test_oracle_calls_reproduce_every_gold_patch(minicalc, t):
    git(minicalc, "checkout", "-q", "-f", t.base_commit)
    git(minicalc, "clean", "-qfdx")
    git(minicalc, "apply", "-", input=t.patch)
    want = tree_diff(minicalc)
    assert want.strip()
    git(minicalc, "reset", "-q", "--hard")

    policy = OraclePolicy()
    policy.start(t)
    calls = calls_of(policy)
    assert calls[-1]["function"] == {"name": "submit", "arguments": "{}"}
    assert [c["id"] for c in calls] == [f"call_{i}" for i in range(len(calls))]
    n_hunks = sum(len(f.hunks) for f in parse_patch(t.patch))
    assert len(calls) == n_hunks + 1
    assert all(c["function"]["name"] == "str_replace_editor" for c in calls[:-1])
    apply_calls(minicalc, calls)
    assert tree_diff(minicalc) == want
    assert policy.reply([], []).message["tool_calls"] == []  # after submit: nothing more


EDGE_BEFORE = {
    "keep.py": "".join(f"line {i}\n" for i in range(1, 31)),
    "gone.txt": "bye\n",
    "tail.txt": "a\nb\nc",  # no newline at the end
    "crlf.txt": "one\r\ntwo\r\nthree\r\n",
    "old name.txt": "".join(f"row {i}\n" for i in range(10)),
    "empty.txt": "",
    "dup.py": "x = 1\n" * 3 + "y = 2\n",
}
EDGE_AFTER = {
    "keep.py": "header\n" + "".join(f"line {i}\n" for i in range(1, 31) if i != 15).replace("line 3\n", "line 3\nnew\n")
    + "footer",
    "tail.txt": "a\nB\nc\n",
    "crlf.txt": "one\r\n2\r\nthree\r\n",
    "new name.txt": "".join(f"row {i}\n" for i in range(10)).replace("row 5", "ROW 5"),
    "empty.txt": "now filled\n",
    "dup.py": "x = 1\n" * 3 + "y = 3\n",
    "pkg/new_file.py": "print('hi')\n",
    "café.txt": "ünïcode\n",
    "blank.txt": "",
}


@pytest.mark.parametrize("unified", [3, 0, 1])
def test_oracle_conversion_edge_cases(tmp_path, unified):
    """New, deleted, renamed, empty and non-ASCII files, CRLF, no newline at EOF; -U0 insertions."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    for name, text in EDGE_BEFORE.items():
        (repo / name).write_bytes(text.encode())
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "before")
    base = git(repo, "rev-parse", "HEAD").strip()
    for name in EDGE_BEFORE:
        (repo / name).unlink()
    for name, text in EDGE_AFTER.items():
        (repo / name).parent.mkdir(exist_ok=True)
        (repo / name).write_bytes(text.encode())
    (repo / "keep.py").chmod(0o755)
    git(repo, "add", "-A")
    patch = git(repo, "diff", "--cached", "-M", f"-U{unified}")
    git(repo, "commit", "-qm", "after")
    want = git(repo, "diff", base, "HEAD")

    calls, skipped = patch_to_calls(patch)
    assert not skipped
    git(repo, "checkout", "-q", "-f", base)
    apply_calls(repo, calls)
    assert tree_diff(repo) == want


# --- hf --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from swepost.train.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("tiny-hf")
    build_tiny_model(out)
    return out


TOOLS = [{"type": "function", "function": {"name": "bash", "description": "Run a command.", "parameters": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}]
CHAT = [
    {"role": "system", "content": "You fix bugs."},
    {"role": "user", "content": "Fix the failing test."},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "bash", "arguments": '{"command": "pytest -q"}'}}]},
    {"role": "tool", "tool_call_id": "call_0", "name": "bash", "content": "1 failed"},
]


def test_hf_reply_is_well_formed_and_reproducible(tiny_dir, monkeypatch):
    import torch

    from swepost.policies.hf import HFPolicy

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a = HFPolicy(model=str(tiny_dir), temperature=0.7, top_p=0.9, max_new_tokens=12, seed=5, device="cpu")
    b = HFPolicy(model=str(tiny_dir), temperature=0.7, top_p=0.9, max_new_tokens=12, seed=5, device="cpu")
    rng = torch.get_rng_state()
    a.start(task())
    ra = [a.reply(CHAT, TOOLS) for _ in range(2)]
    rb = [b.reply(CHAT, TOOLS) for _ in range(2)]
    assert torch.equal(rng, torch.get_rng_state())  # sampling leaves the global RNG alone
    for r in ra:
        assert r.message["role"] == "assistant" and isinstance(r.message["content"], str)
        assert isinstance(r.message["tool_calls"], list)
        assert r.prompt_tokens > 20 and 1 <= r.completion_tokens <= 12
        assert r.finish_reason in ("stop", "length", "tool_calls")
        # read by the one parser every policy uses; ids count the conversation's assistant turns
        assert (r.message["content"], r.message["tool_calls"]) == parse_tool_calls(r.extra["raw"], turn=2)
    assert [r.extra["raw"] for r in ra] == [r.extra["raw"] for r in rb]
    assert ra[0].extra["raw"] != ra[1].extra["raw"]  # seed + call index: each call draws afresh
    # in episodes the agent loop starts, a turn's draw is a function of (seed, episode, turn) alone: the samples of a
    # task differ, and an episode replays the same on another instance (another worker thread) after other work
    a.start(task(), episode="t#0")
    s0 = a.reply(CHAT, TOOLS).extra["raw"]
    a.start(task(), episode="t#1")
    s1 = a.reply(CHAT, TOOLS).extra["raw"]
    b.start(task(), episode="t#0")
    assert s0 != s1 and b.reply(CHAT, TOOLS).extra["raw"] == s0
    d = a.describe()
    assert d == {**d, "name": "hf", "model": str(tiny_dir), "device": "cpu", "dtype": "float32", "temperature": 0.7,
                 "top_p": 0.9, "max_new_tokens": 12, "max_context_tokens": 4096, "seed": 5, "artifact": None}

    greedy = HFPolicy(model=str(tiny_dir), max_new_tokens=8, device="cpu")
    assert greedy.reply(CHAT, TOOLS).extra["raw"] == greedy.reply(CHAT, TOOLS).extra["raw"]
    assert greedy.describe()["do_sample"] is False
    nucleus = HFPolicy(model=str(tiny_dir), temperature=1.0, top_p=1e-6, max_new_tokens=8, device="cpu")
    assert nucleus.reply(CHAT, TOOLS).extra["raw"] == greedy.reply(CHAT, TOOLS).extra["raw"]  # top-1 only

    # JSON-string arguments render as the object the Qwen2.5 template expects, not a quoted string
    prompt = greedy.render(CHAT, TOOLS)
    assert '<tool_call>\n{"name": "bash", "arguments": {"command": "pytest -q"}}\n</tool_call>' in prompt
    assert prompt.endswith("<|im_start|>assistant\n")

    small = HFPolicy(model=str(tiny_dir), max_context_tokens=64, device="cpu")
    with pytest.raises(ContextOverflow):
        small.reply([{"role": "user", "content": "word " * 200}], TOOLS)


def test_hf_turn_budget_is_what_the_context_leaves_counted_exactly(tiny_dir, monkeypatch):
    from swepost.policies.hf import HFPolicy

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    probe = HFPolicy(model=str(tiny_dir), max_turn_tokens=4, device="cpu")
    n = probe.reply(CHAT, TOOLS).prompt_tokens
    assert n == len(probe.tokenizer(probe.render(CHAT, TOOLS), add_special_tokens=False)["input_ids"])
    assert probe.reply(CHAT, TOOLS).extra["max_tokens"] == 4  # the cap: the default context has room

    # RL's names: the per-turn cap, at most what max_model_len leaves after the prompt
    p = HFPolicy(model=str(tiny_dir), max_turn_tokens=64, max_model_len=n + 20, device="cpu")
    r = p.reply(CHAT, TOOLS)
    assert r.extra["max_tokens"] == 20 and r.completion_tokens <= 20
    assert p.describe()["context"] == {"max_turn_tokens": 64, "max_model_len": n + 20, "min_turn_tokens": 16}
    tight = HFPolicy(model=str(tiny_dir), max_turn_tokens=64, max_model_len=n + 10, device="cpu")
    with pytest.raises(ContextOverflow, match=f"{n} tokens \\(counted with the chat template\\).*leaves 10"):
        tight.reply(CHAT, TOOLS)
    with pytest.raises(BadInput, match="max_model_len .*max_context_tokens .*same setting"):
        HFPolicy(model=str(tiny_dir), max_model_len=100, max_context_tokens=200, device="cpu")


def test_hf_loads_a_checkpoint_artifact(store, monkeypatch):
    from swepost.policies.hf import HFPolicy
    from swepost.stages.tiny_model import TinyModelConfig, run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    art = run(TinyModelConfig(), store)
    p = HFPolicy(model="tiny-qwen2", max_new_tokens=4, device="cpu")
    assert p.describe()["artifact"] == art.id and p.path == str(art.path / "model")
    assert p.reply([{"role": "user", "content": "hi"}], []).message["role"] == "assistant"
    with pytest.raises(BadInput, match="cannot load"):
        HFPolicy(model=str(store.root / "no-such-model"), device="cpu")
