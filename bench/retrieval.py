"""BM25 retrieval at scale: swepost's tantivy index against rank_bm25 (what many Search-R1 forks use), as JSON.

A synthetic corpus of `--passages` passages (default 1M; seeded) is written in wiki-18's JSONL form: a title and
60-120 words drawn from a Zipf distribution (s=1.07) over a 50k-word vocabulary of pronounceable made-up words,
so term statistics look like English text. Queries are 3-6 words taken from random passages (so each has a
known source passage). Each engine builds in its own subprocess, which reports its peak RSS (ru_maxrss: the
whole process, indexing threads included); queries run in the parent (swepost, on a warm page cache, as a
retriever server runs) and in the rank_bm25 child.

rank_bm25 is given a generator of token lists (lower-cased whitespace split), so it never holds the tokenized
corpus (the list most forks build first would cost more memory), and its top k comes from get_scores +
argpartition (cheaper than its get_top_n's full sort). It is slow per query, so it runs `--bm25-queries` queries.

Goals (issue 15): p50 <= 20 ms at 1M passages, >= 50x faster than rank_bm25, and peak RAM while indexing well
under the corpus size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from report import emit, pct

SRC = Path(__file__).resolve().parents[1] / "src"
VOCAB = 50_000
ZIPF_S = 1.07


def vocabulary(rng) -> list[str]:
    """VOCAB distinct pronounceable words (2-4 syllables), in a seeded order."""
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "st",
              "tr", "ch", "sh", "pl"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
    codas = ["", "n", "r", "s", "l", "m", "t", "ck"]
    syllables = [o + v + c for o in onsets for v in vowels for c in codas]
    words: set[str] = set()
    out: list[str] = []
    while len(out) < VOCAB:
        n = int(rng.integers(1, 4))
        word = "".join(syllables[i] for i in rng.integers(0, len(syllables), size=n))
        if word not in words:
            words.add(word)
            out.append(word)
    return out


def write_corpus(path: Path, passages: int, seed: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = np.array(vocabulary(rng), dtype=object)
    weights = 1.0 / np.arange(1, VOCAB + 1) ** ZIPF_S
    cdf = np.cumsum(weights / weights.sum())
    started = time.perf_counter()
    words_total = 0
    with open(path, "w") as f:
        for start in range(0, passages, 20_000):
            count = min(20_000, passages - start)
            lengths = rng.integers(60, 121, size=count)
            flat = vocab[np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), VOCAB - 1)]
            titles = vocab[rng.integers(100, VOCAB, size=(count, 2))]  # titles of rarer words, as names are
            ends = np.cumsum(lengths)
            lines = []
            for i in range(count):
                text = " ".join(flat[ends[i] - lengths[i]:ends[i]])
                title = f"{titles[i, 0].capitalize()} {titles[i, 1].capitalize()}"
                lines.append(json.dumps({"id": str(start + i), "contents": f'"{title}"\n{text}'}) + "\n")
            f.writelines(lines)
            words_total += int(lengths.sum())
    return {"passages": passages, "bytes": path.stat().st_size, "words": words_total,
            "seconds": round(time.perf_counter() - started, 1)}


def make_queries(path: Path, passages: int, n: int, seed: int) -> list[tuple[str, str]]:
    """(query, id of the passage it came from): 3-6 distinct words of a random passage, in passage order."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    wanted = set(rng.choice(passages, size=min(n, passages), replace=False).tolist())
    out = []
    with open(path) as f:
        for i, line in enumerate(f):
            if i in wanted:
                row = json.loads(line)
                words = list(dict.fromkeys(row["contents"].split("\n", 1)[1].split()))
                k = int(rng.integers(3, 7))
                picked = sorted(rng.choice(len(words), size=min(k, len(words)), replace=False).tolist())
                out.append((" ".join(words[j] for j in picked), row["id"]))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


# --- the children: each builds one engine and reports its own peak RSS ----------------------------------------

def child_swepost(corpus: str, out: str) -> dict:
    sys.path.insert(0, str(SRC))
    from swepost.retrieval.index import build_index

    before = _peak_rss()
    stats = build_index(corpus, out)
    return {"stats": stats, "rss_before_build_bytes": before, "peak_rss_bytes": _peak_rss()}


def child_rank_bm25(corpus: str, queries_file: str, topks: list[int]) -> dict:
    import numpy as np
    from rank_bm25 import BM25Okapi

    ids: list[str] = []

    def tokens():
        with open(corpus) as f:
            for line in f:
                row = json.loads(line)
                ids.append(row["id"])
                yield row["contents"].lower().split()

    before = _peak_rss()
    started = time.perf_counter()
    bm25 = BM25Okapi(tokens())
    build = time.perf_counter() - started
    peak_build = _peak_rss()
    queries = json.loads(Path(queries_file).read_text())
    result: dict = {"build_seconds": round(build, 1), "passages_per_s": round(len(ids) / build, 1),
                    "rss_before_build_bytes": before, "peak_rss_bytes": peak_build, "queries": len(queries)}
    top10: list[list[str]] = []
    for k in topks:
        times = []
        for q, _ in queries:
            t = time.perf_counter()
            scores = bm25.get_scores(q.lower().split())
            best = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
            best = best[np.argsort(-scores[best], kind="stable")]
            times.append(time.perf_counter() - t)
            if k == max(topks):
                top10.append([ids[i] for i in best])
        result[f"topk{k}"] = _latency(times)
    result["found_source_in_top"] = _found(top10, queries)
    result["top"] = top10
    return result


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _latency(times: list[float]) -> dict:
    ms = [t * 1000 for t in times]
    return {"n": len(ms), "p50_ms": round(pct(ms, 0.5), 3), "p99_ms": round(pct(ms, 0.99), 3),
            "mean_ms": round(sum(ms) / len(ms), 3)}


