"""What a Ray worker does: build a window's environment profile, and execute one candidate against it.

A profile is a task image (`sandbox/task_images.py`) of the window's anchor commit with the repo's install
commands run: the dependencies of that stretch of history, built once and cached by content. A candidate runs in
fresh sandboxes started from it, with the repo swapped for the parent commit's checkout (the files the anchor's
git tracks go, whatever the install left beside them stays): before = parent + the candidate's test files,
after = parent + the whole candidate diff, i.e. the candidate commit. Both sides are run by the grader
(`rewards/grading.py`) with its report plugin, `runs` times each; its per-test statuses are all this reads.

Every function here returns plain data and never raises for a candidate's own failures: a profile that cannot
be built, a checkout that fails or a test run that times out is a verdict with its reason.
"""

from __future__ import annotations

import functools
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from swepost.errors import BadInput, WorkFailed
from swepost.records import Task, TaskEnv

PASSING = ("PASSED", "XPASS")
# rejections worth the remaining repeats: one may come from a flaky test that a later run shows flipping (a keep
# needs every repeat); any other rejection stands whatever the repeats say, so its candidate stops there
REPEATED = ("no_improvement",)


# --- profiles ---------------------------------------------------------------------------------------------------

def profile_task(repo: str, window: str, anchor: str, install: list[str], workdir: str = "/testbed") -> Task:
    """The task whose image is a window's profile: its key is (base image, repo, anchor, install, workdir)."""
    return Task(instance_id=f"profile:{repo}:{window}", problem_statement="", repo=repo, base_commit=anchor,
                version=window, env=TaskEnv(install=list(install), workdir=workdir))


def build_profile(repos: str, repo: str, window: str, anchor: str, install: list[str], base: str,
                  workdir: str = "/testbed") -> dict[str, Any]:
    """{image, built, seconds} or {error}: the window's profile image, built unless cached."""
    from swepost.sandbox.base import SandboxError
    from swepost.sandbox.task_images import build_task_image, find_task_image

    started = time.monotonic()
    task = profile_task(repo, window, anchor, install, workdir)
    try:
        cached = find_task_image(task, base=base)
        image = cached or build_task_image(task, _mirror(repos, repo).folder, base=base)
    except (WorkFailed, BadInput, SandboxError) as e:
        return {"repo": repo, "window": window, "anchor": anchor, "error": str(e)[-2000:],
                "seconds": round(time.monotonic() - started, 2)}
    return {"repo": repo, "window": window, "anchor": anchor, "image": image, "built": cached is None,
            "seconds": round(time.monotonic() - started, 2)}


@functools.lru_cache(maxsize=8)
def _mirror(repos: str, repo: str):
    """One readable mirror per repo per worker process (a bundle is unbundled once, not per candidate)."""
    from swepost.mining.history import Mirror

    return Mirror(repos, repo)


# --- candidates -------------------------------------------------------------------------------------------------

