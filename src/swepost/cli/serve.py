"""`swepost serve ...`: long-running servers on loopback (the retriever)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
