"""Recipes: a base model and an ordered list of named stages, run with caching and resume.

A stage's config may refer to earlier outputs: `${stages.NAME}` is the artifact id that stage produced,
`${model}`, `${seed}` and `${recipe}` the recipe's own fields. Each stage's cache key hashes its resolved
config (input artifacts by id, input files by content) and the swepost version; a stored artifact with that
key is reused, so a finished recipe runs again without doing any work.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from swepost import __version__
from swepost.artifacts import Artifact, ArtifactStore, canonical_json, sha256_path
from swepost.config import ConfigLayers, KeyPath, dotted, input_fields, parse_set, validate
from swepost.errors import BadInput
from swepost.stages import STAGES, StageSpec, get_stage

_REF = re.compile(r"\$\{([^}]*)\}")
_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class RecipeStage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="this step's name; later steps refer to its output as ${stages.NAME}")
    stage: str = Field(description=f"the stage to run: {', '.join(STAGES)}")
    config: dict[str, Any] = Field(default_factory=dict, description="the stage's config (its --config keys)")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(description="recipe name; default prefix of the artifacts it writes")
    description: str = ""
    model: str | None = Field(None, description="base model: an artifact reference, a local path or a hub id")
    seed: int = 0
    stages: list[RecipeStage] = Field(min_length=1)


@dataclass
class LoadedRecipe:
    recipe: Recipe
    path: Path
    layers: ConfigLayers

    def where(self, loc: KeyPath) -> str | None:
        return self.layers.where(loc)


@dataclass
class Step:
    index: int
    name: str
    spec: StageSpec
    config: BaseModel | None  # None while an earlier step it depends on has not run
    key: str | None
    action: str  # "reuse" | "run"
    artifact: Artifact | None = None
    waits_on: str | None = None


def load_recipe(path: str | Path, sets: list[str] | None = None) -> LoadedRecipe:
    """Parse and check a recipe; `--set` keys address stages by name: `stages.NAME.key=value`."""
    path = Path(path)
    layers = ConfigLayers()
    layers.add_yaml(path)
    if not isinstance(layers.data, dict):
        raise BadInput("a recipe is a mapping with name, model and stages", file=str(path))
    stages = layers.data.get("stages")
    names = [s.get("name") if isinstance(s, dict) else None for s in stages] if isinstance(stages, list) else []
    for expr in sets or []:
        parts, value = parse_set(expr)
        if parts[0] == "stages" and len(parts) >= 3:
            if parts[1] not in names:
                raise BadInput(f"--set {expr}: no stage named {parts[1]!r} (stages: {', '.join(map(str, names))})")
            parts = ["stages", names.index(parts[1]), "config", *parts[2:]]
            _set_path(layers.data, parts, value)
            layers.origin[tuple(parts)] = f"--set {expr}"
        else:
            layers.set(parts, value, f"--set {expr}")
    recipe = validate(Recipe, layers.data, layers.where)
    loaded = LoadedRecipe(recipe, path, layers)
    for loc, ref in _refs(recipe.model, ("model",)):
        if not (ref.startswith("stages.") and ref.split(".", 1)[1] in names):
            _fail(loaded, loc, f"${{{ref}}}: the base model can only name a stage's output (stages.NAME)")
    seen: set[str] = set()
    for i, st in enumerate(recipe.stages):
        if not _STAGE_NAME.match(st.name):
            _fail(loaded, (("stages", i, "name")), f"stage name {st.name!r}: letters, digits, '-' and '_'")
        if st.name in seen:
            _fail(loaded, ("stages", i, "name"), f"duplicate stage name {st.name!r}")
        if st.stage not in STAGES:
            _fail(loaded, ("stages", i, "stage"), f"unknown stage {st.stage!r} (known: {', '.join(STAGES)})")
        for loc, ref in _refs(st.config, ("stages", i, "config")):
            if ref == "model":
                ref = next((r for _, r in _refs(recipe.model, ()) if r.split(".", 1)[1] not in seen), ref)
            if ref.startswith("stages."):
                target = ref.split(".", 1)[1]
                if target not in seen:
                    later = "a later" if target in names else "no"
                    _fail(loaded, loc, f"${{{ref}}} names {later} stage; only earlier stages can be used")
            elif ref not in ("model", "seed", "recipe"):
                _fail(loaded, loc, f"unknown reference ${{{ref}}} (use stages.NAME, model, seed or recipe)")
        seen.add(st.name)
        # check the stage's config now, with references standing in as text
        _stage_config(loaded, i, {n: f"<{n}>" for n in seen}, check_only=True)
    return loaded


def plan(loaded: LoadedRecipe, store: ArtifactStore, *, from_stage: str | None = None) -> list[Step]:
    """Which steps would run and which reuse a stored artifact, without running anything."""
    return list(_walk(loaded, store, from_stage, execute=None))


def run(loaded: LoadedRecipe, store: ArtifactStore, *, from_stage: str | None = None,
        on_step: Callable[[Step, str], None] | None = None) -> list[Step]:
    """Run the recipe; each finished step is in the store (and its cache key recorded) before the next."""
    return list(_walk(loaded, store, from_stage, execute=on_step or (lambda step, event: None)))


def _walk(loaded: LoadedRecipe, store: ArtifactStore, from_stage: str | None, execute):
    recipe = loaded.recipe
    names = [s.name for s in recipe.stages]
    if from_stage is not None and from_stage not in names:
        raise BadInput(f"--from {from_stage}: no such stage (stages: {', '.join(names)})")
    forced = False
    outputs: dict[str, str] = {}
    for i, st in enumerate(recipe.stages):
        spec = get_stage(st.stage)
        forced = forced or st.name == from_stage
        waits_on = next((n for n in _stage_refs(st.config, recipe) if n not in outputs), None)
        if waits_on:
            yield Step(i, st.name, spec, None, None, "run", waits_on=waits_on)
            continue
        config = _stage_config(loaded, i, outputs)
        key = cache_key(spec, config, store)
        cached = None if forced else store.cached(key)
        step = Step(i, st.name, spec, config, key, "reuse" if cached else "run", cached)
        if execute is not None:
            if cached is None:
                execute(step, "start")
                step.artifact = spec.runner()(config, store)
                store.remember(key, step.artifact)
            execute(step, "done")
        if step.artifact is not None:
            outputs[st.name] = step.artifact.id
        yield step


def cache_key(spec: StageSpec, config: BaseModel, store: ArtifactStore) -> str:
    """hash(stage, resolved config, input artifact ids, input file contents, swepost version)."""
    model = type(config)
    data = config.model_dump(mode="json")
    inputs = {}
    for field in input_fields(model, "artifact"):
        if data.get(field) is not None:
            inputs[field] = data[field] = store.resolve(data[field]).id
    files = {}
    for field in input_fields(model, "file"):
        if data.get(field) is not None:
            path = Path(data.pop(field))
            if not path.exists():
                raise BadInput(f"{field}: file not found: {path}")
            files[field] = sha256_path(path)
    for field in input_fields(model, "path"):
        data.pop(field, None)
    body = {"stage": spec.name, "config": data, "inputs": inputs, "files": files, "swepost": __version__}
    return hashlib.sha256(canonical_json(body)).hexdigest()[:20]


def _stage_config(loaded: LoadedRecipe, i: int, outputs: dict[str, str], check_only: bool = False):
    recipe, st = loaded.recipe, loaded.recipe.stages[i]
    spec = get_stage(st.stage)
    model = spec.config_model()
    values: dict[str, Any] = {"seed": recipe.seed, "recipe": recipe.name,
                              **{f"stages.{k}": v for k, v in outputs.items()}}
    values["model"] = _interpolate(recipe.model, values)  # the base model may be an earlier stage's output
    data = _interpolate(st.config, values)
    if "name" in model.model_fields and "name" not in data:
        data["name"] = f"{recipe.name}-{st.name}"
    if "seed" in model.model_fields and "seed" not in data:
        data["seed"] = recipe.seed
    # input files in a recipe are relative to the recipe's folder, so a recipe runs from anywhere
    for field in input_fields(model, "file") + input_fields(model, "path"):
        if isinstance(data.get(field), str) and not check_only:
            data[field] = str((loaded.path.parent / data[field]).resolve())
    return validate(model, data, loaded.where, prefix=("stages", i, "config"))


def _interpolate(value: Any, values: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, values) for v in value]
    if isinstance(value, str):
        whole = _REF.fullmatch(value.strip())
        if whole:  # a lone reference keeps its type (${seed} stays an int)
            return values.get(whole.group(1).strip(), value)
        return _REF.sub(lambda m: str(values.get(m.group(1).strip(), m.group(0))), value)
    return value


def _refs(value: Any, at: KeyPath) -> list[tuple[KeyPath, str]]:
    if isinstance(value, dict):
        return [r for k, v in value.items() for r in _refs(v, (*at, k))]
    if isinstance(value, list):
        return [r for i, v in enumerate(value) for r in _refs(v, (*at, i))]
    if isinstance(value, str):
        return [(at, m.group(1).strip()) for m in _REF.finditer(value)]
    return []


def _stage_refs(config: dict, recipe: Recipe) -> list[str]:
    """Names of the stages a step's config uses, directly or through ${model}."""
    refs = [r for _, r in _refs(config, ())]
    if "model" in refs:
        refs += [r for _, r in _refs(recipe.model, ())]
    return [r.split(".", 1)[1] for r in refs if r.startswith("stages.")]


def _set_path(data: dict, parts: list, value: Any) -> None:
    node: Any = data
    for p, after in zip(parts[:-1], parts[1:], strict=True):
        if not isinstance(node[p] if isinstance(p, int) else node.get(p), list if isinstance(after, int) else dict):
            node[p] = {}  # a --set replaces whatever non-mapping stood in its way, as ConfigLayers.set does
        node = node[p]
    node[parts[-1]] = value


def _fail(loaded: LoadedRecipe, loc: KeyPath, message: str):
    origin = loaded.where(loc) or str(loaded.path)
    file, _, line = origin.rpartition(":")
    if not line.isdigit():
        file, line = origin, ""
    raise BadInput(message, file=file, line=int(line) if line else None, key=dotted(loc))
