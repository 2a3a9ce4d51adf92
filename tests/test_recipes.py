"""The recipe runner: plan, cache keys, reuse, --set, --from, and errors that name the recipe's line."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swepost import recipes
from swepost.errors import BadInput


@pytest.fixture
def recipe_dir(tmp_path, repo_root):
    """A copy of the quickstart recipe and its data, made small and quick (a 1-layer tiny model)."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "data").mkdir()
    shutil.copy(repo_root / "data" / "swe_tiny.jsonl", tmp_path / "data" / "swe_tiny.jsonl")
    (tmp_path / "recipes" / "r.yaml").write_text(
        "name: demo\n"
        "model: ${stages.model}\n"
        "seed: 1\n"
        "stages:\n"
        "  - name: model\n"
        "    stage: tiny-model\n"
        "    config:\n"
        "      num_hidden_layers: 1\n"
        "  - name: tasks\n"
        "    stage: tasks-import\n"
        "    config:\n"
        "      source: ../data/swe_tiny.jsonl\n")
    return tmp_path


def test_second_run_reuses_every_stage(recipe_dir, swepost):
    recipe = recipe_dir / "recipes" / "r.yaml"
    r = swepost("run", str(recipe), "--dry-run", "--json")
    assert [s["action"] for s in json.loads(r.stdout)] == ["run", "run"]
    first = swepost("run", str(recipe), "--json")
    assert first.returncode == 0, first.stderr
    steps = json.loads(first.stdout)["steps"]
    assert [s["action"] for s in steps] == ["run", "run"]
    assert steps[0]["artifact"].startswith("demo-model@") and steps[1]["artifact"].startswith("demo-tasks@")
    second = swepost("run", str(recipe))
    assert second.returncode == 0
    assert "reused " + steps[0]["artifact"] in second.stdout and "reused " + steps[1]["artifact"] in second.stdout
    assert "nothing ran" in second.stdout
    plan = json.loads(swepost("run", str(recipe), "--dry-run", "--json").stdout)
    assert [(s["action"], s["artifact"]) for s in plan] == [("reuse", steps[0]["artifact"]),
                                                            ("reuse", steps[1]["artifact"])]
    # the recipe's seed reached the stage that has a seed field
    show = json.loads(swepost("artifacts", "show", steps[0]["artifact"]).stdout)
    assert show["producer"]["config"]["seed"] == 1 and show["producer"]["config"]["num_hidden_layers"] == 1


def test_cache_key_follows_config_and_file_content_not_path(recipe_dir, store):
    path = recipe_dir / "recipes" / "r.yaml"
    base = {s.name: s.key for s in recipes.plan(recipes.load_recipe(path), store)}
    changed = {s.name: s.key for s in recipes.plan(recipes.load_recipe(path, ["seed=2"]), store)}
    assert changed["model"] != base["model"] and changed["tasks"] == base["tasks"]
    # the same bytes at another path: same key; edited bytes: new key
    moved = recipe_dir / "elsewhere.jsonl"
    shutil.copy(recipe_dir / "data" / "swe_tiny.jsonl", moved)
    same = {s.name: s.key for s in recipes.plan(recipes.load_recipe(path, [f"stages.tasks.source={moved}"]), store)}
    assert same["tasks"] == base["tasks"]
    moved.write_text(moved.read_text().replace("subtracts", "SUBTRACTS"))
    edited = {s.name: s.key for s in recipes.plan(recipes.load_recipe(path, [f"stages.tasks.source={moved}"]), store)}
    assert edited["tasks"] != base["tasks"]


def test_from_reruns_that_stage_and_later(recipe_dir, store):
    loaded = recipes.load_recipe(recipe_dir / "recipes" / "r.yaml")
    recipes.run(loaded, store)
    events = []
    steps = recipes.run(loaded, store, from_stage="tasks", on_step=lambda s, e: events.append((s.name, e)))
    assert [s.action for s in steps] == ["reuse", "run"]
    assert ("tasks", "start") in events and ("model", "start") not in events
    with pytest.raises(BadInput, match="--from nope: no such stage"):
        recipes.plan(loaded, store, from_stage="nope")


