"""`swepost rft`: rejection fine-tuning rounds (collect -> filter -> sft) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from swepost.cli.common import ConfigOpt, JsonOpt, PrintConfigOpt, SetOpt, print_config, resolve_config, run_stage


def rft_cmd(
    tasks: Annotated[str | None, typer.Argument(help="Tasks artifact to sample on.", show_default=False)] = None,
    model: Annotated[str | None, typer.Option(help="Starting model: checkpoint artifact, folder or hub id.",
                                              show_default=False)] = None,
    rounds: Annotated[int | None, typer.Option(help="Rounds at most [default: 2].", show_default=False)] = None,
    samples: Annotated[int | None, typer.Option("--samples", "-k", help="Episodes per task per round "
                                                "[default: 4].", show_default=False)] = None,
    policy: Annotated[str | None, typer.Option(help="hf | openai | module:Class [default: hf].",
                                               show_default=False)] = None,
    repos: Annotated[Path | None, typer.Option(help="Folder of owner__name git repos (or .bundle files).",
                                               show_default=False)] = None,
    backend: Annotated[str | None, typer.Option(help="auto | docker | bwrap | local.", show_default=False)] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-j", help="Episodes at once.",
                                                    show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Prefix of the rounds' artifacts [default: "
                                             "rft].", show_default=False)] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_config_: PrintConfigOpt = False,
    as_json: JsonOpt = False,
):
    """Rejection fine-tuning: each round samples with the current model, keeps what passed, fine-tunes on it;
    stops early when a round resolves nothing new. Filter and SFT settings: --set filter.KEY=V, sft.KEY=V."""
    from swepost.stages.rft import RftConfig

    cfg = resolve_config(RftConfig, config, set_, {
        "tasks": tasks, "model": model, "rounds": rounds, "samples": samples, "policy": policy, "repos": repos,
        "backend": backend, "concurrency": concurrency, "name": name})
    if print_config_:
        return print_config(cfg)
    run_stage("rft", cfg, as_json)
