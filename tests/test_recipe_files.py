"""The shipped recipes' contents: quickstart ends in RL and has a codeqa branch, swe-bugfix chains every stage with
the documented DAPO settings, code-qa spells out SWE-QA-Pro's. Fast: nothing trains (test_recipes.py checks that
every shipped recipe validates)."""

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


def test_quickstart_has_a_codeqa_branch_on_the_lexical_judge(load):
    stages = {s.name: s for s in load("quickstart.yaml").stages}
    qa = [s for s in load("quickstart.yaml").stages if s.name.startswith("qa-")]
    assert [s.stage for s in qa] == ["tasks-import", "collect", "filter", "sft", "rl", "eval"]
    assert stages["qa-tasks"].config == {"source": "../data/minicalc_qa.jsonl", "kind": "codeqa"}
    assert stages["qa-trajectories"].config["policy"] == "oracle"
    assert stages["qa-sft-data"].config["min_reward"] >= 0.5  # kept by the judge's score
    rl = stages["qa-rl"].config
    assert rl["model"] == "${stages.qa-sft}" and rl["tasks"] == "${stages.qa-tasks}"
    assert rl["max_steps"] <= 2 and rl["tasks_per_step"] * rl["num_generations"] <= 4
    # no judge endpoint and no environment named: the tasks' kind picks codeqa, the judge is the lexical one
    for s in qa:
        assert "judge" not in s.config and "environment" not in s.config, s.name
    assert stages["qa-eval"].config["policy_args"]["model"] == "${stages.qa-rl}"


def test_code_qa_chains_the_stages_and_spells_out_swe_qa_pro_at_8b(load):
    recipe = load("code-qa.yaml")
    assert [s.stage for s in recipe.stages] == ["tasks-import", "tasks-validate", "collect", "filter", "sft", "rl",
                                                "eval"]
    assert recipe.model == "Qwen/Qwen3-8B"
    stages = {s.stage: s.config for s in recipe.stages}
    name = {s.stage: s.name for s in recipe.stages}
    assert stages["tasks-import"]["kind"] == "codeqa"
    collect = stages["collect"]
    assert collect["policy"] == "openai" and collect["policy_args"]["base_url"].endswith("/v1")
    assert stages["filter"]["min_reward"] == 0.7 and stages["filter"]["max_tokens"] == stages["sft"]["max_length"]
    sft = stages["sft"]
    assert (sft["learning_rate"], sft["epochs"], sft["max_length"], sft["accelerate_config"]) == (
        5e-6, 3, 32768, "zero3")
    assert "lora" not in sft or sft["lora"] is False  # full fine-tuning
    rl = stages["rl"]
    assert rl["model"] == f"${{stages.{name['sft']}}}" and rl["reward"] == "env"
    assert (rl["num_generations"], rl["tasks_per_step"], rl["learning_rate"], rl["beta"], rl["max_turns"]) == (
        8, 8, 1e-6, 0.02, 25)
    assert rl["max_completion_tokens"] == 28672 and rl["judge"]["on_failure"] == "group_mean"
    ev = stages["eval"]
    assert ev["limits"] == {"max_turns": 15, "max_context_tokens": 32768}
    assert ev["policy_args"]["max_model_len"] == 32768 and ev["policy_args"]["model"] == f"${{stages.{name['rl']}}}"
    # one judge for collect, rl and eval; the RL reward's weights are the judge's defaults (SWE-QA-Pro's)
    rl_only = ("on_failure", "missing_answer_reward")
    judges = [{k: v for k, v in stages[s]["judge"].items() if k not in rl_only} for s in ("collect", "rl", "eval")]
    assert judges[0] == judges[1] == judges[2] and judges[0]["base_url"] and judges[0]["model"]
    from swepost.rewards.judge import DEFAULT_WEIGHTS, JudgeConfig

    assert "weights" not in judges[0] and JudgeConfig().weights == DEFAULT_WEIGHTS == {
        "correctness": 0.3, "completeness": 0.2, "relevance": 0.2, "clarity": 0.1, "reasoning": 0.2}


def test_code_qa_validates_and_plans_every_stage(swepost, home):
    swepost("recipes", "validate", "recipes/code-qa.yaml", check=0)
    plan = json.loads(swepost("run", "recipes/code-qa.yaml", "--dry-run", "--json", check=0).stdout)
    assert [s["kind"] for s in plan] == ["tasks-import", "tasks-validate", "collect", "filter", "sft", "rl", "eval"]
    assert not (home / "work").exists()


def test_quickstart_has_a_retrieval_branch_sft_then_rft_on_the_local_index(load):
    stages = {s.name: s for s in load("quickstart.yaml").stages}
    ir = ["corpus", *[s.name for s in load("quickstart.yaml").stages if s.name.startswith("ir-")]]
    assert [stages[n].stage for n in ir] == ["corpus-index", "tasks-import", "collect", "filter", "sft", "rft",
                                             "eval"]
    assert stages["corpus"].config["corpus"] == "../data/pydocs_corpus.jsonl"
    assert stages["ir-tasks"].config == {"source": "../data/pydocs_questions.jsonl", "kind": "search"}
    for n in ("ir-trajectories", "ir-rft", "ir-eval"):  # every episode searches the index the recipe built
        assert stages[n].config["index"] == "${stages.corpus}", n
    assert stages["ir-rft"].config["model"] == "${stages.ir-sft}"
    assert stages["ir-eval"].config["policy_args"]["model"] == "${stages.ir-rft}"


def test_web_retrieval_spells_out_search_r1_and_browseragent_at_7b(load):
    from swepost.envs.search import SearchEnvironment

    recipe = load("web-retrieval.yaml")
    assert [s.stage for s in recipe.stages] == ["corpus-index", "tasks-import", "collect", "filter", "sft", "rft",
                                                "eval"]
    assert recipe.model == "Qwen/Qwen2.5-7B-Instruct"
    stages = {s.stage: s.config for s in recipe.stages}
    name = {s.stage: s.name for s in recipe.stages}
    index = f"${{stages.{name['corpus-index']}}}"
    assert stages["tasks-import"]["kind"] == "search"
    collect, rft, ev = stages["collect"], stages["rft"], stages["eval"]
    assert collect["index"] == rft["index"] == ev["index"] == index
    assert collect["environment_args"]["topk"] == rft["environment_args"]["topk"] == 3  # Search-R1's top-3
    # BrowserAgent's RFT: 4 samples at temperature 1, partly solved questions, the longest trajectory per question
    assert (rft["samples"], rft["policy_args"]["temperature"]) == (4, 1.0)
    assert rft["filter"]["max_solve_rate"] < 1 and rft["filter"]["max_per_task"] == 1
    assert rft["filter"]["prefer"] == "longest" and stages["filter"]["prefer"] == "longest"
    assert rft["environment_args"]["verify"] == "em" and rft["model"] == f"${{stages.{name['sft']}}}"
    assert stages["filter"]["max_tokens"] == stages["sft"]["max_length"]
    # every environment_args key is one the search environment takes
    import inspect

    takes = inspect.signature(SearchEnvironment).parameters
    for block in (collect, rft, ev):
        assert set(block["environment_args"]) <= set(takes), block["environment_args"]
