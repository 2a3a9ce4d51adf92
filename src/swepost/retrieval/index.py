"""The BM25 index of a corpus, on disk in tantivy (a Rust search engine, Lucene's design): built by streaming the
corpus through a writer of bounded memory, so wiki-18's 21M passages index on one machine without being held in
RAM, and searched through memory-mapped segments.

Fields: `id` (raw: exact lookup for `get`), `title` and `body` (BM25 over both, English stemming by default),
`doc` (the document as JSON, stored, compressed) and `row` (the passage's position in the corpus, to break score
ties the same way every time). A query is always a bag of words: its text goes through the fields' own analyser
and becomes term queries, so quotes, colons, AND/OR or an unbalanced bracket in it are plain text, never syntax.
`swepost-index.json` beside the segments says what was indexed and how.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from swepost.errors import BadInput
from swepost.retrieval.corpus import CorpusReport, OnBadLine, iter_corpus
from swepost.retrieval.documents import Document, Hit, title_and_text

META = "swepost-index.json"
FORMAT = 1
Tokenizer = Literal["en_stem", "default"]  # tantivy's built-in analysers: stemmed English, or lower-cased words
TOKENIZERS: tuple[str, ...] = ("en_stem", "default")
HEAP_BYTES = 256_000_000  # the writer's whole indexing budget, split among its threads
MAX_TIES = 20_000  # hits fetched at most to order a tie at the cut (a one-word query on a huge corpus can tie more)


def build_index(corpus: str | Path, out: str | Path, *, on_bad_line: OnBadLine = "fail",
                progress: Callable[[CorpusReport], None] | None = None, tokenizer: Tokenizer = "en_stem",
                heap_bytes: int = HEAP_BYTES, threads: int = 0) -> dict:
    """Index `corpus` (JSONL, read by iter_corpus) into the empty or new folder `out`; return its stats. A bad
    line fails the build (BadInput naming file and line) unless `on_bad_line="skip"`; nothing is left in `out`
    after a failure but what was there before."""
    import tantivy

    if tokenizer not in TOKENIZERS:
        raise BadInput(f"tokenizer {tokenizer!r}: expected one of {', '.join(TOKENIZERS)}", key="tokenizer")
    corpus, out = Path(corpus), Path(out)
    if out.exists() and any(out.iterdir()):
        raise BadInput("index folder is not empty", file=str(out))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = CorpusReport()
    index = tantivy.Index(_schema(tokenizer), path=str(out))
    try:
        writer = index.writer(heap_size=heap_bytes, num_threads=threads)
    except ValueError as e:  # tantivy wants at least 3 MB of heap per thread
        raise BadInput(f"cannot start the index writer with {heap_bytes} bytes and {threads or 'auto'} threads: "
                       f"{e}", key="heap_mb") from None
    try:
        for row, doc in enumerate(iter_corpus(corpus, on_bad_line=on_bad_line, report=report, progress=progress)):
            title, body = title_and_text(doc)
            entry = tantivy.Document()
            entry.add_text("id", doc["id"])
            entry.add_text("title", title)
            entry.add_text("body", body)
            entry.add_bytes("doc", json.dumps(doc).encode())  # ASCII escapes: twice as fast to encode
            entry.add_unsigned("row", row)
            writer.add_document(entry)
        writer.commit()
        writer.wait_merging_threads()
    except BaseException:
        del writer  # releases the folder's writer lock before its files go
        for f in out.iterdir():
            if f.is_file():
                f.unlink()
        raise
    del writer, index
    (out / ".tantivy-writer.lock").unlink(missing_ok=True)  # a reader needs only the meta lock
    seconds = time.perf_counter() - started
    stats = {"passages": report.passages, "skipped": report.skipped, "skipped_examples": report.reasons,
             "seconds": round(seconds, 3), "passages_per_s": round(report.passages / seconds, 1) if seconds else 0,
             "corpus_bytes": report.bytes_read, "index_bytes": _size(out)}
    meta = {"format": FORMAT, "engine": "tantivy", "engine_version": _tantivy_version(),
            "passages": report.passages, "skipped": report.skipped, "corpus": str(corpus),
            "corpus_sha256": report.sha256, "tokenizer": tokenizer,
            "fields": {"id": "raw", "title": tokenizer, "body": tokenizer, "doc": "stored JSON", "row": "u64"},
            "scoring": "BM25 (k1=1.2, b=0.75) summed over title and body", "heap_bytes": heap_bytes}
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    stats["index_bytes"] = _size(out)
    return stats


def open_index(path: str | Path) -> BM25Index:
    """An index built by build_index: its folder, or an `index` artifact's folder (which holds it as `index/`)."""
    path = Path(path)
    if not (path / META).is_file() and (path / "index" / META).is_file():
        path = path / "index"
    if not (path / META).is_file():
        raise BadInput(f"not a swepost index (no {META})", file=str(path))
    return BM25Index(path)


