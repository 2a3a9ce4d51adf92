"""Write the static viewer of an artifact: index.html, the bundled script and style, and the data as JS files.

Everything from a trajectory is untrusted. It only ever reaches the page as JSON inside a data file
(`window.__swepost_x = {...}`: ASCII only, `<` written as \\u003c) and is put on the page as text by the script,
never as markup. The list loads one small index; an episode's messages load only when it is opened
(data/ep/K.js, a chunk of neighbouring episodes), its raw line only when asked for (data/raw/K.js), the text
search's words only on the first search (data/search/K.js): thousands of episodes stay fast, in a few hundred
files. Plain script files rather than fetch(), so the site works from file:// as well as from `--serve`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

from swepost.artifacts import Artifact, ArtifactStore
from swepost.errors import BadInput
from swepost.viewer.load import ROLLOUTS_FILE, Episode, episode_sources, jsonl_objects, read_episodes, task_index
from swepost.viewer.runs import artifact_summary, episode_row, lineage_tree, rft_series, rl_series

MARKER = ".swepost-view"  # a folder holding it is a site this module wrote: safe to replace
STATIC = ("index.html", "style.css", "dom.js", "charts.js", "list.js", "episode.js", "run.js", "app.js")
MESSAGE_CAP = 200_000  # characters of one message, diff or field kept in the page; the raw JSON has it all
SEARCH_MESSAGE_CAP = 2_000  # characters of each message the text search looks at
SEARCH_EPISODE_CAP = 16_000
SEARCH_CHUNK = 250  # episodes per search file
EPISODE_CHUNK = 50  # at most this many episodes per data/ep file, and
EPISODE_CHUNK_BYTES = 512_000  # no more bytes than this once it holds one (a larger episode is a chunk alone)


def default_out(store: ArtifactStore, art: Artifact) -> Path:
    return store.root / "views" / f"{art.name}-{art.version}"


def build_site(store: ArtifactStore, art: Artifact, out: Path) -> dict[str, Any]:
    """Write the site for `art` into `out` (replaced as a whole: a half-written site is never left there).
    Returns {"out", "index", "episodes", "view"}."""
    view, sources = episode_sources(store, art)
    out = Path(out).expanduser().resolve()
    _check_out(out)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        episodes = _write(store, art, view, sources, tmp)
        (tmp / MARKER).write_text(f"{art.id}\n")
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "index": str(out / "index.html"), "episodes": episodes, "view": view}


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out}: not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise BadInput(f"--out {out}: the folder holds files that are not a swepost view; give an empty or "
                       "new folder (it is replaced as a whole)")


def _replace(new: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.old"
        os.rename(out, old)
        os.rename(new, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, out)


def _write(store: ArtifactStore, art: Artifact, view: str, sources: list, site: Path) -> int:
    static = resources.files("swepost.viewer") / "static"
    (site / "static").mkdir()
    for name in STATIC:
        target = site / name if name == "index.html" else site / "static" / name
        target.write_bytes((static / name).read_bytes())
    data = site / "data"
    for sub in ("ep", "raw", "search"):
        (data / sub).mkdir(parents=True)
    tasks = task_index(store, art)
    rows: list[dict] = []
    chunk: list[str] = []
    episodes = _EpisodeChunks(data)
    for ep in read_episodes(sources):
        row = episode_row(ep)
        row["c"] = episodes.add(ep.index, episode_detail(ep, tasks), ep.raw)
        rows.append(row)
        chunk.append(search_text(ep))
        if len(chunk) == SEARCH_CHUNK:
            _js(data / "search" / f"{len(rows) // SEARCH_CHUNK - 1}.js",
                f"window.__swepost_search[{len(rows) // SEARCH_CHUNK - 1}]", chunk)
            chunk = []
    episodes.flush()
    if chunk:
        k = (len(rows) - 1) // SEARCH_CHUNK
        _js(data / "search" / f"{k}.js", f"window.__swepost_search[{k}]", chunk)
    run: dict[str, Any] = {"artifact": artifact_summary(art), "lineage": lineage_tree(store, art)}
    if view == "rl":
        run["series"] = rl_series(art, jsonl_objects(art.path / ROLLOUTS_FILE))
    elif view == "rft":
        run["series"] = rft_series(sources, rows)
    _js(data / "run.js", "window.__swepost_run", run)
    _js(data / "index.js", "window.__swepost_index", {
        "artifact": {"id": art.id, "kind": art.kind, "view": view}, "rows": rows,
        "search_chunk": SEARCH_CHUNK, "search_chunks": (len(rows) + SEARCH_CHUNK - 1) // SEARCH_CHUNK,
        "has_steps": view == "rl", "has_rounds": any(r["round"] is not None for r in rows)})
    return len(rows)


def to_js_literal(value: Any) -> str:
    """JSON that is safe anywhere a script can be: ASCII only (no U+2028, no bytes a browser could misread), and
    no `<` at all, so not even `</script>` or `<!--` could end or change the script it is in."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str).replace("<", "\\u003c")


