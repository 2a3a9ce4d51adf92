"""`swepost filter`: keep the trajectories that pass the rules and write SFT data, with a table of why."""

from __future__ import annotations

from typing import Annotated

import typer

from swepost.cli.common import (
    ConfigOpt,
    JsonOpt,
    PrintConfigOpt,
    SetOpt,
    console,
    print_config,
    report,
    resolve_config,
    store,
)


def filter_cmd(
    trajectories: Annotated[str | None, typer.Argument(
        metavar="TRAJS", help="Trajectories (or eval) artifact: name, name@version, prefix or path.",
        show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Output artifact name [default: sft-data].",
                                             show_default=False)] = None,
    min_reward: Annotated[float | None, typer.Option(help="Keep episodes with reward >= this instead of "
                                                     "requiring RESOLVED_FULL.", show_default=False)] = None,
    max_turns: Annotated[int | None, typer.Option(help="Drop episodes with more model turns.",
                                                  show_default=False)] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Drop episodes with more prompt + completion tokens.",
                                                   show_default=False)] = None,
    max_per_task: Annotated[int | None, typer.Option(help="At most N episodes per task, fewest turns first.",
                                                     show_default=False)] = None,
    format_errors: Annotated[str | None, typer.Option(help="Turns answered only with errors: mask (kept in "
                                                      "context, out of the loss) or drop [default: mask].",
                                                      show_default=False)] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_config_: PrintConfigOpt = False,
    as_json: JsonOpt = False,
):
    """Keep the trajectories that pass the rules (resolved, submitted, turn and token limits, no duplicates,
    a per-task cap) and write them as SFT data in TRL's conversational format with tools. Other rules:
    --set require_resolved=false, require_submitted=false, dedupe=false."""
    from swepost.stages import get_stage
    from swepost.stages.filter import FilterConfig

    cfg = resolve_config(FilterConfig, config, set_, {
        "trajectories": trajectories, "name": name, "min_reward": min_reward, "max_turns": max_turns,
        "max_tokens": max_tokens, "max_per_task": max_per_task, "format_errors": format_errors})
    if print_config_:
        return print_config(cfg)
    art = get_stage("filter").runner()(cfg, store())
    if not as_json:
        console.print(summary_table(art.stats))
    report(art, as_json)


def summary_table(stats: dict):
    from rich.table import Table

    table = Table(title="filter", title_justify="left")
    table.add_column("episodes")
    table.add_column("count", justify="right")
    table.add_row("[green]kept[/]", str(stats.get("kept", 0)))
    for reason, count in stats.get("dropped_by_reason", {}).items():
        table.add_row(f"dropped: {reason}", str(count))
    table.add_section()
    table.add_row("total", str(stats.get("episodes", 0)))
    if stats.get("masked_turns"):
        table.add_row("masked turns (kept episodes)", str(stats["masked_turns"]))
    if stats.get("dropped_turns"):
        table.add_row("dropped turns (kept episodes)", str(stats["dropped_turns"]))
    return table