def execute_candidate(cand: dict[str, Any], profile: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The candidate's verdict and the raw results of both sides. `settings`: repos, runs, timeout, test_cmd,
    network, limits (a SandboxLimits dict), test_scope (all: every test file of the suite; changed: the
    candidate's own)."""
    started = time.monotonic()
    out: dict[str, Any] = {"id": f"{cand['repo']}@{cand['commit'][:12]}", "repo": cand["repo"],
                           "commit": cand["commit"], "window": cand["window"], "profile": profile.get("image"),
                           "before": [], "after": [], "fail_to_pass": [], "pass_to_pass": []}

    def done(verdict: str, reason: str, detail: str = "") -> dict[str, Any]:
        out.update(verdict=verdict, reason=reason, detail=detail[-2000:],
                   seconds=round(time.monotonic() - started, 2))
        return out

    if profile.get("error"):
        return done("rejected", "environment_failed", profile["error"])
    scratch = Path(tempfile.mkdtemp(prefix=_scratch_prefix()))
    try:
        try:
            from swepost.sandbox.repos import checkout

            base = Task(instance_id=out["id"], problem_statement="", repo=cand["repo"], base_commit=cand["parent"])
            checkout(base, _mirror(settings["repos"], cand["repo"]).folder, scratch / "repo")
        except (WorkFailed, BadInput) as e:
            return done("rejected", "checkout_failed", str(e))
        task = Task(instance_id=out["id"], problem_statement="", repo=cand["repo"], base_commit=cand["parent"],
                    patch=cand["patch"], test_patch=cand["test_patch"],
                    env=TaskEnv(image=profile["image"], test_cmd=settings.get("test_cmd"),
                                network=bool(settings.get("network"))))
        files = cand["suite"] if settings.get("test_scope", "all") == "all" else cand["test_files"]
        for _ in range(settings["runs"]):
            for side, patch in (("before", ""), ("after", cand["patch"])):
                out[side].append(_run_side(task, patch, scratch / "repo", files, settings))
            verdict, reason, detail, f2p, p2p = decide(out["before"], out["after"])
            if verdict == "rejected" and reason not in REPEATED:
                break  # no repeat can make it a task
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out.update(fail_to_pass=f2p, pass_to_pass=p2p)
    return done(verdict, reason, detail)


def _scratch_prefix() -> str:
    from swepost.sandbox.base import owner
    from swepost.sandbox.task_sandbox import CHECKOUT_PREFIX

    return f"{CHECKOUT_PREFIX}{owner()}-"


# the anchor's tracked files and its git history go; what its install left (egg-info, build output) stays
_CLEAR = ("{git} ls-files -z | xargs -0 -r rm -f -- && rm -rf .git && "
          "find . -mindepth 1 -depth -type d -empty -delete")


def _run_side(task: Task, patch: str, checkout: Path, test_files: list[str], settings: dict[str, Any]) -> dict:
    """One grader run in a fresh sandbox from the profile holding the parent commit; its result as plain data."""
    from swepost.rewards.grading import GIT, grade_in_sandbox
    from swepost.sandbox.base import SandboxError
    from swepost.sandbox.docker import DockerSandbox
    from swepost.sandbox.task_sandbox import limits_for

    started = time.monotonic()
    try:
        limits = limits_for(task, settings.get("limits") or {})
        box = DockerSandbox(task.env.image, workdir=task.env.workdir, limits=limits).start()
        try:
            wd = shlex.quote(box.workdir)
            r = box.exec(f"cd {wd} && " + _CLEAR.format(git=GIT), user="root", timeout=600)
            if r.exit_code != 0:
                raise SandboxError(f"could not clear the profile's checkout: {r.output[-500:]}")
            box.copy_contents_in(checkout, box.workdir)
            result = grade_in_sandbox(box, task, patch, timeout=settings["timeout"], test_files=test_files)
        finally:
            box.close()
    except (SandboxError, WorkFailed) as e:
        return {"resolved": "UNGRADED", "reason": f"the sandbox failed: {e}"[:2000], "tests": {},
                "seconds": round(time.monotonic() - started, 2)}
    return {"resolved": result.resolved, "reason": result.reason, "tests": result.all_tests,
            "collected": result.collected, "exit_code": result.exit_code, "tampering": result.tampering,
            "apply": {k: v for k, v in result.apply.items() if k != "log"}, "output_tail": result.output_tail[-2000:],
            "seconds": round(time.monotonic() - started, 2), "grader_seconds": result.seconds}


def decide(before: list[dict], after: list[dict]) -> tuple[str, str, str, list[str], list[str]]:
    """(verdict, reason, detail, FAIL_TO_PASS, PASS_TO_PASS) from the raw runs of both sides.

    Kept: at least one test fails (or is absent) before and passes after, no test passes before and not after,
    and no test's status differs between the runs of a side."""
    runs = [("before", r) for r in before] + [("after", r) for r in after]
    for side, r in runs:
        if r.get("apply", {}).get("ok") is False or "test patch does not apply" in (r.get("reason") or ""):
            return "rejected", "patch_does_not_apply", f"{side}: {r.get('reason')}", [], []
    for side, r in runs:
        if r["resolved"] == "UNGRADED":
            reason = "timeout" if "timed out" in (r.get("reason") or "") else "sandbox_error"
            return "rejected", reason, f"{side}: {r.get('reason')}", [], []
    for side, r in runs:
        if r.get("tampering"):
            # the grader plants canaries in the test files: when they go missing before the fix, the test files
            # do not even import at the parent, and no grading of this task could tell a fix from no fix
            missing = all("came out MISSING" in t for t in r["tampering"])
            reason = "uncollectable_before" if side == "before" and missing else "untrusted_run"
            return "rejected", reason, f"{side}: {'; '.join(r['tampering'][:3])}", [], []
    for side, r in runs:
        if r["resolved"] != "RESOLVED_FULL" or not r.get("tests"):
            return "rejected", "test_run_failed", f"{side}: {r.get('reason') or 'no test ran'}", [], []
    flaky = sorted(t for side in (before, after) for t in _ids(side)
                   if len({r["tests"].get(t, "MISSING") for r in side}) > 1)
    if flaky:
        return "rejected", "flaky", f"statuses differ between runs: {', '.join(sorted(set(flaky))[:5])}", [], []
    was, now = before[0]["tests"], after[0]["tests"]
    regressed = sorted(t for t, s in was.items() if s in PASSING and now.get(t) not in PASSING)
    if regressed:
        shown = ", ".join(f"{t} ({now.get(t, 'MISSING')})" for t in regressed[:5])
        return "rejected", "regression", f"passing before, not after: {shown}", [], []
    f2p = sorted(t for t, s in now.items() if s in PASSING and was.get(t) not in PASSING)
    p2p = sorted(t for t, s in now.items() if s in PASSING and was.get(t) in PASSING)
    if not f2p:
        return "rejected", "no_improvement", "no test fails (or is absent) before and passes after", [], []
    return "kept", "", "", f2p, p2p


def _ids(side: list[dict]) -> set[str]:
    return {t for r in side for t in r["tests"]}
