"""The layered config: defaults <- --config YAML <- --set <- flags, and errors that name file, line and key."""

from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel, Field

from swepost.config import ConfigLayers, StageConfig, load_yaml, parse_set
from swepost.errors import BadInput


class Optim(BaseModel):
    model_config = {"extra": "forbid"}
    lr: float = 1e-5
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999])


class Demo(StageConfig):
    name: str = "out"
    seed: int = 0
    steps: int = Field(10, ge=1)
    optim: Optim = Field(default_factory=Optim)


def test_layers_apply_in_order_and_unset_flags_never_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\nsteps: 7\noptim:\n  lr: 0.5\n")
    layers = ConfigLayers()
    layers.add_yaml(f)
    layers.add_sets(["steps=9", "optim.lr=0.25"])
    layers.add_flags({"seed": None, "steps": 11, "name": None})
    cfg = layers.resolve(Demo)
    assert (cfg.name, cfg.seed, cfg.steps, cfg.optim.lr) == ("out", 3, 11, 0.25)
    assert cfg.optim.betas == [0.9, 0.999]  # a sibling default survives a nested --set


def test_set_values_are_read_as_yaml():
    assert parse_set("optim.betas=[0.8, 0.9]") == (["optim", "betas"], [0.8, 0.9])
    assert parse_set("steps=4") == (["steps"], 4)
    assert parse_set("name=x=y") == (["name"], "x=y")
    for bad in ["novalue", "=3", "a..b=1"]:
        with pytest.raises(BadInput, match="KEY=VALUE"):
            parse_set(bad)


def test_unknown_key_names_file_line_and_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 1\noptim:\n  lr: 0.1\n  momentum: 0.9\n")
    layers = ConfigLayers()
    layers.add_yaml(f)
    with pytest.raises(BadInput) as e:
        layers.resolve(Demo)
    assert f"{f}:4: optim.momentum: unknown key (expected one of: betas, lr)" in str(e.value)


def test_wrong_type_says_what_was_expected(tmp_path):
    layers = ConfigLayers()
    layers.add_sets(["steps=many"])
    with pytest.raises(BadInput) as e:
        layers.resolve(Demo)
    msg = str(e.value)
    assert "--set steps=many: steps:" in msg and "valid integer" in msg and "'many'" in msg


def test_constraint_violation_from_a_flag():
    layers = ConfigLayers()
    layers.add_flags({"steps": 0})
    with pytest.raises(BadInput, match=r"--steps: steps: Input should be greater than or equal to 1"):
        layers.resolve(Demo)


def test_invalid_yaml_reports_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("seed: 1\noptim: [unclosed\n")
    with pytest.raises(BadInput, match=rf"{f}:\d+: invalid YAML"):
        load_yaml(f)
    f.write_text("- just\n- a list\n")
    with pytest.raises(BadInput, match="expected a mapping"):
        ConfigLayers().add_yaml(f)


def test_yaml_lines_cover_nested_keys_and_list_items(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("a:\n  b: 1\nitems:\n  - x: 1\n  - y: 2\n")
    data, lines = load_yaml(f)
    assert data == yaml.safe_load(f.read_text())
    assert lines[("a", "b")] == 2 and lines[("items", 1)] == 5 and lines[("items", 1, "y")] == 5


def test_cli_print_config_shows_resolved_layers(tmp_path, swepost):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 5\nhidden_size: 32\n")
    r = swepost("model", "tiny", "--config", str(f), "--set", "hidden_size=48", "--seed", "6", "--print-config")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["seed"] == 6 and cfg["hidden_size"] == 48 and cfg["name"] == "tiny-qwen2"
    r = swepost("model", "tiny", "--config", str(f), "--print-config")
    assert yaml.safe_load(r.stdout)["seed"] == 5  # the --seed flag, not given, does not override the YAML


def test_cli_unknown_config_key_exits_2_without_traceback(tmp_path, swepost):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 1\nhiden_size: 32\n")
    r = swepost("model", "tiny", "--config", str(f), "--print-config")
    assert r.returncode == 2
    assert f"{f}:2: hiden_size: unknown key" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    r = swepost("tasks", "import", "--set", "format=xml", "--print-config", "x.jsonl")
    assert r.returncode == 2 and "--set format=xml: format:" in r.stderr and "'auto'" in r.stderr
