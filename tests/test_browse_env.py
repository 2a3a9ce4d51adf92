"""The search environment's browsing mode: a small site written here, served from a folder and by a real
http.server on loopback; pages rendered by a real HTML parser with numbered links; click through two hops to the
answer, back, scroll, find; nothing outside the site is reachable (`..`, symlinks, other hosts, redirects)."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from swepost.agent import run_episode
from swepost.envs.base import EnvironmentBroken, MalformedCall, ToolError
from swepost.envs.browse import FolderSite, HttpSite, is_loopback, paginate, render_html
from swepost.envs.search import SearchEnvironment
from swepost.errors import BadInput
from swepost.policies.scripted import ScriptedPolicy
from swepost.records import ExitStatus, Task, TaskVerify

QUESTION = "Which river flows through the birthplace of the author of the Engine Notes?"
TASK = Task(instance_id="site-1", kind="search", problem_statement=QUESTION,
            verify=TaskVerify(gold_answers=["Thames", "River Thames"]), metadata={"hops": 2})
SECRET = "TOP-SECRET-OUTSIDE-THE-SITE"
LONG = "".join(f"<p>Paragraph {i} about engines, looms and cards.</p>\n" for i in range(1, 101))

PAGES = {
    "index.html": """<!doctype html><html><head><title>Engines wiki</title>
        <style>body { color: red }</style><script>document.write("<p>hidden script text</p>")</script></head>
        <body><h1>Engines wiki</h1><nav><ul><li><a href="people/ada.html">Ada Lovelace</a></li>
        <li><a href="/history.html">History</a></li><li><a href="https://example.com/">Elsewhere</a></li>
        <li><a href="mailto:x@example.com">Mail us</a></li></ul></nav>
        <p>The <b>Engine Notes</b> were written by <a href="people/ada.html#life" title="Ada">Ada</a> in 1843.</p>
        <table><tr><th>Year</th><th>Event</th></tr><tr><td>1843</td><td>Notes &amp; translation</td></tr></table>
        </body></html>""",
    "people/ada.html": """<html><head><title>Ada Lovelace</title></head><body>
        <h2>Life</h2><p>Ada Lovelace was born in <a href="../places/london.html">London</a>.</p>
        <p>See also the <a href="../index.html">home page</a> and <a href="../../outside.html">a way out</a>.</p>
        </body></html>""",
    "places/london.html": """<html><head><title>London</title></head><body><h1>London</h1>
        <p>London is a city on the River Thames, in England.</p><ol><li>Westminster<li>Camden</ol></body></html>""",
    "history.html": f"<html><head><title>History</title></head><body><h1>History</h1>{LONG}"
                    "<p>The final paragraph names the Jacquard loom.</p></body></html>",
    "broken.html": "<html><body><div><p>Unclosed <b>bold <i>and <a href='places/london.html'>London link"
                   "<table><tr><td>cell one<td>cell two</table><p>after &amp; &lt;end&gt; &#x263A;",
    "notes.txt": "Plain text notes.\nSecond line.",
}


@pytest.fixture
def site(tmp_path) -> Path:
    folder = tmp_path / "site"
    for name, html in PAGES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(html)
    (tmp_path / "outside.html").write_text(f"<p>{SECRET}</p>")
    (folder / "escape.html").symlink_to(tmp_path / "outside.html")
    (folder / "linked").symlink_to(tmp_path, target_is_directory=True)
    (folder / "alias.html").symlink_to(folder / "places" / "london.html")  # a link inside the site is fine
    return folder


class SiteServer:
    """http.server serving a folder on 127.0.0.1 (port 0), with /go-away redirecting to another host."""

    def __init__(self, folder: Path):
        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/go-away":
                    self.send_response(302)
                    self.send_header("Location", "http://example.com/")
                    self.end_headers()
                    return
                if self.path == "/hop":
                    self.send_response(302)
                    self.send_header("Location", "/places/london.html")
                    self.end_headers()
                    return
                if self.path == "/boom":
                    self.send_error(500, "the server broke")
                    return
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def browser(site, **kwargs) -> SearchEnvironment:
    return SearchEnvironment(mode="browse", site=str(site), viewport_chars=kwargs.pop("viewport_chars", 600),
                             repos=None, backend="auto", tool_timeout=10.0, grade=True, **kwargs)


def link_number(page_text: str, name: str) -> int:
    """The n of `[n] name` in a rendered page."""
    for part in page_text.split("[")[1:]:
        n, _, rest = part.partition("] ")
        if n.isdigit() and rest.startswith(name):
            return int(n)
    raise AssertionError(f"no link {name!r} in {page_text!r}")


# --- rendering ---------------------------------------------------------------------------------------------------

def test_pages_render_as_readable_text_with_numbered_links():
    page = render_html(PAGES["index.html"])
    assert page.title == "Engines wiki"
    assert page.text.splitlines() == [
        "# Engines wiki", "- [1] Ada Lovelace", "- [2] History", "- [3] Elsewhere", "- [4] Mail us",
        "The Engine Notes were written by [5] Ada in 1843.", "Year | Event", "1843 | Notes & translation"]
    assert page.links == [("Ada Lovelace", "people/ada.html"), ("History", "/history.html"),
                          ("Elsewhere", "https://example.com/"), ("Mail us", "mailto:x@example.com"),
                          ("Ada", "people/ada.html#life")]
    assert "hidden script text" not in page.text and "color" not in page.text


def test_malformed_html_still_renders():
    page = render_html(PAGES["broken.html"])
    assert page.text.splitlines() == ["Unclosed bold and [1] London link", "cell one | cell two",
                                      "after & <end> \u263a"]
    assert page.links == [("London link", "places/london.html")]
    # an unclosed script hides the rest, as in a browser; stray end tags and empty links are harmless
    assert render_html("<p>a</p></div></script><script>x = 1;<p>b</p>").text == "a"
    assert render_html("<a href='/x/page.html'></a><a href=''>no href</a><ul><li>1<ul><li>2</ul></ul>").text == \
        "[1] page.html no href\n- 1\n  - 2"
    assert render_html("<pre>  a = 1\n    b</pre>").text == "  a = 1\n    b"


def test_pages_paginate_on_line_ends():
    text = "\n".join("x" * 50 for _ in range(10))
    spans = paginate(text, 120)
    assert [text[s:e].count("\n") for s, e in spans[:-1]] == [2] * (len(spans) - 1)
    assert "".join(text[s:e] for s, e in spans) == text and all(e - s <= 120 for s, e in spans)
    assert paginate("", 100) == [(0, 0)] and paginate("y" * 250, 100) == [(0, 100), (100, 200), (200, 250)]


# --- a folder site ---------------------------------------------------------------------------------------------

def test_click_through_two_hops_to_the_answer_and_back(site):
    env = browser(site)
    system, user = env.reset(TASK)
    assert "`click(n)`" in system["content"] and "600 characters" in system["content"]
    assert QUESTION in user["content"] and "The browser is at /index.html:" in user["content"]
    assert "Page: /index.html — Engines wiki (viewport 1 of 1)" in user["content"]
    assert "- [1] Ada Lovelace" in user["content"]
    assert [t["function"]["name"] for t in env.tools()] == ["goto", "click", "back", "scroll", "find", "answer"]
    ada = env.step("click", {"n": 5}).content  # the inline link, with its #fragment
    assert ada.startswith("Page: /people/ada.html — Ada Lovelace (viewport 1 of 1)")
    assert "Ada Lovelace was born in [1] London." in ada
    london = env.step("click", {"n": link_number(ada, "London")}).content
    assert london.startswith("Page: /places/london.html — London") and "River Thames" in london
    assert "1. Westminster" not in london and "- Westminster" in london
    back = env.step("back", {}).content
    assert back == ada
    assert env.step("back", {}).content.startswith("Page: /index.html")
    with pytest.raises(ToolError, match="no previous page"):
        env.step("back", {})
    done = env.step("answer", {"text": "the Thames"})
    assert done.done and env.score()["reward"] == 1.0
    assert env.score()["evidence"]["visited"] == ["/index.html", "/people/ada.html", "/places/london.html"]


def test_scroll_and_find_work_on_the_current_page(site):
    env = browser(site)
    env.reset(TASK)
    first = env.step("goto", {"url": "history.html"}).content
    n = len(paginate(render_html(PAGES["history.html"]).text, 600))
    assert first.startswith(f"Page: /history.html — History (viewport 1 of {n})")
    assert first.endswith(f'[viewport 1 of {n}; scroll("down") for more]')
    with pytest.raises(ToolError, match="Already at the top"):
        env.step("scroll", {"direction": "up"})
    second = env.step("scroll", {"direction": "down"}).content
    assert f"(viewport 2 of {n})" in second and "Paragraph 1 " not in second
    assert env.step("scroll", {"direction": "up"}).content == first
    found = env.step("find", {"text": "jacquard LOOM"}).content.splitlines()
    assert found[0] == "1 match(es) of 'jacquard LOOM' in the page /history.html:"
    assert found[1].startswith(f"1. viewport {n}, line ") and "[Jacquard loom]" in found[1]
    for _ in range(n - 1):
        last = env.step("scroll", {"direction": "down"}).content
    assert last.endswith(f"[viewport {n} of {n}]") and "Jacquard" in last
    with pytest.raises(ToolError, match="Already at the end"):
        env.step("scroll", {"direction": "down"})
    with pytest.raises(MalformedCall, match="down or up"):
        env.step("scroll", {"direction": "left"})
    # back returns to the viewport the page was left at
    env.step("goto", {"url": "/places/london.html"})
    assert env.step("back", {}).content == last


@pytest.mark.parametrize("call, match", [
    ({"url": "../outside.html"}, "leads outside the site"),
    ({"url": "/../../outside.html"}, "leads outside the site"),
    ({"url": "people/../../outside.html"}, "leads outside the site"),
    ({"url": "%2e%2e/outside.html"}, "leads outside the site"),
    ({"url": "escape.html"}, "leads outside the site \\(a link out of its folder\\)"),
    ({"url": "linked/outside.html"}, "leads outside the site"),
    ({"url": "/etc/passwd"}, "No page /etc/passwd on this site"),
    ({"url": "file:///etc/passwd"}, "is not a page of this site"),
    ({"url": "http://127.0.0.1:9/"}, "is not a page of this site"),
    ({"url": "people"}, "a folder of the site with no index.html"),
])
def test_nothing_outside_the_folder_is_reachable(site, call, match):
    env = browser(site)
    env.reset(TASK)
    with pytest.raises(ToolError, match=match) as e:
        env.step("goto", call)
    assert SECRET not in str(e.value) and "passwd" not in env.page[1].text
    assert env.page[0] == "/index.html"  # still where it was


def test_links_out_of_the_site_are_refused_and_other_files_are_pages(site):
    env = browser(site)
    env.reset(TASK)
    with pytest.raises(ToolError, match="'https://example.com/' is not a page of this site"):
        env.step("click", {"n": 3})
    with pytest.raises(ToolError, match="There is no link \\[9\\] on this page \\(its links are \\[1\\] to \\[5\\]\\)"):
        env.step("click", {"n": 9})
    with pytest.raises(MalformedCall, match="`n` of click must be an integer"):
        env.step("click", {"n": "1"})
    ada = env.step("click", {"n": 1}).content
    with pytest.raises(ToolError, match="leads outside the site"):
        env.step("click", {"n": link_number(ada, "a way out")})
    assert "River Thames" in env.step("goto", {"url": "/alias.html"}).content  # a symlink inside the site
    text = env.step("goto", {"url": "notes.txt"}).content
    assert "Plain text notes.\nSecond line." in text


def test_an_episode_browses_to_the_answer_through_the_agent_loop(site):
    turns = [{"tool_calls": [{"name": "click", "arguments": {"n": 1}}]},
             {"tool_calls": [{"name": "click", "arguments": {"n": 1}}]},
             {"tool_calls": [{"name": "find", "arguments": {"text": "river"}}]},
             "It is on the <answer>River Thames</answer>."]
    traj = run_episode(ScriptedPolicy(turns=turns), browser(site), TASK)
    assert traj.exit_status == ExitStatus.SUBMITTED and traj.answer == "River Thames"
    assert (traj.reward, traj.resolved, traj.tool_errors) == (1.0, "RESOLVED_FULL", 0)
    assert traj.evidence["hops"] == 2 and traj.evidence["visited"][-1] == "/places/london.html"


def test_the_task_may_name_its_start_page_and_a_missing_one_fails_the_task_not_the_run(site):
    env = browser(site)
    _, user = env.reset(TASK.model_copy(update={"metadata": {"start": "people/ada.html"}}))
    assert "The browser is at /people/ada.html:" in user["content"]
    missing = TASK.model_copy(update={"metadata": {"start_url": "nowhere.html"}})
    traj = run_episode(ScriptedPolicy(turns=["<answer>x</answer>"]), browser(site), missing)
    assert traj.exit_status == ExitStatus.SANDBOX_ERROR and "No page /nowhere.html" in traj.error
    assert traj.reward is None


def test_browse_settings_are_checked(site, tmp_path):
    for kwargs, message in [({"mode": "browse"}, "site: mode browse needs a site"),
                            ({"mode": "browse", "site": str(tmp_path / "none")}, "site: site folder not found"),
                            ({"mode": "browse", "site": "http://10.1.2.3/"}, "site: 10.1.2.3 is not a loopback"),
                            ({"mode": "browse", "site": "http://example.com/"}, "example.com is not a loopback"),
                            ({"mode": "browse", "site": "ftp://127.0.0.1/"}, "expected a folder or an http"),
                            ({"mode": "browse", "site": str(site), "index": str(tmp_path)}, "index: browse mode"),
                            ({"mode": "browse", "site": str(site), "viewport_chars": 50}, "viewport_chars")]:
        with pytest.raises(BadInput, match=message):
            SearchEnvironment(**kwargs)
    assert SearchEnvironment(mode="browse", site="http://example.com/", allow_remote=True).site.origin == (
        "http", "example.com")
    assert [is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "localhost", "10.0.0.1", "loc.al", None)] == [
        True, True, True, True, False, False, False]


# --- a site on loopback ----------------------------------------------------------------------------------------

def test_a_loopback_site_is_browsed_the_same_way(site):
    with SiteServer(site) as server:
        env = browser(server.url)
        _, user = env.reset(TASK)
        assert f"The browser is at {server.url}:" in user["content"]  # the directory's index.html
        assert "- [1] Ada Lovelace" in user["content"]
        ada = env.step("click", {"n": 1}).content
        assert ada.startswith(f"Page: {server.url}people/ada.html — Ada Lovelace")
        london = env.step("click", {"n": link_number(ada, "London")}).content
        assert "River Thames" in london and env.page[0] == f"{server.url}places/london.html"
        assert env.step("back", {}).content == ada
        # a redirect inside the site is followed; one to another host is refused
        assert env.step("goto", {"url": "/hop"}).content.startswith(f"Page: {server.url}places/london.html")
        with pytest.raises(ToolError, match="redirects elsewhere: 'http://example.com/' leaves the site"):
            env.step("goto", {"url": "/go-away"})
        with pytest.raises(ToolError, match="leaves the site"):
            env.step("goto", {"url": "http://localhost:1/"})
        with pytest.raises(ToolError, match="HTTP 404 for .*nowhere.html: no page there"):
            env.step("goto", {"url": "nowhere.html"})
        with pytest.raises(ToolError, match="is not a web page \\(scheme file\\)"):
            env.step("goto", {"url": "file:///etc/passwd"})
        with pytest.raises(EnvironmentBroken, match="the site failed: HTTP 500"):
            env.step("goto", {"url": "/boom"})
        env.step("goto", {"url": "/"})
    # the site went down mid-episode: infrastructure, never a wrong answer
    with pytest.raises(EnvironmentBroken, match="cannot be reached"):
        env.step("click", {"n": 2})


def test_a_site_that_is_down_ends_the_episode_as_sandbox_error(site):
    with SiteServer(site) as server:
        env = browser(server.url)
    traj = run_episode(ScriptedPolicy(turns=["<answer>Thames</answer>"]), env, TASK)
    assert traj.exit_status == ExitStatus.SANDBOX_ERROR and traj.reward is None
    assert "cannot be reached" in traj.error


def test_site_objects_resolve_addresses():
    folder = FolderSite.__new__(FolderSite)
    folder.root, folder.start = "/srv/site", "/index.html"
    assert folder.resolve("/a/b.html", "c.html?x=1#y") == "/a/c.html"
    assert folder.resolve("/a/b.html", "../c.html") == "/c.html"
    assert folder.resolve("/a/b.html", "/d/") == "/d/"
    assert folder.resolve("/a/b.html", "#top") == "/a/b.html"
    with pytest.raises(ToolError):
        folder.resolve("/a/b.html", "../../c.html")
    web = HttpSite("http://127.0.0.1:8000/docs/")
    assert web.start == "http://127.0.0.1:8000/docs/"
    assert web.resolve("http://127.0.0.1:8000/docs/a.html", "b.html#x") == "http://127.0.0.1:8000/docs/b.html"
    assert web.resolve(None, "/x?q=1") == "http://127.0.0.1:8000/x?q=1"
    with pytest.raises(ToolError, match="leaves the site"):
        web.resolve(None, "http://127.0.0.1:8001/")
