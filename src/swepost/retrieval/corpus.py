"""Reading a corpus JSONL line by line: wiki-18 rows `{"id", "contents": "\"Title\"\nText"}` or
`{"id", "title", "text", "url"}`, each checked, the file never held in memory.

A malformed line (bad JSON, not an object, no id, no contents nor text, a duplicate id) fails the read with the
file and line (`on_bad_line="fail"`), or is skipped and counted (`"skip"`). Duplicate ids are found with 64-bit
hashes in sorted numpy runs (16 bytes a passage with the byte offset that confirms them; wiki-18's 21M ids take
about 340 MB, a Python set of the strings several GB); a hash that matches is checked against the earlier line's
real id, so a collision never rejects a good row.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from swepost.errors import BadInput
from swepost.retrieval.documents import Document, contents_of

OnBadLine = Literal["fail", "skip"]
BATCH = 4096  # lines parsed before their ids are checked against the earlier ones in one vectorised step
SHOWN = 5  # reasons kept for the report of a skipping read


@dataclass
class CorpusReport:
    """What a read found: passages yielded, lines skipped and the first few reasons (`file:line: why`), and the
    bytes read so far (for a progress bar over a stream of unknown length)."""

    passages: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)
    bytes_read: int = 0
    sha256: str | None = None  # of the whole file, once it has been read to the end


def iter_corpus(path: str | Path, *, on_bad_line: OnBadLine = "fail", report: CorpusReport | None = None,
                progress: Callable[[CorpusReport], None] | None = None) -> Iterator[Document]:
    """The corpus's documents in file order, each with a string `id` and a `contents` (built from title and text
    when the row has no `contents`); other fields are kept. Blank lines are ignored. `report`, when given, is
    filled as the read goes; `progress` is called with it after every batch of lines."""
    if on_bad_line not in ("fail", "skip"):
        raise BadInput(f"on_bad_line {on_bad_line!r}: expected fail or skip", key="on_bad_line")
    path = Path(path)
    report = report if report is not None else CorpusReport()
    seen = _SeenIds(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise BadInput("file not found", file=str(path)) from None
    except OSError as e:
        raise BadInput(f"cannot read: {e.strerror}", file=str(path)) from None
    digest = hashlib.sha256()
    with f:
        lineno, offset, batch = 0, 0, []
        for raw in f:
            lineno += 1
            digest.update(raw)
            batch.append((lineno, offset, raw))
            offset += len(raw)
            if len(batch) == BATCH:
                yield from _checked(batch, path, seen, on_bad_line, report)
                report.bytes_read = offset
                batch = []
                if progress:
                    progress(report)
        yield from _checked(batch, path, seen, on_bad_line, report)
        report.bytes_read, report.sha256 = offset, digest.hexdigest()
        if progress:
            progress(report)
    if report.skipped:
        warnings.warn(f"{path}: skipped {report.skipped} malformed line(s), e.g.\n" + "\n".join(report.reasons),
                      stacklevel=2)


def parse_row(raw: bytes) -> Document:
    """One corpus line -> a document; ValueError saying what is wrong."""
    try:
        row = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not valid JSON ({e})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    doc_id = row.get("id")
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)  # some dumps number their passages
    if doc_id is None:
        raise ValueError("id: missing")
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise ValueError(f"id: expected a non-empty string or an integer, got {row.get('id')!r}")
    row["id"] = doc_id
    contents = row.get("contents")
    if contents is None:
        text, title = row.get("text"), row.get("title")
        if not isinstance(text, str):
            raise ValueError("contents: missing (and no text field to build it from)")
        if title is not None and not isinstance(title, str):
            raise ValueError(f"title: expected a string, got {type(title).__name__}")
        row["contents"] = contents_of(title, text)
    elif not isinstance(contents, str):
        raise ValueError(f"contents: expected a string, got {type(contents).__name__}")
    return row


def _checked(batch: list[tuple[int, int, bytes]], path: Path, seen: _SeenIds, on_bad_line: OnBadLine,
             report: CorpusReport) -> Iterator[Document]:
    """Parse a batch of lines, then check their ids against every earlier line at once, then yield in order."""
    parsed: list[tuple[int, int, Document | str]] = []
    for lineno, offset, raw in batch:
        if not raw.strip():
            continue
        try:
            parsed.append((lineno, offset, parse_row(raw)))
        except ValueError as e:
            parsed.append((lineno, offset, str(e)))
    duplicates = seen.add([(offset, doc["id"]) for _, offset, doc in parsed if isinstance(doc, dict)])
    for lineno, offset, doc in parsed:
        why = doc if isinstance(doc, str) else None
        if why is None and offset in duplicates:
            why = f"id: duplicate id {doc['id']!r} (first at line {seen.line_at(duplicates[offset])})"
        if why is None:
            report.passages += 1
            yield doc
            continue
        if on_bad_line == "fail":
            raise BadInput(why, file=str(path), line=lineno)
        report.skipped += 1
        if len(report.reasons) < SHOWN:
            report.reasons.append(f"{path}:{lineno}: {why}")


class _SeenIds:
    """The ids read so far, as (64-bit hash, byte offset of the line) pairs in sorted runs that merge like a
    log-structured tree: an insert of a batch is a few vectorised binary searches, never a per-id Python object."""

    def __init__(self, path: Path):
        self.path = path
        self.runs: list[tuple[object, object]] = []  # (hashes sorted, offsets aligned), largest first
        self._reader = None

    def add(self, items: list[tuple[int, str]]) -> dict[int, int]:
        """Record (offset, id) pairs in order; return {offset: offset of its first occurrence} for each id seen
        before (in an earlier batch or earlier in this one). Duplicates are not recorded again."""
        import numpy as np

        if not items:
            return {}
        hashes = np.array([_hash64(doc_id) for _, doc_id in items], dtype=np.uint64)
        offsets = np.array([offset for offset, _ in items], dtype=np.uint64)
        suspects = set()
        for run_hashes, _ in self.runs:
            at = np.searchsorted(run_hashes, hashes)
            at[at == len(run_hashes)] = 0
            suspects.update(np.nonzero(run_hashes[at] == hashes)[0].tolist())
        duplicates: dict[int, int] = {}
        first_in_batch: dict[str, int] = {}
        keep = np.ones(len(items), dtype=bool)
        for i, (offset, doc_id) in enumerate(items):
            earlier = self._earlier(int(hashes[i]), doc_id) if i in suspects else None
            if earlier is None:
                earlier = first_in_batch.get(doc_id)
            if earlier is not None:
                duplicates[offset] = earlier
                keep[i] = False
            else:
                first_in_batch[doc_id] = offset
        self._push(hashes[keep], offsets[keep])
        return duplicates

    def _earlier(self, h: int, doc_id: str) -> int | None:
        """The offset of an earlier line whose real id is `doc_id`, among those with the same hash."""
        import numpy as np

        key = np.uint64(h)
        for run_hashes, run_offsets in self.runs:
            lo, hi = np.searchsorted(run_hashes, key, "left"), np.searchsorted(run_hashes, key, "right")
            for offset in run_offsets[lo:hi].tolist():
                if self._id_at(offset) == doc_id:
                    return offset
        return None  # a hash collision: a different id

    def _push(self, hashes, offsets) -> None:
        import numpy as np

        order = np.argsort(hashes, kind="stable")
        run = (hashes[order], offsets[order])
        while self.runs and len(self.runs[-1][0]) <= len(run[0]):
            prev = self.runs.pop()
            merged_hashes = np.concatenate([prev[0], run[0]])
            order = np.argsort(merged_hashes, kind="stable")
            run = (merged_hashes[order], np.concatenate([prev[1], run[1]])[order])
        self.runs.append(run)

    def _id_at(self, offset: int) -> str:
        if self._reader is None:
            self._reader = open(self.path, "rb")  # noqa: SIM115 - lives as long as the read; closed in __del__
        self._reader.seek(offset)
        return parse_row(self._reader.readline())["id"]

    def line_at(self, offset: int) -> int:
        """The 1-based line number of the line starting at `offset` (counted again: only for a message)."""
        count, left = 0, offset
        with open(self.path, "rb") as f:
            while left:
                block = f.read(min(left, 1 << 20))
                count += block.count(b"\n")
                left -= len(block)
        return count + 1

    def __del__(self):
        if self._reader is not None:
            self._reader.close()


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
