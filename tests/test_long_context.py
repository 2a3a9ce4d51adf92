"""Long context as the published recipe ran it (issue 12): the hard-task subset from a first phase's attempts
(`tasks-select`), RoPE scaling written into the model for the run, and the checks that refuse settings that
cannot fit (prompt + completion over the context, a colocated vLLM share too small for the model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swepost.artifacts import producer_record
from swepost.errors import BadInput
from swepost.records import Trajectory
from swepost.stages.rl import RlConfig
from swepost.train.context import check_colocate_memory, fit_context, model_context, rope_scaled_model

REPO = Path(__file__).resolve().parents[1]
IDS = ["swepost__minicalc-1", "swepost__minicalc-2", "swepost__minicalc-3", "swepost__minicalc-4"]

# Qwen2.5-7B-Instruct's shape (its config.json, less the fields that do not matter here): no weights are needed
QWEN25_7B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
             "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
             "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768,
             "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}


def _rollout_rows(spec: dict[str, tuple[int, int, int]]) -> list[dict]:
    """Rows as `rl` writes them: per task (solved, unsolved, ungraded) attempts."""
    rows = []
    for iid, (solved, unsolved, ungraded) in spec.items():
        kinds = [("RESOLVED_FULL", 1.0, None)] * solved + [("RESOLVED_NO", 0.0, None)] * unsolved + \
                [("UNGRADED", None, "ungraded")] * ungraded
        for k, (resolved, reward, masked) in enumerate(kinds):
            rows.append({"step": 1 + k // 8, "process": 0, "group": 0, "sample": k % 8, "instance_id": iid,
                         "reward": reward, "resolved": resolved, "exit_status": "submitted", "masked": masked})
    return rows


@pytest.fixture
def phase_one(swepost, store):
    """The bundled tasks, and a stand-in for a phase-1 rl checkpoint: its rollouts.jsonl only."""
    swepost("tasks", "import", REPO / "data" / "minicalc_tasks.jsonl", "--name", "all", check=0)
    rows = _rollout_rows({IDS[0]: (8, 0, 0), IDS[1]: (2, 6, 0), IDS[2]: (0, 8, 5), IDS[3]: (0, 0, 6)})
    with store.write("phase1", "checkpoint", producer=producer_record("test", {})) as w:
        (w.path / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return store


def test_select_keeps_what_phase_one_found_hard_and_ignores_ungraded_attempts(swepost, phase_one):
    r = swepost("tasks", "select", "all", "--attempts", "phase1", "--max-solve-rate", "0.5", "--set",
                "min_attempts=8", "--name", "hard", "--json", check=0)
    art = phase_one.resolve(json.loads(r.stdout)["id"])
    kept = [json.loads(line)["instance_id"] for line in (art.path / "tasks.jsonl").read_text().splitlines()]
    # 1: always solved (too easy); 2: 2/8; 3: 0/8 (its 5 ungraded attempts are no evidence); 4: only ungraded
    # attempts (unseen, kept); the other bundled tasks were never drawn (unseen, kept)
    assert IDS[0] not in kept and IDS[1] in kept and IDS[2] in kept and IDS[3] in kept
    assert art.stats["decisions"]["too_easy"] == 1 and art.stats["ungraded_attempts"] == 11
    assert set(art.parents) == {phase_one.resolve("all").id, phase_one.resolve("phase1").id}

    r = swepost("tasks", "select", "all", "--attempts", "phase1", "--min-solve-rate", "0.1", "--set",
                "unseen=drop", "--name", "learnable", "--json", check=0)
    art = phase_one.resolve(json.loads(r.stdout)["id"])
    assert [json.loads(line)["instance_id"] for line in (art.path / "tasks.jsonl").read_text().splitlines()] == \
        [IDS[1]]  # solved sometimes, not always: the only task with signal at a 0/1 reward


def test_select_reads_trajectories_and_refuses_bad_settings(swepost, phase_one, tmp_path):
    trajectories = [Trajectory(episode_id=f"{iid}#{k}", instance_id=iid, sample=k, exit_status=status,
                               resolved=resolved, reward=1.0 if resolved == "RESOLVED_FULL" else 0.0)
                    for k, (iid, status, resolved) in enumerate([
                        (IDS[0], "submitted", "RESOLVED_FULL"), (IDS[1], "submitted", "RESOLVED_NO"),
                        (IDS[1], "policy_error", None), (IDS[2], "deadline", None)])]
    with phase_one.write("ev", "eval", producer=producer_record("test", {})) as w:
        (w.path / "trajectories.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in trajectories))
    r = swepost("tasks", "select", "all", "--attempts", "ev", "--max-solve-rate", "0", "--set", "unseen=drop",
                "--json", check=0)
    art = phase_one.resolve(json.loads(r.stdout)["id"])
    assert [json.loads(x)["instance_id"] for x in (art.path / "tasks.jsonl").read_text().splitlines()] == [IDS[1]]
    assert art.stats["ungraded_attempts"] == 2  # the policy error and the episode cut at a deadline

    r = swepost("tasks", "select", "all", "--attempts", "ev", "--min-solve-rate", "0.9", "--max-solve-rate", "0.2",
                check=2)
    assert "min_solve_rate" in r.stderr
    r = swepost("tasks", "select", "all", "--attempts", "all", check=2)  # a tasks artifact holds no attempts
    assert "rollouts.jsonl or trajectories.jsonl" in r.stderr
    r = swepost("tasks", "select", "all", "--attempts", "phase1", "--max-solve-rate", "0", "--set", "unseen=drop",
                "--set", "min_attempts=100", check=2)  # nothing left: refused, no empty task set
    assert "no task" in r.stderr


def _long_rl_config(model: str, **overrides) -> RlConfig:
    from swepost import recipes

    stage = next(s for s in recipes.load_recipe(REPO / "recipes" / "swe-bugfix-long.yaml").recipe.stages
                 if s.stage == "rl")
    data = {**stage.config, "tasks": "t", "model": model, "repos": None, **overrides}
    return RlConfig(**{k: v for k, v in data.items() if v is not None or k in overrides})


def test_the_long_recipe_fits_a_qwen25_7b_at_131k_only_with_its_yarn_setting(tmp_path):
    model = tmp_path / "qwen25-7b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(QWEN25_7B))
    cfg = _long_rl_config(str(model))
    assert model_context(cfg.model_copy(update={"vllm_max_model_length": None}), str(model))[0] == 131072
    fitted = fit_context(cfg, str(model))
    assert (fitted.max_prompt_tokens, fitted.max_completion_tokens, fitted.max_turn_tokens) == (8192, 122880, 8192)
    assert fitted.max_turns == 80

    # the same budgets without the rope scaling: the model's own 32k window cannot hold them
    with pytest.raises(BadInput, match="32768"):
        fit_context(cfg.model_copy(update={"rope_scaling": None, "vllm_max_model_length": None}), str(model))
    # vLLM's length must hold the longest episode
    with pytest.raises(BadInput, match="vllm_max_model_length"):
        fit_context(cfg.model_copy(update={"vllm_max_model_length": 65536, "max_model_len": 131072}), str(model))

    # memory: on a 141 GB H200 the recipe's 0.3 share holds 7B bf16 weights and one 131k-token KV cache ...
    figures = check_colocate_memory(fitted.model_copy(update={"gpu_memory_gb": 131.0}), str(model))
    assert 13.5 < figures["weights_gb"] < 15 and 6.5 < figures["kv_one_sequence_gb"] < 7.5
    # ... a 0.15 share of an 80 GB GPU does not: refused before any GPU is touched, the setting named
    with pytest.raises(BadInput, match="vllm_gpu_memory_utilization"):
        check_colocate_memory(fitted.model_copy(update={"gpu_memory_gb": 79.6, "vllm_gpu_memory_utilization": 0.15}),
                              str(model))
    # tensor parallelism splits weights and cache over the group (vllm_server: no colocate share to check)
    assert check_colocate_memory(fitted.model_copy(update={"generation": "vllm_server", "gpu_memory_gb": 10}),
                                 str(model)) is None


def test_rope_scaling_is_checked_when_the_config_is_read():
    for bad, words in (({"rope_type": "ntk-magic", "factor": 4.0}, "rope_type"),
                       ({"rope_type": "yarn", "factor": 0.5}, "factor"),
                       ({"type": "yarn", "factor": 4, "original_max_position_embeddings": "32k"}, "original")):
        with pytest.raises(ValueError, match=words):
            RlConfig(tasks="t", model="m", rope_scaling=bad)
    # the older `type` spelling is accepted and written as rope_type
    assert RlConfig(tasks="t", model="m", rope_scaling={"type": "yarn", "factor": 4}).rope_scaling == \
        {"rope_type": "yarn", "factor": 4}


def test_a_rope_scaled_model_folder_loads_with_yarn_and_leaves_the_original_alone(tmp_path):
    from transformers import AutoModelForCausalLM

    from swepost.train.tiny_model import build_tiny_model

    build_tiny_model(tmp_path / "tiny")
    original = (tmp_path / "tiny" / "config.json").read_text()
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}
    folder = rope_scaled_model(str(tmp_path / "tiny"), rope, tmp_path / "work" / "model-rope")
    assert (tmp_path / "tiny" / "config.json").read_text() == original
    assert rope_scaled_model(str(tmp_path / "tiny"), rope, tmp_path / "work" / "model-rope") == folder  # reused
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.model.rotary_emb.rope_type == "yarn" and model.model.rotary_emb.attention_scaling > 1
    cfg = RlConfig(tasks="t", model=folder, rope_scaling=rope)
    assert model_context(cfg, folder) == (16384, "rope_scaling (yarn x4 of 4096)")


def test_rl_trains_and_saves_with_the_rope_scaling_it_was_given(swepost, store, tmp_path):
    """A real (sandbox-free) GRPO step on the tiny model with YaRN x2: the checkpoint carries the setting, so
    whatever serves it next uses the context it was trained at."""
    from tests.rl_helpers import import_echo_tasks

    tiny = import_echo_tasks(swepost, tmp_path, ["mixed-a", "mixed-b"])
    r = swepost("rl", "echo", "--model", tiny, "--max-steps", "1", "--tasks-per-step", "2", "-G", "2",
                "--set", "environment=tests.rl_helpers:EchoEnvironment",
                "--set", "reward=tests.rl_helpers:alternating_reward", "--set", "max_turns=1",
                "--set", "max_completion_tokens=16", "--set", "truncated=keep", "--set", "gradient_checkpointing=false",
                "--set", "rope_scaling={rope_type: yarn, factor: 2.0}", "--json", check=0)
    art = store.resolve(json.loads(r.stdout)["id"])
    saved = json.loads((art.path / "model" / "config.json").read_text())
    rope = saved.get("rope_parameters") or saved.get("rope_scaling")
    assert rope["rope_type"] == "yarn" and rope["factor"] == 2.0
    assert not (art.path / "model" / "config.json").is_symlink()
    assert all(not p.is_symlink() for p in (art.path / "model").iterdir())  # real files, not links into work/