class BM25Index:
    """Search and look up an index on disk. One searcher serves every thread: tantivy's searchers are immutable
    snapshots, safe to share."""

    def __init__(self, path: Path):
        import tantivy

        try:
            self.meta = json.loads((path / META).read_text())
        except ValueError as e:
            raise BadInput(f"unreadable index metadata ({e})", file=str(path / META)) from None
        if self.meta.get("format") != FORMAT:
            raise BadInput(f"index format {self.meta.get('format')!r}; this swepost reads {FORMAT} (build it again)",
                           file=str(path / META))
        self.path = path
        try:
            self._index = tantivy.Index.open(str(path))
        except ValueError as e:
            raise BadInput(f"cannot open the index: {e}", file=str(path)) from None
        self._schema = self._index.schema
        self._searcher = self._index.searcher()
        self._analyzer = _analyzer(self.meta.get("tokenizer", "en_stem"))
        self._tantivy = tantivy

    def __len__(self) -> int:
        return self._searcher.num_docs

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        """At most `topk` (document, BM25 score) hits per query, best first; equal scores in corpus order. A query
        with no words (empty, or only punctuation) has no hits."""
        if topk < 0:
            raise BadInput(f"topk {topk}: expected 0 or more", key="topk")
        return [self._search_one(q, topk) for q in queries]

    def get(self, doc_id: str) -> Document | None:
        query = self._tantivy.Query.term_query(self._schema, "id", str(doc_id), index_option="basic")
        hits = self._searcher.search(query, 1, count=False).hits
        return self._document(hits[0][1]) if hits else None

    def by_rows(self, rows: list[int]) -> list[Document | None]:
        """Documents by row (their position among the corpus's passages, as a dense index numbers them), in the
        order asked; None for a row the index does not have."""
        Query = self._tantivy.Query
        out: list[Document | None] = []
        for row in rows:
            hits = self._searcher.search(Query.term_query(self._schema, "row", int(row)), 1, count=False).hits
            out.append(self._document(hits[0][1]) if hits else None)
        return out

    def terms(self, text: str) -> list[str]:
        """The index terms a text becomes (lower-cased, stemmed as the index was built)."""
        return self._analyzer.analyze(text)

    def _search_one(self, text: str, topk: int) -> list[Hit]:
        terms = list(dict.fromkeys(self.terms(text or "")))
        if not terms or topk == 0:
            return []
        Query, should = self._tantivy.Query, self._tantivy.Occur.Should
        query = Query.boolean_query([(should, Query.term_query(self._schema, field, term, index_option="freq"))
                                     for term in terms for field in ("title", "body")])
        # tantivy orders equal scores by segment, and segments' order is not fixed: fetch past the last tie at
        # the cut, then order ties by corpus row
        limit = topk + 8
        while True:
            hits = self._searcher.search(query, limit, count=False).hits
            if len(hits) < limit or hits[-1][0] < hits[topk - 1][0] or limit >= MAX_TIES:
                break
            limit *= 4
        rows = self._searcher.fast_field_values("row", [address for _, address in hits])
        ranked = sorted(zip(hits, rows, strict=True), key=lambda pair: (-pair[0][0], pair[1]))[:topk]
        return [(self._document(address), float(score)) for (score, address), _ in ranked]

    def _document(self, address) -> Document:
        return json.loads(self._searcher.doc(address)["doc"][0])


def _schema(tokenizer: str):
    import tantivy

    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("title", tokenizer_name=tokenizer, index_option="freq")
    builder.add_text_field("body", tokenizer_name=tokenizer, index_option="freq")
    builder.add_bytes_field("doc", stored=True, indexed=False)
    builder.add_unsigned_field("row", indexed=True, fast=True)
    return builder.build()


def _analyzer(tokenizer: str):
    """The query-side twin of tantivy's built-in analyser of that name (SimpleTokenizer, RemoveLong(40),
    LowerCaser, and for en_stem the English Snowball stemmer)."""
    import tantivy

    builder = (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).filter(tantivy.Filter.remove_long(40))
               .filter(tantivy.Filter.lowercase()))
    if tokenizer == "en_stem":
        builder = builder.filter(tantivy.Filter.stemmer("english"))
    return builder.build()


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def _tantivy_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("tantivy")
    except metadata.PackageNotFoundError:
        return None

