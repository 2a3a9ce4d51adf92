"""`swepost run RECIPE.yaml` and `swepost recipes validate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from swepost.cli.common import JsonOpt, SetOpt, console, err_console, store

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)


def run_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML: a base model and an ordered list of stages.")],
    set_: SetOpt = None,
    from_stage: Annotated[str | None, typer.Option("--from", help="Run this stage and every later one "
                                                      "even if stored.", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (run / reuse per stage) and "
                                          "exit.")] = False,
    as_json: JsonOpt = False,
):
    """Run a recipe's stages in order; a stage whose cache key is stored is reused, not run again."""
    from rich.markup import escape

    from swepost import recipes

    loaded = recipes.load_recipe(recipe, set_)
    st = store()
    if dry_run:
        steps = recipes.plan(loaded, st, from_stage=from_stage)
        if as_json:
            print(json.dumps([_step_json(s) for s in steps]))
            return
        console.print(f"[bold]{loaded.recipe.name}[/] ({recipe}): plan")
        for s in steps:
            what = (f"reuse {s.artifact.id}" if s.action == "reuse"
                    else f"run (after {s.waits_on})" if s.waits_on else "run")
            why = ("" if s.waits_on or not s.reasons else " — no stored run" if s.reasons == ["no stored run"]
                   else f" — reruns: {escape('; '.join(s.reasons))}")
            console.print(f"  {s.index + 1}. {s.name} [dim]({s.spec.name})[/]: {what}{why}")
        return

    def on_step(step, event: str) -> None:
        if as_json:
            return
        if event == "start":
            why = f" ({escape('; '.join(step.reasons))})" if step.reasons else ""
            err_console.print(f"[bold]{step.index + 1}. {step.name}[/] ({step.spec.name}): running…{why}")
        elif step.action == "reuse":
            console.print(f"{step.index + 1}. {step.name}: [cyan]reused[/] {step.artifact.id} (nothing to do)")
        else:
            console.print(f"{step.index + 1}. {step.name}: [green]wrote[/] {step.artifact.id}")

    steps = recipes.run(loaded, st, from_stage=from_stage, on_step=on_step)
    if as_json:
        print(json.dumps({"recipe": loaded.recipe.name, "steps": [_step_json(s) for s in steps]}))
    elif all(s.action == "reuse" for s in steps):
        console.print(f"[bold]{loaded.recipe.name}[/]: every stage was already done; nothing ran.")
    else:
        ran = sum(1 for s in steps if s.action == "run")
        console.print(f"[bold]{loaded.recipe.name}[/]: {ran} stage(s) ran, {len(steps) - ran} reused.")


def _step_json(step) -> dict:
    return {"stage": step.name, "kind": step.spec.name, "action": step.action, "cache_key": step.key,
            "artifact": step.artifact.id if step.artifact else None, "waits_on": step.waits_on,
            "reasons": step.reasons}


@app.command("validate")
def validate_cmd(files: Annotated[list[Path], typer.Argument(help="Recipe files, e.g. recipes/*.yaml.")]):
    """Check recipes without running them: keys, stage names, references, every stage's config."""
    from rich.markup import escape

    from swepost import recipes
    from swepost.errors import BadInput

    bad = 0
    for f in files:
        try:
            loaded = recipes.load_recipe(f)
        except BadInput as e:
            bad += 1
            err_console.print(f"[red]✗[/] {escape(e.render())}")
            continue
        console.print(f"[green]✓[/] {f}: {loaded.recipe.name}, {len(loaded.recipe.stages)} stage(s)")
    if bad:
        raise typer.Exit(2)