def test_set_on_a_stage_by_name(recipe_dir, store):
    loaded = recipes.load_recipe(recipe_dir / "recipes" / "r.yaml", ["stages.tasks.name=renamed", "seed=4"])
    steps = recipes.run(loaded, store)
    assert steps[1].artifact.name == "renamed"
    assert steps[0].artifact.manifest["producer"]["seed"] == 4
    with pytest.raises(BadInput, match="no stage named 'nope'"):
        recipes.load_recipe(recipe_dir / "recipes" / "r.yaml", ["stages.nope.x=1"])


@pytest.mark.parametrize("edit, expected", [
    (("      num_hidden_layers: 1\n", "      num_hidden_layers: 1\n      hiden: 3\n"),
     r"r.yaml:9: stages\[0\].config.hiden: unknown key \(expected one of: .*num_hidden_layers"),
    (("seed: 1\n", "seed: 1\nmodle: x\n"), r"r.yaml:4: modle: unknown key"),
    (("stage: tasks-import", "stage: tasks-imprt"), r"r.yaml:10: stages\[1\].stage: unknown stage 'tasks-imprt'"),
    (("      num_hidden_layers: 1\n", "      num_hidden_layers: zero\n"),
     r"r.yaml:8: stages\[0\].config.num_hidden_layers: Input should be a valid integer"),
    (("      source: ../data/swe_tiny.jsonl\n", "      source: ${stages.later}\n"),
     r"r.yaml:12: stages\[1\].config.source: \$\{stages.later\} names no stage"),
    (("  - name: tasks\n", "  - name: model\n"), r"r.yaml:9: stages\[1\].name: duplicate stage name 'model'"),
    (("      source: ../data/swe_tiny.jsonl\n", "      source: ../data/nope.jsonl\n"),
     r"r.yaml:12: stages\[1\].config.source: file not found: .*nope.jsonl \(paths in a recipe are relative to"),
])
def test_bad_recipes_exit_2_naming_file_line_and_key(recipe_dir, swepost, edit, expected):
    path = recipe_dir / "recipes" / "r.yaml"
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    for args in (["run", str(path)], ["recipes", "validate", str(path)]):
        r = swepost(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert __import__("re").search(expected, r.stderr + r.stdout), r.stderr + r.stdout
        assert "Traceback" not in r.stderr
    assert json.loads(swepost("artifacts", "ls", "--json").stdout) == []


def test_reference_to_a_later_stage_is_rejected(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmodel: ${stages.tasks}\nstages:\n"
                    "  - {name: model, stage: tiny-model, config: {name: '${model}'}}\n"
                    "  - {name: tasks, stage: tasks-import, config: {source: a.jsonl}}\n")
    with pytest.raises(BadInput, match=r"r.yaml:4: stages\[0\].config.name: \$\{stages.tasks\} names a later stage"):
        recipes.load_recipe(path)


def test_a_failing_stage_keeps_the_finished_ones(recipe_dir, swepost):
    path = recipe_dir / "recipes" / "r.yaml"
    (recipe_dir / "data" / "swe_tiny.jsonl").write_text('{"instance_id": "a"}\n')
    r = swepost("run", str(path))
    assert r.returncode == 2 and "swe_tiny.jsonl:1: problem_statement: required field missing" in r.stderr
    ids = [a["id"] for a in json.loads(swepost("artifacts", "ls", "--json").stdout)]
    assert len(ids) == 1 and ids[0].startswith("demo-model@")


def test_shipped_recipes_validate(repo_root, swepost):
    shipped = sorted((repo_root / "recipes").glob("*.yaml"))
    assert any(p.name == "quickstart.yaml" for p in shipped)
    r = swepost("recipes", "validate", *map(str, shipped))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("✓") == len(shipped)


def test_recipes_validate_reads_a_scripted_policy_file_and_names_its_line(tmp_path, swepost):
    (tmp_path / "turns.jsonl").write_text('{"tool_calls": [{"name": "bash", "arguments": {"command": "ls"}}]}\n'
                                          '{"tool_calls": [{"name": "submit", "argument": {}}]}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: x\nstages:\n  - name: c\n    stage: collect\n    config:\n      tasks: t\n"
                      "      policy: scripted\n      policy_args: {path: turns.jsonl}\n")
    r = swepost("recipes", "validate", str(recipe), check=2)
    assert f"{tmp_path / 'turns.jsonl'}:2:" in r.stdout + r.stderr and "unknown key 'argument'" in r.stdout + r.stderr
    (tmp_path / "turns.jsonl").write_text('{"tool_calls": [{"name": "submit", "arguments": {}}]}\n')
    swepost("recipes", "validate", str(recipe), check=0)


def test_unknown_key_beside_name_stage_config_exits_2(tmp_path, swepost):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nstages:\n  - name: a\n    stage: tiny-model\n    extra: 1\n    config: {}\n")
    for args in (["run", str(path), "--dry-run"], ["recipes", "validate", str(path)]):
        r = swepost(*args)
        assert r.returncode == 2, r.stderr
        assert "r.yaml:5: stages[0].extra: unknown key (expected one of: config, name, stage)" in r.stderr
        assert "Traceback" not in r.stderr


_WORDS = ["name", "stage", "stages", "config", "model", "seed", "description", "source", "tasks", "limits",
          "max_turns", "policy", "policy_args", "path", "tiny-model", "tasks-import", "collect", "x", "a.b",
          "environment", "reward", "backend", "scripted", "hf", "os:path", ":", "a.", "..x:y", "nul\0l", "rl"]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**70), st.floats(allow_nan=True),
                     st.sampled_from(_WORDS + ["${stages.a}", "${model}", "${seed}", "${", "${}", "${stages.}",
                                               "../x.jsonl", "", "@", "a@b"]),
                     st.text(max_size=8))
