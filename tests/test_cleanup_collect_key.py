"""The collect work key leaves credentials out: a new api_key resumes the finished episodes, while a setting
that changes the episodes (temperature) starts them again. Against a real loopback chat server."""

from __future__ import annotations

import json

from openai_server import ScriptedChatServer, free_port

from swepost.stages.collect import CollectConfig, work_key

SUBMIT = {"tool_calls": [{"name": "submit", "arguments": {}}]}


def test_work_key_leaves_out_credentials_at_any_depth():
    def key(**policy_args):
        return work_key(CollectConfig(tasks="t", policy="openai", policy_args={"model": "m", **policy_args}),
                        "t@1", "collect")

    assert key(api_key="sk-a") == key(api_key="sk-b") == key()
    assert key(extra_body={"top_k": 5, "hf_token": "a"}) == key(extra_body={"top_k": 5, "hf_token": "b"})
    assert key(api_key="sk-a", temperature=0.2) != key(api_key="sk-a", temperature=0.7)


def test_a_new_api_key_resumes_a_new_temperature_restarts(swepost, home, repo_root, tmp_path):
    rows = (repo_root / "data" / "minicalc_tasks.jsonl").read_text().splitlines()[:2]
    (tmp_path / "t.jsonl").write_text("\n".join(rows) + "\n")
    swepost("tasks", "import", tmp_path / "t.jsonl", "--name", "two", check=0)
    port = free_port()  # one address for every server: base_url is part of the key

    def collect(server, api_key: str, temperature: float, check: int):
        return swepost("collect", "two", "--policy", "openai", "--model", "m", "-j", "1", "--backend", "local",
                       "--repos", repo_root / "data" / "repos", "--set", "grade=false",
                       "--set", "max_infra_failure_rate=0", "--set", f"policy_args.base_url={server.base_url}",
                       "--set", f"policy_args.api_key={api_key}", "--set", f"policy_args.temperature={temperature}",
                       "--set", "policy_args.backoff=0.01", "--set", "policy_args.max_retries=1", "--json",
                       check=check)

    # the first episode submits, the second meets a failing server: no artifact, the work folder stays
    with ScriptedChatServer([SUBMIT], default={"status": 500, "error": "engine dead"}, port=port) as server:
        collect(server, "sk-first", 0.5, check=1)
    work = list((home / "work").glob("collect-*"))
    assert len(work) == 1
    assert [json.loads(line)["exit_status"] for line in (work[0] / "episodes.jsonl").read_text().splitlines()] == [
        "submitted", "policy_error"]

    # another key: the same work folder; only the failed episode runs again
    with ScriptedChatServer([], default=SUBMIT, port=port) as server:
        collect(server, "sk-second", 0.5, check=0)
        assert len(server.requests) == 1
    assert not list((home / "work").glob("collect-*"))  # published, then removed

    # another temperature: both episodes run
    with ScriptedChatServer([], default=SUBMIT, port=port) as server:
        collect(server, "sk-second", 0.9, check=0)
        assert len(server.requests) == 2 and all(r["temperature"] == 0.9 for r in server.requests)
