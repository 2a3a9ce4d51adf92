"""The cache key tells the truth: what a stage depends on outside its config (plugged-in modules, scripted-policy
files, swepost's own code) reruns it when edited, `--dry-run` says why, and what does not change results (-j)
does not."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swepost import fingerprint, recipes

RECIPE = """\
name: ck
model: org/not-downloaded
stages:
  - name: tasks
    stage: tasks-import
    config: {source: data/swe_tiny.jsonl}
  - name: collect
    stage: collect
    config:
      tasks: ${stages.tasks}
      policy: scripted
      policy_args: {path: scripts/turns.yaml}
      environment: ckmod:Env
      backend: local
      concurrency: 2
  - name: rl
    stage: rl
    config:
      tasks: ${stages.tasks}
      model: ${model}
      reward: ckmod:reward
      backend: local
"""


@pytest.fixture
def recipe(tmp_path, repo_root, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "scripts").mkdir()
    shutil.copy(repo_root / "data" / "swe_tiny.jsonl", tmp_path / "data" / "swe_tiny.jsonl")
    (tmp_path / "scripts" / "turns.yaml").write_text("- {content: hello}\n")
    (tmp_path / "ckmod.py").write_text("def reward(trajectory, task):\n    return 1.0\n\n\nclass Env:\n    pass\n")
    (tmp_path / "r.yaml").write_text(RECIPE)
    monkeypatch.syspath_prepend(str(tmp_path))  # this process finds ckmod, and so do the CLI's children:
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return tmp_path / "r.yaml"


def ran_before(path, store, sets=()):
    """Run the recipe's cheap first stage for real, and record the later (costly) ones as done, with the key
    parts a real run records: what a finished `swepost run` leaves in the store."""
    fingerprint._code_fingerprint.cache_clear()  # the code as it is now, as the CLI's next process sees it
    loaded = recipes.load_recipe(path, list(sets))

    def remember(step, art):
        parts = recipes.key_parts(step.spec, step.config, store)
        store.remember(parts.key, art, recipe=loaded.recipe.name, step=step.name,
                       parts={"values": parts.values, "about": parts.about})

    tasks = recipes.plan(loaded, store)[0]
    art = tasks.spec.runner()(tasks.config, store)
    remember(tasks, art)
    for step in recipes.plan(loaded, store)[1:]:
        remember(step, art)


def plan(swepost, path, *sets):
    r = swepost("run", str(path), "--dry-run", "--json", *[a for s in sets for a in ("--set", s)])
    assert r.returncode == 0, r.stderr
    return {s["stage"]: s for s in json.loads(r.stdout)}


def test_edits_rerun_the_stages_that_depend_on_them_and_say_why(recipe, store, swepost):
    fresh = plan(swepost, recipe)
    assert fresh["tasks"]["reasons"] == ["no stored run"]
    assert fresh["collect"]["reasons"] == ["its input tasks runs first"]
    ran_before(recipe, store)

    # nothing edited: nothing reruns; -j (concurrency) does not change results: still reused
    for sets in ([], ["stages.collect.concurrency=7"]):
        steps = plan(swepost, recipe, *sets)
        assert {n: s["action"] for n, s in steps.items()} == {"tasks": "reuse", "collect": "reuse", "rl": "reuse"}
        assert all(s["reasons"] == [] for s in steps.values())

    # the scripted policy's file: collect reruns, rl (which does not use it) does not
    (recipe.parent / "scripts" / "turns.yaml").write_text("- {content: bye}\n")
    steps = plan(swepost, recipe)
    assert steps["collect"]["action"] == "run" and steps["rl"]["action"] == "reuse", steps
    assert steps["collect"]["reasons"] == [f"policy_args.path {recipe.parent / 'scripts' / 'turns.yaml'} changed"]

    # the module the environment and the reward come from: both stages rerun, naming it
    (recipe.parent / "ckmod.py").write_text((recipe.parent / "ckmod.py").read_text().replace("1.0", "0.5"))
    steps = plan(swepost, recipe)
    module = recipe.parent / "ckmod.py"
    assert f"environment module {module} changed" in steps["collect"]["reasons"]
    assert steps["rl"]["reasons"] == [f"reward module {module} changed"]
    assert steps["tasks"]["action"] == "reuse"

    # a credential changes no result and is never stored in the cache index
    served = ["stages.collect.policy=openai", "stages.collect.policy_args={model: m, base_url: 'http://127.0.0.1:9/v1'}"]
    ran_before(recipe, store, [*served, "stages.collect.policy_args.api_key=sk-cachekeytest"])
    assert "sk-cachekeytest" not in "".join(p.read_text() for p in (store.root / "cache").rglob("*.json"))
    assert {s["action"] for s in plan(swepost, recipe, *served).values()} == {"reuse"}

    # a config value: the plain output says it too
    r = swepost("run", str(recipe), "--dry-run", "--set", "stages.rl.learning_rate=0.001")
    assert "rl (rl): run — reruns: config learning_rate changed (1e-06 → 0.001)" in r.stdout, r.stdout


def test_input_artifact_change_is_named(recipe, store):
    ran_before(recipe, store)
    source = recipe.parent / "data" / "swe_tiny.jsonl"
    source.write_text(source.read_text().replace("subtracts", "SUBTRACTS"))
    loaded = recipes.load_recipe(recipe)
    steps = recipes.plan(loaded, store)
    assert steps[0].reasons == [f"file source {source} changed"]
    assert steps[1].reasons == ["its input tasks runs first"]


def test_swepost_code_edit_and_commit_rerun_every_stage(recipe, store, repo_root, tmp_path, monkeypatch):
    """swepost's code is pointed at a git copy of the package; its system prompt is edited, then committed."""
    copy = tmp_path / "checkout" / "swepost"
    shutil.copytree(repo_root / "src" / "swepost", copy, ignore=shutil.ignore_patterns("__pycache__"))

    def git(*args):
        return subprocess.run(["git", "-C", str(copy.parent), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "base")
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", copy)
    fingerprint._code_fingerprint.cache_clear()
    ran_before(recipe, store)
    assert [s.action for s in recipes.plan(recipes.load_recipe(recipe), store)] == ["reuse"] * 3

    prompt = copy / "envs" / "prompts" / "swe_system.md"  # a shipped prompt file is swepost's code too
    prompt.write_text(prompt.read_text() + "\nBe brief.\n")
    fingerprint._code_fingerprint.cache_clear()  # computed once per process: this is the next `swepost run`
    steps = recipes.plan(recipes.load_recipe(recipe), store)
    assert [s.reasons for s in steps][0] == ["swepost code changed (uncommitted changes)"]
    assert all(s.action == "run" for s in steps)

    git("commit", "-qam", "edit")
    fingerprint._code_fingerprint.cache_clear()
    steps = recipes.plan(recipes.load_recipe(recipe), store)
    head = git("rev-parse", "HEAD")[:12]
    assert steps[0].reasons[0].startswith("swepost code changed (commit ") and steps[0].reasons[0].endswith(
        f" → {head})"), steps[0].reasons
    # a commit that touches no file of the package keeps the key
    ran_before(recipe, store)
    (copy.parent / "README").write_text("docs\n")
    git("add", "README")
    git("commit", "-qm", "docs")
    fingerprint._code_fingerprint.cache_clear()
    assert [s.action for s in recipes.plan(recipes.load_recipe(recipe), store)] == ["reuse"] * 3


def test_code_fingerprint_without_git_hashes_the_files(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("x = 1\n")
    first = fingerprint.code_fingerprint(pkg)
    assert first["hash"].startswith("files:") and first["commit"] == ""
    (pkg / "__init__.py").write_text("x = 2\n")
    assert fingerprint._code_fingerprint.__wrapped__(pkg.resolve())["hash"] != first["hash"]


def test_folder_hash_is_by_content_and_remembered_by_size_and_mtime(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "weights.bin").write_bytes(b"\0" * 1000)
    memo = tmp_path / "memo"
    first = fingerprint.path_fingerprint(model, memo)
    assert first == fingerprint.path_fingerprint(model, memo) == fingerprint.path_fingerprint(model, None)
    (model / "weights.bin").write_bytes(b"\1" * 1000)
    assert fingerprint.path_fingerprint(model, memo) != first


def test_hub_ids_offline_are_the_cached_snapshot_or_unresolved(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert fingerprint.hub_revision.__wrapped__("org/surely-not-cached-model") == fingerprint.UNRESOLVED
    refs = tmp_path / "models--org--cached" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("0123abcd" * 5)
    assert fingerprint.hub_revision.__wrapped__("org/cached") == "0123abcd" * 5  # what offline loading would use


def test_unknown_component_and_missing_policy_file_exit_2(recipe, swepost):
    text = recipe.read_text()
    recipe.write_text(text.replace("policy: scripted", "policy: scriptd"))
    r = swepost("recipes", "validate", str(recipe))
    assert r.returncode == 2
    assert "r.yaml:11: stages[1].config.policy: unknown policy 'scriptd' (known: openai, hf, scripted" in r.stderr
    recipe.write_text(text.replace("turns.yaml", "nope.yaml"))
    r = swepost("recipes", "validate", str(recipe))
    assert r.returncode == 2 and "r.yaml:12: stages[1].config.policy_args.path: file not found" in r.stderr
    recipe.write_text(text.replace("ckmod:reward", "nomod:reward"))
    r = swepost("run", str(recipe), "--dry-run")
    assert r.returncode == 2 and "stages[2].config.reward: unknown reward 'nomod:reward'" in r.stderr
    assert "Traceback" not in r.stderr


def test_scripted_policy_path_is_relative_to_the_recipe(recipe, store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)
    ran_before(recipe, store)
    collect = recipes.plan(recipes.load_recipe(recipe), store)[1]
    assert collect.config.policy_args["path"] == str(recipe.parent / "scripts" / "turns.yaml")


def test_collect_work_key_leaves_out_concurrency():
    from swepost.stages.collect import CollectConfig, work_key
    from swepost.stages.evaluate import EvalConfig
    from swepost.stages.rl import RlConfig
    from swepost.stages.rl import work_key as rl_key

    for model in (CollectConfig, EvalConfig):
        a, b = model(tasks="t", concurrency=1), model(tasks="t", concurrency=9)
        assert work_key(a, "t@1", "collect") == work_key(b, "t@1", "collect")
        assert work_key(a, "t@1", "collect") != work_key(model(tasks="t", samples=2), "t@1", "collect")
    a, b = RlConfig(tasks="t", model="m", concurrency=1), RlConfig(tasks="t", model="m", concurrency=9)
    assert rl_key(a, "t@1", "m") == rl_key(b, "t@1", "m")


@pytest.mark.parametrize("stage, config, field", [
    ("collect", {"tasks": "t"}, "concurrency"), ("eval", {"tasks": "t"}, "concurrency"),
    ("rl", {"tasks": "t", "model": "m"}, "concurrency"), ("rft", {"tasks": "t", "model": "m"}, "concurrency"),
    ("tasks-validate", {"tasks": "t"}, "jobs"), ("sft", {"data": "d", "model": "m"}, "logging_steps"),
])
def test_parallelism_and_logging_stay_out_of_recipe_keys(stage, config, field):
    from swepost.stages import get_stage

    model = get_stage(stage).config_model()
    assert field in model.NOT_IN_KEY and field in model.model_fields and "name" not in model.NOT_IN_KEY



def test_local_model_folder_by_content_and_hub_id_by_revision(recipe, store):
    folder = recipe.parent / "models" / "m"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    recipe.write_text("name: mk\nstages:\n"
                      "  - {name: tasks, stage: tasks-import, config: {source: data/swe_tiny.jsonl}}\n"
                      "  - {name: rft, stage: rft, config: {tasks: '${stages.tasks}', model: models/m}}\n"
                      "  - {name: hub, stage: rft, config: {tasks: '${stages.tasks}', model: org/not-cached}}\n")
    ran_before(recipe, store)
    steps = recipes.plan(recipes.load_recipe(recipe), store)
    assert [s.action for s in steps] == ["reuse"] * 3
    assert steps[1].config.model == str(folder)  # relative to the recipe
    hub = recipes.key_parts(steps[2].spec, steps[2].config, store)
    assert hub.values["model model"] == "hub:org/not-cached@unresolved"  # tests run with HF_HUB_OFFLINE=1
    (folder / "model.safetensors").write_bytes(b"\1" * 64)
    steps = recipes.plan(recipes.load_recipe(recipe), store)
    assert [s.action for s in steps] == ["reuse", "run", "reuse"]
    assert steps[1].reasons == [f"model model {folder} changed"]


def test_ctrl_c_then_another_j_resumes_the_same_work_folder(repo_root, swepost, home, tmp_path):
    """Interrupt a collect, rerun it with another -j: the finished episodes are kept, none runs twice."""
    swepost("tasks", "import", str(repo_root / "data" / "minicalc_tasks.jsonl"), "--name", "mini", check=0)
    script = tmp_path / "slow.json"
    script.write_text(json.dumps([{"content": "thinking", "tool_calls": [{"name": "bash",
                                                                          "arguments": {"command": "true"}}]},
                                  {"tool_calls": [{"name": "submit", "arguments": {}}]}]))
    args = ["collect", "mini", "--policy", "scripted", "--set", f"policy_args.path={script}", "--set",
            "policy_args.delay=0.2", "--samples", "2", "--backend", "local", "--repos",
            str(repo_root / "data" / "repos"), "--json"]
    env = {**os.environ, "SWEPOST_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    # SIGINT at its default in the child whatever ran the tests: a shell's background job ignores it, and Python
    # then installs no KeyboardInterrupt handler (the Ctrl-C below would be lost)
    proc = subprocess.Popen([sys.executable, "-m", "swepost", *args, "-j", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline, log = time.monotonic() + 120, None
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list((home / "work").glob("collect-*/episodes.jsonl"))
        if logs and len(logs[0].read_text().splitlines()) >= 3:
            log = logs[0]
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert log is not None, "no episode finished before the interrupt"
    before = {t["episode_id"]: t for t in map(json.loads, log.read_text().splitlines())}
    assert 3 <= len(before) < 14
    work = [p.name for p in (home / "work").glob("collect-*")]
    out = swepost(*args, "-j", "3", check=0)
    assert out.returncode == 0, out.stderr
    art = json.loads(out.stdout)
    trajs = [json.loads(line) for line in (Path(art["path"]) / "trajectories.jsonl").read_text().splitlines()]
    assert len(trajs) == 14 and len({t["episode_id"] for t in trajs}) == 14
    # the episodes finished before Ctrl-C were kept, not run again: their records are the very same
    after = {t["episode_id"]: t for t in trajs}
    # (an episode cut by Ctrl-C ends as a sandbox_error: that one runs again, as an infrastructure failure does)
    assert len(work) == 1 and sum(t["exit_status"] == "submitted" for t in before.values()) >= 1
    rerun = {e: t["exit_status"] for e, t in before.items()
             if t["exit_status"] == "submitted" and after[e]["started"] != t["started"]}
    assert not rerun, f"finished episodes ran again: {rerun} (work folders: {work})"
    assert not list((home / "work").glob("collect-*"))


@pytest.mark.docker
def test_sandbox_base_image_enters_the_key_by_id(recipe, store, docker_client, base_image):
    recipe.write_text(recipe.read_text().replace("backend: local", "backend: docker"))
    ran_before(recipe, store)
    collect = recipes.plan(recipes.load_recipe(recipe), store)[1]
    parts = recipes.key_parts(collect.spec, collect.config, store)
    assert parts.values["sandbox image"] == docker_client.images.get(base_image).id
    old = {"values": {**parts.values, "sandbox image": "sha256:0123"}, "about": parts.about}
    assert recipes.why_rerun(parts, old) == [f"sandbox image {base_image} changed (sha256:0123 → "
                                             f"{recipes._short(parts.values['sandbox image'])})"]


def test_a_judge_prompt_file_is_relative_to_the_recipe_and_keyed_by_content(tmp_path, repo_root, store, swepost):
    """judge.prompt (and an environment's prompts_dir) name local files inside a settings block: they resolve
    next to the recipe, a missing one exits 2 naming the line, and an edit reruns the stage that reads it."""
    (tmp_path / "prompts").mkdir()
    prompt = tmp_path / "prompts" / "judge.md"
    prompt.write_text((repo_root / "src" / "swepost" / "rewards" / "prompts" / "judge.md").read_text())
    (tmp_path / "qa.jsonl").write_text((repo_root / "data" / "minicalc_qa.jsonl").read_text().splitlines()[0] + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: nj\nmodel: x\nstages:\n  - name: tasks\n    stage: tasks-import\n"
                      "    config: {source: qa.jsonl, kind: codeqa}\n  - name: eval\n    stage: eval\n    config:\n"
                      "      tasks: ${stages.tasks}\n      policy: oracle\n      backend: local\n"
                      "      judge: {prompt: prompts/judge.md}\n")
    ran_before(recipe, store)
    assert {s["action"] for s in plan(swepost, recipe).values()} == {"reuse"}
    prompt.write_text(prompt.read_text() + "\nBe strict.\n")
    steps = plan(swepost, recipe)
    assert steps["tasks"]["action"] == "reuse" and steps["eval"]["action"] == "run"
    assert any(str(prompt) in reason and "changed" in reason for reason in steps["eval"]["reasons"]), steps["eval"]
    recipe.write_text(recipe.read_text().replace("prompts/judge.md", "prompts/nope.md"))
    r = swepost("recipes", "validate", str(recipe), check=2)
    assert "r.yaml:13: stages[1].config.judge.prompt: file not found" in r.stdout + r.stderr
