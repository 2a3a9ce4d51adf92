"""The bundled retrieval data: the stdlib-docstring corpus, its hand-written questions, and the small HTML site
for the browsing mode. These read the committed files (the corpus is never regenerated here: docstrings differ
between Python versions) and check that every question is answerable from the passages or pages it cites."""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag

import pytest

from swepost.rewards.answers import normalize_answer

DATA = Path(__file__).resolve().parent.parent / "data"
CORPUS = DATA / "pydocs_corpus.jsonl"
QUESTIONS = DATA / "pydocs_questions.jsonl"
SITE = DATA / "site"
SITE_QUESTIONS = DATA / "site_questions.jsonl"

YES_NO = {"yes", "no"}
# An alias may spell out a number that another gold answer gives in digits ("4" and "four").
NUMBER_WORDS = dict(enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split()))
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def corpus() -> dict[str, str]:
    return {row["id"]: row["contents"] for row in read_jsonl(CORPUS)}


def forms(text: str) -> list[list[str]]:
    """The text's tokens under SQuAD normalisation (punctuation deleted: "0.6" is "06") and with punctuation
    read as a space (so "cutoff=0.6" still holds the token "0 6" and "os.open" the tokens "os open")."""
    return [normalize_answer(text).split(), normalize_answer(_PUNCTUATION.sub(" ", text)).split()]


def has_run(tokens: list[str], run: list[str]) -> bool:
    return any(tokens[i:i + len(run)] == run for i in range(len(tokens) - len(run) + 1))


def occurs(answer: str, text: str) -> bool:
    """The answer appears in the text as a whole sequence of normalised words."""
    return any(run and has_run(tokens, run) for run in forms(answer) for tokens in forms(text))


def spelled_number(alias: str, golds: list[str]) -> bool:
    return any(normalize_answer(alias) == NUMBER_WORDS.get(int(g), None) for g in golds if g.isdigit())


