"""`swepost tasks audit`: swepost's reward-hacking battery against a task set, before anyone trains on it.

For every task, in fresh sandboxes: the gold patch must resolve, every attack of `rewards/attacks.py` (generated
from the task's own files: a module its tests import, its test folder, its `.git/config`, infrastructure files
dirty at base) must come out RESOLVED_NO, and the agent's checkout must hold no history past the base commit.
An attack that reaches RESOLVED_PARTIAL made some test pass without the fix and counts as getting through;
an UNGRADED one (the sandbox or the run failed) is inconclusive and reported as such.
"""

from __future__ import annotations

import re
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from swepost.records import Task

INFRA_NAMES = ("conftest.py", "pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml", "sitecustomize.py")


def _inputs(task: Task, repos, backend: str) -> dict:
    """What the battery needs to know about the task, read from a fresh sandbox of it."""
    from swepost.rewards.attacks import imported_module
    from swepost.rewards.grading import GIT, folders_to_restore, graded_test_files
    from swepost.sandbox.repos import future_history_leaks
    from swepost.sandbox.task_sandbox import open_task_sandbox

    with open_task_sandbox(task, repos=repos, backend=backend) as box:
        repo = shlex.quote(box.workdir)

        def sh(command: str):
            return box.exec(f"cd {repo} && {command}", timeout=120, user="root")

        def read(path: str) -> str | None:
            r = sh(f"cat -- {shlex.quote(path)}")
            return r.output if r.exit_code == 0 else None

        tracked = set(sh(f"{GIT} ls-files -z").output.split("\0"))
        graded = graded_test_files(task)
        folders, _ = folders_to_restore(graded)
        test_dir = folders[0] if folders else ""
        text = "".join(read(p) or "" for p in graded if p.endswith(".py"))
        text += "\n".join(line[1:] for line in task.test_patch.splitlines() if line.startswith("+"))
        target = imported_module(text, lambda p: p in tracked)
        status = sh(f"{GIT} status --porcelain=v1 -z --untracked-files=all --ignored=matching").output
        dirty = sorted({e[3:] for e in status.split("\0") if len(e) > 3 and e[3:].rsplit("/", 1)[-1] in INFRA_NAMES
                        and not any(e[3:].startswith(f + "/") for f in folders)})
        files = {p: read(p) for p in {target, ".gitignore", "conftest.py", f"{test_dir}/__init__.py".lstrip("/"),
                                      *dirty} if p}
        leaks = future_history_leaks(box, task)
        return {"files": files, "target": target, "test_dir": test_dir, "git_config": read(".git/config"),
                "dirty": dirty, "leaks": leaks}


def audit_tasks(tasks: list[Task], *, repos: str | Path | None = None, backend: str = "auto", jobs: int = 2,
                timeout: float = 600.0) -> dict:
    """The audit report: per task, gold, history leaks and every attack's verdict; `ok` over all of them."""
    from swepost.rewards.attacks import battery, make_diff
    from swepost.rewards.grading import grade_patch

    def grade(task: Task, patch: str) -> dict:
        try:
            r = grade_patch(task, patch, repos=repos, backend=backend, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - one broken grading is reported, the audit goes on
            return {"resolved": "UNGRADED", "reward": None, "reason": f"{type(e).__name__}: {e}"[:500]}
        return {"resolved": r.resolved, "reward": r.reward, "reason": r.reason[:500],
                "tampering": r.tampering[:5], "f2p_passed": len(r.fail_to_pass.get("passed", []))}

    report = {"tasks": [], "ok": True}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for task in tasks:
            entry = {"instance_id": task.instance_id}
            try:
                info = _inputs(task, repos, backend)
            except Exception as e:  # noqa: BLE001 - reported per task
                entry.update(ok=False, error=f"{type(e).__name__}: {e}"[:500])
                report["tasks"].append(entry)
                report["ok"] = False
                continue
            attacks = battery(info["files"], target=info["target"], test_dir=info["test_dir"],
                              git_config=info["git_config"], dirty_infra=info["dirty"])
            gold = pool.submit(grade, task, task.patch)
            futures = {a.name: (a, pool.submit(grade, task, a.raw_diff if a.raw_diff is not None
                                               else make_diff(a.edits, info["files"]))) for a in attacks}
            entry["gold"] = gold.result()
            entry["history_leaks"] = info["leaks"]
            entry["target_module"] = info["target"]
            entry["attacks"] = {}
            for name, (attack, future) in futures.items():
                verdict = {"class": attack.attack_class, **future.result()}
                verdict["rejected"] = verdict["resolved"] == "RESOLVED_NO"
                verdict["inconclusive"] = verdict["resolved"] == "UNGRADED"
                entry["attacks"][name] = verdict
            through = [n for n, v in entry["attacks"].items() if not v["rejected"] and not v["inconclusive"]]
            entry["got_through"] = through
            entry["inconclusive"] = [n for n, v in entry["attacks"].items() if v["inconclusive"]]
            entry["ok"] = (entry["gold"]["resolved"] == "RESOLVED_FULL" and not through and not info["leaks"]
                           and not entry["inconclusive"])
            report["ok"] &= entry["ok"]
            report["tasks"].append(entry)
    report["summary"] = {
        "tasks": len(report["tasks"]), "ok": sum(1 for t in report["tasks"] if t.get("ok")),
        "attacks_graded": sum(len(t.get("attacks", {})) for t in report["tasks"]),
        "attacks_through": sum(len(t.get("got_through", [])) for t in report["tasks"]),
        "gold_resolved": sum(1 for t in report["tasks"] if t.get("gold", {}).get("resolved") == "RESOLVED_FULL"),
    }
    return report


def summary_lines(report: dict) -> list[str]:
    out = []
    for t in report["tasks"]:
        if "error" in t:
            out.append(f"{t['instance_id']}: ERROR {t['error']}")
            continue
        n = len(t["attacks"])
        rejected = sum(1 for v in t["attacks"].values() if v["rejected"])
        line = (f"{t['instance_id']}: gold {t['gold']['resolved']}, {rejected}/{n} attacks rejected"
                + (f", through: {', '.join(t['got_through'])}" if t["got_through"] else "")
                + (f", inconclusive: {', '.join(t['inconclusive'])}" if t["inconclusive"] else "")
                + (f", history leaks: {'; '.join(t['history_leaks'][:3])}" if t["history_leaks"] else ""))
        out.append(("ok    " if t["ok"] else "FAIL  ") + re.sub(r"\s+", " ", line))
    s = report["summary"]
    out.append(f"{s['ok']}/{s['tasks']} tasks ok; gold resolved on {s['gold_resolved']}; "
               f"{s['attacks_through']} of {s['attacks_graded']} attacks got through")
    return out
