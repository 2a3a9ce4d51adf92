"""`swepost corpus index`: a corpus JSONL -> a BM25 index artifact."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
