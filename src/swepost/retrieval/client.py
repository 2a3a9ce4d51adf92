"""A client of any Search-R1-compatible retriever server (swepost's own, Search-R1's retrieval_server.py, VerlTool's),
speaking the exact JSON Search-R1 sends, with the standard library only.

A server that is down, times out, answers 5xx or something that is not Search-R1's reply raises RetrieverError: an
infrastructure failure, never a wrong answer.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from types import SimpleNamespace
from typing import Any

from swepost.errors import WorkFailed, retry_after
from swepost.retrieval.documents import Document, Hit, contents_of

RETRYABLE = {429, 500, 502, 503, 504}
MAX_BACKOFF = 8.0


class RetrieverError(WorkFailed):
    """The retriever could not answer (down, timed out, 5xx, a reply of the wrong shape, a refused request): the
    episode failed for infrastructure reasons, whatever the model did."""


class _NoEndpoint(Exception):
    pass


def base_url(url: str) -> str:
    """Search-R1 configs name the full `/retrieve` URL (`retriever.url`); swepost names the server. Accept both."""
    url = url.strip().rstrip("/")
    if url.endswith("/retrieve"):
        url = url[: -len("/retrieve")]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"retriever url {url!r}: expected http://host:port or http://host:port/retrieve")
    return url


class RetrieverClient:
    """The Retriever protocol over HTTP: `search` posts to `/retrieve`, `get` to swepost's `/documents` (None from a
    server without it, e.g. Search-R1's own). Thread-safe: each call opens its own connection."""

    def __init__(self, url: str, *, timeout: float = 30.0, max_retries: int = 2, backoff: float = 0.5):
        self.url = base_url(url)
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self._has_documents: bool | None = None  # learnt from the first get

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        queries = list(queries)
        # exactly Search-R1's payload (search_r1/llm_agent/generation.py): some servers only honour return_scores
        reply = self._post("/retrieve", {"queries": queries, "topk": topk, "return_scores": True})
        result = reply.get("result") if isinstance(reply, dict) else None
        if not isinstance(result, list) or len(result) != len(queries):
            raise self._shape(f"'result' should be a list of {len(queries)} lists (one per query)", reply)
        out = []
        for ranked in result:
            if not isinstance(ranked, list):
                raise self._shape("each query's result should be a list of hits", reply)
            out.append([self._hit(item, reply) for item in ranked])
        return out

    def get(self, doc_id: str) -> Document | None:
        if self._has_documents is False:
            return None
        try:
            reply = self._post("/documents", {"ids": [doc_id]}, missing_ok=True)
        except _NoEndpoint:
            self._has_documents = False
            return None
        self._has_documents = True
        docs = reply.get("documents") if isinstance(reply, dict) else None
        if not isinstance(docs, list) or len(docs) != 1 or not (docs[0] is None or isinstance(docs[0], dict)):
            raise self._shape("'documents' should be a list of one document or null", reply)
        return _document(docs[0]) if docs[0] is not None else None

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health", None)

    # --- transport -----------------------------------------------------------------------------------------
    def _post(self, path: str, payload: dict[str, Any], *, missing_ok: bool = False) -> Any:
        return self._request("POST", path, json.dumps(payload).encode(), missing_ok=missing_ok)

    def _request(self, method: str, path: str, data: bytes | None, *, missing_ok: bool = False) -> Any:
        url = self.url + path
        attempt = 0
        while True:
            wait: float | None = None
            try:
                request = urllib.request.Request(url, data=data, method=method,
                                                 headers={"Content-Type": "application/json",
                                                          "Accept": "application/json"})
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = response.read()
                break
            except urllib.error.HTTPError as e:
                detail = _detail(e)
                if missing_ok and e.code in (404, 405):
                    raise _NoEndpoint from None
                if e.code not in RETRYABLE:
                    raise RetrieverError(f"retriever {url} refused the request: HTTP {e.code}: {detail}") from None
                cause = f"HTTP {e.code}: {detail}"
                wait = retry_after(SimpleNamespace(response=SimpleNamespace(headers=e.headers)), MAX_BACKOFF)
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, a garbled reply
                reason = getattr(e, "reason", e)
                cause = "timed out" if isinstance(reason, TimeoutError) else f"unreachable ({reason})"
            if attempt >= self.max_retries:
                tries = f" after {attempt + 1} tries" if attempt else ""
                raise RetrieverError(f"retriever {url}: {cause}{tries}")
            time.sleep(wait if wait is not None else min(self.backoff * 2 ** attempt, MAX_BACKOFF))
            attempt += 1
        try:
            return json.loads(body)
        except ValueError:
            raise RetrieverError(f"retriever {url}: the reply is not JSON: {body[:200]!r}") from None

    # --- the reply's shape ---------------------------------------------------------------------------------
    def _hit(self, item: Any, reply: Any) -> Hit:
        if isinstance(item, dict) and isinstance(item.get("document"), dict):
            score = item.get("score", 0.0)
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise self._shape(f"a score should be a number, got {score!r}", reply)
            return _document(item["document"]), float(score)
        if isinstance(item, dict) and "document" not in item:
            return _document(item), 0.0  # a server that ignores return_scores sends the documents alone
        raise self._shape("each hit should be {'document': {...}, 'score': number}", reply)

    def _shape(self, what: str, reply: Any) -> RetrieverError:
        return RetrieverError(f"retriever {self.url}: not a Search-R1 reply: {what}; got {_clip(reply)}")


def _document(doc: dict[str, Any]) -> Document:
    """Search-R1 clients read `contents`; a server that sends title and text alone gets one built."""
    if not isinstance(doc.get("contents"), str):
        doc = {**doc, "contents": contents_of(doc.get("title"), str(doc.get("text") or ""))}
    return doc


def _detail(e: urllib.error.HTTPError) -> str:
    try:
        raw = e.read()
    except OSError:
        return e.reason or ""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:300].decode(errors="replace") or str(e.reason)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("detail") or body)[:500]
    return _clip(body)


def _clip(value: Any, n: int = 300) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= n else text[:n] + "..."
