"""`make demo`'s recipe, then the README's walkthrough, run as written: every command a new user types after the
demo must work, in real docker sandboxes, and say what the README's comments promise."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.docker, pytest.mark.slow]


def walkthrough_commands(readme: str) -> list[str]:
    """The shell commands of the README block marked `<!-- walkthrough -->`, continuation lines joined."""
    block = re.search(r"<!-- walkthrough -->\n```bash\n(.*?)```", readme, re.S)
    assert block, "README.md has no <!-- walkthrough --> bash block"
    commands, pending = [], ""
    for line in block.group(1).splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(line)
    return commands


def test_the_walkthrough_block_is_found_and_joined():
    commands = walkthrough_commands((REPO / "README.md").read_text())
    assert commands[0] == "source .venv/bin/activate"
    evals = [c for c in commands if c.startswith("swepost eval ")]
    assert len(evals) == 1 and "policy_args.max_new_tokens=32" in evals[0]  # the continuation line joined


def test_demo_then_walkthrough_as_written(tmp_path, base_image):
    work = tmp_path / "clone"  # the commands write files (fix.diff) in the folder they run in: a copy of the repo's
    for folder in ("recipes", "data"):  # recipes and data, as a fresh clone has them
        shutil.copytree(REPO / folder, work / folder)
    env = {**os.environ, "SWEPOST_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}

    def sh(command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        r = subprocess.run(["bash", "-c", command], cwd=work, env=env, text=True, capture_output=True,
                           timeout=timeout)
        assert r.returncode == 0, f"`{command}` exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r

    demo = sh("swepost run recipes/quickstart.yaml --json")  # what `make demo` runs
    assert [s["action"] for s in json.loads(demo.stdout)["steps"]] == ["run"] * 21

    out = {}
    for command in walkthrough_commands((REPO / "README.md").read_text()):
        if command.startswith("source "):
            continue  # the venv's bin is on PATH already
        out[command] = sh(command).stdout
    by = {c.split("#")[0].strip(): o for c, o in out.items()}

    def output_of(prefix: str) -> list[str]:
        found = [o for c, o in by.items() if c.startswith(prefix)]
        assert found, f"no walkthrough command starts with {prefix!r}"
        return found

    plan = output_of("swepost run recipes/quickstart.yaml --dry-run")[0]
    assert len(re.findall(r"^\s+\d+\. \S+ \([\w-]+\): reuse", plan, re.M)) == 21, plan  # right after the demo
    full, nothing = output_of("swepost grade patch minicalc swepost__minicalc-1")
    assert "RESOLVED_FULL" in full and "RESOLVED_NO" in nothing
    assert output_of("swepost sandbox exec")[0].strip() == "1000"  # docker: an unprivileged uid, not root
    assert "resolved=14" in output_of("swepost collect minicalc --policy oracle")[0]
    assert "kept=7" in output_of("swepost filter minicalc-oracle")[0]
    assert "episodes=2" in output_of("swepost eval minicalc --policy hf")[0]
    assert "steps=1" in output_of("swepost rl minicalc")[0]
    lineage = output_of("swepost artifacts lineage minicalc-rl")[0]
    assert all(name in lineage for name in ("minicalc-sft@", "minicalc-sft-data@", "minicalc-oracle@",
                                             "quickstart-model@", "minicalc@"))
