"""`swepost rft` end to end on CPU: oracle-driven rounds, filter, SFT of the tiny model, early stop, lineage."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.docker


def test_rft_trains_on_successes_and_stops_when_nothing_new(repo_root, swepost, store, base_image):
    swepost("tasks", "import", str(repo_root / "data" / "minicalc_tasks.jsonl"), "--name", "mini", check=0)
    tiny = json.loads(swepost("model", "tiny", "--name", "tiny", "--json", check=0).stdout)["id"]
    r = swepost("rft", "mini", "--model", tiny, "--rounds", "3", "--samples", "1", "--policy", "oracle",
                "--repos", str(repo_root / "data" / "repos"), "--backend", "docker", "--concurrency", "2",
                "--set", "limit=3", "--set", "sft.max_steps=2", "--json", check=0)
    out = json.loads(r.stdout)
    assert "round 2: 3 task(s) resolved, 0 new" in r.stderr and "stopping after round 2" in r.stderr
    ckpt = store.resolve(out["id"])
    assert ckpt.kind == "checkpoint" and ckpt.name == "rft-r1"
    names = {a.name for a in store.all()}
    assert {"rft-r1-trajectories", "rft-r1-data", "rft-r1", "rft-r2-trajectories"} <= names
    assert "rft-r2" not in names  # round 2 found nothing new: no second fine-tune
    lineage = swepost("artifacts", "lineage", out["id"], check=0).stdout
    for name in ("rft-r1-data", "rft-r1-trajectories", "mini@", "tiny@"):
        assert name in lineage, lineage


def test_rft_with_no_success_in_round_one_fails_cleanly(repo_root, swepost, tmp_path, base_image):
    swepost("tasks", "import", str(repo_root / "data" / "minicalc_tasks.jsonl"), "--name", "mini", check=0)
    script = tmp_path / "s.json"
    script.write_text(json.dumps([{"tool_calls": [{"name": "submit", "arguments": {}}]}]))
    r = swepost("rft", "mini", "--model", "unused", "--policy", "scripted", "--set", f"policy_args.path={script}",
                "--repos", str(repo_root / "data" / "repos"), "--backend", "docker", "--set", "limit=2",
                "--samples", "1")
    assert r.returncode == 1 and "round 1 resolved no task" in r.stderr


def test_collect_filter_sft_from_the_cli_with_lineage_to_the_tasks(repo_root, swepost, store, base_image):
    swepost("tasks", "import", str(repo_root / "data" / "minicalc_tasks.jsonl"), "--name", "mini", check=0)
    tiny = json.loads(swepost("model", "tiny", "--name", "tiny", "--json", check=0).stdout)["id"]
    trajs = json.loads(swepost("collect", "mini", "--policy", "oracle", "--limit", "2", "--repos",
                               str(repo_root / "data" / "repos"), "--backend", "docker", "--json", check=0).stdout)
    data = json.loads(swepost("filter", trajs["id"], "--json", check=0).stdout)
    assert data["stats"]["kept"] == 2
    ckpt = json.loads(swepost("sft", data["id"], "--model", tiny, "--max-steps", "2", "--json", check=0).stdout)
    assert store.resolve(ckpt["id"]).kind == "checkpoint"
    lineage = swepost("artifacts", "lineage", ckpt["id"], check=0).stdout
    for ref in (data["id"], trajs["id"], store.resolve("mini").id, tiny):
        assert ref in lineage, lineage
