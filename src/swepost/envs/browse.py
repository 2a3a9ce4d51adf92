"""Text pages for the search environment: HTML rendered as readable lines with numbered links, the sites a browsing
episode may visit (a local folder, or a site on loopback), and what its tools share with `open` (pages of a
bounded size, case-insensitive find).

A page is parsed by a real HTML parser (html.parser), never by regexes: scripts and styles are dropped, headings,
paragraphs, list items and table rows become lines, and every link becomes `[n] its text`, numbered in page
order so the model can `click(n)`. A site never lets a page out of its bounds: a folder site serves files inside
its folder only (`..` past its root, other schemes and symlinks out of it are refused), and an http site only
pages of its own origin on a loopback host, unless `allow_remote`.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from swepost.envs.base import EnvironmentBroken, ToolError
from swepost.errors import BadInput

MAX_PAGE_BYTES = 5_000_000  # a page past this is read up to it, with a note
SKIPPED_TAGS = {"script", "style", "noscript", "template", "svg", "iframe", "object", "select"}
VOID_TAGS = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "track", "wbr"}
BLOCK_TAGS = {"p", "div", "section", "article", "header", "footer", "nav", "main", "aside", "ul", "ol", "li",
              "table", "thead", "tbody", "tfoot", "tr", "dl", "dt", "dd", "pre", "blockquote", "form", "hr", "br",
              "figure", "figcaption", "details", "summary", "caption", "address", "body", "h1", "h2", "h3", "h4",
              "h5", "h6", "title", "fieldset", "legend"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}


# --- pages of bounded size, and find ---------------------------------------------------------------------------

def paginate(text: str, size: int) -> list[tuple[int, int]]:
    """(start, end) spans of at most `size` characters that cover `text`, each cut after a line break (else a
    space) in its last fifth when there is one, so words and lines stay whole. An empty text is one empty span."""
    spans: list[tuple[int, int]] = []
    start, n = 0, len(text)
    while start < n:
        end = min(start + size, n)
        if end < n:
            floor = start + size * 4 // 5
            cut = text.rfind("\n", floor, end)
            if cut == -1:
                cut = text.rfind(" ", floor, end)
            if cut >= start:
                end = cut + 1
        spans.append((start, end))
        start = end
    return spans or [(0, 0)]


def span_of(spans: list[tuple[int, int]], position: int) -> int:
    """The 1-based number of the span holding `position`."""
    for i, (start, end) in enumerate(spans, 1):
        if start <= position < end:
            return i
    return len(spans)


def find_in_text(text: str, needle: str, spans: list[tuple[int, int]], unit: str, limit: int = 20,
                 context: int = 80) -> tuple[int, list[str]]:
    """(number of case-insensitive matches of `needle`, one line per match shown: `unit p, line l: ...context...`),
    at most `limit` shown. Offsets come from the text itself (re.IGNORECASE), never from a lower-cased copy whose
    length may differ."""
    found = list(re.finditer(re.escape(needle), text, re.IGNORECASE))
    shown = []
    for i, m in enumerate(found[:limit], 1):
        p = span_of(spans, m.start())
        line = text.count("\n", spans[p - 1][0], m.start()) + 1
        before = text[max(m.start() - context, spans[p - 1][0]):m.start()]
        after = text[m.end():min(m.end() + context, spans[p - 1][1])]
        excerpt = " ".join(f"{before}[{m.group(0)}]{after}".split())
        shown.append(f"{i}. {unit} {p}, line {line}: ...{excerpt}...")
    return len(found), shown


# --- HTML -> readable text ---------------------------------------------------------------------------------------

@dataclass
class RenderedPage:
    """A page as the model reads it: its lines (links inline as `[n] text`), the links' targets in order, title."""

    title: str
    text: str
    links: list[tuple[str, str]] = field(default_factory=list)  # (link text, href as written)
    base: str | None = None  # a <base href> the page set


