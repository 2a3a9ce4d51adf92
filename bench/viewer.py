"""The trajectory viewer on a large artifact: time to write the site of --episodes synthetic episodes, and time
until its list is interactive in headless Chromium (median of --runs cold page loads), as JSON.

Goal: the list of 5,000 episodes interactive in under 2 s. "Interactive" means the rows are drawn and a key press
moves the selection. Also measured: opening one episode (its messages load then), the first text search (the
search text loads then), a sort of every row, and the bytes the page loads up front.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from report import emit

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update"]
STATUSES = ["submitted", "submitted", "max_turns", "context_overflow", "format_error", "timeout"]


def synthetic(n: int, turns: int, output_chars: int) -> list[str]:
    """n swe episodes of `turns` tool calls each, outputs of output_chars, diffs and per-test statuses."""
    from swepost.records import Trajectory

    lines = []
    filler = ("lorem ipsum dolor sit amet consectetur " * (output_chars // 39 + 1))[:output_chars]
    for i in range(n):
        task, sample = f"repo__pkg-{i // 8}", i % 8
        messages = [{"role": "system", "content": "You fix bugs. " * 40},
                    {"role": "user", "content": f"Issue {i}: something is broken in module {i % 97}."}]
        for t in range(turns):
            messages.append({"role": "assistant", "content": f"Step {t}: look at the code.", "tool_calls": [
                {"id": f"c{t}", "type": "function",
                 "function": {"name": "bash", "arguments": json.dumps({"command": f"grep -n def src/m{t}.py"})}}]})
            messages.append({"role": "tool", "tool_call_id": f"c{t}", "name": "bash",
                             "content": f"episode {i} turn {t}\n{filler}"})
        resolved = (i * 7919) % 3 == 0
        tests = {f"tests/test_m.py::test_{k}": "PASSED" if resolved or k else "FAILED" for k in range(12)}
        lines.append(Trajectory(
            episode_id=f"{task}#{sample}", instance_id=task, sample=sample, messages=messages,
            exit_status=STATUSES[i % len(STATUSES)], final_diff=f"diff --git a/m.py b/m.py\n-x = {i}\n+x = {i + 1}\n",
            reward=1.0 if resolved else 0.0, resolved="RESOLVED_FULL" if resolved else "RESOLVED_NO", turns=turns,
            tool_calls=turns, prompt_tokens=20_000 + i, completion_tokens=900 + i % 300,
            seconds={"total": 30.0 + i % 60}, evidence={"tests": tests}).model_dump_json())
    return lines


def measure_browser(index: Path, runs: int) -> dict:
    from playwright.sync_api import expect, sync_playwright

    url = index.as_uri()
    samples, open_s, search_s, sort_s = [], [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for _ in range(runs + 1):  # the first load warms the page cache and is dropped
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            start = time.perf_counter()
            page.goto(url, wait_until="commit")
            page.wait_for_selector(".row.selected[data-i='0']")
            page.keyboard.press("j")
            page.wait_for_selector(".row.selected[data-i='1']")
            samples.append(time.perf_counter() - start)
            t = time.perf_counter()
            page.locator(".list-head [data-key=r]").click()
            page.wait_for_selector(".list-head [data-key=r].sorted")
            sort_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            page.keyboard.press("Enter")
            page.wait_for_selector("#conversation")
            open_s.append(time.perf_counter() - t)
            page.goto(url)
            page.wait_for_selector(".row")
            t = time.perf_counter()
            page.fill("#search", "episode 4321 turn")
            expect(page.locator(".row")).to_have_count(1, timeout=60_000)
            search_s.append(time.perf_counter() - t)
            context.close()
        browser.close()

    def summary(xs: list[float]) -> dict:
        xs = xs[1:]
        return {"median_s": round(statistics.median(xs), 3), "max_s": round(max(xs), 3)}

    return {"interactive": summary(samples), "sort_all_rows": summary(sort_s), "open_episode": summary(open_s),
            "first_text_search": summary(search_s), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=5000)
    parser.add_argument("--turns", type=int, default=10, help="tool calls per episode")
    parser.add_argument("--output-chars", type=int, default=1000, help="characters of each tool output")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    from swepost.artifacts import ArtifactStore
    from swepost.viewer.site import build_site

    with tempfile.TemporaryDirectory(prefix="swepost-bench-viewer-") as tmp:
        store = ArtifactStore(Path(tmp) / "home")
        lines = synthetic(args.episodes, args.turns, args.output_chars)
        with store.write("bench-trajs", "trajectories", producer={"stage": "bench"}) as w:
            (w.path / "trajectories.jsonl").write_text("\n".join(lines) + "\n")
        art = w.artifact
        start = time.perf_counter()
        built = build_site(store, art, Path(tmp) / "site")
        generate = time.perf_counter() - start
        site = Path(built["out"])
        upfront = ["index.html", "data/index.js", *(f"static/{f.name}" for f in (site / "static").iterdir())]
        result = {
            "benchmark": "viewer",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "episodes": built["episodes"],
            "trajectories_mb": round((art.path / "trajectories.jsonl").stat().st_size / 1e6, 1),
            "generate_s": round(generate, 2),
            "site_mb": round(sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 1e6, 1),
            "loaded_up_front_kb": round(sum((site / f).stat().st_size for f in upfront) / 1e3, 1),
            "goal": {"interactive_median_s_below": 2.0},
        }
        if not Path(CHROMIUM).exists():
            result["browser"] = f"{CHROMIUM} is missing: no page timings"
            emit(result, args.out)
            sys.exit(1)
        result["browser"] = measure_browser(site / "index.html", args.runs)
        result["goal"]["met"] = result["browser"]["interactive"]["median_s"] < 2.0
    emit(result, args.out)


if __name__ == "__main__":
    main()
