"""`swepost tasks audit` on a bundled task, in real docker: gold resolves, every attack of the battery is
rejected, and the checkout holds no history past base."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_audit_of_a_bundled_task_rejects_every_attack(repo_root, home, base_image):
    env = {**os.environ, "SWEPOST_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "swepost", "tasks", "audit", "data/minicalc_tasks.jsonl", "--repos",
                        "data/repos", "--backend", "docker", "--limit", "1", "--jobs", "2", "--json"],
                       cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(r.stdout)
    (task,) = report["tasks"]
    assert task["ok"] and task["gold"]["resolved"] == "RESOLVED_FULL" and task["history_leaks"] == []
    assert task["target_module"], task  # the battery found a module the tests import
    assert len(task["attacks"]) >= 15 and all(v["resolved"] == "RESOLVED_NO" for v in task["attacks"].values())
    caught = {n for n, v in task["attacks"].items() if v.get("tampering")}
    assert {"runtest-function", "report-rewrite", "hook-wrap", "plugin-register"} <= caught, caught
    assert report["summary"] == {"tasks": 1, "ok": 1, "attacks_graded": len(task["attacks"]), "attacks_through": 0,
                                 "gold_resolved": 1}


def test_audit_of_nothing_is_bad_input(repo_root, swepost, tmp_path):
    empty = tmp_path / "none.jsonl"
    empty.write_text("")
    r = swepost("tasks", "audit", str(empty))
    assert r.returncode == 2, r.stderr
