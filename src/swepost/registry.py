"""Components chosen by a short name or an import path (`docker`, `mypkg.mod:MyPolicy`), in one place."""

from __future__ import annotations

import importlib

from swepost.errors import BadInput

POLICIES = {
    "openai": "swepost.policies.openai:OpenAIPolicy",
    "hf": "swepost.policies.hf:HFPolicy",
    "scripted": "swepost.policies.scripted:ScriptedPolicy",
    "oracle": "swepost.policies.oracle:OraclePolicy",
}
ENVIRONMENTS = {
    "swe": "swepost.envs.swe:SweEnvironment",
    "codeqa": "swepost.envs.codeqa:CodeQAEnvironment",
    "search": "swepost.envs.search:SearchEnvironment",
    "remote": "swepost.envs.remote:RemoteEnvironment",  # an environment server's (`swepost serve env`)
}
SANDBOXES = {
    "docker": "swepost.sandbox.docker:DockerSandbox",
    "bwrap": "swepost.sandbox.bwrap:BwrapSandbox",
    "local": "swepost.sandbox.local:LocalSandbox",
}

TASK_KINDS = {  # what a task's `kind` means: how rows import, what makes one unusable, its environment
    "swe": "swepost.taskkinds.swe:SWE",
    "codeqa": "swepost.taskkinds.codeqa:CODEQA",
    "search": "swepost.taskkinds.search:SEARCH",
}
REWARDS = {
    "env": "",  # the environment's own grade (rl): no module
    "judge": "",  # the same, for an environment graded by a judge (codeqa): RLAIF, checked when rl starts
}
# Config fields that name a component, wherever a stage has them: (the registry of short names, what it is)
COMPONENT_FIELDS = {
    "policy": (POLICIES, "policy"),
    "environment": (ENVIRONMENTS, "environment"),
    "backend": ({"auto": "", **SANDBOXES}, "sandbox backend"),
    "reward": (REWARDS, "reward"),
    "kind": (TASK_KINDS, "task kind"),  # tasks import's kind of rows that do not say
}
# policy_args that name local inputs: files and folders are relative to the recipe and enter cache keys by
# content; "model" args may also be artifacts or hub ids
POLICY_INPUTS = {
    "scripted": {"path": "file"},
    "hf": {"model": "model"},
}
# keys inside a stage's settings blocks that name local files or folders: relative to the recipe, and in cache
# keys by content (a judge's prompt file, an environment's own prompts folder)
NESTED_INPUTS = {
    "judge": ("prompt",),
    "environment_args": ("prompts_dir", "site"),  # site: a browse environment's folder of pages (a URL is kept)
}


def check_component(name: str, registry: dict[str, str], what: str) -> str | None:
    """None for a short name of `registry`; the module path for `module:name` / `module.name` when that module
    can be found (without importing it); else BadInput listing the known names."""
    from swepost.fingerprint import module_origin

    if name in registry:
        return None
    if (":" in name or "." in name) and module_origin(name) is not None:
        return name
    known = ", ".join(k for k in registry if k)
    raise BadInput(f"unknown {what} {name!r} (known: {known}, or module:name of an importable module)")


def load_component(name: str, registry: dict[str, str], what: str):
    """The class named `name` in `registry`, or at the import path `module:Class` / `module.Class`."""
    target = registry.get(name, name)
    module, sep, attr = target.partition(":")
    if not sep:
        module, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        known = ", ".join(registry)
        raise BadInput(f"unknown {what} {name!r} (known: {known}, or module:Class): {e}") from None