def _js(path: Path, target: str, value: Any) -> None:
    path.write_text(f"{target} = {to_js_literal(value)};\n", encoding="ascii")


class _EpisodeChunks:
    """Episodes written a chunk of neighbours per file (data/ep/K.js, and their raw lines in data/raw/K.js): one
    file per episode would cost thousands of file creations, one file for all would load every message at once."""

    def __init__(self, data: Path):
        self.data, self.number = data, 0
        self.details: list[str] = []
        self.raws: list[str] = []
        self.size = 0

    def add(self, index: int, detail: dict, raw: str) -> int:
        """Queue an episode; returns the number of the chunk it is in."""
        text = f"window.__swepost_ep[{index}] = {to_js_literal(detail)};\n"
        if self.details and (len(self.details) >= EPISODE_CHUNK or self.size + len(text) > EPISODE_CHUNK_BYTES):
            self.flush()
        self.details.append(text)
        self.raws.append(f"window.__swepost_raw[{index}] = {to_js_literal(raw)};\n")
        self.size += len(text)
        return self.number

    def flush(self) -> None:
        if self.details:
            (self.data / "ep" / f"{self.number}.js").write_text("".join(self.details), encoding="ascii")
            (self.data / "raw" / f"{self.number}.js").write_text("".join(self.raws), encoding="ascii")
            self.number += 1
        self.details, self.raws, self.size = [], [], 0


# --- one episode --------------------------------------------------------------------------------------------

def _cap(value: Any, limit: int = MESSAGE_CAP) -> dict[str, Any] | None:
    """{"t": text, "n": its full length when cut}: text beyond the cap is left to the raw JSON."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1, default=str)
    return {"t": text[:limit], "n": len(text)} if len(text) > limit else {"t": text}


def _content_text(content: Any) -> Any:
    """A message's content: a string, or OpenAI's list of parts (text kept, other parts named)."""
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                parts.append(f"[{part.get('type', 'part') if isinstance(part, dict) else type(part).__name__}]")
        return "\n".join(parts)
    return content


def _tool_call(call: Any) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) and isinstance(call.get("function"), dict) else {}
    name = fn.get("name") or (call.get("name") if isinstance(call, dict) else None)
    args = fn.get("arguments", call.get("arguments") if isinstance(call, dict) else call)
    parsed = args
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except ValueError:
            parsed = args
    if isinstance(parsed, dict):  # key by key, strings as they are: an edit's new_str reads as code, not "\n"
        return {"name": _cap(name, 500), "args": [[_cap(k, 500), _cap(v)] for k, v in parsed.items()]}
    return {"name": _cap(name, 500), "raw": _cap(args)}


def _message(m: Any) -> dict[str, Any]:
    if not isinstance(m, dict):
        return {"role": "?", "content": _cap(m)}
    out: dict[str, Any] = {"role": _cap(m.get("role") or "?", 100), "content": _cap(_content_text(m.get("content")))}
    if m.get("name"):
        out["name"] = _cap(m["name"], 500)
    if m.get("error"):
        out["error"] = _cap(m["error"], 500)
    calls = m.get("tool_calls")
    if isinstance(calls, list) and calls:
        out["calls"] = [_tool_call(c) for c in calls]
    return out


def _tests(evidence: dict, task: dict) -> list[list[str]]:
    """[[test, status, group]] from the grader's evidence; group F2P / P2P where the task or evidence says."""
    verify = task.get("verify") if isinstance(task.get("verify"), dict) else {}
    groups: dict[str, str] = {}
    for key, label in (("pass_to_pass", "P2P"), ("fail_to_pass", "F2P")):
        listed = evidence.get(key)
        names = [*listed.get("passed", []), *listed.get("failed", [])] if isinstance(listed, dict) else []
        for name in [*names, *(verify.get(key) or [])]:
            groups[str(name)] = label
    tests = evidence.get("tests")
    if not isinstance(tests, dict):
        return []
    return [[str(name)[:2000], str(status)[:200], groups.get(str(name), "")] for name, status in tests.items()]


