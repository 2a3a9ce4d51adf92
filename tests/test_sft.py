"""`swepost sft` on CPU with the tiny model: loss falls, the loss mask token by token, LoRA, kill -9 and resume,
the CLI, and the `accelerate launch` command for multi-GPU runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import pytest  # noqa: E402

from swepost.artifacts import producer_record  # noqa: E402
from swepost.errors import BadInput  # noqa: E402
from swepost.stages.sft import SftConfig, run_sft  # noqa: E402
from swepost.train.launch import launch_command, machine_rank  # noqa: E402

pytestmark = pytest.mark.slow

TOOLS = [
    {"type": "function", "function": {
        "name": "bash", "description": "Run a shell command.",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}},
    {"type": "function", "function": {
        "name": "edit", "description": "Replace text in a file.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "old": {"type": "string"},
                                                        "new": {"type": "string"}},
                       "required": ["path", "old", "new"]}}},
]
EXCLUDED_MARK = "EXCLUDED_TURN.py"  # the tool call of the one assistant turn marked "train": false


def _call(name: str, **arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _conversations() -> list[dict]:
    rows = []
    for i in range(8):
        # different tools have different argument keys: they must reach the template verbatim (no null filling)
        call = _call("bash", command=f"pytest -q tests/test_core.py::test_{i}") if i % 2 else \
            _call("edit", path=f"src/app/core_{i}.py", old="return self.value", new=f"return self.value or {i}")
        first = {"role": "assistant", "content": "", "tool_calls": [call]}
        if i == 3:
            first = {"role": "assistant", "content": "",
                     "tool_calls": [_call("edit", path=EXCLUDED_MARK, old="a", new="b")], "train": False}
        rows.append({
            "messages": [
                {"role": "system", "content": "You are a software engineer. Fix the issue."},
                {"role": "user", "content": f"Issue {i}: the parser returns the wrong value when input is empty."},
                first,
                {"role": "tool", "name": call["function"]["name"], "content": f"{i} passed, 0 failed in 0.0{i}s"},
                {"role": "assistant", "content": f"Fixed: the test passes now ({i})."},
            ],
            "tools": TOOLS, "instance_id": f"app__app-{i}", "episode_id": f"app__app-{i}#0",
        })
    return rows


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from swepost.train.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(out)
    return out


@pytest.fixture
def data(store) -> str:
    with store.write("data", "sft-data", producer=producer_record("test", {})) as w:
        (w.path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _conversations()))
    return w.artifact.id


@pytest.fixture
def tiny(store, tiny_dir) -> str:
    with store.write("tiny", "checkpoint", producer=producer_record("test", {})) as w:
        shutil.copytree(tiny_dir, w.path / "model")
    return w.artifact.id


def _subprocess_env(home: Path) -> dict:
    return {**os.environ, "SWEPOST_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}


# (a) --------------------------------------------------------------------------------------------------------

def test_loss_falls_and_full_model_is_published(store, data, tiny):
    art = run_sft(SftConfig(data=data, model=tiny, max_steps=30, learning_rate=5e-3, max_length=1024,
                            save_steps=1000), store)
    s = art.stats
    assert s["steps"] == 30 and s["examples"] == 8 and s["excluded_turns"] == 1
    assert s["last_loss"] < 0.6 * s["first_loss"], s
    assert s["tokens"] > 0 and s["trained_tokens"] < s["dataset_tokens"]
    assert (art.path / "model" / "model.safetensors").is_file()
    assert (art.path / "model" / "tokenizer.json").is_file()
    assert not (art.path / "model" / "adapter_config.json").exists()
    assert set(art.parents) == {data, tiny}
    assert not list((store.root / "work").glob("sft-*"))  # the work folder goes once published
    # the saved tokenizer keeps the model's own chat template (TRL's training copy is only for tokenizing)
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(art.path / "model").chat_template
    assert saved == AutoTokenizer.from_pretrained(store.resolve(tiny).path / "model").chat_template
    assert "{% generation %}" not in saved


# (b) --------------------------------------------------------------------------------------------------------

def _segments(ids: list[int], tok) -> list[tuple[str, int, int]]:
    """(role, start, end) of each `<|im_start|>ROLE\\n ... <|im_end|>\\n` block, found from the tokens alone."""
    start_id = tok.convert_tokens_to_ids("<|im_start|>")
    starts = [i for i, t in enumerate(ids) if t == start_id] + [len(ids)]
    out = []
    for a, b in zip(starts, starts[1:], strict=False):
        role = tok.decode(ids[a + 1: b]).split("\n")[0]
        out.append((role, a, b))
    return out


@pytest.mark.parametrize("packing", [True, False])
def test_labels_cover_exactly_the_trained_assistant_turns(store, data, tiny, tmp_path, packing):
    from transformers import AutoTokenizer

    from swepost.train.sft import build_trainer

    tok = AutoTokenizer.from_pretrained(store.resolve(tiny).path / "model")
    trainer, stats = build_trainer(store.resolve(data).path / "train.jsonl", str(store.resolve(tiny).path / "model"),
                                   tmp_path / "work", SftConfig(data=data, model=tiny, packing=packing, batch_size=8))
    assert stats["examples"] == 8 and stats["excluded_turns"] == 1
    batch = next(iter(trainer.get_train_dataloader()))
    documents = []  # (input_ids, labels) of each conversation in the collated batch
    if packing:  # one padding-free row; position_ids restart at every conversation
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        pos = batch["position_ids"][0].tolist()
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(ids)]
        documents = [(ids[a:b], labels[a:b]) for a, b in zip(starts, starts[1:], strict=False)]
    else:  # right-padded rows
        for ids, labels, mask in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                                     batch["attention_mask"].tolist(), strict=True):
            n = sum(mask)
            assert all(x == -100 for x in labels[n:])
            documents.append((ids[:n], labels[:n]))
    assert len(documents) == 8
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    seen_excluded = 0
    for d_ids, d_labels in documents:
        text = tok.decode(d_ids)
        excluded_doc = EXCLUDED_MARK in text
        assistant_turns = 0
        for role, s, e in _segments(d_ids, tok):
            seg_labels = d_labels[s:e]
            if role != "assistant":
                assert all(x == -100 for x in seg_labels), f"{role} tokens labelled: {tok.decode(d_ids[s:e])!r}"
                continue
            assistant_turns += 1
            trained = [i for i in range(s, e) if d_labels[i] != -100]
            body = tok.decode(d_ids[s:e])
            if excluded_doc and EXCLUDED_MARK in body:
                assert not trained, f"the train: false turn is labelled: {body!r}"
                seen_excluded += 1
                continue
            assert trained, f"assistant turn without labels: {body!r}"
            assert all(d_labels[i] == d_ids[i] for i in trained)
            # contiguous, from just after the `<|im_start|>assistant` header through `<|im_end|>` (and its newline)
            assert trained == list(range(trained[0], e))
            assert tok.decode(d_ids[s:trained[0]]) == "<|im_start|>assistant"
            assert im_end in [d_ids[i] for i in trained]
            assert tok.decode([d_ids[i] for i in trained]).endswith("<|im_end|>\n")
        assert assistant_turns == 2
        # tool calls are trained as the template renders them, arguments verbatim (no null-filled keys)
        assert "null" not in text
    assert seen_excluded == 1


# (c) --------------------------------------------------------------------------------------------------------

def test_lora_adapter_is_saved_reloads_and_changes_outputs(store, data, tiny):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    art = run_sft(SftConfig(data=data, model=tiny, lora=True, lora_r=8, lora_alpha=16, max_steps=10,
                            learning_rate=5e-3, max_length=1024, save_steps=1000), store)
    folder = art.path / "model"
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    assert not (folder / "model.safetensors").exists()
    base_info = json.loads((folder / "adapter_base.json").read_text())
    assert base_info["base_artifact"] == tiny and base_info["base_model"] == tiny
    assert set(art.parents) == {data, tiny} and art.stats["lora"] is True

    base = AutoModelForCausalLM.from_pretrained(store.resolve(tiny).path / "model")
    ids = torch.tensor([list(range(5, 40))])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, folder)
        after = tuned(input_ids=ids).logits
    assert not torch.allclose(before, after, atol=1e-4)


# (d) --------------------------------------------------------------------------------------------------------

_SLOW_RUN = """
import sys, time
from transformers import TrainerCallback
import swepost.train.sft as sft
from swepost.artifacts import ArtifactStore
from swepost.stages.sft import SftConfig, run_sft

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        time.sleep(0.3)

