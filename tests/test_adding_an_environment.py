"""The README's "Adding an environment" example, run as written: its modules (an environment, a task kind), its
task files, its scripted turns and its commands are taken from the README itself, so the documented example
cannot rot."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- example: (?P<name>[\w.]+) -->\n```\w*\n(?P<body>.*?)```", re.S)


# `python -c` this, then CLI arguments: swepost with one more line in registry.TASK_KINDS, as a user would add it
WITH_REGISTRY_LINE = ("import swepost.registry as r; r.TASK_KINDS['arith'] = 'arith_kind:ARITH'; "
                      "from swepost.cli import main; main()")


def readme_examples() -> dict[str, str]:
    return {m["name"]: m["body"] for m in BLOCK.finditer((REPO / "README.md").read_text())}


def write_examples(folder: Path, *names: str) -> dict[str, str]:
    blocks = readme_examples()
    assert set(names) <= set(blocks), f"README.md lacks the example blocks {sorted(set(names) - set(blocks))}"
    for name in names:
        (folder / name).write_text(blocks[name])
    return blocks


def swepost(folder: Path, *args: str, check: int | None = 0, registry_line: bool = False):
    """The real CLI in `folder` (on the Python path, so the README's modules import), against its own store."""
    env = {**os.environ, "SWEPOST_HOME": str(folder / "home"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    start = ["-c", WITH_REGISTRY_LINE] if registry_line else ["-m", "swepost"]
    r = subprocess.run([sys.executable, *start, *args], cwd=folder, env=env, text=True, capture_output=True,
                       timeout=120)
    if check is not None:
        assert r.returncode == check, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr[-2000:]}"
    return r


def run_commands(folder: Path, block: str) -> dict:
    """Every command of a README block, with --json; the last one's report."""
    last = None
    for line in block.strip().splitlines():
        args = shlex.split(line)
        assert args[0] == "swepost"
        last = swepost(folder, *args[1:], "--json")
    return json.loads(last.stdout)


def the_resolved_episode(report: dict) -> dict:
    (traj,) = [json.loads(x) for x in (Path(report["path"]) / "trajectories.jsonl").read_text().splitlines()]
    assert traj["resolved"] == "RESOLVED_FULL" and traj["reward"] == 1.0 and traj["answer"] == "40"
    return traj


def test_the_readme_example_environment_resolves_its_task(tmp_path):
    blocks = write_examples(tmp_path, "arith_env.py", "arith.jsonl", "arith_turns.json", "commands")
    traj = the_resolved_episode(run_commands(tmp_path, blocks["commands"]))
    assert any(m.get("role") == "tool" and m.get("content") == "40" for m in traj["messages"])


def test_the_example_tools_refuse_what_they_cannot_do(tmp_path):
    """The example's calculator parses, never evaluates: a call that is not arithmetic is a ToolError the model
    sees, not code run."""
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


# --- a task kind: one module, and one registry line or an import path -------------------------------------------

def imported_tasks(report: dict) -> list[dict]:
    return [json.loads(x) for x in (Path(report["path"]) / "tasks.jsonl").read_text().splitlines()]


def test_the_readme_example_task_kind_imports_its_rows_and_the_eval_resolves_them(tmp_path):
    blocks = write_examples(tmp_path, "arith_env.py", "arith_turns.json", "arith_kind.py", "arith_rows.jsonl",
                            "kind_commands")
    report = run_commands(tmp_path, blocks["kind_commands"])
    traj = the_resolved_episode(report)
    assert traj["instance_id"] == "arith-2"
    imported = swepost(tmp_path, "artifacts", "show", "arith-rows")
    (task,) = imported_tasks(json.loads(imported.stdout))
    assert task["kind"] == "arith_kind:ARITH" and task["problem_statement"] == "What is 6 * 7 - 2?"
    assert task["verify"]["gold_answers"] == ["40"] and task["verify"]["fail_to_pass"] == []


def test_a_registry_line_gives_the_kind_a_short_name(tmp_path):
    """With `"arith": "arith_kind:ARITH"` in TASK_KINDS, `--kind arith` imports, the tasks say `arith`, and
    every later stage reads them; without the line, `arith` is an unknown kind."""
    write_examples(tmp_path, "arith_env.py", "arith_turns.json", "arith_kind.py", "arith_rows.jsonl")
    report = json.loads(swepost(tmp_path, "tasks", "import", "arith_rows.jsonl", "--kind", "arith", "--name", "short",
                                "--json", registry_line=True).stdout)
    assert [t["kind"] for t in imported_tasks(report)] == ["arith"]
    evaluated = swepost(tmp_path, "eval", "short", "--policy", "scripted", "--set", "policy_args.path=arith_turns.json",
                        "--set", "environment=arith_env:Arithmetic", "--json", registry_line=True)
    the_resolved_episode(json.loads(evaluated.stdout))
    r = swepost(tmp_path, "tasks", "import", "arith_rows.jsonl", "--kind", "arith", check=2)
    assert "unknown task kind 'arith' (known: swe, codeqa, search, or module:name" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_example_kind_reports_bad_rows_by_line_and_column(tmp_path):
    """A missing column (a KeyError in from_row) and a wrong type are bad input on their line; rows the kind
    calls unusable import with a warning, and --strict refuses them."""
    write_examples(tmp_path, "arith_kind.py")
    rows = [{"id": 1, "question": "1 + 1?", "answer": 2}, {"id": 2, "answer": 3}, {"id": 3, "question": 7, "answer": 1}]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = swepost(tmp_path, "tasks", "import", "bad.jsonl", "--kind", "arith_kind:ARITH", check=2)
    assert r.stderr.splitlines() == ["error: bad.jsonl:2: question: required field missing",
                                     "bad.jsonl:3: problem_statement: Input should be a valid string (got 7)"]
    rows[1]["question"], rows[2]["question"], rows[2]["answer"] = "2 + 1?", "4 - 3?", "one"
    (tmp_path / "odd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = swepost(tmp_path, "tasks", "import", "odd.jsonl", "--kind", "arith_kind:ARITH", "--json")
    assert json.loads(r.stdout)["stats"] == {"tasks": 3, "repos": 0, "with_image": 0, "unusable": 1}
    assert "warning: 1 of 3 rows no stage can use" in r.stderr
    assert "odd.jsonl:3: answer: not an integer: 'one'" in r.stderr
    r = swepost(tmp_path, "tasks", "import", "odd.jsonl", "--kind", "arith_kind:ARITH", "--strict", check=2)
    assert r.stderr.strip() == "error: odd.jsonl:3: answer: not an integer: 'one'"


def test_a_recipe_reruns_the_import_when_the_kind_module_changes(tmp_path, monkeypatch):
    """`kind: module:NAME` in a recipe enters the import's cache key by the module's source, like a plugged-in
    environment or reward; an unknown kind fails `recipes validate` naming the known ones."""
    from swepost import recipes
    from swepost.artifacts import ArtifactStore
    from swepost.errors import BadInput

    write_examples(tmp_path, "arith_kind.py", "arith_rows.jsonl")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: k\nmodel: org/not-downloaded\nstages:\n  - name: tasks\n    stage: tasks-import\n"
                      "    config: {source: arith_rows.jsonl, kind: 'arith_kind:ARITH'}\n")
    store = ArtifactStore(tmp_path / "home")

    def key():
        (step,) = recipes.plan(recipes.load_recipe(recipe, []), store)
        parts = recipes.key_parts(step.spec, step.config, store)
        assert parts.about["task kind module"] == str(tmp_path / "arith_kind.py")
        return parts.key

    before = key()
    assert key() == before
    with open(tmp_path / "arith_kind.py", "a") as f:
        f.write("\n# edited\n")
    assert key() != before
    recipe.write_text(recipe.read_text().replace("arith_kind:ARITH", "trivia"))
    with pytest.raises(BadInput) as e:
        recipes.load_recipe(recipe, [])
    assert str(e.value) == (f"{recipe}:6: stages[0].config.kind: unknown task kind 'trivia' (known: swe, codeqa, "
                            "search, or module:name of an importable module)")
