"""The README's "Adding an environment" example, run as written: its module, its task file, its scripted turns
and its commands are taken from the README itself, so the documented example cannot rot."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- example: (?P<name>[\w.]+) -->\n```\w*\n(?P<body>.*?)```", re.S)


def readme_examples() -> dict[str, str]:
    return {m["name"]: m["body"] for m in BLOCK.finditer((REPO / "README.md").read_text())}


def test_the_readme_example_environment_resolves_its_task(tmp_path):
    blocks = readme_examples()
    assert {"arith_env.py", "arith.jsonl", "arith_turns.json", "commands"} <= set(blocks)
    for name in ("arith_env.py", "arith.jsonl", "arith_turns.json"):
        (tmp_path / name).write_text(blocks[name])
    env = {**os.environ, "SWEPOST_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    last = None
    for line in blocks["commands"].strip().splitlines():
        args = shlex.split(line)
        assert args[0] == "swepost"
        last = subprocess.run([sys.executable, "-m", "swepost", *args[1:], "--json"], cwd=tmp_path, env=env,
                              text=True, capture_output=True, timeout=120)
        assert last.returncode == 0, f"{line}\n{last.stdout}\n{last.stderr[-2000:]}"
    report = json.loads(last.stdout)
    path = Path(report["path"])
    (traj,) = [json.loads(x) for x in (path / "trajectories.jsonl").read_text().splitlines()]
    assert traj["resolved"] == "RESOLVED_FULL" and traj["reward"] == 1.0 and traj["answer"] == "40"
    assert any(m.get("role") == "tool" and m.get("content") == "40" for m in traj["messages"])


def test_the_example_tools_refuse_what_they_cannot_do(tmp_path):
    """The example's calculator parses, never evaluates: a call that is not arithmetic is a ToolError the model
    sees, not code run."""
    import pytest

    (tmp_path / "arith_env.py").write_text(readme_examples()["arith_env.py"])
    sys.path.insert(0, str(tmp_path))
    try:
        from arith_env import Arithmetic

        from swepost.envs.base import ToolError
        from swepost.records import Task, TaskVerify

        env = Arithmetic(repos=None, backend="auto")
        env.reset(Task(instance_id="x", kind="search", problem_statement="?", verify=TaskVerify(gold_answers=["3"])))
        assert env.step("calculate", {"expression": "1 + 2"}).content == "3"
        for bad in ("__import__('os').system('id')", "2 ** 100000", "1 +"):
            with pytest.raises(ToolError):
                env.step("calculate", {"expression": bad})
        assert env.step("answer", {"text": " 3 "}).done and env.score()["reward"] == 1.0
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("arith_env", None)
