"""Recipes: a base model and an ordered list of named stages, run with caching and resume.

A stage's config may refer to earlier outputs: `${stages.NAME}` is the artifact id that stage produced,
`${model}`, `${seed}` and `${recipe}` the recipe's own fields. Each stage's cache key hashes its resolved
config and what it depends on outside it (`key_parts`: input artifacts by id, files and local models by
content, hub models by revision, plugged-in modules by source, the sandbox image, swepost's code); a stored
artifact with that key is reused, so a finished recipe runs again without doing any work, and a plan says
which part changed when a stage reruns (`why_rerun`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from swepost.artifacts import Artifact, ArtifactStore, canonical_json, is_secret_key
from swepost.config import ConfigLayers, KeyPath, dotted, file_inputs, input_fields, parse_set, validate
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
    reasons: list[str] = dataclasses.field(default_factory=list)  # why it runs (empty when reused)


def load_recipe(path: str | Path, sets: list[str] | None = None) -> LoadedRecipe:
    """Parse and check a recipe; `--set` keys address stages by name: `stages.NAME.key=value`."""
    path = Path(path)
    layers = ConfigLayers()
    layers.add_yaml(path)
    if not isinstance(layers.data, dict):
        raise BadInput("a recipe is a mapping with name, model and stages", file=str(path))
    for expr in sets or []:
        parts, value = parse_set(expr)
        names = _stage_names(layers.data)  # an earlier --set may have replaced the stages
        if parts[0] == "stages" and len(parts) >= 3:
            if parts[1] not in names:
                raise BadInput(f"--set {expr}: no stage named {parts[1]!r} (stages: {', '.join(map(str, names))})")
            parts = ["stages", names.index(parts[1]), "config", *parts[2:]]
            _set_path(layers.data, parts, value)
            layers.origin[tuple(parts)] = f"--set {expr}"
        else:
            layers.set(parts, value, f"--set {expr}")
    recipe = validate(Recipe, layers.data, layers.where)
    names = [st.name for st in recipe.stages]
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
        _check_inputs(loaded, i)
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
            yield Step(i, st.name, spec, None, None, "run", waits_on=waits_on,
                       reasons=[f"its input {waits_on} runs first"])
            continue
        config = _stage_config(loaded, i, outputs)
        parts = key_parts(spec, config, store)
        key = parts.key
        cached = None if forced else store.cached(key)
        step = Step(i, st.name, spec, config, key, "reuse" if cached else "run", cached)
        if cached is None:
            step.reasons = ([f"--from {from_stage}"] if forced
                            else why_rerun(parts, store.last_run(recipe.name, st.name)))
        if execute is not None:
            if cached is None:
                execute(step, "start")
                step.artifact = spec.runner()(config, store)
                store.remember(key, step.artifact, recipe=recipe.name, step=st.name,
                               parts={"values": parts.values, "about": parts.about})
            execute(step, "done")
        if step.artifact is not None:
            outputs[st.name] = step.artifact.id
        yield step


def cache_key(spec: StageSpec, config: BaseModel, store: ArtifactStore) -> str:
    return key_parts(spec, config, store).key


@dataclass
class KeyParts:
    """What a stage's result depends on: label -> fingerprint (the key hashes these), and label -> what the
    fingerprint is of (a path, a commit), to say why a stage reruns."""

    values: dict[str, str]
    about: dict[str, str]

    @property
    def key(self) -> str:
        return hashlib.sha256(canonical_json(self.values)).hexdigest()[:20]


def key_parts(spec: StageSpec, config: BaseModel, store: ArtifactStore) -> KeyParts:
    """The stage, its resolved config (less what does not change results), input artifacts by id, input files
    and local models by content, hub models by revision, plugged-in modules by source, the sandbox base image
    by id, and swepost's own code."""
    from swepost.fingerprint import code_fingerprint, docker_image_id, module_fingerprint
    from swepost.registry import COMPONENT_FIELDS, POLICY_INPUTS, check_component
    from swepost.sandbox.images import DEFAULT_BASE_IMAGE

    model = type(config)
    data = config.model_dump(mode="json", exclude=set(getattr(model, "NOT_IN_KEY", ())))
    values: dict[str, str] = {"stage": spec.name}
    about: dict[str, str] = {}
    memo = store.root / "cache" / "hashes"
    for field in input_fields(model, "artifact"):
        if data.get(field) is not None:
            values[f"input {field}"] = store.resolve(data.pop(field)).id
    for field in file_inputs(model, data):  # a shipped config's name (deepspeed: zero2) stays in the config text
        _file_part(values, about, f"file {field}", Path(data.pop(field)), memo, field)
    for field in input_fields(model, "path"):
        data.pop(field, None)
    for field in input_fields(model, "model"):
        if isinstance(data.get(field), str):
            _model_part(values, about, f"model {field}", data.pop(field), store, memo)
    for field, (registry, what) in COMPONENT_FIELDS.items():
        name = data.get(field)
        if isinstance(name, str) and check_component(name, registry, what):
            values[f"{what} module"], about[f"{what} module"] = module_fingerprint(name)
    args = data.get("policy_args")
    if isinstance(args, dict):
        for arg, kind in POLICY_INPUTS.get(data.get("policy"), {}).items():
            if isinstance(args.get(arg), str):
                label = f"policy_args.{arg}"
                if kind == "file":
                    _file_part(values, about, label, Path(args.pop(arg)), memo, label)
                else:
                    _model_part(values, about, label, args.pop(arg), store, memo)
    for block, key, value in _nested_inputs(model, data):
        label = f"{block}.{key}"
        data[block].pop(key)
        _file_part(values, about, label, Path(value), memo, label)
    if data.get("backend") in ("auto", "docker"):
        image = docker_image_id(DEFAULT_BASE_IMAGE)  # None without an engine: the stage runs without one too
        if image:
            values["sandbox image"], about["sandbox image"] = image, DEFAULT_BASE_IMAGE
    code = code_fingerprint()
    values["swepost code"], about["swepost code"] = code["hash"], code["commit"]
    for loc, value in _leaves(data):
        if not is_secret_key(loc.rpartition(".")[2]):  # a credential changes no result, and is never stored
            values[f"config {loc}"] = canonical_json(value).decode()
    return KeyParts(values, about)


