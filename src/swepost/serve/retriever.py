"""The retriever server: Search-R1's HTTP API over an index, so that Search-R1 / VerlTool configs point at swepost
unchanged and many environment workers share one index.

`POST /retrieve` `{"queries": [str], "topk": int?, "return_scores": bool?}` answers `{"result": [[{"document": doc,
"score": s}, ...], ...]}` (return_scores true, what every Search-R1 client sends) or `{"result": [[doc, ...], ...]}`,
one list per query, best first. swepost adds `POST /documents` `{"ids": [str]}` -> `{"documents": [doc | null]}`
(the search environment's `open(doc_id)`) and `GET /health`. A malformed request is a 422 whose `detail` names the
field; a body over the size cap is a 413.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime, and the request
# models are local to create_app (their caps are its arguments), out of reach of string annotations
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swepost.errors import BadInput
from swepost.retrieval.documents import Retriever
from swepost.serve.http import BackgroundServer, serve_foreground

DEFAULT_TOPK = 3  # Search-R1's retrieval_server.py --topk default
MAX_TOPK = 100
MAX_QUERIES = 512  # one request per rollout batch step; Search-R1 clients send a whole batch's queries at once
MAX_BODY_BYTES = 1 << 20


def create_app(retriever: Retriever, *, default_topk: int = DEFAULT_TOPK, max_topk: int = MAX_TOPK,
               max_queries: int = MAX_QUERIES, max_body_bytes: int = MAX_BODY_BYTES):
    """The FastAPI app over one retriever. Endpoints are sync functions: Starlette runs them in its threadpool, so
    concurrent requests search the (thread-safe) index concurrently and the event loop keeps accepting."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

    if not 1 <= default_topk <= max_topk:
        raise BadInput(f"default topk {default_topk} must be between 1 and max topk {max_topk}", key="--topk")
    if max_queries < 1:
        raise BadInput(f"max queries {max_queries} must be at least 1", key="--max-queries")

    class RetrieveRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")  # clients send extras (Search-R1 forks add their own keys)
        queries: list[StrictStr] = Field(max_length=max_queries)
        topk: StrictInt | None = Field(default=None, ge=1, le=max_topk)
        return_scores: StrictBool = False  # Search-R1's server default; its clients always send true

    class DocumentsRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")
        ids: list[StrictStr] = Field(max_length=max_queries * max_topk)

    app = FastAPI(title="swepost retriever (Search-R1 API)", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    def _invalid(request, exc: RequestValidationError):
        # FastAPI's own shape (`detail`: a list with `loc`), without echoing the input back, plus one line to read
        detail = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]
        for e in detail:
            if e.get("type") == "json_invalid":  # FastAPI puts the character position in loc
                e["msg"], e["loc"] = f"the body is not JSON (at character {e['loc'][-1]})", ["body"]
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in detail)
        return JSONResponse({"detail": detail, "message": message}, status_code=422)

    @app.exception_handler(BadInput)
    def _bad_input(request, exc: BadInput):
        return JSONResponse({"detail": [{"type": "bad_input", "loc": ["body", exc.key or "queries"],
                                         "msg": exc.detail}], "message": str(exc)}, status_code=422)

    @app.post("/retrieve")
    def retrieve(request: RetrieveRequest):
        topk = request.topk or default_topk
        hits = retriever.search(request.queries, topk) if request.queries else []
        if request.return_scores:
            result = [[{"document": doc, "score": float(score)} for doc, score in ranked] for ranked in hits]
        else:
            result = [[doc for doc, _ in ranked] for ranked in hits]
        return JSONResponse({"result": result})  # plain dicts of str: no need for FastAPI's slow re-encoding

    @app.post("/documents")
    def documents(request: DocumentsRequest):
        return JSONResponse({"documents": [retriever.get(doc_id) for doc_id in request.ids]})

    @app.get("/health")
    def health():
        size = len(retriever) if hasattr(retriever, "__len__") else None
        return {"status": "ok", "documents": size, "default_topk": default_topk, "max_topk": max_topk,
                "max_queries": max_queries}

    return app


class BodySizeLimit:
    """ASGI middleware: a request body over `max_bytes` is a 413 before the app sees it. A declared
    Content-Length is checked first; a chunked body is read up to the cap (requests are small JSON)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._too_large(send)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        data = json.dumps({"detail": [{"type": "too_large", "loc": ["body"],
                                       "msg": f"request body over {self.max_bytes} bytes"}]}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": data})


def serve_retriever(index_path: str | Path, host: str = "127.0.0.1", port: int = 8000, *,
                    default_topk: int = DEFAULT_TOPK, max_topk: int = MAX_TOPK, max_queries: int = MAX_QUERIES,
                    on_ready: Callable[[str, int], None] | None = None) -> None:
    """Open the index, listen, call `on_ready(url, documents)`, and serve until SIGINT or SIGTERM (then return
    normally: a stopped server is not a failure)."""
    from swepost.retrieval.index import open_index

    try:
        index = open_index(Path(index_path))
    except BadInput:
        raise
    except Exception as e:  # a folder that is not an index, a damaged one
        raise BadInput(f"cannot open the index: {e}", file=str(index_path)) from None
    app = create_app(index, default_topk=default_topk, max_topk=max_topk, max_queries=max_queries)
    serve_foreground(app, host, port, on_ready=None if on_ready is None else lambda url: on_ready(url, len(index)))


class BackgroundRetrieverServer(BackgroundServer):
    """The retriever app served by uvicorn in a thread of this process (tests, the demo, in-process workers):
    `with BackgroundRetrieverServer(index) as server: RetrieverClient(server.url)`."""

    name = "retriever server"

    def __init__(self, retriever: Retriever, *, host: str = "127.0.0.1", port: int = 0, **app_options: Any):
        super().__init__(create_app(retriever, **app_options), host=host, port=port)
