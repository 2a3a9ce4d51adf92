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
}
SANDBOXES = {
    "docker": "swepost.sandbox.docker:DockerSandbox",
    "bwrap": "swepost.sandbox.bwrap:BwrapSandbox",
    "local": "swepost.sandbox.local:LocalSandbox",
}


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
