"""Commands that later issues build: listed in --help with their purpose, exit 1 until then."""

from __future__ import annotations

import typer

from swepost.cli.common import not_built

# name -> (one-line purpose, the issue that builds it)
PENDING = {name: (purpose, issue) for name, purpose, issue in [
    ("rl", "Reinforcement learning (GRPO/DAPO) from test rewards (RLVR) or a judge (RLAIF).", 7),
]}


def _stub(name: str, issue: int):
    def command(ctx: typer.Context) -> None:
        not_built(name, issue)

    return command


def register(app: typer.Typer, name: str) -> None:
    purpose, issue = PENDING[name]
    app.command(name, help=purpose, short_help=purpose, add_help_option=True,
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(_stub(name, issue))
