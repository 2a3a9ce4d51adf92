"""The `swepost` command line: thin typer commands that build a config and call a stage.

Importing this package must stay cheap (no torch, trl, docker or datasets): `swepost --help` is run often.
"""

from __future__ import annotations

import sys
import warnings
from typing import Annotated

import typer

from swepost import __version__
from swepost.cli import artifacts, corpus, filter, grade, model, recipes, rft, rl, rollouts, sandbox, serve, sft, tasks
from swepost.cli.view import report_cmd, view_cmd
from swepost.errors import BadInput, WorkFailed


def _home_help() -> str:
    from swepost.artifacts import default_home

    return (f"Artifacts live in $SWEPOST_HOME (default: $XDG_DATA_HOME/swepost or ~/.local/share/swepost; "
            f"here: {default_home()}).")


app = typer.Typer(
    name="swepost",
    help="Post-train open-weight language models into software-engineering agents.\n\n"
    "Each stage reads and writes versioned artifacts; `swepost run RECIPE.yaml` chains them. " + _home_help(),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # help texts say "[default: x]"; no markup to interpret
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"swepost {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False):
    pass


app.add_typer(tasks.app, name="tasks", help="Import, check and list task sets (SWE-bench format).")
app.command("collect", help="Run a policy on tasks in sandboxes and save graded trajectories (crash-safe, "
            "resumable).")(rollouts.collect_cmd)
app.command("filter", help="Keep the trajectories that pass the rules; write SFT data in TRL's format.")(
    filter.filter_cmd)
app.command("sft", help="Supervised fine-tuning on TRL: assistant-only loss, LoRA, packing, DeepSpeed, resume.")(
    sft.sft_cmd)
app.command("rl", help="Reinforcement learning (GRPO/DAPO on TRL) in sandboxes, rewards from hidden tests.")(
    rl.rl_cmd)
app.command("rft", help="Rejection fine-tuning rounds: collect with the current model, filter, SFT.")(rft.rft_cmd)
app.command("eval", help="Evaluate a policy on a task set: resolved rate, pass@k, SWE-bench predictions.")(
    rollouts.eval_cmd)
app.command("run", help="Run a recipe: its stages in order, reusing every stage already done.")(recipes.run_cmd)
app.add_typer(recipes.app, name="recipes", help="Check recipe files without running them.")
app.add_typer(artifacts.app, name="artifacts", help="List, inspect, verify and remove stored artifacts.")
app.add_typer(grade.app, name="grade",
              help="Grade a patch against a task's hidden tests in a fresh sandbox; read test logs.")
app.add_typer(sandbox.app, name="sandbox",
              help="Run commands in a hardened sandbox (docker, bubblewrap, local); build base images; gc.")
app.add_typer(model.app, name="model", help="Build the embedded tiny model used by tests and the demo.")
app.add_typer(corpus.app, name="corpus", help="Index a corpus (JSONL passages) for the search environment.")
app.add_typer(serve.app, name="serve", help="Long-running servers on loopback: the retriever (Search-R1 API).")
app.command("view", help="A static viewer of an artifact's episodes and run curves; --serve: on loopback.")(view_cmd)
app.command("report", help="A Markdown report with PNG plots of an eval, rl, rft or trajectories artifact.")(report_cmd)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main() -> None:
    warnings.showwarning = _show_warning  # one line for people, not a source location
    try:
        app()
    except BadInput as e:
        print(f"error: {e.render()}", file=sys.stderr)
        sys.exit(2)
    except WorkFailed as e:
        print(f"failed: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
