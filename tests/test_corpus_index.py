"""The corpus reader and the tantivy BM25 index: round trips in both row formats, bad lines by file and line,
duplicate ids (and hash collisions that are not duplicates), query text that looks like query syntax, threads,
the `corpus-index` stage through the store and a recipe, the CLI's exit codes, and a 1M-passage round trip."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest

from swepost import recipes
from swepost.errors import BadInput
from swepost.retrieval import corpus as corpus_module
from swepost.retrieval.corpus import CorpusReport, iter_corpus
from swepost.retrieval.index import META, build_index, open_index

ROWS = [
    {"id": "py", "contents": '"Python (programming language)"\nPython is a high-level programming language '
     "created by Guido van Rossum and first released in 1991."},
    {"id": 7, "title": "Rust (programming language)", "text": "Rust is a systems programming language focused on "
     "memory safety; its compiler is written in Rust.", "url": "https://example.org/rust"},
    {"id": "tv", "contents": '"Tantivy"\nTantivy is a full-text search engine library inspired by Apache Lucene '
     "and written in Rust."},
    {"id": "asyncio", "title": "asyncio", "text": "asyncio is a library to write concurrent code using the "
     "async/await syntax; it runs coroutines on an event loop."},
    {"id": "colon", "contents": '"Query syntax"\nA colon as in title:foo, quotes, AND, OR, brackets [ and ( are '
     "characters of the query language of Lucene."},
]


def write_jsonl(path: Path, rows: list, raw: list[str] | None = None) -> Path:
    lines = [json.dumps(r) for r in rows] + (raw or [])
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    stats = build_index(write_jsonl(folder / "corpus.jsonl", ROWS), folder / "index")
    return open_index(folder / "index"), stats


# --- reading a corpus ---------------------------------------------------------------------------------------------

def test_both_row_formats_read_as_documents_with_id_and_contents(tmp_path):
    docs = list(iter_corpus(write_jsonl(tmp_path / "c.jsonl", ROWS)))
    assert [d["id"] for d in docs] == ["py", "7", "tv", "asyncio", "colon"]  # an int id as its decimal string
    rust = docs[1]
    assert rust["contents"] == '"Rust (programming language)"\n' + ROWS[1]["text"]
    assert rust["url"] == "https://example.org/rust" and rust["title"] == ROWS[1]["title"]  # other fields kept
    assert docs[0]["contents"] == ROWS[0]["contents"]


BAD_LINES = [
    ('{"id": "x", "contents": "no closing brace"', "not valid JSON"),
    ('["a", "list"]', "expected a JSON object, got list"),
    ('{"contents": "no id"}', "id: missing"),
    ('{"id": "", "contents": "empty id"}', "id: expected a non-empty string"),
    ('{"id": true, "contents": "a boolean id"}', "id: expected a non-empty string"),
    ('{"id": "q", "title": "T"}', "contents: missing"),
    ('{"id": "q", "contents": ["not", "text"]}', "contents: expected a string"),
    ('{"id": "py", "contents": "the id of line 1 again"}', "duplicate id 'py' (first at line 1)"),
]


@pytest.mark.parametrize("line,why", BAD_LINES)
def test_a_bad_line_fails_naming_file_and_line(tmp_path, line, why):
    path = write_jsonl(tmp_path / "c.jsonl", ROWS[:3], [line])
    with pytest.raises(BadInput) as e:
        list(iter_corpus(path))
    assert e.value.file == str(path) and e.value.line == 4
    assert why in str(e.value)


def test_skip_mode_yields_the_good_lines_and_counts_the_bad_ones(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", ROWS, [line for line, _ in BAD_LINES] + ['{"id": "last", '
                                                                                     '"contents": "ok"}'])
    report = CorpusReport()
    with pytest.warns(UserWarning, match=f"skipped {len(BAD_LINES)} malformed"):
        docs = list(iter_corpus(path, on_bad_line="skip", report=report))
    assert [d["id"] for d in docs] == ["py", "7", "tv", "asyncio", "colon", "last"]
    assert report.passages == 6 and report.skipped == len(BAD_LINES)
    assert report.reasons[0].startswith(f"{path}:6: not valid JSON")
    assert len(report.reasons) == corpus_module.SHOWN
    assert report.bytes_read == path.stat().st_size


def test_blank_lines_are_not_passages_nor_errors(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n   \n" + json.dumps(ROWS[2]) + "\n\n")
    assert [d["id"] for d in iter_corpus(path)] == ["py", "tv"]


def test_a_duplicate_far_from_its_first_line_is_found_across_batches(tmp_path):
    n = 3 * corpus_module.BATCH + 17
    rows = [{"id": f"d{i}", "contents": f"passage {i}"} for i in range(n)] + [{"id": "d5", "contents": "again"}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(BadInput, match=r"duplicate id 'd5' \(first at line 6\)") as e:
        list(iter_corpus(path))
    assert e.value.line == n + 1
    # an int id and the same id as a string are the same id
    path = write_jsonl(tmp_path / "c2.jsonl", [{"id": 5, "contents": "x"}, {"id": "5", "contents": "y"}])
    with pytest.raises(BadInput, match="duplicate id '5'"):
        list(iter_corpus(path))


def test_a_hash_collision_is_not_a_duplicate(tmp_path, monkeypatch):
    """Every id hashes alike: only the real ids, read back from the file, decide what is a duplicate."""
    monkeypatch.setattr(corpus_module, "_hash64", lambda text: 42)
    rows = [{"id": f"id{i}", "contents": "x"} for i in range(corpus_module.BATCH + 10)]
    docs = list(iter_corpus(write_jsonl(tmp_path / "c.jsonl", rows)))
    assert len(docs) == len(rows)
    path = write_jsonl(tmp_path / "d.jsonl", rows + [{"id": "id3", "contents": "y"}])
    with pytest.raises(BadInput, match=r"duplicate id 'id3' \(first at line 4\)"):
        list(iter_corpus(path))


def test_a_missing_corpus_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="file not found"):
        list(iter_corpus(tmp_path / "nothing.jsonl"))


# --- the index ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("query,first", [
    ("who created the Python programming language", "py"),
    ("memory safety compiler", "7"),
    ("full-text search engine inspired by Lucene", "tv"),
    ("coroutines event loop", "asyncio"),
    ("Tantivy", "tv"),  # found by its title alone
    ("running coroutine", "asyncio"),  # stemmed: running/coroutine match runs/coroutines
])
def test_search_finds_the_right_document_first(small_index, query, first):
    index, _ = small_index
    hits = index.search([query], 3)[0]
    assert hits[0][0]["id"] == first
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) and s > 0 for s in scores)


def test_round_trip_returns_the_stored_documents(small_index, tmp_path):
    index, stats = small_index
    assert len(index) == 5 and stats["passages"] == 5 and stats["skipped"] == 0
    expected = {d["id"]: d for d in iter_corpus(write_jsonl(tmp_path / "c.jsonl", ROWS))}
    for doc_id, doc in expected.items():
        assert index.get(doc_id) == doc
    assert index.get("nope") is None and index.get("PY") is None  # ids are exact, not analysed
    hit = index.search(["Guido"], 1)[0][0][0]
    assert hit == expected["py"]
    meta = json.loads((index.path / META).read_text())
    assert meta["passages"] == 5 and meta["tokenizer"] == "en_stem" and len(meta["corpus_sha256"]) == 64


@pytest.mark.parametrize("query", [
    'title:(AND "unbalanced [ OR * :', "AND", "OR NOT", '"', "(", "[1 TO 5", "title:Rust^3", "body:*",
    "Rust AND -safety", "a\\b/c", "~2 ?", "c++ && || !", "\x00\u2603", "ünïcödé  text", "+-",
])
def test_query_syntax_in_the_text_is_plain_words(small_index, query):
    index, _ = small_index
    hits = index.search([query], 5)[0]
    assert isinstance(hits, list)
    if "Rust" in query:  # the words still count: `title:Rust^3` is title + rust + 3
        assert {h[0]["id"] for h in hits} >= {"7", "tv"}


def test_query_words_match_whatever_syntax_surrounds_them(small_index):
    index, _ = small_index
    plain = index.search(["colon quotes brackets"], 5)[0]
    dressed = index.search(['title:colon AND "quotes" OR (brackets'], 5)[0]
    assert plain[0][0]["id"] == "colon" and dressed[0][0]["id"] == "colon"


def test_empty_and_wordless_queries_have_no_hits(small_index):
    index, _ = small_index
    assert index.search(["", "   ", "!!! ... ???", "the python"], 3)[:3] == [[], [], []]
    assert index.search([], 3) == []
    assert index.search(["python"], 0) == [[]]
    with pytest.raises(BadInput, match="topk"):
        index.search(["python"], -1)


def test_topk_bounds_the_hits(small_index):
    index, _ = small_index
    assert len(index.search(["programming language rust"], 1)[0]) == 1
    assert len(index.search(["programming language rust"], 100)[0]) == 4  # py, 7, tv, colon: no others


def test_ties_are_broken_by_corpus_order_the_same_in_every_build(tmp_path):
    """Identical passages score alike. tantivy's own order of ties follows segments and its top-k heap, which
    the writer's threads fill in no fixed order (measured: another order in every build of this corpus). Every
    build must answer the same list: ties in corpus order, the cut at topk included."""
    rng = random.Random(0)
    rows = [{"id": f"t{i:05}", "contents": "identical passage about lighthouses"} if i % 500 == 0 else
            {"id": f"o{i}", "contents": " ".join(f"x{rng.randrange(100_000)}" for _ in range(30))}
            for i in range(20_000)]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    order = [r["id"] for r in rows if r["id"].startswith("t")]
    for n in range(2):
        build_index(path, tmp_path / f"i{n}", threads=2, heap_bytes=30_000_000)  # the least tantivy allows
        assert [h[0]["id"] for h in open_index(tmp_path / f"i{n}").search(["lighthouses"], 10)[0]] == order[:10]


def test_searches_from_threads_agree_with_serial_ones(tmp_path):
    rng = random.Random(1)
    words = [f"word{i}" for i in range(400)]
    rows = [{"id": f"p{i}", "contents": f'"Title {i}"\n' + " ".join(rng.choices(words, k=30))} for i in range(3000)]
    build_index(write_jsonl(tmp_path / "c.jsonl", rows), tmp_path / "index")
    index = open_index(tmp_path / "index")
    queries = [" ".join(rng.choices(words, k=4)) for _ in range(200)]
    serial = index.search(queries, 5)
    got: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(part: int) -> None:
        try:
            for i in range(part, len(queries), 4):
                got[i] = index.search([queries[i]], 5)[0]
                assert index.get(f"p{i}")["id"] == f"p{i}"
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [got[i] for i in range(len(queries))] == serial


def test_a_failed_build_leaves_no_index_behind(tmp_path):
    rows = [{"id": f"p{i}", "contents": f"passage {i}"} for i in range(5000)]
    path = write_jsonl(tmp_path / "c.jsonl", rows, ['{"id": "p1", "contents": "duplicate"}'])
    with pytest.raises(BadInput, match=":5001: id: duplicate id 'p1'"):
        build_index(path, tmp_path / "index")
    assert [f.name for f in (tmp_path / "index").iterdir()] == []
    with pytest.raises(BadInput, match="not a swepost index"):
        open_index(tmp_path / "index")
    with pytest.warns(UserWarning, match="skipped 1 malformed line"):
        stats = build_index(path, tmp_path / "index", on_bad_line="skip")
    assert stats["passages"] == 5000 and stats["skipped"] == 1 and len(open_index(tmp_path / "index")) == 5000
    with pytest.raises(BadInput, match="not empty"):
        build_index(path, tmp_path / "index")


# --- the stage, the recipe cache and the CLI ----------------------------------------------------------------------

def test_stage_writes_an_index_artifact_that_verifies(tmp_path, store):
    from swepost.stages.corpus import CorpusIndexConfig, run_corpus_index

    path = write_jsonl(tmp_path / "c.jsonl", ROWS)
    art = run_corpus_index(CorpusIndexConfig(corpus=path, name="wiki"), store, progress=False)
    assert art.kind == "index" and art.id.startswith("wiki@")
    assert art.stats["passages"] == 5 and art.stats["corpus"] == str(path.resolve())
    assert art.manifest["producer"]["stage"] == "corpus-index"
    index = open_index(art.path)  # the artifact's folder opens too
    assert index.search(["Guido"], 1)[0][0][0]["id"] == "py"
    assert store.verify(art) == []  # reading the index wrote nothing into the artifact


def test_a_recipe_indexes_a_corpus_once(tmp_path, store):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "corpus.jsonl", ROWS)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: demo\nstages:\n  - name: index\n    stage: corpus-index\n    config:\n"
                      "      corpus: data/corpus.jsonl\n")
    first = recipes.run(recipes.load_recipe(recipe), store)
    assert [s.action for s in first] == ["run"] and first[0].artifact.kind == "index"
    second = recipes.run(recipes.load_recipe(recipe), store)
    assert [s.action for s in second] == ["reuse"] and second[0].artifact.id == first[0].artifact.id
    # the writer's memory and threads change no result: still reused
    tuned = recipes.plan(recipes.load_recipe(recipe, ["stages.index.heap_mb=64", "stages.index.threads=1"]), store)
    assert [s.action for s in tuned] == ["reuse"]
    # another corpus content (same path): indexed again
    write_jsonl(tmp_path / "data" / "corpus.jsonl", ROWS[:4])
    assert [s.action for s in recipes.plan(recipes.load_recipe(recipe), store)] == ["run"]


def test_cli_indexes_searches_and_exits_2_naming_the_bad_line(tmp_path, swepost):
    good = write_jsonl(tmp_path / "c.jsonl", ROWS)
    r = swepost("corpus", "index", good, "--name", "small", "--json", check=0)
    out = json.loads(r.stdout)
    assert out["kind"] == "index" and out["stats"]["passages"] == 5
    r = swepost("corpus", "search", "small", "who created python?", "--topk", "2", check=0)
    assert "Python (programming language)" in r.stdout.splitlines()[0]
    r = swepost("corpus", "search", "small", 'title:(AND "python', "--json", check=0)
    assert json.loads(r.stdout)["result"][0][0]["document"]["id"] == "py"

    bad = write_jsonl(tmp_path / "bad.jsonl", ROWS, ['{"id": "py", "contents": "again"}', "{oops"])
    r = swepost("corpus", "index", bad, check=2)
    assert f"{bad}:6: id: duplicate id 'py' (first at line 1)" in r.stderr and "Traceback" not in r.stderr
    r = swepost("corpus", "index", bad, "--on-bad-line", "skip", "--json", check=0)
    assert json.loads(r.stdout)["stats"]["skipped"] == 2 and "skipped 2 malformed" in r.stderr
    r = swepost("corpus", "index", bad, "--on-bad-line", "sometimes", check=2)
    assert "on_bad_line" in r.stderr
    r = swepost("corpus", "index", tmp_path / "missing.jsonl", check=2)
    assert "missing.jsonl: file not found" in r.stderr


# --- a million passages -------------------------------------------------------------------------------------------

def write_generated_corpus(path: Path, n: int, seed: int = 0, words: int = 16) -> None:
    """n short passages of Zipf-distributed words; passage i also holds the word `uniq{i}`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(20000)], dtype=object)
    with open(path, "w") as f:
        for start in range(0, n, 100_000):
            count = min(100_000, n - start)
            picked = vocab[rng.zipf(1.3, size=(count, words)) % len(vocab)]
            f.writelines(f'{{"id": "p{i}", "contents": "\\"Title {i}\\"\\n{" ".join(picked[i - start])} uniq{i}"}}\n'
                         for i in range(start, start + count))


@pytest.mark.slow
def test_a_million_passage_round_trip(tmp_path):
    n = 1_000_000
    path = tmp_path / "million.jsonl"
    write_generated_corpus(path, n)
    started = time.perf_counter()
    stats = build_index(path, tmp_path / "index")
    built = time.perf_counter() - started
    index = open_index(tmp_path / "index")
    assert stats["passages"] == n and len(index) == n
    for i in (0, 1, 123_457, 654_321, n - 1):
        hits = index.search([f"uniq{i}"], 3)[0]
        assert [h[0]["id"] for h in hits] == [f"p{i}"]
        assert index.get(f"p{i}")["contents"].startswith(f'"Title {i}"\n') and hits[0][0] == index.get(f"p{i}")
    print(f"\n1M passages: built in {built:.1f} s ({stats['passages_per_s']:.0f}/s), "
          f"index {stats['index_bytes'] / 1e6:.0f} MB, corpus {stats['corpus_bytes'] / 1e6:.0f} MB")
