"""Secrets never reach artifacts: an api_key given with --set is used, but redacted from everything written."""

from __future__ import annotations

import json

from openai_server import ScriptedChatServer

from swepost.artifacts import REDACTED, redact_secrets

SECRET = "sk-test-SECRET-4b1d"


def test_credential_named_keys_are_redacted_at_any_depth_and_settings_are_not():
    config = {"policy_args": {"api_key": SECRET, "max_tokens": 5, "max_turn_tokens": 3, "pad_token": "<pad>",
                              "tokenizer": "t", "headers": [{"Authorization": f"Bearer {SECRET}"}]},
              "hf_token": SECRET, "client_secret": SECRET, "password": SECRET, "OPENAI_API_KEY": SECRET,
              "api_key": None}
    out = redact_secrets(config)
    assert SECRET not in json.dumps(out)
    assert out["policy_args"]["api_key"] == REDACTED and out["hf_token"] == REDACTED
    assert out["policy_args"]["max_tokens"] == 5 and out["policy_args"]["pad_token"] == "<pad>"
    assert out["api_key"] is None  # not given stays visibly not given
    assert config["policy_args"]["api_key"] == SECRET  # a copy: the run itself still has the key


def test_api_key_from_set_reaches_no_artifact_summary_log_or_output(swepost, home, repo_root, tmp_path):
    rows = (repo_root / "data" / "minicalc_tasks.jsonl").read_text().splitlines()[:2]
    (tmp_path / "t.jsonl").write_text("\n".join(rows) + "\n")
    swepost("tasks", "import", tmp_path / "t.jsonl", "--name", "two", check=0)
    submit = {"content": "", "tool_calls": [{"name": "submit", "arguments": {}}]}
    outputs = []
    with ScriptedChatServer([], default=submit) as server:
        for command in ("collect", "eval"):
            r = swepost(command, "two", "--policy", "openai", "--model", "scripted-model",
                        "--repos", repo_root / "data" / "repos", "--set", "backend=local",
                        "--set", f"policy_args.base_url={server.base_url}", "--set", f"policy_args.api_key={SECRET}",
                        check=0)
            outputs.append(r.stdout + r.stderr)
        assert len(server.requests) >= 4  # the key was in force: every episode asked the server
    written = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in written) and any(p.suffix == ".md" for p in written)
    leaks = [str(p) for p in written if SECRET.encode() in p.read_bytes()]
    assert leaks == []
    assert all(SECRET not in out for out in outputs)
    manifests = [json.loads(p.read_text()) for p in written if p.name == "manifest.json"]
    assert [m["producer"]["config"]["policy_args"]["api_key"] for m in manifests
            if m["kind"] in ("trajectories", "eval")] == [REDACTED, REDACTED]


def test_print_config_redacts_the_api_key(swepost, repo_root):
    """--print-config output is pasted into issues and logs: the key given with --set must not be in it."""
    for command in ("collect", "eval"):
        r = swepost(command, "some-tasks", "--policy", "openai", "--model", "m",
                    "--set", f"policy_args.api_key={SECRET}", "--print-config", check=0)
        assert SECRET not in r.stdout + r.stderr
        assert f"api_key: {REDACTED}" in r.stdout and "model: m" in r.stdout