build = sft.build_trainer
def slow_build(*a, **k):
    trainer, stats = build(*a, **k)
    trainer.add_callback(Slow())
    return trainer, stats
sft.build_trainer = slow_build
art = run_sft(SftConfig.model_validate_json(sys.argv[1]), ArtifactStore())
print(art.id)
"""


def test_killed_run_resumes_from_its_last_checkpoint(store, data, tiny, home):
    cfg = SftConfig(data=data, model=tiny, max_steps=30, save_steps=5, learning_rate=5e-3, max_length=1024)
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, cfg.model_dump_json()], env=_subprocess_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 45
        while not list((home / "work").glob("sft-*/checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 45 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not list((home / "artifacts").glob("sft/*"))  # nothing published by the killed run
    state = json.loads(next((home / "work").glob("sft-*/checkpoint-*/trainer_state.json")).read_text())
    assert 0 < state["global_step"] < 30

    r = subprocess.run([sys.executable, "-c", _SLOW_RUN.replace("time.sleep(0.3)", "pass"), cfg.model_dump_json()],
                       env=_subprocess_env(home), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sft: resuming from checkpoint-" in r.stderr
    art = store.resolve(r.stdout.strip().splitlines()[-1])
    assert art.stats["resumed_from_step"] >= 5 and art.stats["steps"] == 30
    assert [a.id for a in store.all() if a.kind == "checkpoint" and a.name == "sft"] == [art.id]
    assert not list((home / "work").glob("sft-*"))


# (e) --------------------------------------------------------------------------------------------------------

def _cli_argv() -> list[str]:
    """`python -m swepost` once `sft` is wired into the CLI; until then a one-command app around sft_cmd."""
    from swepost.cli import app
    from swepost.cli.sft import sft_cmd

    if any(c.callback is sft_cmd for c in app.registered_commands):
        return [sys.executable, "-m", "swepost", "sft"]
    return [sys.executable, "-c", "import typer; from swepost.cli.sft import sft_cmd; "
            "app = typer.Typer(); app.command()(sft_cmd); app()"]


def test_cli_publishes_a_checkpoint_with_data_and_base_as_parents(store, data, tiny, home):
    r = subprocess.run([*_cli_argv(), data, "--model", tiny, "--max-steps", "3", "--name", "cli-sft", "--json",
                        "--set", "max_length=1024"],
                       env=_subprocess_env(home), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)  # stdout is the one JSON object: the trainer's logs went to stderr
    art = store.resolve(out["id"])
    assert art.kind == "checkpoint" and art.name == "cli-sft" and out["stats"]["steps"] == 3
    assert set(art.parents) == {data, tiny}
    lineage = store.lineage(art)
    assert {p["artifact"].id for p in lineage["parents"]} == {data, tiny}


def test_bad_inputs_are_reported_before_training(store, data, tiny, tiny_dir):
    with pytest.raises(BadInput, match="not sft-data"):
        run_sft(SftConfig(data=tiny, model=tiny), store)
    with pytest.raises(BadInput, match="not a checkpoint"):
        run_sft(SftConfig(data=data, model=data), store)
    with pytest.raises(BadInput, match="deepspeed"):
        run_sft(SftConfig(data=data, model=tiny, deepspeed="zero9"), store)
    with store.write("empty", "sft-data", producer=producer_record("test", {})) as w:
        rows = _conversations()[:1]
        rows[0]["messages"][2]["train"] = False
        rows[0]["messages"][4]["train"] = False
        (w.path / "train.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(BadInput, match="no.*assistant token to train on|has an assistant token"):
        run_sft(SftConfig(data=w.artifact.id, model=str(tiny_dir)), store)


# (f) --------------------------------------------------------------------------------------------------------

def test_accelerate_launch_command(tmp_path):
    from swepost.train.launch import CONFIGS

    cfg = SftConfig(data="d", model="m", launch="accelerate", accelerate_config="zero3", num_processes=16,
                    launch_args=["--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.1"])
    cmd = launch_command(cfg, tmp_path / "c.json")
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[3:5] == ["--config_file", str(CONFIGS / "accelerate" / "zero3.yaml")]
    assert cmd[5:7] == ["--num_processes", "16"]
    assert cmd[7:13] == ["--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.1"]
    assert cmd[13:] == ["-m", "swepost.train.entry", "sft", str(tmp_path / "c.json")]
    assert machine_rank(cfg.launch_args) == 1 and machine_rank(["--machine-rank=3"]) == 0 + 3
    assert machine_rank([]) == 0

    custom = tmp_path / "mine.yaml"
    custom.write_text("distributed_type: MULTI_GPU\n")
    cmd = launch_command(SftConfig(data="d", model="m", launch="accelerate", accelerate_config=str(custom)),
                         tmp_path / "c.json")
    assert cmd[3:5] == ["--config_file", str(custom.resolve())] and "--num_processes" not in cmd
    with pytest.raises(BadInput, match="accelerate config"):
        launch_command(SftConfig(data="d", model="m", accelerate_config="nope"), tmp_path / "c.json")


def test_shipped_configs_and_cli_multi_node_flags():
    import yaml
    from typer.testing import CliRunner

    from swepost.train.launch import ACCELERATE_CONFIGS, CONFIGS, DEEPSPEED_CONFIGS, deepspeed_config_path

    for name in ACCELERATE_CONFIGS:
        assert "distributed_type" in yaml.safe_load((CONFIGS / "accelerate" / f"{name}.yaml").read_text())
    for name in DEEPSPEED_CONFIGS:
        ds = json.loads(Path(deepspeed_config_path(name)).read_text())
        assert ds["zero_optimization"]["stage"] == int(name[-1]) and ds["train_micro_batch_size_per_gpu"] == "auto"

    import typer

    from swepost.cli.sft import sft_cmd

    app = typer.Typer()
    app.command()(sft_cmd)
    r = CliRunner().invoke(app, ["d", "--model", "m", "--launch", "accelerate", "--accelerate-config", "zero3",
                                 "--num-processes", "16", "--num-machines", "2", "--machine-rank", "1",
                                 "--main-process-ip", "10.0.0.1", "--set", "launch_args=[--max_restarts, '0']",
                                 "--print-config"])
    assert r.exit_code == 0, r.output
    printed = yaml.safe_load(r.output)
    assert printed["launch"] == "accelerate" and printed["accelerate_config"] == "zero3"
    assert printed["num_processes"] == 16
    assert printed["launch_args"] == ["--max_restarts", "0", "--num_machines", "2", "--machine_rank", "1",
                                      "--main_process_ip", "10.0.0.1"]


# (e) --------------------------------------------------------------------------------------------------------

def test_two_cpu_processes_through_accelerate_train_one_model_and_merge_lora(store, data, tiny):
    """Issue 12 must-show: `accelerate launch` with two processes (accelerate_config cpu: gloo on CPU, a real
    distributed run). Each process trains on its own half of the conversations: every one is seen exactly once
    over both (the gathered token count is the dataset's); one artifact is published; the LoRA adapter is
    merged from the gathered weights into full, non-empty tensors."""
    import torch
    from transformers import AutoModelForCausalLM

    start = time.monotonic()
    art = run_sft(SftConfig(data=data, model=tiny, lora=True, lora_merge=True, lora_r=8, lora_alpha=16,
                            epochs=1, learning_rate=5e-2, max_length=1024, packing=False, batch_size=1,
                            save_steps=1000, launch="accelerate", accelerate_config="cpu", num_processes=2), store)
    s = art.stats
    assert s["world_size"] == 2 and s["steps"] == 8 // 2, s  # 8 conversations, one per process per step
    assert s["tokens"] == s["dataset_tokens"], s  # gathered over both processes: each conversation once
    assert s["merged"] is True and s["first_loss"] is not None
    assert [a.id for a in store.all() if a.kind == "checkpoint"] == [tiny, art.id]
    assert not list((store.root / "work").glob("sft-*"))

    folder = art.path / "model"
    assert (folder / "model.safetensors").is_file() and not (folder / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    base = AutoModelForCausalLM.from_pretrained(store.resolve(tiny).path / "model").state_dict()
    assert merged.keys() == base.keys()
    assert all(merged[k].shape == base[k].shape and merged[k].numel() > 0 for k in base)
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    # LoRA (all-linear) moves the projections of the layers and nothing else
    assert changed and all(k.endswith("proj.weight") for k in changed), sorted(changed)
    assert time.monotonic() - start < 180
