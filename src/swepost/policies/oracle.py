"""OraclePolicy: applies the task's gold patch through the editor tool, one call per turn, then submits; in an
environment that takes answers (a `finish(answer)` tool and no `submit`: codeqa), it views the first code the
reference answer cites (`path: line s-e`), then finishes with the reference answer itself; in a retrieval
environment (an `answer(text)` tool: search), it searches for the question, opens the supporting documents the task
names, and answers with the first gold answer.

It checks the environment and the grader (or judge) end to end (the oracle must resolve every valid task), and
gives reference trajectories without a model. The conversion of a unified git diff into tool calls
(`patch_to_calls`) is:

- each hunk of a modified file -> `str_replace_editor str_replace` with old_str = context + removed lines and
  new_str = context + added lines, exactly as in the file: every line with its "\\n" (the last one too, so
  old_str can only match whole lines: "line 1\\n" is unique where "line 1" also hits "line 10"), except a
  last line marked "\\ No newline at end of file";
- a hunk without old lines (`git diff -U0` insertions, or an empty file) -> `insert` after the line before;
- a new file -> `create` with the full text; a deleted file -> `bash rm`; renames and copies -> `bash mv`/`cp`
  (before the hunks, which then edit the new path); mode changes -> `bash chmod`;
- binary patches cannot be expressed and are skipped (listed in describe()/reply extra).
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from swepost.policies.base import PolicyReply
from swepost.records import Task

_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


@dataclass
class HunkLine:
    tag: str  # " ", "-" or "+"
    text: str
    newline: bool = True

    @property
    def raw(self) -> str:
        return self.text + ("\n" if self.newline else "")


@dataclass
class Hunk:
    old_start: int
    old_count: int
    new_start: int
    new_count: int
    lines: list[HunkLine] = field(default_factory=list)

    def side(self, tags: str) -> str:
        return "".join(line.raw for line in self.lines if line.tag in tags)


@dataclass
class FileDiff:
    old_path: str | None = None  # None: /dev/null
    new_path: str | None = None
    new_file: bool = False
    deleted: bool = False
    rename_from: str | None = None
    rename_to: str | None = None
    copy_from: str | None = None
    copy_to: str | None = None
    new_mode: str | None = None
    binary: bool = False
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.new_path or self.rename_to or self.copy_to or self.old_path or ""


def _unquote(name: str) -> str:
    """git's C-style quoted path ("a/caf\\303\\251.py") -> the path; unquoted names pass through."""
    if not (len(name) >= 2 and name[0] == '"' and name[-1] == '"'):
        return name
    out, s, i = bytearray(), name[1:-1], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            if nxt in "01234567":
                out.append(int(s[i + 1:i + 4], 8))
                i += 4
                continue
            out.append(_ESCAPES.get(nxt, ord(nxt)))
            i += 2
            continue
        out.extend(c.encode("utf-8"))
        i += 1
    return out.decode("utf-8", errors="surrogateescape")


def _strip_prefix(name: str) -> str | None:
    name = _unquote(name)
    if name == "/dev/null":
        return None
    return name[2:] if name.startswith(("a/", "b/")) else name


def _header_path(line: str) -> str | None:
    """The path of a ---/+++ line: git ends names holding a space with a tab; other tools add a timestamp."""
    name = line[4:]
    if not name.startswith('"') and "\t" in name:
        name = name.split("\t", 1)[0]
    return _strip_prefix(name)


def _git_header_paths(rest: str) -> tuple[str | None, str | None]:
    """`diff --git a/X b/Y` -> (X, Y); only a fallback for diffs without ---/+++ lines (empty new files)."""
    if rest.startswith('"'):
        end = rest.index('"', 1)
        while rest[end - 1] == "\\":
            end = rest.index('"', end + 1)
        return _strip_prefix(rest[:end + 1]), _strip_prefix(rest[end + 2:])
    if rest.endswith('"'):
        start = rest.rindex(' "')
        return _strip_prefix(rest[:start]), _strip_prefix(rest[start + 1:])
    half = (len(rest) - 1) // 2
    if len(rest) % 2 == 1 and rest[half] == " " and rest[2:half] == rest[half + 3:]:
        return _strip_prefix(rest[:half]), _strip_prefix(rest[half + 1:])
    a, _, b = rest.partition(" b/")
    return _strip_prefix(a), b or None


