"""The retriever server speaks Search-R1's API over a real on-disk index, on loopback; its client copes with every
Search-R1-compatible server and calls a broken one an infrastructure failure.

Requests here are made with a stdlib client written in this file, not swepost's, so that the server is checked
against what Search-R1 sends, not against what our own client happens to send.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from swepost.retrieval.client import RetrieverClient, RetrieverError
from swepost.serve.retriever import BackgroundRetrieverServer

REPO_ROOT = Path(__file__).resolve().parents[1]

TOPICS = {
    "p-heapq": ("heapq", "heapq implements the heap queue algorithm, also known as the priority queue algorithm."),
    "p-bisect": ("bisect", "bisect keeps a sorted list in order without sorting it again after each insertion."),
    "p-zlib": ("zlib", "zlib compresses and decompresses data with the deflate algorithm, compatible with gzip."),
    "p-sqlite3": ("sqlite3", "sqlite3 is a DB-API interface to SQLite databases, a disk-based database engine."),
    "p-asyncio": ("asyncio", "asyncio writes concurrent code with the async and await syntax and an event loop."),
    "p-pathlib": ("pathlib", "pathlib offers classes for filesystem paths with semantics for different systems."),
    "p-secrets": ("secrets", "secrets generates cryptographically strong random numbers for tokens and passwords."),
    "p-tomllib": ("tomllib", "tomllib parses TOML files; it was added to the standard library in Python 3.11."),
}
FILLER = [f"p-filler-{i}" for i in range(40)]


def corpus_rows() -> list[dict]:
    rows = [{"id": doc_id, "contents": f'"{title}"\n{text}'} for doc_id, (title, text) in TOPICS.items()]
    # fillers share common words, so every query has more than topk matches and ranking matters
    rows += [{"id": doc_id, "contents": f'"Filler {i}"\nThis module of the standard library is not about '
              f"the algorithm or the database; it is note number {i}."} for i, doc_id in enumerate(FILLER)]
    return rows


@pytest.fixture(scope="module")
def index_path(tmp_path_factory) -> Path:
    from swepost.retrieval.index import build_index

    folder = tmp_path_factory.mktemp("retriever")
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in corpus_rows()))
    build_index(corpus, folder / "index")
    return folder / "index"


@pytest.fixture(scope="module")
def index(index_path):
    from swepost.retrieval.index import open_index

    return open_index(index_path)


@pytest.fixture(scope="module")
def server(index):
    with BackgroundRetrieverServer(index, max_topk=20, max_queries=8) as running:
        yield running


# --- a plain stdlib client, sending what Search-R1 sends ------------------------------------------------------------
# Search-R1's generation.py: requests.post(search_url, json={"queries": [...], "topk": k, "return_scores": True});
# requests encodes with json.dumps' default separators and these headers
REQUESTS_HEADERS = {"User-Agent": "python-requests/2.32.3", "Accept-Encoding": "gzip, deflate", "Accept": "*/*",
                    "Connection": "keep-alive", "Content-Type": "application/json"}


def post(url: str, body, *, raw: bool = False, timeout: float = 10) -> tuple[int, dict, bytes]:
    """(status, headers, raw body) of a POST; `body` is JSON-encoded unless `raw`."""
    data = body if raw else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=REQUESTS_HEADERS, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def search_r1_passages(result: list[dict]) -> str:
    """What Search-R1 shows the model of one query's hits (its `_passages2string`: title from contents' first
    line, then the rest): the reply must carry what this reads."""
    lines = []
    for i, item in enumerate(result):
        contents = item["document"]["contents"]
        title, _, text = contents.partition("\n")
        lines.append(f"Doc {i + 1}(Title: {title}) {text}")
    return "\n".join(lines)


# --- the Search-R1 API ---------------------------------------------------------------------------------------------
def test_search_r1_request_gets_search_r1_reply(server):
    status, headers, raw = post(server.url + "/retrieve", {"queries": ["heap queue priority algorithm",
                                                                      "SQLite disk-based database"],
                                                          "topk": 3, "return_scores": True})
    assert status == 200, raw
    assert headers["content-type"] == "application/json"
    assert raw.startswith(b'{"result":[[{"document":{')
    reply = json.loads(raw)
    assert list(reply) == ["result"]
    assert isinstance(reply["result"], list) and len(reply["result"]) == 2  # one list per query, in order
    for ranked, expected in zip(reply["result"], ["p-heapq", "p-sqlite3"], strict=True):
        assert isinstance(ranked, list) and len(ranked) == 3  # topk respected
        for item in ranked:
            assert sorted(item) == ["document", "score"]
            assert type(item["score"]) is float
            doc = item["document"]
            assert isinstance(doc["id"], str) and isinstance(doc["contents"], str)
        assert ranked[0]["document"]["id"] == expected
        scores = [item["score"] for item in ranked]
        assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]
    first = reply["result"][0][0]["document"]
    assert first["contents"] == f'"heapq"\n{TOPICS["p-heapq"][1]}'  # the corpus row, unchanged
    assert search_r1_passages(reply["result"][0]).startswith('Doc 1(Title: "heapq") heapq implements')


def test_without_scores_the_documents_alone_and_topk_defaults_to_three(server):
    status, _, raw = post(server.url + "/retrieve", {"queries": ["deflate algorithm"]})
    assert status == 200, raw
    reply = json.loads(raw)
    (ranked,) = reply["result"]
    assert len(ranked) == 3  # Search-R1's default topk
    assert ranked[0]["id"] == "p-zlib" and "score" not in ranked[0] and "document" not in ranked[0]
    assert ranked[0]["contents"].startswith('"zlib"\n')
    status, _, raw = post(server.url + "/retrieve", {"queries": ["gzip"], "topk": None, "return_scores": False})
    assert status == 200 and len(json.loads(raw)["result"][0]) == 1  # only one document mentions gzip


def test_extra_keys_are_ignored_and_no_queries_is_no_results(server):
    status, _, raw = post(server.url + "/retrieve", {"queries": ["asyncio event loop"], "topk": 2,
                                                     "return_scores": True, "trajectory_id": "t1", "x": [1]})
    assert status == 200 and json.loads(raw)["result"][0][0]["document"]["id"] == "p-asyncio"
    status, _, raw = post(server.url + "/retrieve", {"queries": [], "topk": 2, "return_scores": True})
    assert (status, json.loads(raw)) == (200, {"result": []})


@pytest.mark.parametrize("body, loc", [
    ({"topk": 3, "return_scores": True}, ["body", "queries"]),  # queries missing
    ({"queries": "heapq", "topk": 3}, ["body", "queries"]),  # a string, not a list
    ({"queries": ["heapq", 7]}, ["body", "queries", 1]),  # not a list of strings
    ({"queries": ["heapq"], "topk": 0}, ["body", "topk"]),
    ({"queries": ["heapq"], "topk": -2}, ["body", "topk"]),
    ({"queries": ["heapq"], "topk": 2.5}, ["body", "topk"]),
    ({"queries": ["heapq"], "topk": "3"}, ["body", "topk"]),
    ({"queries": ["heapq"], "topk": 21}, ["body", "topk"]),  # above the server's cap (max_topk=20)
    ({"queries": ["heapq"] * 9}, ["body", "queries"]),  # more queries than the cap (max_queries=8)
    ({"queries": ["heapq"], "return_scores": "yes"}, ["body", "return_scores"]),
    (["heapq"], ["body"]),  # not an object
])
def test_a_malformed_request_is_a_422_naming_the_field(server, body, loc):
    status, _, raw = post(server.url + "/retrieve", body)
    assert status == 422, raw
    reply = json.loads(raw)
    assert loc in [e["loc"] for e in reply["detail"]], reply
    assert ".".join(map(str, loc)) in reply["message"]
    assert "input" not in reply["detail"][0]  # a 1 MB request is not echoed back


def test_a_body_that_is_not_json_is_a_422(server):
    for raw_body in (b"{not json", b"", b"\xff\xfe"):
        status, _, raw = post(server.url + "/retrieve", raw_body, raw=True)
        assert status == 422, (raw_body, raw)
        assert json.loads(raw)["detail"][0]["loc"][0] == "body"


def test_an_oversized_body_is_a_413(server):
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    # declared too large: refused from the headers, before a byte of the body is read
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/retrieve")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "body" in json.loads(response.read())["detail"][0]["loc"]
    conn.close()


def test_a_chunked_body_over_the_cap_is_a_413(index):
    # no Content-Length to check: the body is counted as it arrives (a small cap keeps it within socket buffers)
    with BackgroundRetrieverServer(index, max_body_bytes=4096) as small:
        host, port = small.url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        query = json.dumps({"queries": ["x" * 6000]}).encode()
        conn.request("POST", "/retrieve", body=iter([query[:3000], query[3000:]]),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413, response.read()
        conn.close()
        ok = json.dumps({"queries": ["heapq"], "topk": 1, "return_scores": True}).encode()
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", "/retrieve", body=iter([ok[:10], ok[10:]]),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["result"][0][0]["document"]["id"] == "p-heapq"


def test_health_and_documents_by_id(server):
    with urllib.request.urlopen(server.url + "/health", timeout=10) as response:
        health = json.loads(response.read())
    assert health["status"] == "ok" and health["documents"] == len(TOPICS) + len(FILLER)
    status, _, raw = post(server.url + "/documents", {"ids": ["p-bisect", "no-such-id", "p-secrets"]})
    assert status == 200, raw
    docs = json.loads(raw)["documents"]
    assert [d and d["id"] for d in docs] == ["p-bisect", None, "p-secrets"]
    assert docs[0]["contents"] == f'"bisect"\n{TOPICS["p-bisect"][1]}'
    status, _, raw = post(server.url + "/documents", {"ids": "p-bisect"})
    assert status == 422 and ["body", "ids"] in [e["loc"] for e in json.loads(raw)["detail"]]


class MeetingRetriever:
    """The real index, but every search waits until `parties` searches are in progress at once: if the server
    handled requests one at a time, the barrier would break and the requests would fail."""

    def __init__(self, index, parties: int):
        self.index, self.barrier = index, threading.Barrier(parties, timeout=20)

    def search(self, queries, topk):
        self.barrier.wait()
        return self.index.search(queries, topk)

    def get(self, doc_id):
        return self.index.get(doc_id)


def test_concurrent_requests_are_served_concurrently_and_correctly(index):
    queries = {"p-heapq": "heap queue", "p-bisect": "sorted list insertion", "p-zlib": "deflate gzip",
               "p-sqlite3": "SQLite database", "p-asyncio": "async await event loop",
               "p-pathlib": "filesystem paths classes", "p-secrets": "cryptographically strong tokens",
               "p-tomllib": "TOML files"}
    answers: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def ask(expected: str, query: str, url: str) -> None:
        try:
            for _ in range(3):
                status, _, raw = post(url + "/retrieve", {"queries": [query], "topk": 2, "return_scores": True},
                                      timeout=30)
                assert status == 200, raw
                answers.setdefault(expected, []).append(json.loads(raw)["result"][0][0]["document"]["id"])
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    with BackgroundRetrieverServer(MeetingRetriever(index, parties=len(queries))) as meeting:
        threads = [threading.Thread(target=ask, args=(doc_id, q, meeting.url)) for doc_id, q in queries.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert answers == {doc_id: [doc_id] * 3 for doc_id in queries}


# --- our client against servers of every kind ------------------------------------------------------------------------
def test_client_search_and_get_against_swepost(server):
    for url in (server.url, server.url + "/", server.url + "/retrieve"):  # the base, or Search-R1's full URL
        client = RetrieverClient(url, timeout=10)
        hits = client.search(["heap queue priority", "TOML files"], 2)
        assert [[doc["id"] for doc, _ in ranked][0] for ranked in hits] == ["p-heapq", "p-tomllib"]
        assert all(isinstance(score, float) for ranked in hits for _, score in ranked)
        assert client.get("p-pathlib")["contents"].startswith('"pathlib"\n')
        assert client.get("no-such-id") is None


def test_client_names_a_refused_request_without_retrying(server):
    client = RetrieverClient(server.url, timeout=10, max_retries=3)
    with pytest.raises(RetrieverError, match=r"HTTP 422.*topk"):
        client.search(["heapq"], 50)  # over this server's max_topk


class StubServer:
    """A stdlib HTTP server on loopback answering from `reply(path, body) -> (status, headers, bytes)`; counts
    requests per path. Plays Search-R1's own retrieval_server (no /documents), a failing or a hung server."""

    def __init__(self, reply):
        self.reply, self.hits, self.stop = reply, {}, threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                status, headers, data = outer.reply(self.path, json.loads(body))
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def search_r1_bm25_reply(path: str, body: dict):
    """Search-R1's retrieval_server over its BM25 index: title/text/contents, no id, and no /documents."""
    if path != "/retrieve":
        return 404, {"Content-Type": "application/json"}, b'{"detail":"Not Found"}'
    result = [[{"document": {"title": "heapq", "text": "A heap.", "contents": '"heapq"\nA heap.'}, "score": 7}]
              for _ in body["queries"]]
    return 200, {"Content-Type": "application/json"}, json.dumps({"result": result}).encode()