_JUDGE_KEYS = ("judge", "model", "scores", "total", "reward", "rationale", "note", "judge_failed", "threshold",
               "qa_type", "missing_answer", "truncated")
_ANSWER_KEYS = ("answer", "golds", "em", "f1", "metric", "verify", "hops", "searches", "opened", "missing_answer",
                "spam")


def episode_detail(ep: Episode, tasks: dict[str, dict]) -> dict[str, Any]:
    d = ep.data
    task = tasks.get(str(d.get("instance_id")), {})
    verify = task.get("verify") if isinstance(task.get("verify"), dict) else {}
    evidence = d.get("evidence") if isinstance(d.get("evidence"), dict) else {}
    messages = d.get("messages") if isinstance(d.get("messages"), list) else []
    meta = {k: _cap(v, 2000) for k, v in d.items()
            if k not in ("messages", "tools", "final_diff", "evidence", "answer") and v not in (None, "", {}, [])}
    out: dict[str, Any] = {
        "i": ep.index, "meta": meta, "problem": ep.problem, "file": str(ep.source.path), "line": ep.line,
        "row": {k: _cap(v, 2000) for k, v in (ep.row or {}).items()},
        "messages": [_message(m) for m in messages],
        "diff": _cap(d.get("final_diff") or None), "gold": _cap(task.get("patch") or None),
        "answer": _cap(d.get("answer")), "reference": _cap(verify.get("reference_answer")),
        "rubric": [_cap(r, 2000) for r in verify.get("rubric") or []],
        "tests": _tests(evidence, task), "tools": len(d.get("tools") or []) if isinstance(d.get("tools"), list) else 0,
    }
    if isinstance(evidence.get("scores"), dict):
        out["judge"] = {k: _cap(evidence[k], 20_000) for k in _JUDGE_KEYS if k in evidence}
    if "em" in evidence or "f1" in evidence or "golds" in evidence:
        out["answers"] = {k: _cap(evidence[k], 20_000) for k in _ANSWER_KEYS if k in evidence}
        if "golds" not in evidence and verify.get("gold_answers"):
            out["answers"]["golds"] = _cap(verify["gold_answers"])
    shown = {"tests", "fail_to_pass", "pass_to_pass"} | (set(_JUDGE_KEYS) if "judge" in out else set()) | (
        set(_ANSWER_KEYS) if "answers" in out else set())
    # the rest of the evidence key by key: a string as it is (a test log reads as a log), the others as JSON
    out["evidence"] = [[_cap(k, 500), _cap(v)] for k, v in evidence.items() if k not in shown]
    return out


def search_text(ep: Episode) -> str:
    """What the list's text search looks at: ids, the answer, then each message's first characters."""
    d = ep.data
    parts = [str(d.get("episode_id", "")), str(d.get("instance_id", "")), str(d.get("answer") or ""),
             str(d.get("error") or ""), ep.problem or ""]
    for m in d.get("messages") if isinstance(d.get("messages"), list) else []:
        if not isinstance(m, dict):
            continue
        content = _content_text(m.get("content"))
        parts.append(content[:SEARCH_MESSAGE_CAP] if isinstance(content, str) else "")
        for call in m.get("tool_calls") or [] if isinstance(m.get("tool_calls"), list) else []:
            parts.append(json.dumps(call, ensure_ascii=False, default=str)[:SEARCH_MESSAGE_CAP])
    return "\n".join(parts)[:SEARCH_EPISODE_CAP].lower()
