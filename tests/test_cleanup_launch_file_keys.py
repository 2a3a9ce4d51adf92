"""A DeepSpeed or accelerate config given as a file enters the training stages' keys by its content, not its
path: an edited file starts a new run instead of resuming checkpoints made under the old settings; a shipped
config by name (zero2, multi_gpu) stays text (swepost's code covers it)."""

from __future__ import annotations

import shutil

from swepost.config import file_inputs, input_fields
from swepost.stages.rl import RlConfig
from swepost.stages.rl import work_key as rl_key
from swepost.stages.sft import SftConfig
from swepost.stages.sft import work_key as sft_key


def test_file_inputs_are_files_not_shipped_names(tmp_path):
    for model in (SftConfig, RlConfig):
        assert set(input_fields(model, "file_or_name")) == {"deepspeed", "accelerate_config"}
        assert input_fields(model, "file") == []  # a recipe that knows plain files only keeps these as text
        assert file_inputs(model, {"deepspeed": "zero3", "accelerate_config": "multi_gpu"}) == []
        assert file_inputs(model, {"deepspeed": None, "accelerate_config": str(tmp_path / "a.yaml")}) == [
            "accelerate_config"]
        assert file_inputs(model, {"deepspeed": "ds.json", "accelerate_config": "fsdp"}) == ["deepspeed"]


def test_editing_a_launch_config_file_changes_the_work_keys(tmp_path):
    accel, ds = tmp_path / "accelerate.yaml", tmp_path / "ds.json"
    accel.write_text("distributed_type: MULTI_GPU\nnum_processes: 2\n")
    ds.write_text('{"zero_optimization": {"stage": 2}}\n')
    memo = tmp_path / "memo"

    def keys(accelerate_config=str(accel), deepspeed=str(ds)):
        settings = {"launch": "accelerate", "accelerate_config": accelerate_config, "deepspeed": deepspeed}
        return (sft_key(SftConfig(data="d", model="m", **settings), "d@1", "m", memo),
                rl_key(RlConfig(tasks="t", model="m", **settings), "t@1", "m", memo))

    before = keys()
    assert keys() == before  # nothing edited: the same work folders (a run resumes)
    accel.write_text("distributed_type: MULTI_GPU\nnum_processes: 4\n")
    edited = keys()
    assert edited[0] != before[0] and edited[1] != before[1]
    ds.write_text('{"zero_optimization": {"stage": 2}, "gradient_clipping": 0.5}\n')
    assert all(a != b for a, b in zip(keys(), edited, strict=True))
    # by content: the same file elsewhere is the same run
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(accel, moved / "a.yaml")
    shutil.copy(ds, moved / "d.json")
    assert keys(str(moved / "a.yaml"), str(moved / "d.json")) == keys()
    # shipped names are keyed as text; a different name is a different run
    assert keys("multi_gpu", "zero2") == keys("multi_gpu", "zero2") != keys("zero2", None)
