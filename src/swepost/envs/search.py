"""The search environment: answer a factual (often multi-hop) question by searching a corpus and reading what it
finds; graded by exact match / F1 against the task's gold answers (rewards/answers.py).

Tools (mode "search", Search-R1 / VerlTool style, over a local index or any Search-R1-compatible retriever URL):

    search(query, topk)     ranked documents: `Doc i [id: ID] (Title: "T") snippet`
    open(doc_id, page)      a document's text in pages of `page_chars` ("page p of n")
    find(text)              where a word occurs in the document opened last (case-insensitive), by page and line
    answer(text)            ends the episode with a short answer

Mode "browse" (BrowserAgent style) reads the HTML pages of a `site`, a local folder or a site on loopback, as
text with numbered links (envs/browse.py): goto(url), click(n), back(), scroll(direction), find(text), answer(text).

No sandbox: retrieval and reading pages run no command the model writes, so the environment runs in-process, and
the stage's sandbox settings (backend, limits, repos) are accepted and unused. The index is opened once per process
and shared by every environment (stages build one per episode, on many threads). A retriever or a site that is
down, times out or fails is EnvironmentBroken: the episode ends as sandbox_error, an infrastructure failure that is
never scored as a wrong answer.

The answer is the `answer` tool's text or, in a reply without a tool call, the last `<answer>...</answer>` of that
reply (`text_reply`); such a reply may instead search as Search-R1's models do, `<search>query</search>`, and gets
the passages back as Search-R1 shows them (`<information>Doc i(Title: "T") text</information>`). Answers are
counted over the episode for score_answer's spam guard. The reward is exact
match (or F1: `reward_metric`); with `verify: judge` the stage's judge scores the answer against the gold answers
instead (resolved at `resolved_threshold` of its reward), EM and F1 still recorded. Prompts are
`prompts/search_*.md` (or `browse_*.md`), str.format templates, replaceable with `prompts_dir`.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from swepost.envs.base import (
    EnvironmentBroken,
    MalformedCall,
    Observation,
    ToolError,
    ask_judge,
    load_prompt_templates,
    tool_arguments,
)
from swepost.envs.browse import RenderedPage, find_in_text, open_site, paginate
from swepost.envs.codeqa import shared_judge
from swepost.errors import BadInput, WorkFailed
from swepost.records import Task
from swepost.retrieval.documents import Document, Retriever, title_and_text
from swepost.rewards.answers import SPAM_DIVISOR, count_answer_tags, extract_answer, score_answer

PROMPTS_DIR = Path(__file__).parent / "prompts"
PROMPT_FILES = {"search": {"system": "search_system.md", "user": "search_user.md"},
                "browse": {"system": "browse_system.md", "user": "browse_user.md"}}
PROMPT_FIELDS = {"search": {"question", "instance_id", "topk", "page_chars"},
                 "browse": {"question", "instance_id", "start_url", "page", "viewport_chars"}}
MAX_TOPK = 20
MAX_QUERY_CHARS = 1000
MAX_FIND_CHARS = 500
MAX_ID_CHARS = 1000
MAX_HISTORY = 100
_SEARCH_TAG = re.compile(r"<search>(.*?)</search>", re.DOTALL | re.IGNORECASE)

ANSWER_DESCRIPTION = ("Give your final answer and end the task. The answer is the shortest span that answers the "
                      "question: a name, a date, a number, or yes / no; no sentence, no explanation.")
FIND_TEXT = {"type": "string", "description": "A word or phrase to look for (case-insensitive)."}


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


SEARCH_TOOLS = [
    _tool("search", "Search the document collection. Returns the best-matching documents, best first, each as "
          "`Doc i [id: ID] (Title: \"T\") snippet`. Use a few specific keywords or a short phrase (names, titles, "
          "dates); for a question with several steps, search for one fact at a time.",
          {"query": {"type": "string", "description": "What to search for."},
           "topk": {"type": "integer", "description": f"How many documents to return (1 to {MAX_TOPK}; default: "
                    "the environment's)."}}, ["query"]),
    _tool("open", "Read a document found by search, by its id: its full text, a page at a time. The result says "
          "`page p of n`; open the same id with the next page number to read on.",
          {"doc_id": {"type": "string", "description": "The document's id, as search showed it after `id:`."},
           "page": {"type": "integer", "description": "The page to show, from 1 (default 1)."}}, ["doc_id"]),
    _tool("find", "Find a word or phrase in the document you opened last: every place it occurs, with its page "
          "and line and the text around it. Then open that page to read it in full.", {"text": FIND_TEXT},
          ["text"]),
    _tool("answer", ANSWER_DESCRIPTION, {"text": {"type": "string", "description": "The answer."}}, ["text"]),
]
BROWSE_TOOLS = [
    _tool("goto", "Go to a page of the site by its address (a path inside the site such as /index.html, or a "
          "link's address). Shows the page's first viewport.",
          {"url": {"type": "string", "description": "The page's address."}}, ["url"]),
    _tool("click", "Follow the link numbered [n] on the current page.",
          {"n": {"type": "integer", "description": "The link's number, as shown in [n]."}}, ["n"]),
    _tool("back", "Go back to the previous page, where you left it.", {}, []),
    _tool("scroll", "Show the next (down) or previous (up) viewport of the current page.",
          {"direction": {"type": "string", "enum": ["down", "up"], "description": "down or up."}}, ["direction"]),
    _tool("find", "Find a word or phrase on the current page: every place it occurs, with its viewport and line "
          "and the text around it.", {"text": FIND_TEXT}, ["text"]),
    _tool("answer", ANSWER_DESCRIPTION, {"text": {"type": "string", "description": "The answer."}}, ["text"]),
]
TOOLS = {"search": SEARCH_TOOLS, "browse": BROWSE_TOOLS}
TOOL_ARGS = {mode: {t["function"]["name"]: tuple(t["function"]["parameters"]["properties"]) for t in tools}
             for mode, tools in TOOLS.items()}


# --- retrievers shared in the process -----------------------------------------------------------------------------

_RETRIEVERS: dict[tuple[str, ...], Retriever] = {}
_RETRIEVERS_LOCK = threading.Lock()


def index_folder(index: str | Path) -> Path:
    """The index's folder: `index`, or its `index` subfolder (an `index` artifact's folder holds one)."""
    path = Path(index).expanduser()
    if (path / "index").is_dir():
        path = path / "index"
    if not path.is_dir():
        raise BadInput(f"index folder not found: {path}", key="index")
    return path.resolve()


def shared_index(index: str | Path) -> Retriever:
    """The BM25 index at `index`, opened once per process (thread-safe to search)."""
    path = index_folder(index)
    key = ("index", str(path))
    with _RETRIEVERS_LOCK:
        if key not in _RETRIEVERS:
            from swepost.retrieval.index import open_index

            try:
                _RETRIEVERS[key] = open_index(path)
            except BadInput as e:
                raise BadInput(e.detail, file=e.file, line=e.line, key=e.key or "index") from None
            except Exception as e:  # noqa: BLE001 - tantivy raises its own kinds for a folder that is no index
                raise BadInput(f"cannot open the index {path}: {type(e).__name__}: {e}", key="index") from None
        return _RETRIEVERS[key]


def shared_client(url: str, timeout: float) -> Retriever:
    """A client of the retriever server at `url`, one per URL and timeout in the process."""
    from swepost.retrieval.client import RetrieverClient

    key = ("url", url, str(timeout))
    with _RETRIEVERS_LOCK:
        if key not in _RETRIEVERS:
            try:
                _RETRIEVERS[key] = RetrieverClient(url, timeout=timeout)
            except ValueError as e:
                raise BadInput(str(e), key="retriever_url") from None
        return _RETRIEVERS[key]


class SearchEnvironment:
    """Corpus search (or site browsing) with short answers, graded by EM / F1 against the task's gold answers."""

    name = "search"

    @property
    def no_tool_call(self) -> str:
        """The agent loop's answer to a reply with neither a tool call nor an <answer> tag."""
        look = "search, open and find" if self.mode == "search" else "goto, click, back, scroll and find"
        return (f"Your reply had no tool call and no answer. Use the tools ({look}) to look things up, then "
                "call answer(text), or write your final answer as <answer>...</answer>.")

    def __init__(self, *, index: str | Path | None = None, retriever_url: str | None = None, topk: int = 3,
                 page_chars: int = 2000, snippet_chars: int = 300, max_observation_chars: int = 16000,
                 prompts_dir: str | Path | None = None, mode: str = "search", site: str | Path | None = None,
                 start: str | None = None, allow_remote: bool = False, viewport_chars: int = 2000,
                 reward_metric: str = "em", verify: str = "em", judge: Any = None, resolved_threshold: float = 0.7,
                 repos: Any = None, backend: str = "auto", tool_timeout: float = 30.0,
                 grade: bool = True, limits: Any = None):
        # repos, backend and limits are the stage's sandbox settings: accepted, unused (no sandbox, see above)
        if verify not in ("em", "judge"):
            raise BadInput(f"expected em (exact match) or judge, got {verify!r}", key="verify")
        if not 0.0 <= resolved_threshold <= 1.0:
            raise BadInput(f"must be in [0, 1], not {resolved_threshold!r}", key="resolved_threshold")
        self.verify, self.resolved_threshold = verify, resolved_threshold
        self.judge = shared_judge(judge) if verify == "judge" else None  # the stage's judge, asked only then
        if mode not in TOOLS:
            raise BadInput(f"expected one of {', '.join(TOOLS)}, got {mode!r}", key="mode")
        if reward_metric not in ("em", "f1"):
            raise BadInput(f"expected em or f1, got {reward_metric!r}", key="reward_metric")
        for key, value, low in (("topk", topk, 1), ("page_chars", page_chars, 200),
                                ("snippet_chars", snippet_chars, 20), ("viewport_chars", viewport_chars, 200),
                                ("max_observation_chars", max_observation_chars, 0)):
            if type(value) is not int or value < low:
                raise BadInput(f"expected an integer of at least {low}, got {value!r}", key=key)
        if topk > MAX_TOPK:
            raise BadInput(f"at most {MAX_TOPK}, got {topk}", key="topk")
        self.mode, self.topk, self.page_chars, self.snippet_chars = mode, topk, page_chars, snippet_chars
        self.viewport_chars, self.max_observation_chars = viewport_chars, max_observation_chars
        self.reward_metric, self.tool_timeout, self.grade = reward_metric, float(tool_timeout), grade
        self.retriever: Retriever | None = None
        self.site = None
        if mode == "search":
            if (index is None) == (retriever_url is None):
                raise BadInput("give exactly one of index (a folder built by `swepost corpus index`) or "
                               "retriever_url (a Search-R1-compatible server)", key="index" if index is None
                               else "retriever_url")
            for key, value in (("site", site), ("start", start)):
                if value is not None:
                    raise BadInput("is for mode browse", key=key)
            self.retriever = (shared_index(index) if index is not None
                              else shared_client(str(retriever_url), self.tool_timeout))
        else:
            if site is None:
                raise BadInput("mode browse needs a site: a folder of HTML pages or an http:// URL on loopback",
                               key="site")
            for key, value in (("index", index), ("retriever_url", retriever_url)):
                if value is not None:
                    raise BadInput("browse mode reads the site's pages and searches no index: drop it", key=key)
            self.site = open_site(site, allow_remote=allow_remote, timeout=self.tool_timeout, start=start)
        folder = Path(prompts_dir) if prompts_dir is not None else PROMPTS_DIR
        self.prompts = load_prompt_templates(folder, PROMPT_FILES[mode], PROMPT_FIELDS[mode])
        self.task: Task | None = None
        self._fresh()

    def _fresh(self) -> None:
        """Per-episode state."""
        self.answer: str | None = None
        self.answer_count = 0
        self.searches = 0
        self.opened: list[str] = []
        self.seen: dict[str, Document] = {}  # documents search returned, for `open` on servers without /documents
        self.document: tuple[str, str, str, list[tuple[int, int]]] | None = None  # id, title, text, page spans
        self.page: tuple[str, RenderedPage, list[tuple[int, int]]] | None = None  # url, page, viewport spans
        self.viewport = 1
        self.history: list[tuple[str, RenderedPage, list[tuple[int, int]], int]] = []
        self.visited: list[str] = []

    # --- episode ------------------------------------------------------------------------------------------
    def reset(self, task: Task) -> list[dict[str, Any]]:
        self._fresh()
        self.task = task
        fields: dict[str, Any] = {"question": task.problem_statement, "instance_id": task.instance_id}
        if self.mode == "search":
            fields.update(topk=self.topk, page_chars=self.page_chars)
        else:
            start = task.metadata.get("start_url") or task.metadata.get("start")  # the task's own first page
            try:
                url = self.site.resolve(None, str(start)) if start else self.site.start
                first = self._show(url)
            except ToolError as e:  # the start page is not there: this task cannot be set up
                raise WorkFailed(f"the start page cannot be shown: {e}") from None
            fields.update(start_url=self.page[0], page=first, viewport_chars=self.viewport_chars)
        return [{"role": "system", "content": self.prompts["system"].format(**fields)},
                {"role": "user", "content": self.prompts["user"].format(**fields)}]

    def tools(self) -> list[dict[str, Any]]:
        return TOOLS[self.mode]

    def step(self, name: str, arguments: dict[str, Any]) -> Observation:
        tools = TOOL_ARGS[self.mode]
        if name not in tools:
            raise MalformedCall(f"Unknown tool {str(name)[:100]!r}. Available tools: {', '.join(tools)}.")
        args = tool_arguments(name, arguments, tools[name])
        if name == "answer":
            return self._answer(args)
        handler = getattr(self, f"_{name}")
        return Observation(self._clip(handler(args)))

    def text_reply(self, content: str) -> Observation | None:
        """A reply without a tool call: its last `<answer>...</answer>` ends the episode (the prompt's own examples
        are never read: this is the response). Without one, its first `<search>query</search>` (Search-R1's action,
        where generation stops at the first `</search>`) is run, and the documents come back as Search-R1 shows
        them: `<information>Doc i(Title: "T") text ...</information>`. None when it holds neither."""
        self.answer_count += count_answer_tags(content)
        answer = extract_answer(content)
        if answer is not None and answer.strip():
            self.answer = answer.strip()
            return Observation("Your answer was recorded; the task is finished.", done=True, answer=self.answer)
        query = _SEARCH_TAG.search(content or "")
        if query is None or self.mode != "search":
            return None
        return Observation(self._search_r1(query.group(1).strip()))

    def _search_r1(self, query: str) -> str:
        """A text `<search>`'s result in Search-R1's form (whole passages, top `topk`); a bad query is said so in
        the same block, as a tool's refusal would be."""
        if not query:
            return "\n\n<information>The search query is empty: write a few keywords.</information>\n\n"
        query = query[:MAX_QUERY_CHARS]
        try:
            hits = self.retriever.search([query], self.topk)[0]
        except Exception as e:  # noqa: BLE001 - a retriever down or an index failing: infrastructure, not the model
            raise EnvironmentBroken(f"the retriever failed: {type(e).__name__}: {e}"[:2000]) from None
        self.searches += 1
        lines = []
        for i, (doc, _score) in enumerate(hits[: self.topk], 1):
            self.seen[str(doc.get("id"))] = doc
            title, text = title_and_text(doc)
            lines.append(f'Doc {i}(Title: "{title}") {text}')
        body = "\n".join(lines) if lines else f"No documents match {query!r}."
        return self._clip(f"\n\n<information>{body}</information>\n\n")

    def final_diff(self) -> str:
        return ""

    def score(self) -> dict[str, Any]:
        if self.task is None:
            raise RuntimeError("score() before reset(): there is no episode to grade")
        golds = [g for g in self.task.verify.gold_answers if g.strip()]
        evidence: dict[str, Any] = {"answer": self.answer, "golds": golds, "hops": self.task.metadata.get("hops"),
                                    "metric": self.reward_metric, "answer_tags": self.answer_count}
        if self.mode == "search":
            evidence.update(searches=self.searches, opened=self.opened[:MAX_HISTORY])
        else:
            evidence.update(visited=self.visited[:MAX_HISTORY])
        if not golds:
            return {"reward": None, "resolved": "UNGRADED",
                    "evidence": {**evidence, "reason": "the task has no gold answers to score against"}}
        s = score_answer(self.answer, golds, answer_count=self.answer_count, metric=self.reward_metric)
        evidence.update(em=s["em"], f1=s["f1"], missing_answer=s["missing_answer"], spam=s.get("spam", False),
                        verify=self.verify)
        if self.judge is not None:
            return self._judged(golds, evidence)
        return {"reward": s["reward"], "resolved": "RESOLVED_FULL" if s["em"] == 1.0 else "RESOLVED_NO",
                "evidence": evidence}

    def _judged(self, golds: list[str], evidence: dict[str, Any]) -> dict[str, Any]:
        """verify: judge. The stage's judge scores the answer against the gold answers (BrowserAgent verifies RFT
        samples with judges, not string match); EM and F1 stay in the evidence. A judge failure is never a score."""
        reference = golds[0] if len(golds) == 1 else "Any one of these is correct: " + "; ".join(golds)
        evidence.update(judge=self.judge.name, model=self.judge.model, threshold=self.resolved_threshold)
        j, ungraded = ask_judge(self.judge, self.task.problem_statement, self.answer, reference, [], evidence)
        if ungraded is not None:
            return ungraded
        reward = j.reward / SPAM_DIVISOR if evidence["spam"] else j.reward
        passed = not evidence["missing_answer"] and j.reward >= self.resolved_threshold
        return {"reward": reward, "resolved": "RESOLVED_FULL" if passed else "RESOLVED_NO", "evidence": evidence}

    def close(self) -> None:
        self._fresh()  # the shared index stays open for the next episode

    # --- search mode -------------------------------------------------------------------------------------------
    def _search(self, args: dict[str, Any]) -> str:
        query = _string(args, "query", "search").strip()
        if not query:
            raise ToolError("Parameter `query` of search is empty: give a few keywords")
        if len(query) > MAX_QUERY_CHARS:
            raise ToolError(f"The query is {len(query)} characters long; queries are at most {MAX_QUERY_CHARS}")
        topk = _integer(args, "topk", "search", self.topk)
        if not 1 <= topk <= MAX_TOPK:
            raise ToolError(f"Parameter `topk` must be from 1 to {MAX_TOPK}, not {topk}")
        try:
            hits = self.retriever.search([query], topk)[0]
        except Exception as e:  # noqa: BLE001 - a retriever down or an index failing: infrastructure, not the model
            raise EnvironmentBroken(f"the retriever failed: {type(e).__name__}: {e}"[:2000]) from None
        self.searches += 1
        if not hits:
            return f"No documents match {query!r}. Try other words."
        lines = []
        for i, (doc, _score) in enumerate(hits[:topk], 1):
            doc_id = str(doc.get("id"))
            self.seen[doc_id] = doc
            title, text = title_and_text(doc)
            lines.append(f'Doc {i} [id: {doc_id}] (Title: "{title}") {snippet(text, query, self.snippet_chars)}')
        return "\n".join(lines)

    def _open(self, args: dict[str, Any]) -> str:
        doc_id = args.get("doc_id")
        if type(doc_id) is int:  # ids are often numbers (wiki-18): a model may send one unquoted
            doc_id = str(doc_id)
        doc_id = _string({"doc_id": doc_id}, "doc_id", "open").strip()
        if not doc_id or len(doc_id) > MAX_ID_CHARS:
            raise ToolError("Parameter `doc_id` of open is empty or too long: give an id from the search results")
        page = _integer(args, "page", "open", 1)
        doc = self.seen.get(doc_id)
        if doc is None:
            try:
                doc = self.retriever.get(doc_id)
            except Exception as e:  # noqa: BLE001 - as for search
                raise EnvironmentBroken(f"the retriever failed: {type(e).__name__}: {e}"[:2000]) from None
        if doc is None:
            raise ToolError(f"No document with id {doc_id!r}: open an id that search showed ([id: ...])")
        title, text = title_and_text(doc)
        spans = paginate(text, self.page_chars)
        if not 1 <= page <= len(spans):
            raise ToolError(f"Document {doc_id} has {len(spans)} page(s): `page` is from 1 to {len(spans)}, not "
                            f"{page}")
        self.document = (doc_id, title, text, spans)
        if doc_id not in self.opened:
            self.opened.append(doc_id)
        start, end = spans[page - 1]
        more = f"; open(doc_id=\"{doc_id}\", page={page + 1}) for the next" if page < len(spans) else ""
        return (f'Document {doc_id} (Title: "{title}"), page {page} of {len(spans)}\n\n{text[start:end].strip()}'
                f"\n\n[page {page} of {len(spans)}{more}]")

    def _find(self, args: dict[str, Any]) -> str:
        needle = _string(args, "text", "find")
        if not needle.strip():
            raise ToolError("Parameter `text` of find is empty: give a word or phrase")
        if len(needle) > MAX_FIND_CHARS:
            raise ToolError(f"Parameter `text` of find is at most {MAX_FIND_CHARS} characters")
        if self.mode == "search":
            if self.document is None:
                raise ToolError("No document is open: open one (open(doc_id)) before find")
            doc_id, title, text, spans = self.document
            where, unit = f'document {doc_id} (Title: "{title}")', "page"
        else:
            url, page, spans = self.page
            text, where, unit = page.text, f"the page {url}", "viewport"
        count, shown = find_in_text(text, needle, spans, unit)
        if not count:
            return f"{needle!r} does not occur in {where}."
        head = f"{count} match(es) of {needle!r} in {where}" + (f"; the first {len(shown)}:" if count > len(shown)
                                                                 else ":")
        return "\n".join([head, *shown])

    def _answer(self, args: dict[str, Any]) -> Observation:
        text = _string(args, "text", "answer")
        self.answer_count += max(count_answer_tags(text), 1)
        tagged = extract_answer(text)  # `answer("<answer>x</answer>")` answers x
        text = (text if tagged is None else tagged).strip()
        if not text:
            raise ToolError("Parameter `text` of answer is empty: give your answer to the question")
        self.answer = text
        return Observation("Your answer was recorded; the task is finished.", done=True, answer=text)

    # --- browse mode -------------------------------------------------------------------------------------------
    def _show(self, url: str, viewport: int = 1, page: RenderedPage | None = None) -> str:
        """Make `url` the current page (fetched unless given) at `viewport`; its text for the model."""
        if page is None:
            url, page = self.site.fetch(url)
            self.visited.append(url)
        self.page, self.viewport = (url, page, paginate(page.text, self.viewport_chars)), viewport
        return self._viewport()

    def _viewport(self) -> str:
        url, page, spans = self.page
        start, end = spans[self.viewport - 1]
        n = len(spans)
        body = page.text[start:end].strip("\n") or "(this page has no text)"
        title = f" — {page.title}" if page.title else ""
        tail = '; scroll("down") for more' if self.viewport < n else ""
        return (f"Page: {url}{title} (viewport {self.viewport} of {n})\n\n{body}\n\n"
                f"[viewport {self.viewport} of {n}{tail}]")

    def _navigate(self, url: str) -> str:
        before = (*self.page, self.viewport) if self.page is not None else None
        text = self._show(url)
        if before is not None:
            self.history = [*self.history, before][-MAX_HISTORY:]
        return text

    def _goto(self, args: dict[str, Any]) -> str:
        ref = _string(args, "url", "goto").strip()
        if not ref or len(ref) > MAX_QUERY_CHARS:
            raise ToolError("Parameter `url` of goto is empty or too long: give a page's address")
        return self._navigate(self.site.resolve(self.page[0] if self.page else None, ref))

    def _click(self, args: dict[str, Any]) -> str:
        n = _integer(args, "n", "click", None)
        if n is None:
            raise MalformedCall("Parameter `n` is required for click")
        url, page, _ = self.page
        if not 1 <= n <= len(page.links):
            raise ToolError(f"There is no link [{n}] on this page (its links are [1] to [{len(page.links)}])"
                            if page.links else "This page has no links")
        name, href = page.links[n - 1]
        base = self.site.resolve(url, page.base) if page.base else url
        return self._navigate(self.site.resolve(base, href))

    def _back(self, args: dict[str, Any]) -> str:
        if not self.history:
            raise ToolError("There is no previous page to go back to")
        url, page, spans, viewport = self.history.pop()
        return self._show(url, viewport, page)

    def _scroll(self, args: dict[str, Any]) -> str:
        direction = _string(args, "direction", "scroll").strip().lower()
        if direction not in ("down", "up"):
            raise MalformedCall(f"Parameter `direction` of scroll is down or up, not {direction[:50]!r}")
        n = len(self.page[2])
        target = self.viewport + (1 if direction == "down" else -1)
        if not 1 <= target <= n:
            raise ToolError(f"Already at the {'end' if direction == 'down' else 'top'} of the page (viewport "
                            f"{self.viewport} of {n})")
        self.viewport = target
        return self._viewport()

    def _clip(self, text: str) -> str:
        limit = self.max_observation_chars
        if not limit or len(text) <= limit:
            return text
        note = f"\n[... clipped: {len(text)} characters in all ...]"
        return text[:max(limit - len(note), 0)] + note