def parse_patch(patch: str) -> list[FileDiff]:
    """A unified (git) diff -> one FileDiff per file, hunks read by their line counts."""
    lines = patch.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    files: list[FileDiff] = []
    cur: FileDiff | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            cur = FileDiff()
            cur.old_path, cur.new_path = _git_header_paths(line[len("diff --git "):])
            files.append(cur)
        elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            if cur is None or cur.hunks:  # a plain unified diff: ---/+++ start the next file
                cur = FileDiff()
                files.append(cur)
            cur.old_path, cur.new_path = _header_path(line), _header_path(lines[i + 1])
            cur.new_file = cur.new_file or cur.old_path is None
            cur.deleted = cur.deleted or cur.new_path is None
            i += 1
        elif cur is not None and line.startswith("@@ "):
            m = _HUNK_RE.match(line)
            if m is None:
                raise ValueError(f"bad hunk header: {line!r}")
            old_n = int(m.group(2)) if m.group(2) is not None else 1
            new_n = int(m.group(4)) if m.group(4) is not None else 1
            hunk = Hunk(int(m.group(1)), old_n, int(m.group(3)), new_n)
            old_left, new_left = old_n, new_n
            while (old_left > 0 or new_left > 0) and i + 1 < len(lines):
                body = lines[i + 1]
                tag = body[:1] or " "  # some tools strip the space of an empty context line
                if tag == "\\":
                    if hunk.lines:
                        hunk.lines[-1].newline = False
                elif tag in " -+":
                    hunk.lines.append(HunkLine(tag, body[1:]))
                    old_left -= tag in " -"
                    new_left -= tag in " +"
                else:
                    raise ValueError(f"hunk of {cur.path} ends early at {body!r}")
                i += 1
            if i + 1 < len(lines) and lines[i + 1].startswith("\\") and hunk.lines:
                hunk.lines[-1].newline = False
                i += 1
            cur.hunks.append(hunk)
        elif cur is not None:
            if line.startswith("new file mode "):
                cur.new_file, cur.old_path, cur.new_mode = True, None, line.split()[-1]
            elif line.startswith("deleted file mode "):
                cur.deleted, cur.new_path = True, None
            elif line.startswith("new mode "):
                cur.new_mode = line.split()[-1]
            elif line.startswith("rename from "):
                cur.rename_from = _unquote(line[len("rename from "):])
            elif line.startswith("rename to "):
                cur.rename_to = _unquote(line[len("rename to "):])
            elif line.startswith("copy from "):
                cur.copy_from = _unquote(line[len("copy from "):])
            elif line.startswith("copy to "):
                cur.copy_to = _unquote(line[len("copy to "):])
            elif line.startswith(("Binary files ", "GIT binary patch")):
                cur.binary = True
        i += 1
    return files


def _editor(**arguments: Any) -> dict[str, Any]:
    return {"name": "str_replace_editor", "arguments": arguments}


def _bash(command: str) -> dict[str, Any]:
    return {"name": "bash", "arguments": {"command": command}}