def _found(tops: list[list[str]], queries) -> float:
    return round(sum(src in top for top, (_, src) in zip(tops, queries, strict=False)) / max(1, len(tops)), 3)


def run_child(args: list[str], timeout: float) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --- the parent -----------------------------------------------------------------------------------------------

def swepost_queries(index_dir: Path, queries: list[tuple[str, str]], topks: list[int]) -> dict:
    sys.path.insert(0, str(SRC))
    from swepost.retrieval.index import open_index

    index = open_index(index_dir)
    for q, _ in queries[:20]:  # warm-up: first touches of the memory-mapped segments
        index.search([q], max(topks))
    out: dict = {}
    tops: list[list[str]] = []
    for k in topks:
        times = []
        for q, _ in queries:
            t = time.perf_counter()
            hits = index.search([q], k)[0]
            times.append(time.perf_counter() - t)
            if k == max(topks):
                tops.append([doc["id"] for doc, _ in hits])
        out[f"topk{k}"] = _latency(times)
    t = time.perf_counter()
    index.search([q for q, _ in queries], 3)
    out["batch_qps"] = round(len(queries) / (time.perf_counter() - t), 1)
    out["two_threads_qps"] = _threads_qps(index, [q for q, _ in queries], 2)
    out["found_source_in_top"] = _found(tops, queries)
    out["top"] = tops
    return out


def _threads_qps(index, queries: list[str], n: int) -> float:
    """Queries per second with n threads sharing the index (as a retriever server's thread pool does)."""
    def work(part):
        for q in queries[part::n]:
            index.search([q], 3)

    threads = [threading.Thread(target=work, args=(p,)) for p in range(n)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return round(len(queries) / (time.perf_counter() - t), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200, help="queries timed on swepost's index")
    ap.add_argument("--bm25-queries", type=int, default=20, help="queries timed on rank_bm25 (seconds each at 1M)")
    ap.add_argument("--no-bm25", action="store_true", help="skip rank_bm25")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="folder for the corpus and index (default: a temporary one)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        result = child_swepost(*rest) if kind == "swepost" else child_rank_bm25(rest[0], rest[1], [3, 10])
        print(json.dumps(result))
        return

    topks = [3, 10]
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        corpus = work / "corpus.jsonl"
        print(f"writing {args.passages:,} passages ...", file=sys.stderr)
        generated = write_corpus(corpus, args.passages, args.seed)
        queries = make_queries(corpus, args.passages, args.queries, args.seed)
        print(f"indexing with swepost ({generated['bytes'] / 1e6:.0f} MB) ...", file=sys.stderr)
        built = run_child(["swepost", str(corpus), str(work / "index")], timeout=3600)
        stats = built["stats"]
        print("querying swepost ...", file=sys.stderr)
        ours = swepost_queries(work / "index", queries, topks)
        result = {
            "bench": "retrieval", "python": platform.python_version(), "cpus": os.cpu_count(),
            "corpus": {**generated, "vocabulary": VOCAB, "zipf_s": ZIPF_S, "words_per_passage": "60-120"},
            "swepost": {
                "engine": "tantivy", "build_seconds": stats["seconds"], "passages_per_s": stats["passages_per_s"],
                "peak_rss_bytes": built["peak_rss_bytes"], "rss_before_build_bytes": built["rss_before_build_bytes"],
                "peak_rss_over_corpus": round(built["peak_rss_bytes"] / generated["bytes"], 3),
                "index_bytes": stats["index_bytes"],
                **{k: v for k, v in ours.items() if k != "top"}},
        }
        if not args.no_bm25:
            print("building and querying rank_bm25 ...", file=sys.stderr)
            (work / "queries.json").write_text(json.dumps(queries[: args.bm25_queries]))
            theirs = run_child(["rank_bm25", str(corpus), str(work / "queries.json")], timeout=3600)
            n = len(theirs["top"])
            overlap = [len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(ours["top"][:n], theirs["top"],
                                                                              strict=True)]
            result["rank_bm25"] = {k: v for k, v in theirs.items() if k != "top"}
            result["rank_bm25"]["peak_rss_over_corpus"] = round(theirs["peak_rss_bytes"] / generated["bytes"], 3)
            result["comparison"] = {
                "p50_speedup_topk3": round(theirs["topk3"]["p50_ms"] / ours["topk3"]["p50_ms"], 1),
                "p50_speedup_topk10": round(theirs["topk10"]["p50_ms"] / ours["topk10"]["p50_ms"], 1),
                "build_speedup": round(theirs["build_seconds"] / stats["seconds"], 2),
                "top10_overlap_mean": round(sum(overlap) / max(1, len(overlap)), 3),
                "note": "rank_bm25 lower-cases and splits; swepost stems (en_stem): rankings differ a little",
            }
        result["goals"] = {
            "p50_le_20ms": ours["topk10"]["p50_ms"] <= 20 and ours["topk3"]["p50_ms"] <= 20,
            "speedup_ge_50x": (result.get("comparison", {}).get("p50_speedup_topk3", 0) >= 50
                               if not args.no_bm25 else None),
            "peak_rss_under_corpus": built["peak_rss_bytes"] < generated["bytes"],
        }
    emit(result, args.out)


if __name__ == "__main__":
    main()
