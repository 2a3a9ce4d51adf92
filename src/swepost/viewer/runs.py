"""The numbers the viewer and the report show: one row per episode, an rl run per step, an rft run per round,
the artifact's manifest and lineage. Plain data (dicts and lists), drawn by the page's script or by matplotlib."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from swepost.artifacts import Artifact, ArtifactStore
from swepost.viewer.load import Episode, Source

RESOLVED = "RESOLVED_FULL"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def episode_row(ep: Episode) -> dict[str, Any]:
    """The list view's columns (short keys: thousands of rows load at once)."""
    d, row = ep.data, ep.row or {}
    seconds = d.get("seconds") if isinstance(d.get("seconds"), dict) else {}
    tokens = [_num(d.get("prompt_tokens")), _num(d.get("completion_tokens"))]
    evidence = d.get("evidence") if isinstance(d.get("evidence"), dict) else {}
    return {
        "i": ep.index,
        "id": _text(d.get("episode_id")) or f"#{ep.index}",
        "task": _text(d.get("instance_id")) or "?",
        "s": _num(d.get("sample")),
        "env": _text(d.get("environment")),
        "st": _text(d.get("exit_status")) or ("unreadable" if ep.problem else "unfinished"),
        "res": _text(d.get("resolved")),
        "r": _num(d.get("reward")),
        "turns": _num(d.get("turns")),
        "tok": sum(t for t in tokens if t is not None) if any(t is not None for t in tokens) else None,
        "sec": _num(seconds.get("total")),
        "step": ep.source.step,
        "round": ep.source.round,
        "masked": _text(row.get("masked")),
        "dropped": bool(row.get("group_dropped")) if row else None,
        "err": bool(d.get("error") or ep.problem),
        "em": _num(evidence.get("em")),
        "f1": _num(evidence.get("f1")),
        "judge": _num(evidence.get("total")) if isinstance(evidence.get("scores"), dict) else None,
    }


def rl_series(art: Artifact, rows: list[dict]) -> dict[str, Any]:
    """Per optimizer step: reward, resolved rate, dropped groups, exit statuses (from every rollout row, saved
    trajectory or not) and the time split (from the trainer's log history)."""
    steps: dict[int, list[dict]] = {}
    for r in rows:
        if isinstance(r.get("step"), int):
            steps.setdefault(r["step"], []).append(r)
    history = _log_history(art)
    out: list[dict[str, Any]] = []
    statuses: set[str] = set()
    for step in sorted(steps):
        rs = steps[step]
        graded = [r for r in rs if _num(r.get("reward")) is not None and not r.get("judge_failed")]
        exits = Counter(str(r.get("exit_status")) for r in rs)
        statuses.update(exits)
        h = history.get(step, {})
        rollout = _num(h.get("time/rollout"))
        step_time = _num(h.get("step_time"))
        out.append({
            "step": step, "rollouts": len(rs), "graded": len(graded),
            "reward": sum(r["reward"] for r in graded) / len(graded) if graded else None,
            "resolved_rate": sum(r.get("resolved") == RESOLVED for r in graded) / len(graded) if graded else None,
            "trained": sum(r.get("masked") is None for r in rs),
            "dropped_groups": len({(r.get("process"), r.get("group")) for r in rs if r.get("group_dropped")}),
            "exit_status": dict(exits),
            "loss": _num(h.get("loss")),
            "time": {"generation": _num(h.get("time/generation")), "environment": _num(h.get("time/environment")),
                     "training": max(step_time - rollout, 0.0) if step_time is not None and rollout is not None
                     else None},
        })
    return {"kind": "rl", "x": "step", "points": out, "statuses": sorted(statuses),
            "time_split": art.stats.get("time_split") or {}}


def _log_history(art: Artifact) -> dict[int, dict]:
    try:
        history = json.loads((art.path / "log_history.json").read_text())
    except (OSError, ValueError):
        return {}
    by_step: dict[int, dict] = {}
    for entry in history if isinstance(history, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            by_step.setdefault(entry["step"], {}).update(entry)
    return by_step


def rft_series(sources: list[Source], rows: list[dict]) -> dict[str, Any]:
    """Per round: episodes, tasks resolved (and new ones), resolved rate and mean reward, exit statuses."""
    solved: set[str] = set()
    out = []
    statuses: set[str] = set()
    for source in sources:
        rs = [r for r in rows if r["round"] == source.round]
        graded = [r for r in rs if r["r"] is not None]
        resolved = {r["task"] for r in rs if r["res"] == RESOLVED}
        exits = Counter(r["st"] for r in rs)
        statuses.update(exits)
        out.append({"round": source.round, "artifact": source.artifact.id, "episodes": len(rs), "graded": len(graded),
                    "resolved_tasks": len(resolved), "new_tasks": len(resolved - solved),
                    "resolved_rate": sum(r["res"] == RESOLVED for r in graded) / len(graded) if graded else None,
                    "reward": sum(r["r"] for r in graded) / len(graded) if graded else None,
                    "exit_status": dict(exits)})
        solved |= resolved
    return {"kind": "rft", "x": "round", "points": out, "statuses": sorted(statuses)}


def lineage_tree(store: ArtifactStore, art: Artifact) -> dict[str, Any]:
    """The lineage as plain data: {id, kind, stage, created, parents: [...]}, a missing parent as {missing: id}."""
    def plain(node: dict) -> dict:
        if "artifact" not in node:
            return {"id": node.get("missing") or node.get("cycle"), "missing": "missing" in node}
        a = node["artifact"]
        return {"id": a.id, "kind": a.kind, "stage": a.manifest.get("producer", {}).get("stage"),
                "created": a.created, "parents": [plain(p) for p in node["parents"]]}
    return plain(store.lineage(art))


def artifact_summary(art: Artifact) -> dict[str, Any]:
    producer = art.manifest.get("producer", {})
    metrics = None
    if (art.path / "metrics.json").is_file():
        try:
            metrics = json.loads((art.path / "metrics.json").read_text())
        except ValueError:
            metrics = None
    return {"id": art.id, "kind": art.kind, "created": art.created, "path": str(art.path),
            "stage": producer.get("stage"), "git_commit": producer.get("git_commit"),
            "swepost_version": producer.get("swepost_version"), "seed": producer.get("seed"),
            "config": producer.get("config"), "stats": art.stats, "metrics": metrics}


def count_by(rows: list[dict], key: str) -> dict[str, int]:
    return dict(Counter(str(r[key]) for r in rows).most_common())