class PageText(HTMLParser):
    """A page's visible text, its hrefs and its element ids; script and style contents are not text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hrefs: list[str] = []
        self.ids: set[str] = set()
        self.tags: Counter[str] = Counter()
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        attrs = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        if tag == "a" and attrs.get("href") is not None:
            self.hrefs.append(attrs["href"])
        if attrs.get("id"):
            self.ids.add(attrs["id"])

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.parts).split())


@pytest.fixture(scope="module")
def site() -> dict[str, PageText]:
    pages = {}
    for path in sorted(SITE.rglob("*.html")):
        page = PageText()
        page.feed(path.read_text(encoding="utf-8"))
        page.close()
        pages[path.relative_to(SITE).as_posix()] = page
    return pages


# --- the corpus ---

def test_every_corpus_line_is_a_wiki18_row_with_a_unique_stable_id():
    ids = []
    for number, line in enumerate(CORPUS.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)  # a bad line fails here, with its number in the traceback's locals
        assert set(row) == {"id", "contents"}, f"line {number}: keys {sorted(row)}"
        assert isinstance(row["id"], str) and isinstance(row["contents"], str), f"line {number}"
        title_line, sep, text = row["contents"].partition("\n")
        assert sep and text.strip(), f"line {number}: no text after the title line"
        assert re.fullmatch(r'"[\w.]+"', title_line), f"line {number}: title line {title_line!r}"
        # the id is the title (a dotted name) plus a 1-based part number
        assert re.fullmatch(re.escape(title_line[1:-1]) + r"-[1-9]\d*", row["id"]), f"line {number}: {row['id']}"
        ids.append(row["id"])
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicates, duplicates


def test_the_parts_of_one_object_are_numbered_1_to_n_in_order(corpus):
    parts: dict[str, list[int]] = {}
    for doc_id in corpus:  # dicts keep the file's order
        title, _, part = doc_id.rpartition("-")
        parts.setdefault(title, []).append(int(part))
    wrong = {title: numbers for title, numbers in parts.items() if numbers != list(range(1, len(numbers) + 1))}
    assert not wrong, dict(list(wrong.items())[:5])
    assert len(parts) > 2000  # one object per title


def test_the_corpus_is_small_enough_to_bundle_and_large_enough_to_search(corpus):
    assert 3000 <= len(corpus) <= 8000
    assert CORPUS.stat().st_size <= 3_000_000
    words = [len(contents.split()) for contents in corpus.values()]
    assert max(words) <= 250  # ~100-word passages; a signature line may add to the first part
    assert sum(words) / len(words) < 100


def test_every_listed_module_has_its_module_passage_and_nothing_machine_specific(corpus):
    text = CORPUS.read_text(encoding="utf-8")
    assert " at 0x" not in text  # object reprs with memory addresses would change on every run
    assert "/work/" not in text and "site-packages" not in text
    for module in ["json", "os.path", "heapq", "asyncio.tasks", "urllib.parse", "xml.etree.ElementTree"]:
        assert corpus[f"{module}-1"].startswith(f'"{module}"\nmodule {module}\n')
    assert corpus["json.dumps-1"].startswith('"json.dumps"\njson.dumps(obj, *, skipkeys=False')


# --- the questions about the corpus ---

@pytest.fixture(scope="module")
def questions() -> list[dict]:
    return read_jsonl(QUESTIONS)


def test_questions_are_flashrag_rows_and_mostly_multi_hop(questions):
    assert 20 <= len(questions) <= 24
    assert len({q["id"] for q in questions}) == len(questions)
    for q in questions:
        assert re.fullmatch(r"pydocs-\d{3}", q["id"])
        assert isinstance(q["question"], str) and q["question"].strip().endswith("?"), q["id"]
        golds = q["golden_answers"]
        assert isinstance(golds, list) and golds and all(isinstance(g, str) and g.strip() for g in golds), q["id"]
        assert all(len(normalize_answer(g).split()) <= 4 for g in golds), f"{q['id']}: answers must be short spans"
        meta = q["metadata"]
        assert meta["hops"] in (1, 2, 3) and meta["type"] in ("single", "bridge", "comparison"), q["id"]
        assert len(meta["supporting"]) == meta["hops"], f"{q['id']}: one supporting passage per hop"
        assert (meta["hops"] == 1) == (meta["type"] == "single"), q["id"]
        if any(normalize_answer(g) in YES_NO for g in golds):
            assert meta["type"] == "comparison" and len(golds) == 1, f"{q['id']}: yes/no only answers a comparison"
    hops = Counter(q["metadata"]["hops"] for q in questions)
    assert hops[2] + hops[3] >= 2 * hops[1] and hops[3] >= 1, hops
    yes_no = Counter(normalize_answer(q["golden_answers"][0]) for q in questions) & Counter(YES_NO)
    assert yes_no["yes"] and yes_no["no"], "both answers of a comparison occur"


def test_every_supporting_passage_exists(questions, corpus):
    missing = [(q["id"], s) for q in questions for s in q["metadata"]["supporting"] if s not in corpus]
    assert not missing, missing


def test_every_gold_answer_occurs_in_the_questions_supporting_passages(questions, corpus):
    for q in questions:
        golds = q["golden_answers"]
        if normalize_answer(golds[0]) in YES_NO:
            continue
        evidence = "\n".join(corpus[s] for s in q["metadata"]["supporting"])
        for gold in golds:
            assert occurs(gold, evidence) or spelled_number(gold, golds), f"{q['id']}: {gold!r} not in its passages"


def test_each_hop_is_needed_the_answer_is_not_in_the_first_passage_alone(questions, corpus):
    """A bridge question's answer comes from the last passage of the chain: the first one only names the entity
    to look up next (otherwise the question is one hop dressed up as two)."""
    for q in questions:
        meta = q["metadata"]
        if meta["type"] != "bridge":
            continue
        first, last = corpus[meta["supporting"][0]], corpus[meta["supporting"][-1]]
        for gold in q["golden_answers"]:
            assert not occurs(gold, first), f"{q['id']}: {gold!r} is in its first passage"
        assert occurs(q["golden_answers"][0], last), f"{q['id']}: not answered by its last passage"


def test_no_question_contains_its_own_answer(questions):
    for q in questions + read_jsonl(SITE_QUESTIONS):
        for gold in q["golden_answers"]:
            if normalize_answer(gold) in YES_NO:
                continue
            assert not occurs(gold, q["question"]), f"{q['id']}: the question gives away {gold!r}"


def test_the_occurrence_check_can_fail():
    assert occurs("0.6", "get_close_matches(word, possibilities, n=3, cutoff=0.6)")
    assert occurs("os.open", "returned by os.open, and name")
    assert not occurs("4", "supported protocols are 0, 1, 2, 3 and 5; 14 bits")
    assert not occurs("backward", "cannot go forward")
    assert spelled_number("four", ["4", "four"]) and not spelled_number("five", ["4", "four"])


# --- the site for the browsing mode ---

@pytest.fixture(scope="module")
def site_questions() -> list[dict]:
    return read_jsonl(SITE_QUESTIONS)


def test_the_site_has_a_handful_of_pages_all_reachable_from_the_index(site):
    assert 6 <= len(site) <= 12
    seen, todo = {"index.html"}, ["index.html"]
    while todo:
        page = todo.pop()
        for href in site[page].hrefs:
            target = resolve(page, href)[0]
            if target not in seen:
                seen.add(target)
                todo.append(target)
    assert seen == set(site)


def resolve(page: str, href: str) -> tuple[str, str]:
    """(the site-relative path, the fragment) that a relative href on `page` points to."""
    url, fragment = urldefrag(href)
    assert url or fragment, f"{page}: empty href"
    assert "://" not in url and not url.startswith(("/", "mailto:", "javascript:")), f"{page}: {href} leaves the site"
    target = (SITE / page).parent / url if url else SITE / page
    target = target.resolve()
    assert target.is_relative_to(SITE.resolve()), f"{page}: {href} climbs out of the site"
    return target.relative_to(SITE.resolve()).as_posix(), fragment


def test_every_href_resolves_to_a_page_of_the_site_and_every_anchor_to_an_id(site):
    fragments = 0
    for page, parsed in site.items():
        assert parsed.hrefs, f"{page} links nowhere"
        for href in parsed.hrefs:
            target, fragment = resolve(page, href)
            assert target in site, f"{page}: {href} -> {target} is not a page of the site"
            if fragment:
                fragments += 1
                assert fragment in site[target].ids, f"{page}: {href} names no element of {target}"
    assert fragments >= 2


def test_the_site_is_messy_html_that_a_text_browser_must_handle(site):
    raw = {p.relative_to(SITE).as_posix(): p.read_text(encoding="utf-8") for p in SITE.rglob("*.html")}
    hrefs = [h for page in site.values() for h in page.hrefs]
    assert any(h.startswith("../") for h in hrefs) and any("#" in h for h in hrefs)
    tags = sum((page.tags for page in site.values()), Counter())
    assert tags["table"] >= 3 and tags["ul"] + tags["ol"] + tags["dl"] >= 4 and tags["script"] >= 2
    assert tags["style"] >= 2
    assert any("&amp;" in html for html in raw.values()) and any("&mdash;" in html for html in raw.values())
    assert "<p>" in raw["index.html"] and "</p>" not in raw["index.html"]  # unclosed paragraphs
    # decoys in <script>, <style> and a comment must never reach the text
    assert "9999" in raw["index.html"] and "9999" not in site["index.html"].text
    assert "unfinished" not in site["index.html"].text
    assert "{gzip: 3}" in raw["topics/compression.html"] and "gzip: 3" not in site["topics/compression.html"].text
    assert "library & the formats" in site["index.html"].text  # entities decode: &amp; is "&"


def test_site_questions_are_two_hop_browsing_rows(site_questions, site):
    assert 3 <= len(site_questions) <= 5
    assert len({q["id"] for q in site_questions}) == len(site_questions)
    for q in site_questions:
        assert re.fullmatch(r"site-\d{3}", q["id"]) and q["question"].strip().endswith("?")
        assert q["golden_answers"] and all(isinstance(g, str) and g.strip() for g in q["golden_answers"])
        meta = q["metadata"]
        assert meta["hops"] == 2 and meta["start"] == "index.html", q["id"]
        assert len(meta["supporting"]) == 2 and all(p in site for p in meta["supporting"]), q["id"]


def test_every_site_answer_occurs_in_its_pages_text_and_only_in_the_second(site_questions, site):
    for q in site_questions:
        first, second = (site[p].text for p in q["metadata"]["supporting"])
        for gold in q["golden_answers"]:
            assert occurs(gold, second), f"{q['id']}: {gold!r} not in {q['metadata']['supporting'][1]}"
            assert not occurs(gold, first), f"{q['id']}: {gold!r} is on the first page"
        # the first page links to the second: browsing, not guessing
        page = q["metadata"]["supporting"][0]
        assert any(resolve(page, h)[0] == q["metadata"]["supporting"][1] for h in site[page].hrefs), q["id"]
