"""The launch settings of the training stages (sft, rl) are declared once, in train/launch.py (LaunchFields), and
read the same in both stages' configs and --print-config."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from swepost.stages.rl import RlConfig
from swepost.stages.sft import SftConfig
from swepost.train.launch import LaunchFields

STAGES = Path(__file__).resolve().parents[1] / "src" / "swepost" / "stages"
LAUNCH = {"deepspeed": None, "launch": "none", "accelerate_config": "multi_gpu", "num_processes": None,
          "launch_args": []}


def declared_fields(path: Path) -> set[str]:
    """Field names annotated in the class bodies of a module."""
    tree = ast.parse(path.read_text())
    return {stmt.target.id for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for stmt in node.body
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}


def test_launch_fields_are_declared_once():
    assert set(LaunchFields.model_fields) == set(LAUNCH)
    for path in sorted(STAGES.glob("*.py")):
        assert declared_fields(path) & set(LAUNCH) == set(), path.name
    for model in (SftConfig, RlConfig):
        assert issubclass(model, LaunchFields)
        for name, field in LaunchFields.model_fields.items():
            mine = model.model_fields[name]
            assert (mine.description, mine.annotation, mine.metadata) == (field.description, field.annotation,
                                                                           field.metadata), (model, name)
            assert mine.description  # every launch setting says what it is


def test_print_config_shows_the_launch_settings_of_both_stages(swepost):
    for command, inputs in (("sft", ["d", "--model", "m"]), ("rl", ["t", "--model", "m"])):
        printed = yaml.safe_load(swepost(command, *inputs, "--print-config", check=0).stdout)
        assert {k: printed[k] for k in LAUNCH} == LAUNCH, command
        printed = yaml.safe_load(swepost(command, *inputs, "--set", "launch=accelerate", "--set",
                                         "accelerate_config=zero2", "--set", "num_processes=2", "--set",
                                         "launch_args=[--machine_rank, '0']", "--print-config", check=0).stdout)
        assert {k: printed[k] for k in LAUNCH} == {"deepspeed": None, "launch": "accelerate",
                                                   "accelerate_config": "zero2", "num_processes": 2,
                                                   "launch_args": ["--machine_rank", "0"]}, command