_TREES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(_WORDS), st.integers(0, 3)), inner,
                                                 max_size=5)), max_leaves=25)
_COMPONENTS = st.fixed_dictionaries({}, optional={
    "tasks": st.sampled_from(["${stages.a}", "t", "${model}"]), "model": _SCALARS, "policy": _SCALARS,
    "policy_args": st.dictionaries(st.sampled_from(["path", "model", "api_key", "x"]), _SCALARS) | _SCALARS,
    "environment": _SCALARS, "reward": _SCALARS, "backend": _SCALARS, "concurrency": _SCALARS})
_RECIPES = st.fixed_dictionaries({"name": _SCALARS, "stages": st.lists(st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "a b", ""]), "stage": st.sampled_from(["tiny-model", "tasks-import",
                                                                            "collect", "rl", "nope"])},
    optional={"config": _TREES | _COMPONENTS, "extra": _SCALARS}), max_size=3) | _TREES}, optional={"model": _SCALARS,
                                                                                       "seed": _SCALARS})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(_TREES, _RECIPES), sets=st.lists(st.sampled_from(
    ["seed=2", "stages.a.seed=1", "stages.a=3", "stages=1", "x=1", "name.y=2", "stages.a.limits.max_turns=q"]),
    max_size=2))
def test_fuzzed_recipes_load_or_exit_2(tmp_path, store, monkeypatch, doc, sets):
    """Any YAML document gives a recipe (and a plan) or a BadInput naming the problem, never another exception."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        recipes.plan(recipes.load_recipe(path, sets), store)
    except BadInput as e:
        assert e.render().strip()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("abn:-[]{}&*!|>'\"%@`#,? \n\t0.$")), max_size=60))
def test_fuzzed_recipe_text_loads_or_exit_2(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    try:
        recipes.load_recipe(path)
    except BadInput as e:
        assert e.render().strip()


def test_unknown_key_in_rft_round_settings_exits_2_before_any_work(tmp_path, repo_root, swepost):
    path = tmp_path / "r.yaml"
    path.write_text(f"name: x\nstages:\n  - {{name: tasks, stage: tasks-import, config: {{source: "
                    f"{repo_root / 'data' / 'swe_tiny.jsonl'}}}}}\n"
                    "  - name: rft\n    stage: rft\n    config:\n      tasks: ${stages.tasks}\n      model: org/m\n"
                    "      sft:\n        lerning_rate: 1\n")
    r = swepost("run", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "r.yaml:9: stages[1].config.sft: unknown key 'lerning_rate' for the sft stage (expected one of:" in r.stderr
    assert json.loads(swepost("artifacts", "ls", "--json").stdout) == []
