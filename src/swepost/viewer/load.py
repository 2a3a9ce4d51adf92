"""Read the episodes an artifact holds, whatever its kind, as untrusted data: a line that is not JSON, text that is
not UTF-8 or a record with fields missing is shown for what it is, never a crash.

Where episodes live: `trajectories.jsonl` (collect, eval, a round of rft), `trajectories/step-N[-pK].jsonl` of an
rl checkpoint (joined with its `rollouts.jsonl` rows), and for an rft checkpoint every round's trajectories artifact,
found through the lineage (`<name>-r<N>` <- `<name>-r<N>-data` <- `<name>-r<N>-trajectories`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swepost.artifacts import Artifact, ArtifactStore
from swepost.errors import BadInput

TRAJECTORIES_FILE = "trajectories.jsonl"  # collect's name for it (swepost.stages.collect), not imported: cheap
ROLLOUTS_FILE = "rollouts.jsonl"
_STEP_FILE = re.compile(r"^step-(\d+)(?:-p(\d+))?\.jsonl$")
_ROUND_NAME = re.compile(r"^(.+)-r(\d+)$")


@dataclass
class Source:
    """One file of episodes: which artifact, and the rl step or rft round it belongs to."""

    path: Path
    artifact: Artifact
    step: int | None = None
    round: int | None = None
    rows: list[dict] = field(default_factory=list)  # rl: the rollout rows of this file, in its order


@dataclass
class Episode:
    """One trajectory line, parsed as far as it goes: `data` is {} when the line was not a JSON object."""

    index: int
    raw: str
    data: dict[str, Any]
    source: Source
    row: dict[str, Any] | None = None
    problem: str | None = None  # why the line could not be read
    line: int = 0  # where in source.path


def episode_sources(store: ArtifactStore, art: Artifact) -> tuple[str, list[Source]]:
    """(what the artifact is, as the viewer sees it: trajectories | eval | rl | rft, its episode files)."""
    if (art.path / TRAJECTORIES_FILE).is_file():
        kind = "eval" if art.kind == "eval" else "trajectories"
        round_no = _round_of(art.name, "-trajectories")
        return kind, [Source(art.path / TRAJECTORIES_FILE, art, round=round_no)]
    if art.kind == "checkpoint" and (art.path / ROLLOUTS_FILE).is_file():
        return "rl", _rl_sources(art)
    rounds = rft_rounds(store, art)
    if rounds:
        return "rft", [Source(t.path / TRAJECTORIES_FILE, t, round=r) for r, t in rounds]
    raise BadInput(f"{art.id} ({art.kind}, made by {art.manifest.get('producer', {}).get('stage', '?')}) holds no "
                   "trajectories: give a trajectories, eval, rl or rft artifact")


def _round_of(name: str, suffix: str) -> int | None:
    m = _ROUND_NAME.match(name[: -len(suffix)]) if name.endswith(suffix) else None
    return int(m.group(2)) if m else None


def _rl_sources(art: Artifact) -> list[Source]:
    rows = jsonl_objects(art.path / ROLLOUTS_FILE)
    sources = []
    folder = art.path / "trajectories"
    files = sorted(folder.glob("step-*.jsonl")) if folder.is_dir() else []
    for f in files:
        m = _STEP_FILE.match(f.name)
        if not m:
            continue
        step, process = int(m.group(1)), int(m.group(2) or 0)
        mine = [r for r in rows if r.get("step") == step and int(r.get("process") or 0) == process]
        sources.append(Source(f, art, step=step, rows=mine))
    return sorted(sources, key=lambda s: (s.step, s.path.name))


def rft_rounds(store: ArtifactStore, art: Artifact) -> list[tuple[int, Artifact]]:
    """[(round, trajectories artifact)] of an rft checkpoint `<name>-r<N>`, oldest first; [] for anything else.
    A last round that stopped early (nothing new resolved) trained no checkpoint: it is found by its name."""
    found: list[tuple[int, Artifact]] = []
    current: Artifact | None = art
    prefix = None
    while current is not None and current.kind == "checkpoint":
        m = _ROUND_NAME.match(current.name)
        if not m or (prefix is not None and m.group(1) != prefix):
            break
        prefix, r = m.group(1), int(m.group(2))
        inputs = current.manifest.get("producer", {}).get("inputs") or {}
        data = store.find(str(inputs.get("data", "")))
        if data is None or data.name != f"{prefix}-r{r}-data":
            break
        trajs = [t for t in (store.find(p) for p in data.parents) if t is not None
                 and t.name == f"{prefix}-r{r}-trajectories" and (t.path / TRAJECTORIES_FILE).is_file()]
        if not trajs:
            break
        found.append((r, trajs[0]))
        current = store.find(str(inputs.get("model", "")))
    if not found:
        return []
    last_round = found[0][0] + 1
    try:
        stopped = store.resolve(f"{prefix}-r{last_round}-trajectories")
        if stopped.created > art.created and (stopped.path / TRAJECTORIES_FILE).is_file():
            found.insert(0, (last_round, stopped))
    except BadInput:
        pass
    return sorted(found, key=lambda x: x[0])


def read_episodes(sources: list[Source]) -> Iterator[Episode]:
    """Every episode of every source, numbered from 0 in order; rl episodes carry their rollout row."""
    index = 0
    for source in sources:
        for n, (lineno, raw, data, problem) in enumerate(_lines(source.path)):
            row = source.rows[n] if n < len(source.rows) else None
            if row is not None and data.get("episode_id") is not None and row.get("instance_id") not in (
                    None, data.get("instance_id")):
                row = None  # the rows and the file disagree: show the trajectory alone
            yield Episode(index, raw, data, source, row, problem, lineno)
            index += 1


def _lines(path: Path) -> Iterator[tuple[int, str, dict, str | None]]:
    """(line number, text, object, problem) per non-blank line; bytes that are not UTF-8 become U+FFFD."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            if not text.strip():
                continue
            try:
                data = json.loads(text, strict=False)  # strict=False: raw control characters (NUL) in strings
            except ValueError as e:
                yield lineno, text, {}, f"line {lineno} of {path.name} is not JSON ({e})"
                continue
            if not isinstance(data, dict):
                yield lineno, text, {}, f"line {lineno} of {path.name} is a JSON {type(data).__name__}, not an object"
                continue
            yield lineno, text, data, None


def jsonl_objects(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file; lines that are not one are left out."""
    return [d for _, _, d, problem in _lines(path) if problem is None]


def task_index(store: ArtifactStore, art: Artifact) -> dict[str, dict]:
    """instance_id -> task row, from the nearest tasks artifacts in the lineage (for the gold patch, the reference
    answer, the gold answers and the question)."""
    tasks: dict[str, dict] = {}
    seen: set[str] = set()
    frontier = [art]
    while frontier:
        nxt = []
        for a in frontier:
            if a.id in seen:
                continue
            seen.add(a.id)
            if a.kind == "tasks" and (a.path / "tasks.jsonl").is_file():
                for row in jsonl_objects(a.path / "tasks.jsonl"):
                    tasks.setdefault(str(row.get("instance_id")), row)
            nxt.extend(p for p in (store.find(pid) for pid in a.parents) if p is not None)
        frontier = nxt
    return tasks