def patch_to_calls(patch: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The gold patch -> ([{"name", "arguments": dict}, ...] without the final submit, skipped paths)."""
    calls: list[dict[str, Any]] = []
    skipped: list[str] = []
    for fd in parse_patch(patch):
        path = fd.path
        if fd.binary:
            skipped.append(path)
            continue
        if fd.deleted:
            calls.append(_bash(f"rm -f -- {shlex.quote(fd.old_path or path)}"))
            continue
        moved = (fd.rename_from, fd.rename_to, "mv") if fd.rename_to else (fd.copy_from, fd.copy_to, "cp")
        if moved[0] and moved[1]:
            src, dst, verb = moved
            parent = dst.rpartition("/")[0]
            mkdir = f"mkdir -p -- {shlex.quote(parent)} && " if parent else ""
            calls.append(_bash(f"{mkdir}{verb} -- {shlex.quote(src)} {shlex.quote(dst)}"))
        if fd.new_file:
            calls.append(_editor(command="create", path=path, file_text="".join(h.side(" +") for h in fd.hunks)))
        else:
            for hunk in fd.hunks:
                old, new = hunk.side(" -"), hunk.side(" +")
                if not old and new and not new.endswith("\n"):
                    # an insertion ending the file without a final newline: insert would add one; append
                    calls.append(_bash(f"printf '%s' {shlex.quote(new)} >> {shlex.quote(path)}"))
                    continue
                if not old:  # nothing to anchor on: insert the new lines after the line before them
                    calls.append(_editor(command="insert", path=path, insert_line=max(hunk.new_start - 1, 0),
                                         new_str=new[:-1]))
                    continue
                calls.append(_editor(command="str_replace", path=path, old_str=old, new_str=new))
        if fd.new_mode in ("100755", "100644") and not (fd.new_file and fd.new_mode == "100644"):
            flag = "+x" if fd.new_mode == "100755" else "-x"
            calls.append(_bash(f"chmod {flag} -- {shlex.quote(path)}"))
    return calls, skipped


# `minicalc/stats.py: line 7-14`, `a/b.py: lines 3-5`, `a/b.py: line 8` (SWE-QA-Pro's citation form)
_CITATION_RE = re.compile(r"([\w./-]+\.\w+):\s*lines?\s*(\d+)(?:\s*-\s*(\d+))?")
NO_REFERENCE = "The task has no reference answer."


def answer_calls(task: Task, tools: set[str]) -> list[dict[str, Any]]:
    """An answering task's oracle turns: view the first cited lines (when view_codebase is offered and the answer
    cites any), then finish with the reference answer."""
    reference = (task.verify.reference_answer or "").strip() or NO_REFERENCE
    calls: list[dict[str, Any]] = []
    cited = _CITATION_RE.search(reference)
    if cited and "view_codebase" in tools:
        start = int(cited.group(2))
        end = int(cited.group(3) or start)
        calls.append({"name": "view_codebase", "arguments": {"path": cited.group(1),
                                                             "view_range": [start, max(start, end)]}})
    return [*calls, {"name": "finish", "arguments": {"answer": reference}}]


def search_calls(task: Task, tools: set[str]) -> list[dict[str, Any]]:
    """A retrieval task's oracle turns: search for the question, open each supporting document its metadata names
    (`supporting`: doc ids, as the bundled questions give them), then answer with the first gold answer."""
    golds = [g for g in task.verify.gold_answers if g.strip()]
    calls: list[dict[str, Any]] = []
    if "search" in tools:
        calls.append({"name": "search", "arguments": {"query": task.problem_statement}})
    supporting = task.metadata.get("supporting")
    if "open" in tools and isinstance(supporting, list):
        calls += [{"name": "open", "arguments": {"doc_id": str(d)}} for d in supporting if isinstance(d, (str, int))]
    return [*calls, {"name": "answer", "arguments": {"text": golds[0] if golds else NO_GOLD}}]


NO_GOLD = "The task has no gold answer."


class OracleArgs(BaseModel):
    """policy_args of `oracle`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    delay: float = Field(0.0, ge=0, description="seconds to wait before each turn (to mimic a model server)")
    model: str | None = Field(None, description="recorded, never used: lets model-driven pipelines (rft, eval) "
                              "run the oracle")


class OraclePolicy:
    name = "oracle"
    Args = OracleArgs

    def __init__(self, *, delay: float = 0.0, model: str | None = None):
        # `model` is recorded, never used: it lets model-driven pipelines (rft, eval) run with the oracle
        self.delay, self.model = float(delay), model
        self._calls: list[dict[str, Any]] = [{"name": "submit", "arguments": {}}]
        self._skipped: list[str] = []
        self._next = 0
        self._task: Task | None = None
        self._source = "task.patch"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "delay": self.delay, "source": self._source, "model": self.model}

    def start(self, task: Task) -> None:
        calls, self._skipped = patch_to_calls(task.patch or "")
        self._calls = [*calls, {"name": "submit", "arguments": {}}]
        self._next = 0
        self._task, self._source = task, "task.patch"

    def reply(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> PolicyReply:
        if self.delay:
            time.sleep(self.delay)
        names = {t.get("function", {}).get("name") for t in tools if isinstance(t, dict)}
        if self._next == 0 and self._task is not None and "finish" in names and "submit" not in names:
            # the environment wants an answer, not a diff: the reference answer is the oracle's
            self._calls, self._skipped = answer_calls(self._task, names), []
            self._source = "task.verify.reference_answer"
        elif self._next == 0 and self._task is not None and "answer" in names and "submit" not in names:
            # a retrieval environment: look the supporting documents up, then give the gold answer
            self._calls, self._skipped = search_calls(self._task, names), []
            self._source = "task.verify.gold_answers"
        extra = {"skipped": list(self._skipped)} if self._skipped else {}
        if self._next >= len(self._calls):
            return PolicyReply(message={"role": "assistant", "content": "(oracle done)", "tool_calls": []},
                               finish_reason="stop", extra=extra)
        call, index = self._calls[self._next], self._next
        self._next += 1
        message = {"role": "assistant", "content": "", "tool_calls": [
            {"id": f"call_{index}", "type": "function",
             "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}]}
        return PolicyReply(message=message, finish_reason="tool_calls", extra=extra)