def snippet(text: str, query: str, size: int) -> str:
    """About `size` characters of `text` around where the query's words occur most (its start when none do)."""
    text = " ".join(text.split())
    if len(text) <= size:
        return text
    words = {w for w in re.findall(r"\w+", query.lower()) if len(w) > 2}
    best, best_hits = 0, 0
    if words:
        step = max(size // 4, 1)
        for start in range(0, len(text) - size + step, step):
            window = set(re.findall(r"\w+", text[start:start + size].lower()))
            hits = len(words & window)
            if hits > best_hits:
                best, best_hits = start, hits
    if best:
        cut = text.find(" ", best)
        best = cut + 1 if 0 <= cut < best + 20 else best
    out = text[best:best + size]
    if best + size < len(text):
        out = out[:out.rfind(" ")] if " " in out[size // 2:] else out
        out += " ..."
    return ("... " if best else "") + out


# --- arguments ------------------------------------------------------------------------------------------------
def _string(args: dict[str, Any], key: str, tool: str) -> str:
    value = args.get(key)
    if value is None:
        raise MalformedCall(f"Parameter `{key}` is required for {tool}")
    if not isinstance(value, str):
        raise MalformedCall(f"Parameter `{key}` of {tool} must be a string, got {type(value).__name__}: "
                            f"{str(value)[:100]}")
    try:
        value.encode("utf-8")  # a lone surrogate would break the index or the server, not the model's episode
    except UnicodeEncodeError:
        raise MalformedCall(f"Parameter `{key}` of {tool} holds characters that are not valid Unicode") from None
    return value


def _integer(args: dict[str, Any], key: str, tool: str, default: int | None) -> int | None:
    value = args.get(key, default)
    if value is not None and type(value) is not int:
        raise MalformedCall(f"Parameter `{key}` of {tool} must be an integer, got {str(value)[:100]!r}")
    return value