class PageRenderer(HTMLParser):
    """HTML -> lines. Tolerant as html.parser is: unclosed and stray tags still render (an unclosed <script>
    hides the rest of the page, as in a browser)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.links: list[list[str]] = []  # [text, href]
        self.title_parts: list[str] = []
        self.base: str | None = None
        self._line: list[str] = []
        self._prefix = ""
        self._skip = 0
        self._in_title = False
        self._pre = 0
        self._lists: list[str] = []
        self._cells = 0
        self._link: tuple[str, list[str], str] | None = None  # (href, text parts, fallback)
        self._marker = 0  # where the open link's `[n]` is in self._line

    # the line being built
    def _flush(self) -> None:
        text = "".join(self._line)
        text = text.strip("\n") if self._pre else " ".join(text.split())
        if text.strip():
            self.lines.append(self._prefix + text)
        self._line, self._prefix = [], ""

    def _block(self, prefix: str = "") -> None:
        carried = None
        if self._link is not None:
            if "".join(self._link[1]).strip():
                self._end_link()  # an unclosed link ends with its line
            else:  # a link wrapping a block: its number moves to the block's first line
                carried = self._line[self._marker]
                del self._line[self._marker:]
        self._flush()
        self._prefix = prefix
        if carried is not None:
            self._marker = len(self._line)
            self._line.append(carried)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag in SKIPPED_TAGS:
            if tag not in VOID_TAGS:
                self._skip += 1
            return
        if self._skip:
            return
        if tag == "title":
            self._in_title = True
            return
        if tag == "base" and a.get("href") and self.base is None:
            self.base = a["href"]
            return
        if tag == "a":
            self._end_link()
            href = a.get("href", "").strip()
            if href and not href.lower().startswith("javascript:"):
                self.links.append(["", href])
                self._marker = len(self._line)
                self._line.append(f" [{len(self.links)}] ")
                self._link = (href, [], a.get("title") or a.get("aria-label") or "")
            return
        if tag == "img":
            alt = a.get("alt", "").strip()
            if alt:
                self._text(f" [image: {alt}] ")
            return
        if tag in ("td", "th"):
            if self._cells:
                self._line.append(" | ")
            self._cells += 1
            return
        if tag == "tr":
            self._block()
            self._cells = 0
            return
        if tag in ("ul", "ol"):
            self._block()
            self._lists.append(tag)
            return
        if tag == "li":
            self._block("  " * max(len(self._lists) - 1, 0) + "- ")
            return
        if re.fullmatch(r"h[1-6]", tag):
            self._block("#" * int(tag[1]) + " ")
            return
        if tag == "pre":
            self._block()
            self._pre += 1
            return
        if tag in BLOCK_TAGS:
            self._block()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIPPED_TAGS:
            self._skip = max(self._skip - 1, 0)
            return
        if self._skip:
            return
        if tag == "title":
            self._in_title = False
        elif tag == "a":
            self._end_link()
        elif tag in ("ul", "ol"):
            self._block()
            if self._lists:
                self._lists.pop()
        elif tag == "pre":
            self._flush()
            self._pre = max(self._pre - 1, 0)
        elif tag in BLOCK_TAGS:
            self._block()

    def _end_link(self) -> None:
        if self._link is None:
            return
        href, parts, fallback = self._link
        self._link = None
        name = " ".join("".join(parts).split())
        if not name:
            name = fallback or posixpath.basename(urlsplit(href).path.rstrip("/")) or href
            self._line.append(name + " ")
        self.links[-1][0] = name

    def _text(self, data: str) -> None:
        self._line.append(data)
        if self._link is not None:
            self._link[1].append(data)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title_parts.append(data)
            return
        self._text(data)

    def render(self, html: str) -> RenderedPage:
        self.feed(html)
        self.close()
        self._end_link()
        self._flush()
        return RenderedPage(title=" ".join("".join(self.title_parts).split()), text="\n".join(self.lines),
                            links=[(name, href) for name, href in self.links], base=self.base)


def render_html(html: str) -> RenderedPage:
    return PageRenderer().render(html)


def render_text(text: str) -> RenderedPage:
    """A plain-text page (text/plain, a .txt or .md file): its lines as they are, no links."""
    return RenderedPage(title="", text="\n".join(line.rstrip() for line in text.splitlines()).strip("\n"))


# --- sites -------------------------------------------------------------------------------------------------------

def is_loopback(host: str | None) -> bool:
    """localhost or a loopback IP literal; other names are not resolved (a name is not trusted to stay local)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FolderSite:
    """HTML files in a local folder; pages are addressed by their path inside it (`/index.html`, `docs/a.html`)."""

    def __init__(self, folder: str | Path, start: str | None = None):
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise BadInput(f"site folder not found: {root}", key="site")
        self.root = os.path.realpath(root)
        self.start = self.resolve(None, start or ("/index.html" if os.path.isfile(
            os.path.join(self.root, "index.html")) else "/"))

    def describe(self) -> str:
        return f"the local site in {self.root}"

    def resolve(self, current: str | None, ref: str) -> str:
        """The page `ref` names, read from `current`: a path inside the site (the query and fragment dropped).
        ToolError for a URL with a scheme or host, and for `..` past the site's root."""
        parts = urlsplit(ref.strip())
        if parts.scheme or parts.netloc:
            raise ToolError(f"{ref[:200]!r} is not a page of this site: its pages are paths inside it, such as "
                            f"{self.start}")
        path = unquote(parts.path)
        if "\x00" in path or "\\" in path:
            raise ToolError(f"{ref[:200]!r} is not a usable path")
        if not path:
            return current or self.start
        base = posixpath.dirname(current) if current and not path.startswith("/") else "/"
        segments: list[str] = []
        for seg in posixpath.join(base, path).split("/"):
            if seg in ("", "."):
                continue
            if seg == "..":
                if not segments:
                    raise ToolError(f"{ref[:200]!r} leads outside the site: pages are inside it only")
                segments.pop()
            else:
                segments.append(seg)
        trailing = "/" if path.endswith("/") and segments else ""
        return "/" + "/".join(segments) + trailing

    def fetch(self, url: str) -> tuple[str, RenderedPage]:
        """(the page's address, the page); ToolError for a page that is not there, or outside the folder once
        symlinks are followed."""
        target = os.path.realpath(os.path.join(self.root, url.lstrip("/")))
        if target != self.root and not target.startswith(self.root + os.sep):
            raise ToolError(f"{url} leads outside the site (a link out of its folder): refused")
        if os.path.isdir(target):
            index = os.path.realpath(os.path.join(target, "index.html"))
            if not os.path.isfile(index) or not index.startswith(self.root + os.sep):
                raise ToolError(f"{url} is a folder of the site with no index.html: no page there")
            target, url = index, url.rstrip("/") + "/index.html"
        if not os.path.isfile(target):
            raise ToolError(f"No page {url} on this site")
        try:
            with open(target, "rb") as f:
                data = f.read(MAX_PAGE_BYTES + 1)
        except OSError as e:
            raise ToolError(f"cannot read {url}: {e.strerror}") from None
        if b"\x00" in data[:8192]:
            raise ToolError(f"{url} is not a page (a binary file)")
        return url, _page(data, "utf-8", Path(target).suffix.lower() in HTML_SUFFIXES or _looks_html(data))


