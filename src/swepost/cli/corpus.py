"""`swepost corpus index|search`: a corpus JSONL -> a BM25 index artifact; try an index by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from swepost.cli.common import (
    ConfigOpt,
    JsonOpt,
    PrintConfigOpt,
    SetOpt,
    console,
    print_config,
    resolve_config,
    run_stage,
)

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)


@app.command("index")
def index_cmd(
    corpus: Annotated[Path | None, typer.Argument(help="Corpus JSONL: wiki-18 rows {id, contents} or {id, title, "
                                                       "text, url}.", show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Output artifact name [default: corpus-index].",
                                             show_default=False)] = None,
    on_bad_line: Annotated[str | None, typer.Option("--on-bad-line", help="fail (exit 2 naming file and line) | "
                                                    "skip (count it) [default: fail].", show_default=False)] = None,
    tokenizer: Annotated[str | None, typer.Option(help="en_stem | default [default: en_stem].",
                                                  show_default=False)] = None,
    dense_model: Annotated[str | None, typer.Option(help="Also a dense (faiss) index with this sentence-"
                                                    "transformers encoder: a folder or hub id (pip install -e "
                                                    "'.[dense]').", show_default=False)] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_config_: PrintConfigOpt = False,
    as_json: JsonOpt = False,
):
    """Index a corpus for BM25 search (tantivy, on disk) as an `index` artifact. The file is streamed, never held
    in memory; indexing the same corpus again in a recipe reuses the artifact."""
    from swepost.stages.corpus import CorpusIndexConfig

    cfg = resolve_config(CorpusIndexConfig, config, set_, {"corpus": corpus, "name": name,
                                                           "on_bad_line": on_bad_line, "tokenizer": tokenizer,
                                                           "dense_model": dense_model})
    if print_config_:
        return print_config(cfg)
    run_stage("corpus-index", cfg, as_json)


@app.command("search")
def search_cmd(
    index: Annotated[str, typer.Argument(help="An index artifact (name, name@version) or an index folder.",
                                         show_default=False)],
    query: Annotated[str, typer.Argument(help="Words to search for (any text: no query syntax).",
                                         show_default=False)],
    topk: Annotated[int, typer.Option("--topk", "-k", min=1, help="Hits to show.")] = 5,
    dense: Annotated[bool, typer.Option("--dense", help="Search the index's dense part (built with --dense-model) "
                                        "instead of BM25.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as Search-R1's result JSON.")] = False,
):
    """Search an index and print the ranked titles, ids and scores (BM25, or cosine with --dense)."""
    from swepost.cli.serve import index_folder
    from swepost.retrieval.documents import title_and_text
    from swepost.retrieval.index import open_index

    if dense:
        from swepost.retrieval.dense import open_dense_index

        retriever = open_dense_index(index_folder(index))
    else:
        retriever = open_index(index_folder(index))
    hits = retriever.search([query], topk)[0]
    if as_json:
        print(json.dumps({"result": [[{"document": doc, "score": score} for doc, score in hits]]},
                         ensure_ascii=False))
        return
    if not hits:
        console.print("no hits")
    for rank, (doc, score) in enumerate(hits, start=1):
        title, text = title_and_text(doc)
        snippet = " ".join(text.split())[:100]
        console.print(f"{rank:>2}. {score:7.3f}  [bold]{title or '(untitled)'}[/]  [dim]{doc['id']}[/]  {snippet}")
