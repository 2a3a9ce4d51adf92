"""The CLI shell: every command listed with its purpose, --help kept light, bad settings named."""

from __future__ import annotations

import json
import subprocess
import sys

from swepost import __version__

COMMANDS = ["tasks", "collect", "filter", "sft", "rft", "rl", "eval", "run", "artifacts", "grade", "sandbox"]


def test_version(swepost):
    r = swepost("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"swepost {__version__}"


def test_help_lists_every_command_with_a_purpose(swepost, home):
    r = swepost("--help")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    for name in COMMANDS:
        row = next((ln for ln in lines if ln.strip("│ ").startswith(name + " ")), None)
        assert row is not None, f"{name} missing from --help"
        assert len(row.strip("│ ").split(None, 1)) == 2, f"{name} has no one-line purpose"
    assert "SWEPOST_HOME" in r.stdout  # where artifacts go is visible in --help


def test_help_imports_no_heavy_library():
    code = ("import sys\nfrom swepost.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "import json\nprint(json.dumps(sorted(m for m in ('torch','trl','docker','datasets','transformers')"
            " if m in sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_rl_bad_settings_exit_2_naming_the_key(swepost, home):
    r = swepost("rl", "tasks", "--model", "m", "--set", "loss_type=ppo")
    assert r.returncode == 2 and "loss_type" in r.stderr and "Traceback" not in r.stderr
    r = swepost("rl", "tasks", "--model", "m", "--set", "tasks_per_step=3", "--set", "micro_batch_size=5")
    assert r.returncode == 2 and "micro_batch_size" in r.stderr


def test_bad_reference_exits_2(swepost):
    r = swepost("artifacts", "show", "nothing-here")
    assert r.returncode == 2 and "no artifact named 'nothing-here'" in r.stderr and "Traceback" not in r.stderr


# --- the newcomer's path (issue 13): bad input exits 2 naming what is wrong, never with a traceback ------------

def test_missing_sandbox_dir_exits_2_naming_the_option(swepost, tmp_path):
    for command in (["exec", "--backend", "local", "--dir", tmp_path / "nope", "--", "true"],
                    ["shell", "--backend", "local", "--dir", tmp_path / "nope"]):
        r = swepost("sandbox", *command, input="")
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "--dir" in r.stderr and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_rl_print_config_without_tasks_exits_2_naming_the_field(swepost):
    r = swepost("rl", "--print-config")
    assert r.returncode == 2 and "tasks: required" in r.stderr and "Traceback" not in r.stderr
    r = swepost("rl", "--print-config", "--model", "m")
    assert r.returncode == 2 and "tasks: required" in r.stderr and "Traceback" not in r.stderr


def test_bad_tool_mode_exits_2_naming_the_key_and_the_valid_values(swepost, repo_root):
    swepost("tasks", "import", repo_root / "data" / "minicalc_tasks.jsonl", "-n", "mc", check=0)
    for command in ("collect", "eval"):
        r = swepost(command, "mc", "--policy", "openai", "--model", "m",
                    "--set", "policy_args.base_url=http://127.0.0.1:9/v1", "--set", "policy_args.tool_mode=bogus")
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert "tool_mode" in r.stderr and "native, text, auto" in r.stderr and "Traceback" not in r.stderr
