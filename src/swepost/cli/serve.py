"""`swepost serve ...`: long-running servers on loopback (the retriever)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from swepost.cli.common import err_console, store
from swepost.errors import BadInput

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)

INDEX_FOLDER = "index"  # where an index artifact keeps its tantivy folder


def index_folder(ref: str) -> Path:
    """An index artifact (name, name@version, a version prefix or its folder) or a plain index folder."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            return path  # a plain index folder, as `build_index` writes it
        art = store().resolve(str(path))
    elif "/" in ref or ref.startswith((".", "~")):
        raise BadInput("no such index folder", file=ref)
    else:
        art = store().resolve(ref)
    if art.kind != "index":
        raise BadInput(f"artifact {art.id} is a {art.kind} artifact, not an index (make one with "
                       "`swepost corpus index`)")
    folder = art.path / INDEX_FOLDER
    if not folder.is_dir():
        raise BadInput(f"index artifact {art.id} has no {INDEX_FOLDER}/ folder", file=str(art.path))
    return folder


@app.command("retriever")
def retriever_cmd(
    index: Annotated[str, typer.Argument(help="An index artifact (name, name@version) or an index folder.",
                                         show_default=False)],
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on. 0.0.0.0 exposes the corpus to the network.")]
    = "127.0.0.1",
    topk: Annotated[int, typer.Option(help="Hits per query when a request gives no topk (Search-R1's --topk).")]
    = 3,
    max_topk: Annotated[int, typer.Option(help="Largest topk a request may ask for (more is a 422).")] = 100,
    max_queries: Annotated[int, typer.Option(help="Most queries in one request (more is a 422).")] = 512,
):
    """Serve Search-R1's retriever API (POST /retrieve) over an index, plus POST /documents and GET /health.

    Existing Search-R1 / VerlTool configs point at http://HOST:PORT/retrieve unchanged; many environment workers
    share one server. Stops cleanly on Ctrl-C or SIGTERM.
    """
    from swepost.serve.retriever import serve_retriever

    folder = index_folder(index)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach this address can "
                          "read the whole corpus")

    def ready(url: str, documents: int) -> None:
        print(f"retriever serving {documents} documents on {url} (Search-R1 retriever.url: {url}/retrieve)",
              flush=True)

    serve_retriever(folder, host, port, default_topk=topk, max_topk=max_topk, max_queries=max_queries,
                    on_ready=ready)
    err_console.print("retriever stopped")