def test_client_against_search_r1s_own_server(tmp_path):
    with StubServer(search_r1_bm25_reply) as stub:
        client = RetrieverClient(stub.url + "/retrieve")
        hits = client.search(["a", "b"], 3)
        assert hits == [[({"title": "heapq", "text": "A heap.", "contents": '"heapq"\nA heap.'}, 7.0)]] * 2
        assert client.get("anything") is None and client.get("other") is None
        assert stub.hits == {"/retrieve": 1, "/documents": 1}  # learnt once that /documents is not there


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_against_a_dead_port_raises_quickly():
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(RetrieverError, match=r"127\.0\.0\.1.*unreachable.*after 3 tries"):
        RetrieverClient(url, timeout=1, max_retries=2, backoff=0.05).search(["q"], 3)
    assert time.monotonic() - start < 5
    with pytest.raises(RetrieverError, match="unreachable"):
        RetrieverClient(url, timeout=1, max_retries=0).get("p-heapq")  # not taken for "no /documents"


def test_client_retries_a_5xx_then_gives_up():
    with StubServer(lambda path, body: (500, {}, b"Internal Server Error")) as stub:
        with pytest.raises(RetrieverError, match=r"HTTP 500.*Internal Server Error.*after 3 tries"):
            RetrieverClient(stub.url, max_retries=2, backoff=0.01).search(["q"], 3)
        assert stub.hits == {"/retrieve": 3}


