"""`swepost rl` end to end on CPU with TRL's GRPOTrainer.

With docker (the must-show): a tiny model taught by SFT to either fix swepost__minicalc-3 with one `sed` or
submit at once trains for a few steps on two bundled tasks; rewards come from the hidden tests run in fresh
sandboxes, tool results carry no loss, zero-variance groups are dropped and counted, the checkpoint loads,
and a run killed after a checkpoint resumes. Without docker: dynamic sampling (drop, resample) and a pluggable
reward on a sandbox-free environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swepost.artifacts import ArtifactStore, producer_record
from tests.rl_helpers import import_echo_tasks

REPO = Path(__file__).resolve().parents[1]
FIX = {"swepost__minicalc-3": [
    {"tool_calls": [{"name": "bash", "arguments": {
        "command": "sed -i 's/kept.strip().split(\" \")/kept.split()/' minicalc/text.py"}}]},
    {"tool_calls": [{"name": "submit", "arguments": {}}]}]}
LAZY = [{"tool_calls": [{"name": "submit", "arguments": {}}]}]
RL_ARGS = ["--max-steps", "3", "--tasks-per-step", "2", "-G", "4", "--backend", "docker",
           "--set", "max_turns=3", "--set", "max_completion_tokens=256", "--set", "learning_rate=1e-3",
           "--set", "temperature=0.5", "--set", "gradient_checkpointing=false", "--set", "save_steps=1"]


def cli(home: Path, *args, check: int | None = 0, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SWEPOST_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "swepost", *map(str, args)], env=env, cwd=REPO, text=True,
                       capture_output=True, timeout=timeout)
    if check is not None:
        assert r.returncode == check, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    return r


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def subset(tmp: Path, name: str, ids: list[str]) -> Path:
    out = tmp / f"{name}.jsonl"
    rows = [r for r in rows_of(REPO / "data" / "minicalc_tasks.jsonl") if r["instance_id"] in ids]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.fixture(scope="module")
def taught(tmp_path_factory, base_image):
    """(home, tasks id, model id): the tiny model after SFT on two real episodes of swepost__minicalc-3, one
    that fixes it (bash sed, submit) and one that submits at once: its samples do either."""
    tmp = tmp_path_factory.mktemp("rl")
    home = tmp / "home"
    repos = REPO / "data" / "repos"
    (tmp / "fix.json").write_text(json.dumps(FIX))
    (tmp / "lazy.json").write_text(json.dumps(LAZY))
    cli(home, "tasks", "import", subset(tmp, "one", ["swepost__minicalc-3"]), "--name", "one")
    two = json.loads(cli(home, "tasks", "import", subset(tmp, "two", ["swepost__minicalc-3", "swepost__minicalc-4"]),
                         "--name", "two", "--json").stdout)["id"]
    for name, script, extra in (("fix", tmp / "fix.json", ["--set", "policy_args.per_task=true"]),
                                ("lazy", tmp / "lazy.json", [])):
        cli(home, "collect", "one", "--policy", "scripted", "--set", f"policy_args.path={script}", *extra,
            "--repos", repos, "--backend", "docker", "--name", name)
        cli(home, "filter", name, "--name", f"{name}-data", "--set", "require_resolved=false")
    store = ArtifactStore(home)
    with store.write("mix", "sft-data", producer=producer_record("test", {}),
                     parents=[store.resolve("fix-data").id, store.resolve("lazy-data").id]) as w:
        (w.path / "train.jsonl").write_text("".join(
            (store.resolve(f"{n}-data").path / "train.jsonl").read_text() for n in ("fix", "lazy")))
    cli(home, "model", "tiny", "--name", "tiny")
    model = json.loads(cli(home, "sft", "mix", "--model", "tiny", "--max-steps", "100", "--learning-rate", "5e-3",
                           "--set", "batch_size=2", "--set", "max_length=4096", "--name", "taught",
                           "--json", timeout=600).stdout)["id"]  # 100 steps: minutes on 2 busy cores
    return home, two, model


@pytest.mark.docker
def test_rl_trains_on_rewards_from_real_test_runs(taught):
    home, tasks, model = taught
    out = json.loads(cli(home, "rl", tasks, "--model", model, "--repos", REPO / "data" / "repos", *RL_ARGS,
                         "--json").stdout)
    store = ArtifactStore(home)
    art = store.resolve(out["id"])
    assert art.kind == "checkpoint" and set(art.manifest["parents"]) == {tasks, model}

    rows = rows_of(art.path / "rollouts.jsonl")
    assert len(rows) == 3 * 2 * 4 and {r["step"] for r in rows} == {1, 2, 3}
    trajectories = {(n, json.loads(line)["episode_id"]): json.loads(line)
                    for n in (1, 2, 3)
                    for line in (art.path / "trajectories" / f"step-{n:06d}.jsonl").read_text().splitlines()}
    assert len(trajectories) == len(rows) // 2 * 2  # one trajectory per rollout (episode ids repeat per group)
    for (_, _), t in trajectories.items():  # every reward is the verdict of the task's hidden tests
        assert t["reward"] in (0.0, 1.0) and t["evidence"]["tests"], (t["episode_id"], t["evidence"].get("reason"))
        f2p = [k for k in t["evidence"]["tests"] if k.startswith(("tests/test_text.py::test_slug[",
                                                                    "tests/test_dates.py::"))]
        assert f2p and (t["resolved"] == "RESOLVED_FULL") == (t["reward"] == 1.0)
    assert any(t["reward"] == 1.0 for t in trajectories.values())  # the sed fix is among the samples

    # dynamic sampling: a group whose rewards are all equal is dropped, every one of its rollouts masked
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["step"], r["group"]), []).append(r)
    flat = [g for g, rs in groups.items() if len({r["reward"] for r in rs}) == 1]
    assert flat, "swepost__minicalc-4 cannot be fixed by the taught sed: its groups are all 0"
    for g, rs in groups.items():
        assert all(r["group_dropped"] == (g in flat) for r in rs)
        if g in flat:
            assert all(r["masked"] is not None for r in rs)
    stats = art.stats
    assert stats["dropped_groups"] == len(flat)
    history = json.loads((art.path / "log_history.json").read_text())
    logged = [e["rl/dropped_groups"] for e in history if "rl/dropped_groups" in e]
    assert sum(logged) == len(flat) and all("time/generation" in e for e in history if "rl/dropped_groups" in e)
    # truncated episodes (out of turns or tokens) never carry loss
    for r in rows:
        if r["exit_status"] in ("max_turns", "context_overflow"):
            assert r["masked"] is not None
        assert 0 < r["model_tokens"] <= r["completion_tokens"]

    # the checkpoint loads; it moved away from the start exactly when some group carried a signal
    import torch
    from transformers import AutoModelForCausalLM

    after = AutoModelForCausalLM.from_pretrained(art.path / "model")
    before = AutoModelForCausalLM.from_pretrained(store.resolve(model).path / "model")
    changed = any(not torch.equal(a, b) for a, b in zip(after.state_dict().values(), before.state_dict().values(),
                                                       strict=True))
    trained = any(r["masked"] is None for r in rows)
    assert changed == trained
    ids = torch.tensor([[1, 2, 3]])
    assert after.generate(ids, max_new_tokens=2, do_sample=False).shape[1] == 5


@pytest.mark.docker
def test_tool_results_carry_no_loss_in_real_sandboxes(taught):
    """The token ledger of a real episode: the turns' ids are trained, the tool results (real docker output) and
    the template text around them are not."""
    from transformers import AutoTokenizer

    from swepost.agent import AgentLimits
    from swepost.envs.swe import SweEnvironment
    from swepost.stages.tasks import load_tasks
    from swepost.train.rollout import ScriptedGenerator, run_rollouts

    home, tasks, model = taught
    store = ArtifactStore(home)
    tok = AutoTokenizer.from_pretrained(store.resolve(model).path / "model")
    turns = ['<tool_call>\n{"name": "bash", "arguments": {"command": "grep -n def minicalc/text.py"}}\n</tool_call>',
             '<tool_call>\n{"name": "submit", "arguments": {}}\n</tool_call>']
    rollouts, _ = run_rollouts(load_tasks(store.resolve(tasks))[:1], generator=ScriptedGenerator(tok, turns),
                               make_env=lambda: SweEnvironment(repos=REPO / "data" / "repos", backend="docker"),
                               tokenizer=tok, limits=AgentLimits(max_turns=3), max_prompt_tokens=4096,
                               max_completion_tokens=512, concurrency=1)
    r = rollouts[0]
    assert r.trajectory.exit_status == "submitted"
    output = r.trajectory.messages[3]["content"]  # the grep, run in the container
    assert "def slugify" in output
    trained = tok.decode([t for t, m in zip(r.completion_ids, r.mask, strict=True) if m])
    masked = tok.decode([t for t, m in zip(r.completion_ids, r.mask, strict=True) if not m])
    assert trained == turns[0] + "<|im_end|>" + turns[1] + "<|im_end|>"
    assert masked == ("\n<|im_start|>user\n<tool_response>\n" + output +
                      "\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.docker
def test_rl_resumes_after_a_kill(taught):
    home, tasks, model = taught
    env = {**os.environ, "SWEPOST_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "swepost", "rl", tasks, "--model", model, "--repos", str(REPO / "data" / "repos"),
            *RL_ARGS, "--name", "resumed", "--set", "seed=1"]
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if list((home / "work").glob("rl-*/checkpoint-1/trainer_state.json")):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before its first checkpoint"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    out = json.loads(cli(home, *args[3:], "--json").stdout)
    art = ArtifactStore(home).resolve(out["id"])
    assert art.stats["resumed_from_step"] >= 1 and art.stats["steps"] == 3
    rows = rows_of(art.path / "rollouts.jsonl")
    assert sorted({r["step"] for r in rows}) == [1, 2, 3] and len(rows) == 3 * 8  # no step logged twice
    cli(home, "sandbox", "gc")  # the killed run's containers


@pytest.mark.docker
@pytest.mark.slow
def test_two_cpu_processes_through_accelerate_train_one_lora_model_in_real_sandboxes(taught):
    """Issue 12 must-show: `rl` through `accelerate launch`, two processes on CPU (gloo), real docker sandboxes,
    LoRA: each process rolls out one whole group per step; one artifact holds both processes' rows and
    trajectories; the logged rl/* metrics count both; the merged model is saved from the gathered weights."""
    import torch
    from transformers import AutoModelForCausalLM

    home, tasks, model = taught
    start = time.monotonic()
    out = json.loads(cli(home, "rl", tasks, "--model", model, "--repos", REPO / "data" / "repos", "--max-steps", "2",
                         "--tasks-per-step", "2", "-G", "4", "--backend", "docker", "--set", "max_turns=3",
                         "--set", "max_completion_tokens=256", "--set", "learning_rate=1e-2",
                         "--set", "temperature=0.5", "--set", "gradient_checkpointing=false", "--set", "lora=true",
                         "--set", "launch=accelerate", "--set", "accelerate_config=cpu", "--set", "num_processes=2",
                         "--name", "two", "--json").stdout)
    store = ArtifactStore(home)
    art = store.resolve(out["id"])
    assert [a.name for a in store.all() if a.kind == "checkpoint"].count("two") == 1
    assert art.stats["world_size"] == 2 and art.stats["steps"] == 2 and art.stats["lora"] is True

    rows = rows_of(art.path / "rollouts.jsonl")
    assert len(rows) == 2 * 2 * 4
    for step in (1, 2):
        for process in (0, 1):
            group = [r for r in rows if (r["step"], r["process"]) == (step, process)]
            assert len(group) == 4 and {r["group"] for r in group} == {0}  # one whole group per process
            assert len({r["instance_id"] for r in group}) == 1 and sorted(r["sample"] for r in group) == [0, 1, 2, 3]
        ran = {r["instance_id"] for r in rows if r["step"] == step}
        assert len(ran) == 2  # the two processes ran the step's two different tasks
        name = f"step-{step:06d}"
        for f in (f"{name}.jsonl", f"{name}-p1.jsonl"):  # every process's trajectories reached the artifact
            lines = (art.path / "trajectories" / f).read_text().splitlines()
            assert len(lines) == 4 and all(json.loads(t)["evidence"]["tests"] for t in lines)
    history = [e for e in json.loads((art.path / "log_history.json").read_text()) if "rl/trained_rollouts" in e]
    for e in history:
        step = [r for r in rows if r["step"] == e["step"]]
        assert e["rl/trained_rollouts"] == sum(r["masked"] is None for r in step)  # both processes counted
        assert e["rl/dropped_groups"] == len({r["process"] for r in step if r["group_dropped"]})
        graded = [r["reward"] for r in step if r["reward"] is not None]
        assert e["rl/task_reward"] == pytest.approx(sum(graded) / len(graded))
        assert e["time/gpu_idle"] >= 0 and "rl/cut" in e

    merged = AutoModelForCausalLM.from_pretrained(art.path / "model").state_dict()
    base = AutoModelForCausalLM.from_pretrained(store.resolve(model).path / "model").state_dict()
    assert merged.keys() == base.keys()
    assert all(merged[k].shape == base[k].shape and merged[k].numel() > 0 for k in base)
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert all(k.endswith("proj.weight") for k in changed)  # LoRA moved the projections only
    assert bool(changed) == any(r["masked"] is None for r in rows)
    assert time.monotonic() - start < 240


@pytest.mark.parametrize("mode", ["drop", "resample"])
def test_dynamic_sampling_with_a_pluggable_reward(swepost, store, tmp_path, mode):
    tiny = import_echo_tasks(swepost, tmp_path, ["flat-a", "flat-b", "mixed-c", "mixed-d"])
    r = swepost("rl", "echo", "--model", tiny, "--max-steps", "2", "--tasks-per-step", "2", "-G", "2",
                "--set", "environment=tests.rl_helpers:EchoEnvironment",
                "--set", "reward=tests.rl_helpers:alternating_reward", "--set", f"dynamic_sampling={mode}",
                "--set", "max_turns=1", "--set", "max_completion_tokens=16", "--set", "truncated=keep",
                "--set", "gradient_checkpointing=false", "--set", "max_resample_rounds=4", "--json", check=0)
    art = store.resolve(json.loads(r.stdout)["id"])
    rows = rows_of(art.path / "rollouts.jsonl")
    assert len(rows) == 2 * 2 * 2
    for row in rows:
        flat = row["instance_id"].startswith("flat")
        assert row["reward"] == (0.0 if flat else float(row["sample"] % 2))
        assert row["group_dropped"] == flat and (row["masked"] == "zero_variance") == flat
    history = json.loads((art.path / "log_history.json").read_text())
    resampled = sum(e.get("rl/resampled_groups", 0) for e in history)
    if mode == "drop":
        assert resampled == 0
    else:  # flat groups were replaced by groups of the mixed tasks: nothing left to drop
        assert not any(row["group_dropped"] for row in rows) and resampled >= 1
        assert any(row["resampled"] for row in rows)


def test_accelerate_launch_runs_the_rl_stage_in_every_process(tmp_path, monkeypatch):
    from swepost.stages.rl import RlConfig, run_rl
    from swepost.train.entry import main
    from swepost.train.launch import CHILD_ENV, launch_command, write_launch_file

    monkeypatch.setenv(CHILD_ENV, "0")  # the entry marks this process a launched child: undone after the test

    cfg = RlConfig(tasks="t", model="m", launch="accelerate", accelerate_config="zero3", num_processes=8,
                   generation="vllm_colocate")
    cmd = launch_command(cfg, tmp_path / "c.json", "rl")
    assert cmd[-4:] == ["-m", "swepost.train.entry", "rl", str(tmp_path / "c.json")]
    assert cmd[cmd.index("--num_processes") + 1] == "8" and cmd[cmd.index("--config_file") + 1].endswith("zero3.yaml")
    assert main(["rl", str(tmp_path / "c.json")]) == 2  # no launch file: bad input, not a traceback
    write_launch_file(tmp_path / "c.json", cfg, tmp_path, run_rl)
    spec = json.loads((tmp_path / "c.json").read_text())
    # the child finds the stage by import path: train/ never imports stages/
    assert spec["run"] == "swepost.stages.rl:run_rl" and spec["config_model"] == "swepost.stages.rl:RlConfig"
    spec["config"]["tasks_per_step"] = 0
    (tmp_path / "c.json").write_text(json.dumps(spec))
    assert main(["rl", str(tmp_path / "c.json")]) == 2  # a bad config is bad input, in the child too


def test_rollout_log_is_one_file_per_process_and_survives_a_torn_line(tmp_path):
    """A kill -9 during an append leaves half a line: resuming drops it instead of crashing, and the rows of
    every process are read back, in step order."""
    from swepost.train.rl import RolloutLog, read_rollout_rows, summarize

    log = RolloutLog(tmp_path, save_trajectories=False)

    def row(step, process, group, reward):
        return {"step": step, "process": process, "group": group, "reward": reward, "masked": None,
                "group_dropped": False, "exit_status": "submitted",
                "resolved": "RESOLVED_FULL" if reward else "RESOLVED_NO"}

    for step in (1, 2, 3):
        log.write(step, [row(step, 0, 0, 1.0), row(step, 0, 0, 0.0)], [], process=0)
        log.write(step, [row(step, 1, 1, 0.0), row(step, 1, 1, 0.0)], [], process=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollouts-p1.jsonl", "rollouts.jsonl"]
    with open(tmp_path / "rollouts-p1.jsonl", "a") as f:
        f.write('{"step": 4, "process": 1, "gro')  # the kill came mid-write
    rows = read_rollout_rows(tmp_path)
    assert len(rows) == 12 and [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    assert {r["process"] for r in rows} == {0, 1}
    log.truncate_after(2)  # a resume from step 2: no crash, later steps and the torn line gone
    assert [(r["step"], r["process"]) for r in read_rollout_rows(tmp_path)] == [
        (1, 0), (1, 0), (1, 1), (1, 1), (2, 0), (2, 0), (2, 1), (2, 1)]
    assert summarize(tmp_path, [])["reward_by_step"][0]["rollouts"] == 4


def test_settings_that_would_hang_or_mis_shard_are_refused_with_the_setting_named():
    """Issue 12: transformers generation on ZeRO-3 / FSDP processes would deadlock (each rank generates a
    different number of times); vLLM colocate with tensor parallelism would need gathered prompts. Both are
    refused up front, naming what to use instead; the settings that work pass."""
    from pydantic import ValidationError

    from swepost.stages.rl import RlConfig

    for kw, words in (({"accelerate_config": "zero3"}, "vllm_colocate or vllm_server"),
                      ({"accelerate_config": "fsdp"}, "vllm_colocate or vllm_server"),
                      ({"deepspeed": "zero3"}, "vllm_colocate or vllm_server"),
                      ({"generation": "vllm_colocate", "vllm_tensor_parallel_size": 2}, "vllm_server")):
        with pytest.raises(ValidationError, match=words):
            RlConfig(tasks="t", model="m", launch="accelerate", num_processes=8, **kw)
    RlConfig(tasks="t", model="m", launch="accelerate", num_processes=8, accelerate_config="zero2")
    RlConfig(tasks="t", model="m", launch="accelerate", num_processes=1, accelerate_config="zero3")
    RlConfig(tasks="t", model="m", launch="accelerate", num_processes=8, accelerate_config="zero3",
             generation="vllm_server")


class TwoAnswers:
    """A generator with two fixed answers, handed out in turn: one GRPO step on them is fully determined."""

    concurrent = False

    def __init__(self, tok, answers: list[str]):
        self.answers = [list(tok(a, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id] for a in answers]
        self.calls, self.prompt = 0, None

    def generate(self, requests):
        from swepost.train.rollout import Generated

        out = []
        for ids, budget, _ in requests:
            self.prompt = list(ids)
            answer = self.answers[self.calls % 2]
            self.calls += 1
            out.append(Generated(answer[:budget], None, len(answer) <= budget))
        return out


def test_one_grpo_step_raises_the_rewarded_answer_and_lowers_the_other(tmp_path):
    """Issue 12, "learning goes the right way": a group of two fixed answers to one prompt, one rewarded 1 and
    one 0, one real GRPO step (TRL, DAPO loss) with a large learning rate: the log-probability of the rewarded
    answer rises and the other's falls."""
    import torch

    from swepost.records import Task
    from swepost.stages.rl import RlConfig
    from swepost.train.context import fit_context
    from swepost.train.rl import RolloutLog, build_trainer
    from swepost.train.tiny_model import build_tiny_model

    model_path = str(tmp_path / "tiny")
    build_tiny_model(tmp_path / "tiny")
    tasks = [Task(instance_id="mixed-x", problem_statement="Answer x.")]
    cfg = fit_context(RlConfig(tasks="x", model=model_path, environment="tests.rl_helpers:EchoEnvironment",
                               reward="tests.rl_helpers:alternating_reward", num_generations=2, tasks_per_step=1,
                               max_steps=1, learning_rate=5e-3, dynamic_sampling="off", max_turns=1,
                               max_completion_tokens=64, truncated="keep", gradient_checkpointing=False,
                               save_steps=100, report_to="none"), model_path)
    out = tmp_path / "work"
    out.mkdir()
    trainer, rollout = build_trainer(tasks, model_path, out, cfg, RolloutLog(out, True))
    tok = trainer.processing_class
    answers = ['<tool_call>\n{"name": "submit", "arguments": {}}\n</tool_call>',
               '<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>']
    rollout.generator = gen = TwoAnswers(tok, answers)

    def logps() -> list[float]:
        model = trainer.model
        model.eval()
        values = []
        with torch.no_grad():
            for answer in gen.answers:
                ids = torch.tensor([gen.prompt + answer])
                logits = model(input_ids=ids).logits[0, :-1].float()
                picked = torch.log_softmax(logits, -1)[torch.arange(ids.shape[1] - 1), ids[0, 1:]]
                values.append(picked[len(gen.prompt) - 1:].sum().item())
        return values

    trainer.train()
    after = logps()
    rows = rows_of(out / "rollouts.jsonl")
    trajs = [json.loads(line) for line in (out / "trajectories" / "step-000001.jsonl").read_text().splitlines()]
    said = [next(m for m in t["messages"] if m["role"] == "assistant")["tool_calls"][0]["function"]["name"]
            for t in trajs]
    rewarded = {name: r["reward"] for name, r in zip(said, rows, strict=True)}
    assert sorted(rewarded.values()) == [0.0, 1.0], rows
    # the base model again, for the before numbers, on the very same prompt
    from transformers import AutoModelForCausalLM

    trainer.model = AutoModelForCausalLM.from_pretrained(model_path)
    before = logps()
    up, down = (0, 1) if rewarded.get("submit") == 1.0 else (1, 0)
    assert after[up] > before[up] + 1e-3, (before, after, rewarded)
    assert after[down] < before[down] - 1e-3, (before, after, rewarded)


def _expected_advantages(rows: list[dict], turn_penalty: float) -> list[float]:
    """GRPO's group normalisation recomputed from rollouts.jsonl alone: reward = task reward + turn penalty, rows
    without a verdict out of the group's mean and std (sample std) and given advantage 0."""
    out = []
    for start in range(0, len(rows), 4):
        group = rows[start: start + 4]
        values = [r["reward"] - turn_penalty * r["turns"] if r["masked"] not in ("ungraded", "deadline") else None
                  for r in group]
        scored = [v for v in values if v is not None]
        mean = sum(scored) / len(scored)
        std = (sum((v - mean) ** 2 for v in scored) / (len(scored) - 1)) ** 0.5 if len(scored) > 1 else 0.0
        out += [0.0 if v is None else (v - mean) / (std + 1e-4) for v in values]
    return out


def test_trl_rewards_and_advantages_line_up_with_the_rollout_log(tmp_path):
    """Issue 12: real GRPO steps (TRL, dynamic sampling with resamples, ungraded rollouts, a turn penalty): the
    rewards TRL trained on, row by row, are the rows' rewards in rollouts.jsonl (NaN where the row has none),
    its advantages are the group normalisation of those rows, and its completions table names the task each
    row really ran (a resampled one, not the prompt TRL sent)."""
    import math

    from transformers import TrainerCallback

    from swepost.records import Task
    from swepost.stages.rl import RlConfig
    from swepost.train.context import fit_context
    from swepost.train.rl import RolloutLog, build_trainer
    from swepost.train.tiny_model import build_tiny_model

    model_path = str(tmp_path / "tiny")
    build_tiny_model(tmp_path / "tiny")
    names = ["flat-a", "flat-b", "flat-c", "flat-d", "mixed-e", "ungraded-f"]
    tasks = [Task(instance_id=n, problem_statement=f"Answer {n}.") for n in names]
    cfg = fit_context(RlConfig(tasks="x", model=model_path, environment="tests.rl_helpers:EchoEnvironment",
                               reward="tests.rl_helpers:parity_or_ungraded", num_generations=4, tasks_per_step=2,
                               max_steps=3, learning_rate=1e-3, dynamic_sampling="resample", max_resample_rounds=4,
                               turn_penalty=0.25, max_turns=1, max_completion_tokens=16, truncated="keep",
                               gradient_checkpointing=False, save_steps=100, report_to="none"), model_path)
    out = tmp_path / "work"
    out.mkdir()
    trainer, _ = build_trainer(tasks, model_path, out, cfg, RolloutLog(out, False))
    logged: dict[int, dict] = {}

    class Capture(TrainerCallback):  # what TRL itself stored for this step's generation batch
        def on_step_end(self, args, state, control, **kw):
            logs = trainer._logs
            logged[state.global_step] = {"rewards": {k: list(v) for k, v in logs["rewards"].items()},
                                         "advantages": list(logs["advantages"]),
                                         "instance_id": list(logs["extra"]["instance_id"]),
                                         "prompt": [p[-1]["content"] for p in logs["prompt"]]}

    trainer.add_callback(Capture())
    trainer.train()
    rows = rows_of(out / "rollouts.jsonl")
    assert sorted(logged) == [1, 2, 3]
    resampled_rows = 0
    for step, trl in logged.items():
        mine = [r for r in rows if r["step"] == step]
        assert len(mine) == len(trl["advantages"]) == 8
        for r, task, turn, ran in zip(mine, trl["rewards"]["task"], trl["rewards"]["turn_penalty"],
                                      trl["instance_id"], strict=True):
            assert ran == r["instance_id"]
            if r["reward"] is None:
                assert r["masked"] == "ungraded" and math.isnan(task) and math.isnan(turn)
            else:
                assert task == r["reward"] and turn == pytest.approx(-0.25 * r["turns"])
        expected = _expected_advantages(mine, 0.25)
        assert trl["advantages"] == pytest.approx(expected, abs=1e-4), (step, mine)
        resampled_rows += sum(r["resampled"] for r in mine)
        # a resampled row ran another task than the prompt TRL sent for it
        assert all((p != r["instance_id"]) <= r["resampled"] for p, r in zip(trl["prompt"], mine, strict=True))
    assert resampled_rows, "no group was resampled: the test shows nothing about resamples"
    assert any(r["masked"] == "ungraded" for r in rows) and any(r["masked"] is None for r in rows)


def test_two_cpu_processes_resample_distinct_tasks_and_log_gathered_metrics(swepost, store, tmp_path, home):
    """Issue 12: `rl` through `accelerate launch` on two CPU processes (gloo): each process rolls out whole
    groups; a process whose group is flat resamples from its own share of the spare tasks, so no task runs twice
    in a step; the logged rl/* metrics count both processes' rollouts; one artifact holds every process's rows."""
    names = ["flat-a", "flat-b", "flat-c", "flat-d", "flat-e", "mixed-f", "mixed-g", "mixed-h"]
    tiny = import_echo_tasks(swepost, tmp_path, names)
    start = time.monotonic()
    r = cli(home, "rl", "echo", "--model", tiny, "--max-steps", "3", "--tasks-per-step", "2", "-G", "2",
            "--set", "environment=tests.rl_helpers:EchoEnvironment",
            "--set", "reward=tests.rl_helpers:alternating_reward",
            "--set", "dynamic_sampling=resample", "--set", "max_resample_rounds=3", "--set", "max_turns=1",
            "--set", "max_completion_tokens=16", "--set", "truncated=keep", "--set", "gradient_checkpointing=false",
            "--set", "launch=accelerate", "--set", "accelerate_config=cpu", "--set", "num_processes=2", "--json")
    art = store.resolve(json.loads(r.stdout)["id"])
    assert [a.id for a in store.all() if a.kind == "checkpoint"] == [tiny, art.id]
    assert art.stats["world_size"] == 2
    rows = rows_of(art.path / "rollouts.jsonl")
    assert len(rows) == 3 * 2 * 2 and {r["process"] for r in rows} == {0, 1}
    history = [e for e in json.loads((art.path / "log_history.json").read_text()) if "rl/trained_rollouts" in e]
    assert [e["step"] for e in history] == [1, 2, 3]
    both_resampled = 0
    for e in history:
        step = [r for r in rows if r["step"] == e["step"]]
        groups = {(r["process"], r["group"]): [x for x in step if (x["process"], x["group"]) == (r["process"],
                                                                                              r["group"])]
                  for r in step}
        assert sorted(groups) == [(0, 0), (1, 0)]  # one whole group per process
        assert all(len({x["instance_id"] for x in g}) == 1 and len(g) == 2 for g in groups.values())
        ran = [g[0]["instance_id"] for g in groups.values()]
        assert len(set(ran)) == len(ran), (e["step"], ran)  # no task twice in a step, resampled or not
        both_resampled += all(g[0]["resampled"] for g in groups.values())
        # gathered over both processes, not process 0's share
        assert e["rl/trained_rollouts"] == sum(x["masked"] is None for x in step)
        assert e["rl/resampled_groups"] == sum(g[0]["resampled"] for g in groups.values())
        assert e["rl/dropped_groups"] == sum(g[0]["group_dropped"] for g in groups.values())
        assert e["rl/task_reward"] == pytest.approx(sum(x["reward"] for x in step) / len(step))
    assert both_resampled, "no step where both processes resampled: the test shows nothing about distinct picks"
    assert time.monotonic() - start < 180


def test_episodes_past_the_rollout_deadline_are_cut_and_left_out_of_loss_and_baseline(tmp_path):
    """Issue 12: with rollout_deadline, a straggler group (its setup takes 30 s) is cut at the deadline: its
    rows are masked 'deadline' with no reward, TRL gets no reward for them (NaN, advantage 0), the other group
    trains, and the step logs rl/cut, rl/lost_episode_fraction and time/gpu_idle."""
    import math

    from transformers import TrainerCallback

    from swepost.records import Task
    from swepost.stages.rl import RlConfig
    from swepost.train.context import fit_context
    from swepost.train.rl import RolloutLog, build_trainer
    from swepost.train.tiny_model import build_tiny_model

    model_path = str(tmp_path / "tiny")
    build_tiny_model(tmp_path / "tiny")
    tasks = [Task(instance_id=n, problem_statement=f"Answer {n}.") for n in ("slow-a", "mixed-b")]
    cfg = fit_context(RlConfig(tasks="x", model=model_path, environment="tests.rl_helpers:SlowEchoEnvironment",
                               reward="tests.rl_helpers:alternating_reward", num_generations=2, tasks_per_step=2,
                               max_steps=1, dynamic_sampling="off", max_turns=1, max_completion_tokens=16,
                               truncated="keep", rollout_deadline=8.0, gradient_checkpointing=False,
                               save_steps=100, report_to="none"), model_path)
    out = tmp_path / "work"
    out.mkdir()
    trainer, _ = build_trainer(tasks, model_path, out, cfg, RolloutLog(out, True))
    logged = {}

    class Capture(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            logged.update(task=list(trainer._logs["rewards"]["task"]), advantages=list(trainer._logs["advantages"]))

    trainer.add_callback(Capture())
    start = time.monotonic()
    trainer.train()
    assert time.monotonic() - start < 25  # the step did not wait for the straggler's 30 s
    rows = rows_of(out / "rollouts.jsonl")
    slow = [r for r in rows if r["instance_id"] == "slow-a"]
    fast = [r for r in rows if r["instance_id"] == "mixed-b"]
    assert len(slow) == len(fast) == 2
    assert all(r["exit_status"] == "deadline" and r["masked"] == "deadline" and r["reward"] is None for r in slow)
    assert all(r["masked"] is None and r["reward"] is not None for r in fast)
    for r, task, advantage in zip(rows, logged["task"], logged["advantages"], strict=True):
        if r["instance_id"] == "slow-a":
            assert math.isnan(task) and advantage == 0.0
        else:
            assert task == r["reward"] and advantage != 0.0
    metrics = next(e for e in trainer.state.log_history if "rl/cut" in e)
    assert metrics["rl/cut"] == 2 and metrics["rl/masked_deadline"] == 2
    assert 0 < metrics["rl/lost_episode_fraction"] <= 1
    assert metrics["time/gpu_idle"] > 0 and metrics["rl/exit_deadline"] == 0.5
