"""`swepost view` and `swepost report`: the static site opened in headless Chromium (Debian's chromium driven by
Playwright, as CI installs them), hostile trajectories rendered as text, the loopback server's refusals, the report's
Markdown and plots. One browser for the whole module."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from swepost.artifacts import ArtifactStore
from swepost.records import Trajectory
from swepost.viewer.report import write_report
from swepost.viewer.server import make_server
from swepost.viewer.site import build_site, to_js_literal

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update"]
HOSTILE_SCRIPT = "<script>window.__pwned = 1; alert(1)</script>"
HOSTILE_IMG = '<img src=x onerror="window.__pwned = 2; alert(2)">'
MARKER_WORD = "quuxfrobnicated"  # only in one tool output: the text search must find it there
BIG = 5_000_000

GOLD = ("diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n"
        "-    return a - b\n+    return a + b\n")
WRONG = GOLD.replace("a + b", "b + a + 0")
F2P, P2P = ["tests/test_calc.py::test_add"], ["tests/test_calc.py::test_sub", "tests/test_calc.py::test_mul"]


def _tasks() -> list[dict]:
    return [
        {"instance_id": "calc-1", "kind": "swe", "problem_statement": "add subtracts", "patch": GOLD,
         "verify": {"fail_to_pass": F2P, "pass_to_pass": P2P}},
        {"instance_id": "qa-1", "kind": "codeqa", "problem_statement": "What does add do?",
         "verify": {"reference_answer": "It adds two numbers.", "rubric": ["says it adds"]}},
        {"instance_id": "ir-1", "kind": "search", "problem_statement": "Who wrote it?",
         "verify": {"gold_answers": ["Ada Lovelace", "Lovelace"]}},
    ]


def _swe(sample: int, resolved: bool) -> Trajectory:
    statuses = {F2P[0]: "PASSED" if resolved else "FAILED", P2P[0]: "PASSED", P2P[1]: "PASSED"}
    messages = [
        {"role": "system", "content": "You fix bugs."},
        {"role": "user", "content": "add subtracts"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "c0", "type": "function", "function": {"name": "bash", "arguments": '{"command": "cat calc.py"}'}}]},
        {"role": "tool", "tool_call_id": "c0", "name": "bash", "content": f"def add(a, b):\n    return a - b\n"
                                                                          f"{MARKER_WORD if sample == 1 else ''}"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "submit", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "submit", "content": "Submitted."},
    ]
    return Trajectory(
        episode_id=f"calc-1#{sample}", instance_id="calc-1", sample=sample, environment="swe", messages=messages,
        exit_status="submitted", final_diff=GOLD if resolved else WRONG, reward=1.0 if resolved else 0.0,
        resolved="RESOLVED_FULL" if resolved else "RESOLVED_NO", turns=2, tool_calls=2, prompt_tokens=900,
        completion_tokens=60, seconds={"total": 4.5},
        evidence={"tests": statuses, "fail_to_pass": {"passed": F2P if resolved else [],
                                                      "failed": [] if resolved else F2P},
                  "pass_to_pass": {"passed": P2P, "failed": []},
                  "apply": {"ok": True, "log": "Applied patch calc.py cleanly.\n"},
                  "output_tail": "=== 1 failed, 2 passed ===\n"})


def _codeqa() -> Trajectory:
    return Trajectory(
        episode_id="qa-1#0", instance_id="qa-1", environment="codeqa", exit_status="submitted",
        messages=[{"role": "user", "content": "What does add do?"}, {"role": "assistant", "content": "It adds."}],
        answer="It adds two numbers together.", reward=0.8, resolved="RESOLVED_FULL", turns=1,
        evidence={"judge": "lexical", "scores": {"correctness": 9, "completeness": 7, "relevance": 10, "clarity": 8,
                                                  "reasoning": 6}, "total": 40, "reward": 0.8,
                  "rationale": "close to the reference", "judge_failed": False})


def _search() -> Trajectory:
    return Trajectory(
        episode_id="ir-1#0", instance_id="ir-1", environment="search", exit_status="submitted",
        messages=[{"role": "user", "content": "Who wrote it?"}, {"role": "assistant", "content": "Lovelace"}],
        answer="Lovelace", reward=1.0, resolved="RESOLVED_FULL", turns=1,
        evidence={"answer": "Lovelace", "golds": ["Ada Lovelace", "Lovelace"], "em": 1.0, "f1": 1.0, "metric": "em"})


def _hostile() -> Trajectory:
    return Trajectory(
        episode_id=f"evil{HOSTILE_IMG}#0", instance_id=f"evil{HOSTILE_SCRIPT}", environment="swe",
        exit_status="format_error", resolved=HOSTILE_SCRIPT, reward=0.0, turns=1,
        final_diff=f"diff --git a/x b/x\n+{HOSTILE_SCRIPT}\n-{HOSTILE_IMG}\n", error=f"</script>{HOSTILE_SCRIPT}<!--",
        messages=[
            {"role": f"assistant{HOSTILE_IMG}", "content": f"{HOSTILE_SCRIPT} and {HOSTILE_IMG}",
             "tool_calls": [{"id": "c", "type": "function", "function": {
                 "name": HOSTILE_IMG, "arguments": json.dumps({HOSTILE_SCRIPT: HOSTILE_IMG})}}]},
            {"role": "tool", "name": HOSTILE_SCRIPT, "content": "</script><script>window.__pwned = 3</script>"},
        ],
        evidence={"tests": {HOSTILE_IMG: HOSTILE_SCRIPT}, HOSTILE_SCRIPT: HOSTILE_IMG})


def _huge() -> Trajectory:
    body = ("0123456789abcdef" * 64 + "\n") * (BIG // 1025)
    return Trajectory(episode_id="huge#0", instance_id="huge", exit_status="max_turns", turns=1,
                      messages=[{"role": "tool", "name": "bash", "content": body}])


def _raw_lines() -> list[bytes]:
    """Lines no Trajectory would write: not UTF-8, raw NUL and control bytes, fields missing, not JSON at all."""
    return [
        b'{"episode_id": "bin#0", "instance_id": "bin", "messages": [{"role": "tool", "content": "caf\xe9 \xff\xfe '
        b'raw\x00nul \x01\x02 and \\u0000 escaped"}], "exit_status": "sandbox_error"}',
        b'{"episode_id": "bare#0"}',
        b'{"messages": "not a list", "evidence": [1, 2], "seconds": "soon", "reward": "high", "turns": null}',
        b"{not json <script>window.__pwned = 4</script>",
        b"[1, 2, 3]",
        json.dumps({"episode_id": f"raw{HOSTILE_IMG}", "instance_id": "raw", "exit_status": HOSTILE_IMG,
                    "resolved": HOSTILE_SCRIPT, "reward": 0}).encode(),
    ]


N_FILLER = 12  # plain episodes, so that filters have something to narrow


@pytest.fixture(scope="module")
def vstore(tmp_path_factory) -> ArtifactStore:
    store = ArtifactStore(tmp_path_factory.mktemp("viewer") / "home")
    with store.write("vtasks", "tasks", producer={"stage": "test"}) as w:
        (w.path / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in _tasks()))
    tasks_id = w.artifact.id
    good = [_swe(0, True), _swe(1, False), _codeqa(), _search(), _hostile(), _huge()]
    good += [Trajectory(episode_id=f"filler-{k}#0", instance_id=f"filler-{k}", exit_status="max_turns", turns=3,
                        reward=0.0, resolved="RESOLVED_NO", messages=[{"role": "user", "content": f"task {k}"}])
             for k in range(N_FILLER)]
    lines = [t.model_dump_json().encode() for t in good] + _raw_lines()
    with store.write("vtrajs", "trajectories", producer={"stage": "test"}, parents=[tasks_id]) as w:
        (w.path / "trajectories.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with store.write("veval", "eval", producer={"stage": "eval"}, parents=[tasks_id]) as w:
        (w.path / "trajectories.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in good[:4]))
        (w.path / "metrics.json").write_text(json.dumps({"episodes": 4, "resolved": 3}))
    with store.write("vrl", "checkpoint", producer={"stage": "rl"}, parents=[tasks_id]) as w:
        rows, history = [], []
        (w.path / "trajectories").mkdir()
        for step in (1, 2, 3):
            trajs = [_swe(s, resolved=s < step - 1) for s in range(4)]
            for g, t in enumerate(trajs):
                rows.append({"step": step, "process": 0, "group": g // 2, "sample": g % 2, "instance_id": t.instance_id,
                             "reward": t.reward, "resolved": t.resolved, "exit_status": "submitted", "turns": 2,
                             "masked": None, "group_dropped": step == 1, "judge_failed": False})
            (w.path / "trajectories" / f"step-{step:06d}.jsonl").write_text(
                "".join(t.model_dump_json() + "\n" for t in trajs))
            history.append({"loss": 0.1 * step, "step": step, "step_time": 10.0, "time/rollout": 7.0,
                            "time/generation": 3.0, "time/environment": 4.0})
        (w.path / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (w.path / "log_history.json").write_text(json.dumps(history))
        w.stats.update(time_split={"generation": 9.0, "environment": 12.0, "training": 9.0})
    return store


N_EPISODES = 6 + N_FILLER + 6


@pytest.fixture(scope="module")
def site(vstore, tmp_path_factory) -> Path:
    built = build_site(vstore, vstore.resolve("vtrajs"), tmp_path_factory.mktemp("site") / "view")
    assert built["episodes"] == N_EPISODES
    return Path(built["out"])


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium; a loud skip where it or Playwright is missing, a failure under SWEPOST_REQUIRE_BROWSER=1."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install playwright)"
    if reason is None and not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    if reason:
        if os.environ.get("SWEPOST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason} (SWEPOST_REQUIRE_BROWSER=1, so this fails instead of skipping)", pytrace=False)
        pytest.skip(f"BROWSER TESTS SKIPPED: {reason} (CI sets SWEPOST_REQUIRE_BROWSER=1 and fails instead)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


class Page:
    """A page that records console errors, page errors and dialogs: a test fails on any of them."""

    def __init__(self, browser, tmp_path: Path, bypass_csp: bool = False):
        self.context = browser.new_context(viewport={"width": 1300, "height": 900}, bypass_csp=bypass_csp)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.tmp_path = tmp_path
        self.page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog) -> None:
        self.problems.append(f"a dialog opened: {dialog.message}")
        dialog.dismiss()

    def open(self, url: str) -> None:
        self.page.goto(url)

    def screenshot(self, name: str) -> Path:
        path = self.tmp_path / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        if os.environ.get("SWEPOST_TEST_ARTIFACTS"):
            keep = Path(os.environ["SWEPOST_TEST_ARTIFACTS"])
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, keep / path.name)
        return path

    def check_clean(self) -> None:
        pwned = self.page.evaluate("window.__pwned")
        assert pwned is None, f"a trajectory ran script in the page (window.__pwned = {pwned})"
        assert self.problems == []


@pytest.fixture
def page(browser, tmp_path):
    p = Page(browser, tmp_path)
    yield p
    p.context.close()


@pytest.fixture
def page_without_csp(browser, tmp_path):
    """The escaping must hold on its own: the Content-Security-Policy is the second wall, not the first."""
    p = Page(browser, tmp_path, bypass_csp=True)
    yield p
    p.context.close()


def rows(page: Page, n: int) -> None:
    from playwright.sync_api import expect

    expect(page.page.locator(".row")).to_have_count(n)


# --- the site in a browser ----------------------------------------------------------------------------------------

def test_list_renders_filters_searches_and_opens_an_episode(site, page):
    url = (site / "index.html").as_uri()
    page.open(url)
    page.page.wait_for_selector(".row")
    assert page.page.locator(".row").count() == N_EPISODES
    assert page.page.locator("#count").text_content() == f"{N_EPISODES} episodes"
    shot = page.screenshot("viewer-list")
    assert shot.stat().st_size > 10_000

    page.page.select_option("select[data-filter=st]", "submitted")  # a filter narrows the rows
    assert page.page.locator(".row").count() == 4
    assert page.page.locator("#count").text_content() == f"4 of {N_EPISODES} episodes"
    page.page.select_option("select[data-filter=st]", "")
    page.page.fill("#task-filter", "calc-")
    assert page.page.locator(".row").count() == 2
    page.page.fill("#task-filter", "")

    page.page.fill("#search", MARKER_WORD)  # a word only in one tool output: the search text loads, then filters
    rows(page, 1)
    assert page.page.locator(".row").first.get_attribute("data-i") == "1"
    page.page.fill("#search", "")
    rows(page, N_EPISODES)

    page.page.locator("#list").focus()  # keyboard: down one row, open it
    page.page.keyboard.press("j")
    page.page.keyboard.press("Enter")
    page.page.wait_for_selector("#conversation")
    assert page.page.locator("#ep-title").text_content() == "calc-1#1"
    assert "b + a + 0" in page.page.locator("#final-diff").text_content()
    assert "return a + b" in page.page.locator("#gold-patch").text_content()
    assert page.page.locator("#final-diff .add").count() == 1 and page.page.locator("#gold-patch .del").count() == 1
    tests = page.page.locator("#tests tr")
    assert tests.count() == 4
    assert tests.nth(1).text_content() == f"{F2P[0]}F2PFAILED"
    assert page.page.locator("#tests .t-pass").count() == 2
    page.screenshot("viewer-episode")
    page.page.locator("#raw-link").click()  # the line as the artifact holds it
    page.page.wait_for_selector("#raw")
    assert '"episode_id": "calc-1#1"' in page.page.locator("#raw").text_content()
    page.page.keyboard.press("Escape")
    page.page.wait_for_selector("#conversation")
    page.page.keyboard.press("Escape")
    page.page.wait_for_selector(".row")
    page.check_clean()


def test_judge_scores_and_em_f1(site, page):
    url = (site / "index.html").as_uri()
    page.open(url + "#/e/2")
    page.page.wait_for_selector("#judge-scores")
    text = page.page.locator("#judge-scores").text_content()
    assert "correctness9" in text and "reasoning6" in text and "total40" in text
    assert "It adds two numbers." in page.page.locator("#episode").text_content()  # the reference answer
    page.open(url + "#/e/3")
    page.page.wait_for_selector("#answer-metrics")
    assert page.page.locator("#golds li").all_text_contents() == ["Ada Lovelace", "Lovelace"]
    metrics = page.page.locator("#answer-metrics").text_content()
    assert "em1.0" in metrics and "f11.0" in metrics
    page.check_clean()


def test_hostile_episodes_render_as_text(site, page_without_csp):
    page = page_without_csp
    url = (site / "index.html").as_uri()
    page.open(url)
    page.page.wait_for_selector(".row")
    list_text = page.page.locator("#list").text_content()
    assert f"evil{HOSTILE_IMG}#0" in list_text and HOSTILE_SCRIPT in list_text  # shown, as text
    page.open(url + "#/e/4")
    page.page.wait_for_selector("#conversation")
    body = page.page.locator("#episode").text_content()
    assert body.count(HOSTILE_SCRIPT) >= 4 and body.count(HOSTILE_IMG) >= 4
    assert "</script><script>window.__pwned = 3</script>" in body
    assert page.page.locator("img").count() == 0
    own = page.page.evaluate("[...document.scripts].map(s => s.getAttribute('src'))")
    assert all(src and (src.startswith("static/") or src.startswith("data/")) for src in own), own
    page.screenshot("viewer-hostile")

    page.open(url + "#/e/5")  # 5 MB of output: folded, capped, the rest left to the raw JSON
    page.page.wait_for_selector("#conversation button.fold")
    assert "more characters in the raw JSON" in page.page.locator("#conversation").text_content()
    page.page.locator("#conversation button.fold").first.click()
    page.open(url + "#/raw/4")  # the hostile line, raw: text too
    page.page.wait_for_selector("#raw")
    assert HOSTILE_SCRIPT in page.page.locator("#raw").text_content()

    first_raw = 6 + N_FILLER
    page.open(url + f"#/e/{first_raw}")  # not UTF-8, NUL bytes
    page.page.wait_for_selector("#conversation")
    assert "caf\ufffd \ufffd\ufffd raw" in page.page.locator("#conversation").text_content()
    for k in range(1, 6):  # fields missing, wrong types, not JSON, not an object, a status that is markup
        page.open(url + f"#/e/{first_raw + k}")
        page.page.wait_for_selector("#conversation")
    assert HOSTILE_IMG in page.page.locator("#episode .st").text_content()
    page.open(url + f"#/e/{first_raw + 3}")
    page.page.wait_for_selector(".problem")
    assert "is not JSON" in page.page.locator(".problem").first.text_content()
    page.open(url)
    page.page.fill("#search", "pwned")  # the search text holds the hostile strings too: still only text
    rows(page, 2)
    page.check_clean()


def test_run_view_plots_an_rl_checkpoint_and_its_lineage(vstore, tmp_path, page):
    out = build_site(vstore, vstore.resolve("vrl"), tmp_path / "rl-view")
    assert out["view"] == "rl" and out["episodes"] == 12
    page.open(Path(out["index"]).as_uri())
    page.page.wait_for_selector(".row")
    page.page.select_option("select[data-filter=group]", "3")
    assert page.page.locator(".row").count() == 4
    page.open(Path(out["index"]).as_uri() + "#/run")
    page.page.wait_for_selector("#lineage")
    titles = page.page.locator(".chart h3").all_text_contents()
    assert {"reward per step (graded episodes)", "resolved rate per step", "exit statuses per step",
            "dropped groups per step (all rewards equal)", "time split per step (s)"} <= set(titles)
    assert page.page.locator("#charts svg circle").count() >= 6
    assert vstore.resolve("vtasks").id in page.page.locator("#lineage").text_content()
    page.screenshot("viewer-run")
    page.check_clean()


# --- the data files ------------------------------------------------------------------------------------------------

def test_data_files_hold_no_markup(site):
    assert "<" not in to_js_literal({"a": "</script><!--<b>"})
    assert json.loads(to_js_literal("</script><!--\u2028")) == "</script><!--\u2028"
    for f in (site / "data").rglob("*.js"):
        text = f.read_bytes()
        assert b"<" not in text and text.isascii(), f
    index = (site / "data" / "index.js").read_text()  # the list loads no messages: they wait in chunks
    assert MARKER_WORD not in index and "You fix bugs" not in index
    chunks = sorted((site / "data" / "ep").glob("*.js"))
    assert any(MARKER_WORD in f.read_text() for f in chunks)
    # the 5 MB output is capped in the page's data; its raw line keeps all of it
    assert sum(f.stat().st_size for f in chunks) < 1_000_000
    assert sum(f.stat().st_size for f in (site / "data" / "raw").glob("*.js")) > BIG
    html = (site / "index.html").read_text()
    assert "Content-Security-Policy" in html and "script-src 'self'" in html and "http" not in html.lower().replace(
        "http-equiv", "")


def test_out_folder_that_is_not_a_view_is_refused(vstore, tmp_path, site):
    from swepost.errors import BadInput

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(BadInput, match="not a swepost view"):
        build_site(vstore, vstore.resolve("veval"), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    again = build_site(vstore, vstore.resolve("veval"), site.parent / "eval-view")  # a view is replaced whole
    assert build_site(vstore, vstore.resolve("veval"), Path(again["out"]))["episodes"] == 4


# --- the server ------------------------------------------------------------------------------------------------------

def _get(port: int, path: str, method: str = "GET", host: str | None = None) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)  # the path exactly as written
    conn.putheader("Host", host or f"127.0.0.1:{port}")
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body, dict(r.getheaders())


@pytest.fixture(scope="module")
def served(site):
    secret = site.parent / "secret.txt"
    secret.write_text("outside the site")
    (site / "escape").symlink_to(site.parent)
    (site / "leak.txt").symlink_to(secret)
    server = make_server(site, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    (site / "escape").unlink()
    (site / "leak.txt").unlink()


def test_serve_binds_loopback_and_serves_the_site(served):
    host, port = served.server_address
    assert host == "127.0.0.1"
    status, body, headers = _get(port, "/")
    assert status == 200 and b"swepost view" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    assert _get(port, "/static/app.js")[0] == 200 and _get(port, "/data/ep/0.js")[0] == 200
    status, _, headers = _get(port, "/data/raw/0.js")
    assert status == 200 and headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert _get(port, "/index.html", "HEAD")[1] == b""
    assert _get(port, "/nothing-here.js")[0] == 404
    other = _other_address()
    if other:  # nothing listens on this host's other addresses
        with pytest.raises(OSError):
            socket.create_connection((other, port), timeout=2).close()


def _other_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/static/../../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/%2e%2e/etc/passwd",
    "/static/%2e%2e/%2e%2e/secret.txt", "/..%2fsecret.txt", "/static/..%5c..%5csecret.txt", "/%00",
    "/index.html%00.js", "/escape/secret.txt", "/leak.txt", "/./index.html", "/%c0%ae%c0%ae/secret.txt",
])
def test_serve_refuses_paths_out_of_the_site(served, path):
    status, body, _ = _get(served.server_address[1], path)
    assert status in (403, 404), (path, status)
    assert b"outside the site" not in body and b"root:" not in body


def test_serve_refuses_other_methods_and_hosts(served):
    port = served.server_address[1]
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        assert _get(port, "/", method)[0] == 405
    assert _get(port, "/", host="evil.example:80")[0] == 403  # DNS rebinding
    assert _get(port, "/", host=f"localhost:{port}")[0] == 200
    assert _get(port, "/etc/passwd")[0] == 404  # an absolute path is a path inside the site


def test_cli_view_serves_on_loopback(vstore):
    env = {**os.environ, "SWEPOST_HOME": str(vstore.root)}
    proc = subprocess.Popen([sys.executable, "-m", "swepost", "view", "veval", "--serve", "--port", "0"], env=env,
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        url = next(line.strip() for line in lines if line.startswith("http://"))
        assert url.startswith("http://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert _get(port, "/")[0] == 200 and _get(port, "/%2e%2e/manifest.json")[0] == 403
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- the report and bad input -----------------------------------------------------------------------------------

def test_report_of_an_eval_and_an_rl_checkpoint(vstore, tmp_path):
    PNG = b"\x89PNG\r\n\x1a\n"
    ev = write_report(vstore, vstore.resolve("veval"), tmp_path / "eval")
    md = Path(ev["report"]).read_text()
    assert "| episodes | 4 |" in md and "| resolved | 3 (75.0% of graded) |" in md and "EM / F1" in md
    assert "judge total (mean) | 40" in md and vstore.resolve("vtasks").id in md
    rl = write_report(vstore, vstore.resolve("vrl"), tmp_path / "rl")
    md = Path(rl["report"]).read_text()
    assert "## Per step" in md and "| 3 | 4 | 4 | 0.500 | 0.500 | 0 |" in md
    assert {"reward.png", "exit_statuses.png", "dropped_groups.png", "time_split.png"} <= set(rl["plots"])
    for written in (ev, rl):
        for name in written["plots"]:
            assert f"]({name})" in Path(written["report"]).read_text()
            assert (Path(written["out"]) / name).read_bytes()[:8] == PNG
    hostile = write_report(vstore, vstore.resolve("vtrajs"), tmp_path / "hostile")
    assert "<" not in Path(hostile["report"]).read_text()  # ids from trajectories are data: no markup survives


def test_cli_report_and_bad_references(vstore, tmp_path):
    env = {**os.environ, "SWEPOST_HOME": str(vstore.root)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "swepost", *args], env=env, cwd=REPO_ROOT, text=True,
                              capture_output=True, timeout=120)

    r = cli("report", "vrl", "--out", str(tmp_path / "r"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["plots"] and (tmp_path / "r" / "report.md").is_file()
    for command in ("view", "report"):
        r = cli(command, "no-such-run")
        assert r.returncode == 2 and "no-such-run" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = cli("view", "vtasks")
    assert r.returncode == 2 and "holds no trajectories" in r.stderr
