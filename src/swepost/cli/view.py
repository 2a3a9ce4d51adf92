"""`swepost view` (a static trajectory viewer, or served on loopback) and `swepost report` (Markdown + PNG plots)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from swepost.cli.common import console, err_console, store
from swepost.errors import BadInput

RefArg = Annotated[str, typer.Argument(help="An artifact with trajectories: trajectories, eval, an rl checkpoint, "
                                       "an rft checkpoint (name, name@version, a version prefix or its folder).",
                                       show_default=False)]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Folder to write (default: under $SWEPOST_HOME).",
                                             show_default=False)]


def view_cmd(
    ref: RefArg,
    out: OutOpt = None,
    serve: Annotated[bool, typer.Option("--serve", help="Serve the site on 127.0.0.1 (loopback only) until "
                                        "Ctrl-C, instead of only writing it.")] = False,
    port: Annotated[int, typer.Option("--port", help="Port for --serve (0: any free port).", min=0, max=65535)]
    = 8765,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (site folder, episodes).")] = False,
):
    """Write a self-contained static site of an artifact's episodes: a list (sort, filter, text search, keys),
    each episode's conversation, diff beside the gold patch, test statuses, judge scores or EM/F1, and for rl and
    rft the run's curves and lineage. Open index.html (file:// works) or use --serve."""
    from swepost.viewer.site import build_site, default_out

    s = store()
    art = s.resolve(ref)
    built = build_site(s, art, out or default_out(s, art))
    if as_json:
        print(json.dumps({"id": art.id, **built}))
    else:
        console.print(f"[green]wrote[/] a view of [bold]{art.id}[/] ({built['episodes']} episodes, {built['view']})")
        console.print(f"  {Path(built['index']).as_uri()}")
    if serve:
        from swepost.viewer.server import make_server

        try:
            server = make_server(built["out"], port)
        except OSError as e:
            raise BadInput(f"--port {port}: cannot listen on 127.0.0.1:{port} ({e.strerror}); --port 0 takes a "
                           "free one") from None
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        err_console.print(f"serving {built['out']} on {url} (loopback only; Ctrl-C stops)")
        print(url, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


def report_cmd(
    ref: Annotated[str, typer.Argument(help="An eval, rl, rft or trajectories artifact.", show_default=False)],
    out: OutOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (report path, plots).")] = False,
):
    """Write a Markdown report (report.md) with PNG plots (matplotlib) of an artifact's episodes, and for rl and
    rft its curves per step or round: for papers and pull requests."""
    from swepost.viewer.report import default_out, write_report

    s = store()
    art = s.resolve(ref)
    written = write_report(s, art, out or default_out(s, art))
    if as_json:
        print(json.dumps({"id": art.id, **written}))
        return
    console.print(f"[green]wrote[/] a report of [bold]{art.id}[/] ({len(written['plots'])} plots)")
    console.print(f"  {written['report']}")
