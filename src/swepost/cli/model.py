"""`swepost model tiny`: the embedded default model, because no model can be downloaded in tests."""

from __future__ import annotations

from typing import Annotated

import typer

from swepost.cli.common import (
    ConfigOpt,
    JsonOpt,
    PrintConfigOpt,
    SetOpt,
    print_config,
    resolve_config,
    run_stage,
)

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)


@app.command("tiny")
def tiny_cmd(
    name: Annotated[str | None, typer.Option("--name", "-n", help="Output artifact name "
                                                "[default: tiny-qwen2].", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the weights [default: 0].",
                                                show_default=False)] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_config_: PrintConfigOpt = False,
    as_json: JsonOpt = False,
):
    """Write a tiny Qwen2 model (~200k parameters, local BPE tokenizer, Qwen2.5 chat template) as a
    checkpoint artifact; deterministic for a seed."""
    from swepost.stages.tiny_model import TinyModelConfig

    cfg = resolve_config(TinyModelConfig, config, set_, {"name": name, "seed": seed})
    if print_config_:
        return print_config(cfg)
    run_stage("tiny-model", cfg, as_json)
