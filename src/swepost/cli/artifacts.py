"""`swepost artifacts ...`: list, show, trace, verify and remove what the store holds."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from swepost.cli.common import JsonOpt, console, err_console, store

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
RefArg = Annotated[str, typer.Argument(help="name (latest), name@version, a version prefix, or a folder path.")]


@app.command("ls")
def ls_cmd(
    kind: Annotated[str | None, typer.Option(help="Only this kind (tasks, trajectories, sft-data, "
                                                "checkpoint, eval).", show_default=False)] = None,
    name: Annotated[str | None, typer.Option(help="Only versions of this name.", show_default=False)] = None,
    as_json: JsonOpt = False,
):
    """List stored artifacts, oldest first."""
    st = store()
    arts = [a for a in st.all() if (kind is None or a.kind == kind) and (name is None or a.name == name)]
    if as_json:
        print(json.dumps([{"id": a.id, "kind": a.kind, "created": a.created, "parents": a.parents,
                           "stats": a.stats, "path": str(a.path)} for a in arts]))
        return
    if not arts:
        console.print(f"no artifacts in {st.root}")
        return
    from rich.table import Table

    table = Table(title=str(st.root))
    for col in ("id", "kind", "created"):
        table.add_column(col, no_wrap=True)
    for col in ("stats", "parents"):
        table.add_column(col, overflow="fold")
    for a in arts:
        stats = ", ".join(f"{k}={v}" for k, v in list(a.stats.items())[:3] if isinstance(v, (int, float)))
        table.add_row(a.id, a.kind, a.created[:16].replace("T", " "), stats, ", ".join(a.parents))
    console.print(table)


@app.command("show")
def show_cmd(ref: RefArg):
    """Print an artifact's manifest (what made it, from what, and the hash of every file)."""
    art = store().resolve(ref)
    print(json.dumps({**art.manifest, "path": str(art.path)}, indent=2, ensure_ascii=False))


@app.command("lineage")
def lineage_cmd(ref: RefArg):
    """Print the tree of parents, down to the tasks and base models it came from."""
    from rich.tree import Tree

    st = store()
    tree_data = st.lineage(st.resolve(ref))

    def label(node: dict) -> str:
        if "missing" in node:
            return f"[red]{node['missing']} (missing from the store)[/]"
        if "cycle" in node:
            return f"[red]{node['cycle']} (cycle)[/]"
        a = node["artifact"]
        stage = a.manifest.get("producer", {}).get("stage", "?")
        return f"[bold]{a.id}[/] [dim]{a.kind} · {stage} · {a.created}[/]"

    def build(node: dict, into) -> None:
        for parent in node.get("parents", []):
            build(parent, into.add(label(parent)))

    root = Tree(label(tree_data))
    build(tree_data, root)
    console.print(root)


@app.command("verify")
def verify_cmd(ref: RefArg):
    """Re-hash every file: report any edited, missing or extra file (exit 1 if any)."""
    st = store()
    art = st.resolve(ref)
    problems = st.verify(art)
    if not problems:
        console.print(f"[green]ok[/] {art.id}: {len(art.manifest.get('files', {}))} files match the manifest")
        return
    for problem, rel in problems:
        err_console.print(f"[red]{problem}[/]: {rel}")
    err_console.print(f"{art.id} at {art.path}: {len(problems)} problem(s)")
    raise typer.Exit(1)


@app.command("rm")
def rm_cmd(ref: RefArg,
           force: Annotated[bool, typer.Option(help="Remove even if other artifacts name it as a parent.")] = False):
    """Remove one artifact version."""
    st = store()
    art = st.resolve(ref)
    st.remove(art, force=force)
    console.print(f"removed {art.id}")


@app.command("gc")
def gc_cmd(everything: Annotated[bool, typer.Option("--all", help="Also remove writes still in progress, and "
                                                    "every remembered file hash.")] = False):
    """Remove unfinished writes left by crashed runs, cache entries of removed artifacts, and remembered file
    hashes (cache/hashes) of paths that are gone."""
    from swepost.fingerprint import hash_memo, prune_hash_memo

    st = store()
    removed = st.gc(everything=everything)
    hashes = prune_hash_memo(hash_memo(st.root), everything=everything)
    console.print(f"removed {len(removed['staging'])} unfinished write(s), "
                  f"{len(removed['cache'])} dangling cache entr{'y' if len(removed['cache']) == 1 else 'ies'}, "
                  f"{len(hashes)} file hash record(s)")
