"""Documents as retrievers return them, and the protocol every retriever backend follows.

A document is the corpus row as a dict that always has `id` and `contents` (wiki-18 / Search-R1's form:
`"Title"\nText`), plus `title`, `text` and `url` when the corpus gave them. Search-R1 clients read
`doc["contents"]`, so a `{id, title, text, url}` corpus row gains a `contents` built from its title and text.
"""

from __future__ import annotations

from typing import Any, Protocol

Document = dict[str, Any]
Hit = tuple[Document, float]  # a document and its score, best first within a query's list


class Retriever(Protocol):
    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        """One ranked list of at most `topk` hits per query, in the queries' order."""
        ...

    def get(self, doc_id: str) -> Document | None:
        """The document with this id, or None when there is none (or the backend cannot look one up)."""
        ...


def contents_of(title: str | None, text: str) -> str:
    """wiki-18's `contents`: the title in double quotes on the first line, then the text."""
    return f'"{title}"\n{text}' if title else text


def title_and_text(doc: Document) -> tuple[str, str]:
    """A document's title and body: its `title` and `text` fields when it has them, else read from `contents`
    (`"Title"\nText`; a first line not in double quotes is no title)."""
    title, text = doc.get("title"), doc.get("text")
    if isinstance(title, str) and isinstance(text, str):
        return title, text
    contents = str(doc.get("contents") or "")
    first, sep, rest = contents.partition("\n")
    if sep and len(first) >= 2 and first.startswith('"') and first.endswith('"'):
        return first[1:-1], rest
    return (title if isinstance(title, str) else ""), (text if isinstance(text, str) else contents)
