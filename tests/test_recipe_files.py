"""The shipped recipes' contents: quickstart ends in RL, swe-bugfix chains every stage with the documented DAPO
settings. Fast: nothing runs (test_recipes.py checks that every shipped recipe validates)."""

from __future__ import annotations

import json

import pytest

from swepost import recipes


@pytest.fixture
def load(repo_root):
    return lambda name: recipes.load_recipe(repo_root / "recipes" / name).recipe


def test_quickstart_trains_rl_after_sft_and_evaluates_the_rl_checkpoint(load):
    recipe = load("quickstart.yaml")
    stages = {s.name: s for s in recipe.stages}
    order = [s.stage for s in recipe.stages]
    assert order.index("sft") < order.index("rl") < order.index("eval")
    rl = stages["rl"]
    assert rl.stage == "rl" and rl.config["model"] == "${stages.sft}"
    assert rl.config["tasks"] == "${stages.validated}"
    # tiny: a couple of short steps on CPU
    assert rl.config["max_steps"] <= 2 and rl.config["tasks_per_step"] * rl.config["num_generations"] <= 4
    assert rl.config["gradient_checkpointing"] is False
    assert stages["eval"].config["policy_args"]["model"] == "${stages.rl}"


def test_swe_bugfix_chains_every_stage_in_order(load):
    recipe = load("swe-bugfix.yaml")
    assert [s.stage for s in recipe.stages] == ["tasks-import", "tasks-validate", "collect", "filter", "sft", "rft",
                                                "rl", "eval"]
    stages = {s.stage: s for s in recipe.stages}
    name = {s.stage: s.name for s in recipe.stages}
    assert stages["sft"].config["model"] == "${model}"
    assert stages["rft"].config["model"] == f"${{stages.{name['sft']}}}"
    assert stages["rl"].config["model"] == f"${{stages.{name['rft']}}}"
    assert stages["eval"].config["policy_args"]["model"] == f"${{stages.{name['rl']}}}"
    assert stages["collect"].config["policy"] == "openai" and stages["collect"].config["policy_args"]["base_url"]


def test_swe_bugfix_spells_out_the_dapo_settings(load):
    rl = next(s for s in load("swe-bugfix.yaml").stages if s.stage == "rl").config
    assert (rl["loss_type"], rl["epsilon"], rl["epsilon_high"], rl["beta"]) == ("dapo", 0.2, 0.28, 0.0)
    assert (rl["scale_rewards"], rl["dynamic_sampling"], rl["truncated"]) == ("group", "drop", "mask")
    assert rl["turn_penalty"] == 0.0
    # the recipe's values are the stage's defaults: the recipe documents them, it does not change them
    from swepost.stages.rl import RlConfig

    for key in ("loss_type", "epsilon", "epsilon_high", "beta", "scale_rewards", "dynamic_sampling", "truncated",
                "turn_penalty"):
        assert RlConfig.model_fields[key].default == rl[key], key


def test_swe_bugfix_dry_run_plans_every_stage_and_starts_nothing(swepost, home):
    r = swepost("run", "recipes/swe-bugfix.yaml", "--dry-run", "--json", check=0)
    plan = json.loads(r.stdout)
    assert [s["kind"] for s in plan][-3:] == ["rft", "rl", "eval"] and len(plan) == 8
    assert all(s["action"] == "run" for s in plan)
    assert json.loads(swepost("artifacts", "ls", "--json", check=0).stdout) == []
    assert not (home / "work").exists()