def _file_part(values: dict, about: dict, label: str, path: Path, memo: Path, field: str) -> None:
    from swepost.fingerprint import path_fingerprint

    if not path.exists():
        raise BadInput(f"{field}: file not found: {path}")
    values[label], about[label] = path_fingerprint(path, memo), str(path)


def _model_part(values: dict, about: dict, label: str, ref: str, store: ArtifactStore, memo: Path) -> None:
    """A checkpoint artifact by id, a local folder by content, else a hub id by its resolved revision."""
    from swepost.fingerprint import hub_revision, path_fingerprint

    path = Path(ref).expanduser()
    if path.is_dir() and not (path / "manifest.json").is_file():
        values[label], about[label] = path_fingerprint(path, memo), str(path)
        return
    try:
        values[label] = "artifact:" + store.resolve(ref).id
    except BadInput:
        values[label], about[label] = f"hub:{ref}@{hub_revision(ref)}", ref


def _leaves(data: Any, at: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf; an empty mapping has none (it means what an absent one does)."""
    if isinstance(data, dict):
        return [leaf for k, v in data.items() for leaf in _leaves(v, f"{at}.{k}" if at else str(k))]
    return [(at, data)]


def why_rerun(new: KeyParts, old: dict | None) -> list[str]:
    """Why a stage runs although the recipe ran before: the parts of its key that changed since the last run
    of the same recipe step, in words."""
    if old is None:
        return ["no stored run"]
    before, about_before = old.get("values", {}), old.get("about", {})
    reasons = []
    for label in sorted(set(new.values) | set(before), key=_label_order):
        a, b = before.get(label), new.values.get(label)
        if a == b:
            continue
        where = new.about.get(label) or about_before.get(label) or ""
        if label == "swepost code":
            was, now = about_before.get(label) or "?", new.about.get(label) or "?"
            how = f"commit {was} → {now}" if was.split("+")[0] != now.split("+")[0] else "uncommitted changes"
            reasons.append(f"swepost code changed ({how})")
        elif label.startswith("config "):
            reasons.append(f"config {label[7:]} changed ({_short(a)} → {_short(b)})")
        elif label.startswith("input "):
            reasons.append(f"input artifact {label[6:]} changed ({a or 'none'} → {b or 'none'})")
        elif label.endswith(" module"):
            reasons.append(f"{label} {where} changed")
        elif label == "sandbox image":
            reasons.append(f"sandbox image {where} changed ({_short(a)} → {_short(b)})")
        else:
            reasons.append(f"{label} {where} changed".replace("  ", " "))
    return reasons or ["the stored artifact is gone"]


def _label_order(label: str) -> tuple[int, str]:
    return (label.startswith("config "), label)


def _short(value: str | None) -> str:
    if value is None:
        return "unset"
    return value if len(value) <= 40 else value[:37] + "..."


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
    base = loaded.path.parent
    for field in file_inputs(model, data) + input_fields(model, "path"):
        if isinstance(data.get(field), str) and not check_only:
            data[field] = str((base / data[field]).resolve())
    for field in input_fields(model, "model"):
        if not check_only:
            data[field] = _local_model(base, data.get(field))
    for arg, kind, value in _policy_inputs(model, data):
        if not check_only:
            data["policy_args"][arg] = str((base / value).resolve()) if kind == "file" else _local_model(base, value)
    for block, key, value in _nested_inputs(model, data):
        if not check_only:
            data[block] = {**data[block], key: str((base / value).resolve())}
    return validate(model, data, loaded.where, prefix=("stages", i, "config"))


def _nested_inputs(model: type[BaseModel], data: dict) -> list[tuple[str, str, str]]:
    """(block, key, value) of the keys inside settings blocks that name local files or folders
    (registry.NESTED_INPUTS: a judge's prompt file, an environment's prompts folder or browse site)."""
    from swepost.registry import NESTED_INPUTS

    out = []
    for block, keys in NESTED_INPUTS.items():
        settings = data.get(block)
        if block in model.model_fields and isinstance(settings, dict):
            out += [(block, key, settings[key]) for key in keys if isinstance(settings.get(key), str)
                    and settings[key] and "://" not in settings[key]]  # a URL (a browse site served) is no file
    return out


def _policy_inputs(model: type[BaseModel], data: dict) -> list[tuple[str, str, str]]:
    """(arg, kind, value) of the policy_args that name local inputs (registry.POLICY_INPUTS), e.g. a scripted
    policy's file."""
    from swepost.registry import POLICY_INPUTS

    args = data.get("policy_args")
    field = model.model_fields.get("policy")
    policy = data.get("policy", field.default if field else None)
    if not isinstance(args, dict) or not isinstance(policy, str):
        return []
    return [(arg, kind, args[arg]) for arg, kind in POLICY_INPUTS.get(policy, {}).items()
            if isinstance(args.get(arg), str)]


def _local_model(base: Path, ref: Any) -> Any:
    """A model reference that names a folder next to the recipe becomes its absolute path; artifact references
    and hub ids stay as they are."""
    if isinstance(ref, str) and ref and not Path(ref).expanduser().is_absolute() and (base / ref).is_dir():
        return str((base / ref).resolve())
    return ref


def _check_inputs(loaded: LoadedRecipe, i: int) -> None:
    """Component names (policy, environment, backend, reward) are known short names or importable modules,
    and input files (FileInput fields, files in policy_args) exist, relative to the recipe."""
    from swepost.registry import COMPONENT_FIELDS, check_component

    st = loaded.recipe.stages[i]
    model = get_stage(st.stage).config_model()
    at = ("stages", i, "config")
    for field, (registry, what) in COMPONENT_FIELDS.items():
        name = st.config.get(field)
        if field in model.model_fields and isinstance(name, str) and not _REF.search(name):
            try:
                check_component(name, registry, what)
            except BadInput as e:
                _fail(loaded, (*at, field), e.detail)
    files = [((*at, f), st.config[f]) for f in file_inputs(model, st.config) if isinstance(st.config[f], str)]
    files += [((*at, "policy_args", arg), value) for arg, kind, value in _policy_inputs(model, st.config)
              if kind == "file"]
    files += [((*at, block, key), value) for block, key, value in _nested_inputs(model, st.config)]
    for loc, value in files:
        if not _REF.search(value) and not (loaded.path.parent / value).exists():
            _fail(loaded, loc, f"file not found: {loaded.path.parent / value} "
                  "(paths in a recipe are relative to the recipe)")
    args = st.config.get("policy_args")
    if st.config.get("policy") == "scripted" and isinstance(args, dict) and isinstance(args.get("path"), str) \
            and not _REF.search(args["path"]):
        from swepost.policies.scripted import read_script

        read_script(loaded.path.parent / args["path"], bool(args.get("per_task")))  # BadInput names file and line


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


def _stage_names(data: dict) -> list:
    stages = data.get("stages")
    return [s.get("name") if isinstance(s, dict) else None for s in stages] if isinstance(stages, list) else []


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
