"""What every command shares: the config options, the store, and how results are printed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

# soft_wrap: messages name files and keys that tests and users grep; never break them across lines
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file of config values "
                                                   "(overrides the defaults).", show_default=False)]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE",
                                                     help="Override one config value, e.g. --set seed=3 "
                                                     "(repeatable; applied after --config).",
                                                     show_default=False)]
PrintConfigOpt = Annotated[bool, typer.Option("--print-config", help="Print the fully resolved config as "
                                              "YAML and exit.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object (artifact id, path, stats) on "
                                       "stdout instead of a summary.")]


def store():
    from swepost.artifacts import ArtifactStore

    return ArtifactStore()


def resolve_config(model, config_file: Path | None, sets: list[str] | None, flags: dict[str, Any]):
    """defaults <- --config FILE <- --set k=v <- flags the user gave (None = not given)."""
    from swepost.config import ConfigLayers

    layers = ConfigLayers()
    if config_file is not None:
        layers.add_yaml(config_file)
    layers.add_sets(sets)
    layers.add_flags(flags)
    return layers.resolve(model)


def print_config(config) -> None:
    """The resolved config as YAML, credentials redacted: terminals are logged, shared and pasted in issues."""
    from swepost.artifacts import redact_secrets
    from swepost.config import to_yaml

    sys.stdout.write(to_yaml(redact_secrets(config.model_dump(mode="json"))))


def run_stage(stage: str, config, as_json: bool) -> None:
    """Run one registered stage on a resolved config and report the artifact it wrote."""
    from swepost.stages import get_stage

    art = get_stage(stage).runner()(config, store())  # long stages draw their own progress on stderr
    report(art, as_json)


def report(art, as_json: bool, **extra: Any) -> None:
    if as_json:
        print(json.dumps({"id": art.id, "kind": art.kind, "path": str(art.path), "stats": art.stats, **extra}))
        return
    stats = ", ".join(f"{k}={v}" for k, v in art.stats.items() if not isinstance(v, (dict, list)))
    console.print(f"[green]wrote[/] [bold]{art.id}[/] ({art.kind}{', ' + stats if stats else ''})")
    console.print(f"  {art.path}")