def test_client_retries_a_busy_server_until_it_answers():
    answers = [(503, {"Retry-After": "0"}, b"busy"), (429, {}, b"slow down")]

    def reply(path, body):
        return answers.pop(0) if answers else search_r1_bm25_reply(path, body)

    with StubServer(reply) as stub:
        hits = RetrieverClient(stub.url, max_retries=2, backoff=0.01).search(["q"], 1)
        assert hits[0][0][0]["title"] == "heapq" and stub.hits == {"/retrieve": 3}


@pytest.mark.parametrize("data, match", [
    (b"<html>proxy login</html>", "not JSON"),
    (b'{"result": []}', "one per query"),  # one query asked, no list answered
    (b'{"results": [[]]}', "one per query"),
    (b'{"result": [[{"document": {"contents": "x"}, "score": "high"}]]}', "score"),
    (b'{"result": [["just a string"]]}', "each hit"),
])
def test_client_rejects_a_reply_of_the_wrong_shape(data, match):
    with StubServer(lambda path, body: (200, {"Content-Type": "application/json"}, data)) as stub:
        with pytest.raises(RetrieverError, match=match):
            RetrieverClient(stub.url, max_retries=0).search(["q"], 3)


def test_client_times_out_on_a_hung_server():
    holder: dict = {}

    def hang(path, body):
        holder["stub"].stop.wait(10)
        return 200, {}, b"{}"

    with StubServer(hang) as stub:
        holder["stub"] = stub
        start = time.monotonic()
        with pytest.raises(RetrieverError, match="timed out"):
            RetrieverClient(stub.url, timeout=0.3, max_retries=0).search(["q"], 3)
        assert time.monotonic() - start < 5


