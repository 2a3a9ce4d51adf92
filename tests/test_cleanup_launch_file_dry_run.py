"""A recipe's DeepSpeed / accelerate config file enters the stage's cache key by its content: edited, the stage
reruns and `--dry-run` names the file; a shipped config by name is kept as text and needs no file."""

from __future__ import annotations

import shutil

from test_cache_key import plan, ran_before

RECIPE = """\
name: lk
model: org/not-downloaded
stages:
  - name: tasks
    stage: tasks-import
    config: {source: data/swe_tiny.jsonl}
  - name: rl
    stage: rl
    config:
      tasks: ${stages.tasks}
      model: ${model}
      backend: local
      launch: accelerate
      accelerate_config: launch/accelerate.yaml
      deepspeed: zero2
"""


def test_editing_the_accelerate_config_file_reruns_the_stage_naming_it(tmp_path, repo_root, store, swepost):
    (tmp_path / "data").mkdir()
    (tmp_path / "launch").mkdir()
    shutil.copy(repo_root / "data" / "swe_tiny.jsonl", tmp_path / "data" / "swe_tiny.jsonl")
    accel = tmp_path / "launch" / "accelerate.yaml"
    accel.write_text("distributed_type: MULTI_GPU\nnum_processes: 2\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    ran_before(recipe, store)
    assert {s["action"] for s in plan(swepost, recipe).values()} == {"reuse"}  # nothing edited

    accel.write_text("distributed_type: MULTI_GPU\nnum_processes: 4\n")
    steps = plan(swepost, recipe)
    assert steps["tasks"]["action"] == "reuse" and steps["rl"]["action"] == "run"
    assert steps["rl"]["reasons"] == [f"file accelerate_config {accel} changed"]
    r = swepost("run", str(recipe), "--dry-run")
    assert f"reruns: file accelerate_config {accel} changed" in r.stdout, r.stdout

    # a shipped config by name: no file to read, its name is the config text
    steps = plan(swepost, recipe, "stages.rl.accelerate_config=multi_gpu")
    assert steps["rl"]["reasons"] == [f"file accelerate_config {accel} changed",
                                      "config accelerate_config changed (unset → \"multi_gpu\")"], steps["rl"]
