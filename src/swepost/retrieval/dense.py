"""Dense retrieval, an optional extra (`pip install -e '.[dense]'`: faiss-cpu and sentence-transformers): a
sentence-transformers encoder embeds every passage, and a faiss index beside the BM25 index finds the nearest
passages of a query by inner product of normalised embeddings (cosine), as Search-R1's e5 retriever does.

The faiss index holds vectors only; a hit's row (its position among the corpus's passages) is looked up in the
BM25 index built from the same corpus, which stores the documents. So `build_dense` runs after `build_index`, on
the same corpus and with the same bad-line setting (the same rows).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from swepost.errors import BadInput
from swepost.retrieval.corpus import CorpusReport, OnBadLine, iter_corpus
from swepost.retrieval.documents import Document, Hit
from swepost.retrieval.index import BM25Index, open_index

DENSE_META = "swepost-dense.json"
DENSE_FILE = "dense.faiss"
FORMAT = 1


def require_dense() -> None:
    """BadInput saying how to install the extra when faiss or sentence-transformers is missing."""
    for module, package in (("faiss", "faiss-cpu"), ("sentence_transformers", "sentence-transformers")):
        try:
            __import__(module)
        except ImportError:
            raise BadInput(f"dense retrieval needs {package}, which is not installed: pip install -e '.[dense]' "
                           "(or pip install faiss-cpu sentence-transformers)", key="dense_model") from None


def build_dense(corpus: str | Path, index_dir: str | Path, *, model: str, factory: str = "Flat",
                batch_size: int = 256, passage_prefix: str = "", query_prefix: str = "", train_size: int = 100_000,
                on_bad_line: OnBadLine = "fail", device: str | None = None,
                progress: Callable[[CorpusReport], None] | None = None) -> dict:
    """Embed the corpus's passages with `model` (a sentence-transformers folder or hub id) into a faiss index of
    type `factory` (faiss.index_factory: Flat, HNSW32, IVF4096,Flat, ...) in `index_dir`, the folder of the BM25
    index of the same corpus. An index type that needs training is trained on the first `train_size` passages."""
    require_dense()
    import faiss
    import numpy as np

    index_dir = Path(index_dir)
    bm25 = open_index(index_dir)
    encoder = _encoder(model, device)
    dim = (getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension)()
    try:
        vectors = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise BadInput(f"faiss index type {factory!r}: {str(e).strip().splitlines()[-1]}",
                       key="dense_factory") from None
    started = time.perf_counter()
    report = CorpusReport()
    pending: list = []  # embeddings kept until an index that needs training has been trained

    def add(texts: list[str]) -> None:
        embedded = encoder.encode([passage_prefix + t for t in texts], batch_size=batch_size,
                                  normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        embedded = np.ascontiguousarray(embedded, dtype=np.float32)
        if vectors.is_trained:
            vectors.add(embedded)
            return
        pending.append(embedded)
        if sum(len(p) for p in pending) >= train_size:
            flush()

    def flush() -> None:
        if pending:
            stacked = np.concatenate(pending)
            if not vectors.is_trained:
                vectors.train(stacked)
            vectors.add(stacked)
            pending.clear()

    texts: list[str] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*skipped \d+ malformed line")  # the BM25 pass said so
        for doc in iter_corpus(corpus, on_bad_line=on_bad_line, report=report, progress=progress):
            texts.append(doc["contents"])
            if len(texts) >= batch_size * 8:
                add(texts)
                texts = []
    if texts:
        add(texts)
    flush()
    if vectors.ntotal != len(bm25):
        raise BadInput(f"the corpus has {vectors.ntotal} passages now and the BM25 index {len(bm25)}: build both "
                       "from the same corpus with the same on_bad_line", file=str(corpus))
    faiss.write_index(vectors, str(index_dir / DENSE_FILE))
    seconds = time.perf_counter() - started
    meta = {"format": FORMAT, "model": model, "dimension": dim, "factory": factory, "metric": "inner product of "
            "normalised embeddings", "passage_prefix": passage_prefix, "query_prefix": query_prefix,
            "passages": vectors.ntotal, "corpus_sha256": report.sha256}
    (index_dir / DENSE_META).write_text(json.dumps(meta, indent=2) + "\n")
    return {"dense_passages": vectors.ntotal, "dense_seconds": round(seconds, 3),
            "dense_passages_per_s": round(vectors.ntotal / seconds, 1) if seconds else 0,
            "dense_bytes": (index_dir / DENSE_FILE).stat().st_size}


def open_dense_index(path: str | Path, *, device: str | None = None) -> DenseIndex:
    """The dense index in an index folder (or an `index` artifact's folder) that has one."""
    bm25 = open_index(path)
    if not (bm25.path / DENSE_META).is_file():
        raise BadInput("this index has no dense part (build it with a dense_model)", file=str(bm25.path))
    require_dense()
    return DenseIndex(bm25, device=device)


class DenseIndex:
    """The Retriever protocol over the faiss vectors; documents come from the BM25 index beside them."""

    def __init__(self, bm25: BM25Index, *, device: str | None = None):
        import faiss

        self.bm25 = bm25
        self.meta = json.loads((bm25.path / DENSE_META).read_text())
        if self.meta.get("format") != FORMAT:
            raise BadInput(f"dense index format {self.meta.get('format')!r}; this swepost reads {FORMAT}",
                           file=str(bm25.path / DENSE_META))
        self._vectors = faiss.read_index(str(bm25.path / DENSE_FILE))
        self._encoder = _encoder(self.meta["model"], device)

    def __len__(self) -> int:
        return self._vectors.ntotal

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        import numpy as np

        if topk < 0:
            raise BadInput(f"topk {topk}: expected 0 or more", key="topk")
        out: list[list[Hit]] = [[] for _ in queries]
        asked = [i for i, q in enumerate(queries) if q and q.strip()]
        if not asked or topk == 0 or len(self) == 0:
            return out
        embedded = self._encoder.encode([self.meta["query_prefix"] + queries[i] for i in asked],
                                        normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        scores, rows = self._vectors.search(np.ascontiguousarray(embedded, dtype=np.float32), min(topk, len(self)))
        for i, row_scores, row_ids in zip(asked, scores.tolist(), rows.tolist(), strict=True):
            docs = self.bm25.by_rows([r for r in row_ids if r >= 0])  # faiss pads a short list with -1
            out[i] = [(doc, float(s)) for doc, s in zip(docs, row_scores, strict=False) if doc is not None]
        return out

    def get(self, doc_id: str) -> Document | None:
        return self.bm25.get(doc_id)


def _encoder(model: str, device: str | None):
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(model, device=device)  # None: a GPU when there is one
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load the encoder {model!r}: {e}", key="dense_model") from None
