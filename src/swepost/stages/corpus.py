"""Stage `corpus-index`: a corpus JSONL (wiki-18 `{id, contents}` or `{id, title, text, url}` rows) -> an `index`
artifact holding the tantivy BM25 index (retrieval/index.py) as `index/`, and with a `dense_model` a faiss index of
the passages' embeddings beside it (retrieval/dense.py, the [dense] extra).

The corpus is a file input: its content, not its path, enters the recipe cache key, so indexing the same corpus
again reuses the artifact; its path and sha256 are in the producer record and the stats (the lineage of a file
outside the store).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from swepost.artifacts import Artifact, ArtifactStore, producer_record
from swepost.config import FileInput, ModelInput, StageConfig

INDEX_DIR = "index"


class CorpusIndexConfig(StageConfig):
    corpus: Path = FileInput(description="corpus JSONL: wiki-18 rows {id, contents: '\"Title\"\\nText'} or "
                             "{id, title, text, url}")
    name: str = Field("corpus-index", description="output artifact name")
    on_bad_line: Literal["fail", "skip"] = Field(
        "fail", description="a malformed line (bad JSON, no id, no contents, a duplicate id): fail naming file "
        "and line (exit 2), or skip it and count it in the stats")
    tokenizer: Literal["en_stem", "default"] = Field(
        "en_stem", description="analyser of titles, bodies and queries: en_stem (lower-cased, English Snowball "
        "stemming) or default (lower-cased words)")
    heap_mb: int = Field(256, ge=16, description="the index writer's memory budget in MB (bounds peak RAM, not "
                         "the result)")
    threads: int = Field(0, ge=0, description="indexing threads (0: tantivy chooses from the CPUs)")
    dense_model: str | None = ModelInput(
        None, description="also a dense index (the [dense] extra: faiss + sentence-transformers): the "
        "sentence-transformers encoder, a local folder or a hub id (Search-R1: intfloat/e5-base-v2)")
    dense_factory: str = Field("Flat", description="faiss index type (faiss.index_factory): Flat (exact), HNSW32, "
                               "IVF4096,Flat, ...")
    passage_prefix: str = Field("", description="text put before every passage for the encoder (e5: 'passage: ')")
    query_prefix: str = Field("", description="text put before every query for the encoder (e5: 'query: ')")
    dense_batch_size: int = Field(256, ge=1, description="passages encoded at once")
    device: str | None = Field(None, description="the encoder's device (default: a GPU when there is one)")

    NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset({"heap_mb", "threads", "dense_batch_size", "device"})


def run_corpus_index(config: CorpusIndexConfig, store: ArtifactStore, progress: bool | None = None) -> Artifact:
    """`progress`: a live bar on stderr (default: when stderr is a terminal)."""
    from swepost.retrieval.index import build_index

    if config.dense_model is not None:  # before hours of BM25 indexing, not after
        from swepost.retrieval.dense import require_dense

        require_dense()
    corpus = Path(config.corpus)
    producer = producer_record("corpus-index", config.model_dump(mode="json"), corpus=str(corpus.resolve()))
    show = sys.stderr.isatty() if progress is None else progress
    with store.write(config.name, "index", producer=producer) as w, _BytesBar(corpus, show) as bar:
        stats = build_index(corpus, w.path / INDEX_DIR, on_bad_line=config.on_bad_line, progress=bar.update,
                            tokenizer=config.tokenizer, heap_bytes=config.heap_mb * 1_000_000,
                            threads=config.threads)
        meta = _meta(w.path / INDEX_DIR)
        w.stats.update({**stats, "corpus": str(corpus.resolve()), "corpus_sha256": meta["corpus_sha256"],
                        "tokenizer": config.tokenizer})
        if config.dense_model is not None:
            from swepost.retrieval.dense import build_dense

            bar.restart("dense")
            w.stats.update(build_dense(corpus, w.path / INDEX_DIR, model=_model(config.dense_model),
                                       factory=config.dense_factory, batch_size=config.dense_batch_size,
                                       passage_prefix=config.passage_prefix, query_prefix=config.query_prefix,
                                       on_bad_line=config.on_bad_line, device=config.device, progress=bar.update))
    return w.artifact


def _model(ref: str) -> str:
    """A local encoder folder by its absolute path (the index records it), else a hub id as given."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.is_dir() else ref


def _meta(folder: Path) -> dict:
    import json

    from swepost.retrieval.index import META

    return json.loads((folder / META).read_text())


class _BytesBar:
    """Bytes of the corpus read, with passages and skipped lines: a stream of unknown length has no row total."""

    def __init__(self, corpus: Path, show: bool):
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("[bold]{task.description}[/]"), BarColumn(), DownloadColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), disable=not show,
                            console=Console(stderr=True))
        total = corpus.stat().st_size if corpus.is_file() else None
        self.task = self.bar.add_task("corpus index", total=total, info="")

    def restart(self, label: str) -> None:
        """A second pass over the corpus (the dense encoder's)."""
        self.bar.update(self.task, description=label, completed=0, info="")

    def update(self, report) -> None:
        info = f"{report.passages:,} passages" + (f", {report.skipped:,} skipped" if report.skipped else "")
        self.bar.update(self.task, completed=report.bytes_read, info=info)

    def __enter__(self) -> _BytesBar:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.bar.stop()
        return False
