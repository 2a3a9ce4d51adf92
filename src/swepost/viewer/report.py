"""`swepost report`: a Markdown report with PNG plots (matplotlib) of an eval, rl, rft or trajectories artifact,
for papers and pull requests. Text from trajectories is never copied into the Markdown: only ids and numbers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from swepost.artifacts import Artifact, ArtifactStore
from swepost.viewer.load import ROLLOUTS_FILE, episode_sources, jsonl_objects, read_episodes
from swepost.viewer.runs import RESOLVED, count_by, episode_row, lineage_tree, rft_series, rl_series


def default_out(store: ArtifactStore, art: Artifact) -> Path:
    return store.root / "reports" / f"{art.name}-{art.version}"


def write_report(store: ArtifactStore, art: Artifact, out: Path) -> dict[str, Any]:
    """Write report.md and its PNGs into `out`; returns {"out", "report", "plots"}."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    view, sources = episode_sources(store, art)
    rows = [episode_row(ep) for ep in read_episodes(sources)]
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    series = None
    if view == "rl":
        series = rl_series(art, jsonl_objects(art.path / ROLLOUTS_FILE))
    elif view == "rft":
        series = rft_series(sources, rows)
    if series and series["points"]:
        plots += _series_plots(series, out)
    plots += _episode_plots(rows, out)
    md = _markdown(store, art, view, rows, series, plots)
    (out / "report.md").write_text(md)
    return {"out": str(out), "report": str(out / "report.md"), "plots": plots}


# --- plots ---------------------------------------------------------------------------------------------------

def _figure(title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig, out: Path, name: str, integer_x: bool = False) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if integer_x:  # steps and rounds
        fig.axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name


def _series_plots(series: dict, out: Path) -> list[str]:
    pts, x = series["points"], series["x"]
    xs = [p[x] for p in pts]
    names = []
    fig, ax = _figure(f"reward and resolved rate per {x}")
    for key, label in (("reward", "mean reward (graded)"), ("resolved_rate", "resolved rate")):
        known = [(a, p[key]) for a, p in zip(xs, pts, strict=True) if p[key] is not None]
        ax.plot([a for a, _ in known], [b for _, b in known], marker="o", label=label)
    ax.set_xlabel(x)
    top = max([1.0] + [p[k] for p in pts for k in ("reward", "resolved_rate") if p[k] is not None])
    ax.set_ylim(min([0.0] + [p["reward"] for p in pts if p["reward"] is not None]), top * 1.05)
    ax.legend(fontsize=8)
    names.append(_save(fig, out, "reward.png", integer_x=True))
    fig, ax = _figure(f"exit statuses per {x}")
    bottom = [0] * len(pts)
    for status in series["statuses"]:
        ys = [p["exit_status"].get(status, 0) for p in pts]
        ax.bar(xs, ys, bottom=bottom, label=status)
        bottom = [a + b for a, b in zip(bottom, ys, strict=True)]
    ax.set_xlabel(x)
    ax.legend(fontsize=8)
    names.append(_save(fig, out, "exit_statuses.png", integer_x=True))
    if series["kind"] == "rl":
        fig, ax = _figure("dropped groups per step (all rewards equal)")
        ax.bar(xs, [p["dropped_groups"] for p in pts], color="#cf222e")
        ax.set_xlabel("step")
        names.append(_save(fig, out, "dropped_groups.png", integer_x=True))
        if any(v is not None for p in pts for v in p["time"].values()):
            fig, ax = _figure("time split per step (s)")
            bottom = [0.0] * len(pts)
            for part in ("generation", "environment", "training"):
                ys = [p["time"][part] or 0.0 for p in pts]
                ax.bar(xs, ys, bottom=bottom, label=part)
                bottom = [a + b for a, b in zip(bottom, ys, strict=True)]
            ax.set_xlabel("step")
            ax.legend(fontsize=8)
            names.append(_save(fig, out, "time_split.png", integer_x=True))
    return names


def _episode_plots(rows: list[dict], out: Path) -> list[str]:
    if not rows:
        return []
    names = []
    counts = count_by(rows, "st")
    fig, ax = _figure(f"exit statuses ({len(rows)} episodes)")
    ax.barh(list(counts)[::-1], list(counts.values())[::-1], color="#0969da")
    names.append(_save(fig, out, "episode_statuses.png"))
    rewards = [r["r"] for r in rows if r["r"] is not None]
    if rewards:
        fig, ax = _figure("reward of graded episodes")
        ax.hist(rewards, bins=min(20, max(len(set(rewards)), 2)), color="#1a7f37")
        ax.set_xlabel("reward")
        names.append(_save(fig, out, "rewards.png"))
    turns = [r["turns"] for r in rows if r["turns"] is not None]
    if turns:
        fig, ax = _figure("turns per episode")
        ax.hist(turns, bins=min(30, max(len(set(turns)), 2)), color="#8250df")
        ax.set_xlabel("turns")
        names.append(_save(fig, out, "turns.png"))
    return names