class _Refused(Exception):
    """A redirect to a URL the site may not visit."""


class HttpSite:
    """Pages fetched over http(s) from a site whose address is `base`; only its own origin on a loopback host is
    visited unless `allow_remote`. Never through a proxy; redirects are checked like links."""

    def __init__(self, base: str, *, allow_remote: bool = False, timeout: float = 30.0, start: str | None = None):
        parts = urlsplit(base.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadInput(f"expected a folder or an http:// URL, got {base!r:.200}", key="site")
        if not allow_remote and not is_loopback(parts.hostname):
            raise BadInput(f"{parts.hostname} is not a loopback host: browsing stays on this machine unless "
                           "allow_remote is set", key="site")
        self.origin = (parts.scheme, parts.netloc.lower())
        self.allow_remote, self.timeout = allow_remote, timeout
        self.base = urlunsplit((parts.scheme, parts.netloc, parts.path or "/", parts.query, ""))
        self.start = self.resolve(None, start) if start else self.base
        site = self

        class CheckedRedirects(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, req, fp, code, msg, headers, newurl):
                try:
                    site.resolve(req.full_url, newurl)
                except ToolError as e:
                    raise _Refused(str(e)) from None
                return super().redirect_request(req, fp, code, msg, headers, newurl)

        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), CheckedRedirects)

    def describe(self) -> str:
        return f"the site at {self.base}"

    def resolve(self, current: str | None, ref: str) -> str:
        url = urljoin(current or self.base, ref.strip())
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ToolError(f"{ref[:200]!r} is not a web page (scheme {parts.scheme or 'none'}): refused")
        if not self.allow_remote and (parts.scheme, parts.netloc.lower()) != self.origin:
            raise ToolError(f"{ref[:200]!r} leaves the site ({self.origin[1]}): only its own pages can be visited")
        return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", parts.query, ""))

    def fetch(self, url: str) -> tuple[str, RenderedPage]:
        """(the address after redirects, the page). A page that is not there (4xx), not text, or a refused
        redirect is a ToolError; a site that is down, times out or fails (5xx) is EnvironmentBroken."""
        request = urllib.request.Request(url, headers={"User-Agent": "swepost-browser",
                                                       "Accept": "text/html, text/plain;q=0.8"})
        try:
            with self._opener.open(request, timeout=self.timeout) as r:
                data = r.read(MAX_PAGE_BYTES + 1)
                final, ctype = r.geturl(), r.headers.get_content_type()
                charset = r.headers.get_content_charset() or "utf-8"
        except _Refused as e:
            raise ToolError(f"{url} redirects elsewhere: {e}") from None
        except urllib.error.HTTPError as e:
            if e.code >= 500:
                raise EnvironmentBroken(f"the site failed: HTTP {e.code} for {url}") from None
            raise ToolError(f"HTTP {e.code} for {url}: no page there") from None
        except (urllib.error.URLError, OSError) as e:
            raise EnvironmentBroken(f"the site {self.origin[1]} cannot be reached: "
                                    f"{getattr(e, 'reason', e)}") from None
        if not (ctype.startswith("text/") or ctype in ("application/xhtml+xml", "application/xml")):
            raise ToolError(f"{url} is not a page (content type {ctype})")
        return final, _page(data, charset, ctype in ("text/html", "application/xhtml+xml") or _looks_html(data))


def _looks_html(data: bytes) -> bool:
    head = data[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def _page(data: bytes, charset: str, html: bool) -> RenderedPage:
    clipped = len(data) > MAX_PAGE_BYTES
    try:
        text = data[:MAX_PAGE_BYTES].decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        text = data[:MAX_PAGE_BYTES].decode("utf-8", errors="replace")
    page = render_html(text) if html else render_text(text)
    if clipped:
        page.text += f"\n[the page is longer than {MAX_PAGE_BYTES} bytes: the rest is not shown]"
    return page


def open_site(site: str | Path, *, allow_remote: bool = False, timeout: float = 30.0,
              start: str | None = None) -> FolderSite | HttpSite:
    """A site from the environment's `site` setting: an http(s) URL, or else a local folder."""
    text = str(site)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        return HttpSite(text, allow_remote=allow_remote, timeout=timeout, start=start)
    return FolderSite(text, start=start)