# --- the command ---------------------------------------------------------------------------------------------------
def start_cli(*args: str, home: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "SWEPOST_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "swepost", "serve", "retriever", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # printed once the index is open and the port is listening
    found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not found:
        proc.kill()
        raise AssertionError(f"no URL in {line!r}; stderr: {proc.stderr.read()}")
    return proc, found.group(0)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_the_command_serves_an_index_folder_and_stops_cleanly(index_path, tmp_path, stop):
    proc, url = start_cli(str(index_path), "--port", "0", home=tmp_path)
    try:
        assert not url.endswith(":0")
        status, _, raw = post(url + "/retrieve", {"queries": ["TOML"], "topk": 3, "return_scores": True})
        assert status == 200 and json.loads(raw)["result"][0][0]["document"]["id"] == "p-tomllib"
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err


def test_the_command_serves_an_index_artifact(index_path, tmp_path):
    import shutil

    from swepost.artifacts import ArtifactStore

    home = tmp_path / "home"
    with ArtifactStore(home).write("tiny-index", "index", producer={"stage": "test"}) as w:
        shutil.copytree(index_path, w.path / "index")
    proc, url = start_cli("tiny-index", "--port", "0", home=home)
    try:
        status, _, raw = post(url + "/retrieve", {"queries": ["bisect sorted"], "topk": 1, "return_scores": True})
        assert status == 200 and json.loads(raw)["result"][0][0]["document"]["id"] == "p-bisect"
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_the_command_names_a_missing_index(swepost, tmp_path, store):
    r = swepost("serve", "retriever", str(tmp_path / "no-index-here"), "--port", "0")
    assert r.returncode == 2 and "no-index-here" in r.stderr and "Traceback" not in r.stderr
    r = swepost("serve", "retriever", "no-such-index", "--port", "0")
    assert r.returncode == 2 and "no-such-index" in r.stderr
    with store.write("some-tasks", "tasks", producer={"stage": "test"}) as w:
        (w.path / "tasks.jsonl").write_text("")
    r = swepost("serve", "retriever", "some-tasks", "--port", "0")
    assert r.returncode == 2 and "not an index" in r.stderr
    not_an_index = tmp_path / "empty"
    not_an_index.mkdir()
    r = swepost("serve", "retriever", str(not_an_index), "--port", "0")
    assert r.returncode == 2 and "empty" in r.stderr and "Traceback" not in r.stderr