# --- the Markdown ------------------------------------------------------------------------------------------

_PLAIN = re.compile(r"[^A-Za-z0-9._@#:/+ -]")


def _md(value: Any) -> str:
    """An id or name in a table cell: only plain characters survive (task ids are data too)."""
    return _PLAIN.sub("?", str(value))[:200]


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _markdown(store: ArtifactStore, art: Artifact, view: str, rows: list[dict], series: dict | None,
              plots: list[str]) -> str:
    graded = [r for r in rows if r["r"] is not None]
    resolved = sum(r["res"] == RESOLVED for r in graded)
    lines = [f"# {_md(art.id)}", "",
             f"{art.kind} artifact made by `{_md(art.manifest.get('producer', {}).get('stage', '?'))}` on "
             f"{_md(art.created)}; swepost {_md(art.manifest.get('producer', {}).get('swepost_version', '?'))}, "
             f"commit `{_md(art.manifest.get('producer', {}).get('git_commit'))}`.", "",
             "| | |", "|---|---|", f"| episodes | {len(rows)} |", f"| graded | {len(graded)} |",
             f"| resolved | {resolved} ({resolved / len(graded):.1%} of graded) |" if graded else "| resolved | – |",
             f"| mean reward | {_fmt(sum(r['r'] for r in graded) / len(graded)) if graded else '–'} |",
             f"| mean turns | {_fmt(_mean([r['turns'] for r in rows]))} |",
             f"| tokens | {sum(r['tok'] or 0 for r in rows):,.0f} |"]
    em = [r["em"] for r in rows if r["em"] is not None]
    if em:
        f1 = [r["f1"] for r in rows if r["f1"] is not None]
        lines.append(f"| EM / F1 | {_fmt(_mean(em))} / {_fmt(_mean(f1))} |")
    judge = [r["judge"] for r in rows if r["judge"] is not None]
    if judge:
        lines.append(f"| judge total (mean) | {_fmt(_mean(judge))} |")
    lines += ["", "| exit status | episodes |", "|---|---|"]
    lines += [f"| {_md(k)} | {v} |" for k, v in count_by(rows, "st").items()]
    if series and series["points"]:
        x = series["x"]
        n_label = "rollouts" if series["kind"] == "rl" else "episodes"
        lines += ["", f"## Per {x}", "", f"| {x} | {n_label} | graded | mean reward | resolved rate |"
                  + (" dropped groups |" if series["kind"] == "rl" else " tasks resolved | new |"),
                  "|---|---|---|---|---|---|" + ("" if series["kind"] == "rl" else "---|")]
        for p in series["points"]:
            n = p.get("rollouts", p.get("episodes"))
            tail = (f" {p['dropped_groups']} |" if series["kind"] == "rl"
                    else f" {p['resolved_tasks']} | {p['new_tasks']} |")
            lines.append(f"| {p[x]} | {n} | {p.get('graded', '–')} | {_fmt(p['reward'])} | "
                         f"{_fmt(p['resolved_rate'])} |{tail}")
        if series.get("time_split"):
            lines += ["", "Time split of the run: " + ", ".join(f"{_md(k)} {_fmt(v)} s"
                                                                 for k, v in series["time_split"].items()) + "."]
    per_task = _per_task(rows)
    if per_task:
        lines += ["", "## Per task", "", "| task | episodes | resolved | mean reward |", "|---|---|---|---|"]
        lines += [f"| {_md(t)} | {n} | {res} | {_fmt(mean)} |" for t, n, res, mean in per_task[:50]]
        if len(per_task) > 50:
            lines.append(f"| ({len(per_task) - 50} more tasks) | | | |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name[:-4]}]({name})" for name in plots]
    lines += ["", "## Lineage", "", *_lineage_lines(lineage_tree(store, art)), ""]
    return "\n".join(lines)


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _per_task(rows: list[dict]) -> list[tuple[str, int, int, float | None]]:
    tasks: dict[str, list[dict]] = {}
    for r in rows:
        tasks.setdefault(r["task"], []).append(r)
    out = [(t, len(rs), sum(r["res"] == RESOLVED for r in rs), _mean([r["r"] for r in rs])) for t, rs in tasks.items()]
    return sorted(out, key=lambda x: (-(x[3] or 0), x[0]))


def _lineage_lines(node: dict, depth: int = 0) -> list[str]:
    pad = "  " * depth
    if node.get("missing") or "kind" not in node:
        return [f"{pad}- `{_md(node.get('id'))}` (missing)"]
    lines = [f"{pad}- `{_md(node['id'])}` {node['kind']}, {_md(node.get('stage') or '?')}"]
    for p in node.get("parents", []):
        lines += _lineage_lines(p, depth + 1)
    return lines
