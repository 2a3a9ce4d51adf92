"""Stage `tasks-mine`: bug-fixing tasks mined from git history, SWE-Next style, executed on Ray.

Candidates (`mining/history.py`): commits and pull-request merges (against their first parent) that change
non-test Python source and tests within size limits; the rest are skips, counted by reason. Environments
(`mining/execute.py`): one profile image per (repo, time window), keyed by the window's anchor commit and the
repo's install commands from `specs`, built once and reused by every candidate of the window. Execution: fresh
sandboxes from the profile at the parent commit, with the candidate's test files (before) and with its whole diff
(after), `runs` times each, graded by swepost's report plugin; kept: something improves, nothing regresses,
nothing flips. Problem statements by an LLM (`mining/statements.py`), else the commit message, flagged. Every
finished candidate is appended (fsynced) to a work log under $SWEPOST_HOME/work/, so the same command after a
kill -9 executes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from swepost.artifacts import Artifact, ArtifactStore, canonical_json, producer_record
from swepost.config import FileInput, PathInput, StageConfig
from swepost.errors import BadInput, WorkFailed
from swepost.policies.openai import OpenAIArgs
from swepost.progress import StageBar
from swepost.records import SandboxLimits, Task, TaskEnv, TaskVerify
from swepost.sandbox.images import DEFAULT_BASE_IMAGE
from swepost.stages.tasks import TASKS_FILE, RepoSpec, apply_specs, load_specs

REPORT_FILE = "report.json"
LOG_FILE = "log.jsonl"
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class TasksMineConfig(StageConfig):
    NOT_IN_KEY = frozenset({"workers", "ray"})  # where and how fast, not what: a run resumes under other values

    repos: Path = PathInput(..., description="mirror folder of owner__name repos (folders, .git or .bundle)")
    repo: list[str] = Field(default_factory=list, description="owner/name of the repos to mine; empty: every "
                            "mirror in repos")
    name: str = Field("tasks-mined", description="output artifact name")
    since: str | None = Field(None, description="first commit date mined, YYYY-MM-DD (UTC, included)")
    until: str | None = Field(None, description="last commit date mined, YYYY-MM-DD (UTC, included)")
    ref: str = Field("HEAD", description="the branch of each mirror whose history is mined")
    max_candidates: int | None = Field(None, ge=1, description="execute at most this many candidates (oldest "
                                       "first, repo by repo)")
    max_files: int = Field(10, ge=2, description="a candidate changes at most this many files")
    max_lines: int = Field(500, ge=2, description="... and at most this many lines (added + deleted)")
    window: Literal["quarter", "month", "week", "year"] = Field(
        "quarter", description="the time window an environment profile serves (SWE-Next: a repo-quarter)")
    specs: Path | None = FileInput(None, description="YAML of per-repo install commands, test_cmd, network (and "
                                   "per-window overrides under versions, e.g. \"2025Q1\"); none: no install, "
                                   "pytest from the repo root")
    runs: int = Field(2, ge=1, le=10, description="executions of each side; a test whose status differs between "
                      "them is flaky and its candidate rejected")
    test_scope: Literal["all", "changed"] = Field(
        "all", description="test files run on both sides: all (every test file at the candidate commit, so a "
        "regression anywhere shows) or changed (the candidate's own, SWE-bench's convention; faster)")
    timeout: float = Field(600.0, gt=0, description="seconds for one test run; past it the candidate is rejected "
                           "with reason timeout")
    workers: int = Field(2, ge=1, le=1024, description="candidates executing at once (Ray tasks in flight)")
    ray: str | None = Field(None, description="a Ray cluster to run on (host:port or auto); none: a private local "
                            "one (ray.init)")
    base_image: str = Field(DEFAULT_BASE_IMAGE, description="the image profiles are built on")
    sandbox_limits: SandboxLimits = Field(default_factory=SandboxLimits, description="limits of the execution "
                                          "sandboxes (cpus, memory_mb, pids, disk_mb, timeout_s, network_allow)")
    llm: OpenAIArgs | None = Field(None, description="the OpenAI-compatible endpoint that writes problem "
                                   "statements (model, base_url, api_key, ...); none: the commit message, flagged")
    llm_attempts: int = Field(3, ge=1, description="replies asked for before the commit message stands in")
    statement_prompt: Path | None = FileInput(None, description="template with {repo} {message} {patch} "
                                              "{test_patch} {failing_tests}; none: "
                                              "mining/prompts/problem_statement.md")
    concurrency: int = Field(4, ge=1, le=256, description="LLM requests in flight")

    @field_validator("since", "until")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        if value is not None and not DATE.match(str(value)):
            raise ValueError(f"expected a date YYYY-MM-DD, not {value!r}")
        return None if value is None else str(value)

    @field_validator("repo")
    @classmethod
    def _repos(cls, value: list[str]) -> list[str]:
        for repo in value:
            if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
                raise ValueError(f"expected owner/name, not {repo!r}")
        return value


# --- what to mine -------------------------------------------------------------------------------------------------

def mirrors_in(folder: Path) -> list[str]:
    """owner/name of every mirror in `folder`: owner__name folders, .git repos and .bundle files."""
    if not folder.is_dir():
        raise BadInput("not a folder", file=str(folder), key="repos")
    found = set()
    for entry in folder.iterdir():
        stem = entry.name.removesuffix(".bundle").removesuffix(".git")
        if "__" in stem and (entry.is_dir() or entry.name.endswith(".bundle")):
            found.add(stem.replace("__", "/", 1))
    return sorted(found)


def repo_specs(config: TasksMineConfig, repos: list[str]) -> dict[str, RepoSpec]:
    """Every mined repo's spec; BadInput naming the file, line and key of a malformed entry, or the file and the
    repo missing from it."""
    from swepost.config import load_yaml
    from swepost.rewards.grading import pytest_command

    if config.specs is None:
        return {repo: RepoSpec() for repo in repos}
    specs = load_specs(config.specs)
    _, lines = load_yaml(config.specs)
    for repo, spec in specs.items():
        for where, layer in [((repo,), spec)] + [((repo, "versions", v), s) for v, s in spec.versions.items()]:
            if layer.test_cmd is not None:
                try:
                    pytest_command(Task(instance_id=repo, problem_statement="", env=TaskEnv(test_cmd=layer.test_cmd)))
                except BadInput as e:
                    raise BadInput(e.detail, file=str(config.specs), line=lines.get((*where, "test_cmd")),
                                   key=".".join((*where, "test_cmd"))) from None
    missing = [r for r in repos if r not in specs]
    if missing:
        raise BadInput(f"no entry for {', '.join(missing)} (every mined repo needs one: {{install: [...]}}, "
                       "or {} for none)", file=str(config.specs), key=missing[0])
    return {repo: specs[repo] for repo in repos}


def resolved_env(spec: RepoSpec, repo: str, window: str) -> TaskEnv:
    """The install commands, test command and network of a repo in a window (`versions` keyed by window)."""
    task = apply_specs(Task(instance_id=repo, problem_statement="", repo=repo, version=window), {repo: spec})
    return task.env


def work_key(config: TasksMineConfig, repos: list[str], specs: dict[str, RepoSpec]) -> str:
    """The work folder's name: what the executions depend on (not the LLM, the output name, the parallelism)."""
    body = config.model_dump(mode="json", exclude=set(config.NOT_IN_KEY) | {
        "repos", "name", "llm", "llm_attempts", "statement_prompt", "concurrency", "specs"})
    body.update(repos=repos, specs={r: s.model_dump(mode="json") for r, s in specs.items()}, stage="tasks-mine")
    return hashlib.sha256(canonical_json(body)).hexdigest()[:20]


class WorkLog:
    """Append-only, fsynced records of finished work (profiles, executions, statements); a line torn by a kill
    is dropped with everything after it."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / LOG_FILE
        self.lock = threading.Lock()
        self.records: list[dict] = []
        if self.path.exists():
            good = 0
            with open(self.path, "rb") as f:
                for line in f:
                    try:
                        self.records.append(json.loads(line))
                    except ValueError:
                        break
                    good += len(line)
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def add(self, record: dict) -> None:
        with self.lock:
            with open(self.path, "ab") as f:
                f.write(json.dumps(record).encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            self.records.append(record)

    def latest(self, event: str) -> dict[str, dict]:
        return {r["id"]: r for r in self.records if r.get("event") == event}


# --- the stage ------------------------------------------------------------------------------------------------------

def run_mine(config: TasksMineConfig, store: ArtifactStore, progress: bool | None = None) -> Artifact:
    """`progress`: a live bar on stderr (default: when stderr is a terminal)."""
    import sys

    from swepost.mining.history import Mirror, history, scan, window_anchor

    repos = config.repo or mirrors_in(Path(config.repos))
    if not repos:
        raise BadInput("no owner__name mirrors in this folder", file=str(config.repos), key="repos")
    specs = repo_specs(config, repos)
    work = WorkLog(store.root / "work" / f"tasks-mine-{work_key(config, repos, specs)}")
    candidates, skipped, anchors, commits_seen = [], [], {}, {}
    for repo in repos:
        mirror = Mirror(config.repos, repo)
        try:
            found, passed = scan(mirror, window=config.window, since=config.since, until=config.until,
                                 max_files=config.max_files, max_lines=config.max_lines, ref=config.ref)
            mainline, everything = history(mirror, config.ref, first_parent=True), history(mirror, config.ref)
        finally:
            mirror.close()
        commits_seen[repo] = len(found) + len(passed)
        candidates += found
        skipped += passed
        for c in found:
            anchors[(repo, c.window)] = window_anchor(mainline, everything, c.window, config.window)
    over = candidates[config.max_candidates:] if config.max_candidates else []
    candidates = candidates[:config.max_candidates] if config.max_candidates else candidates
    skipped += [{"repo": c.repo, "commit": c.commit, "window": c.window, "reason": "over_max_candidates",
                 "subject": c.message.splitlines()[0] if c.message else ""} for c in over]

    done = work.latest("executed")
    pending = [c for c in candidates if c.id not in done]
    show = sys.stderr.isatty() if progress is None else progress
    if pending:
        _execute(config, pending, anchors, specs, work, len(candidates), len(candidates) - len(pending), show)
    done = work.latest("executed")
    results = [done[c.id] for c in candidates]
    statements = _statements(config, candidates, results, work)
    art = _write(config, store, candidates, results, skipped, statements, work, commits_seen,
                 resumed=len(candidates) - len(pending))
    return art


def _execute(config: TasksMineConfig, pending: list, anchors: dict, specs: dict[str, RepoSpec], work: WorkLog,
             total: int, completed: int, show: bool) -> None:
    """Every pending candidate executed once on Ray, at most `workers` at a time; each result logged as it comes."""
    from swepost.mining.execute import build_profile, execute_candidate

    ray, owned = _ray_session(config)
    try:
        build = ray.remote(num_cpus=1, max_retries=0)(build_profile)
        run = ray.remote(num_cpus=1, max_retries=0)(execute_candidate)
        profiles: dict[tuple[str, str], Any] = {}
        for c in pending:  # every profile is asked for up front; Ray builds them as CPUs free up
            key = (c.repo, c.window)
            if key not in profiles:
                env = resolved_env(specs[c.repo], c.repo, c.window)
                profiles[key] = build.remote(str(config.repos), c.repo, c.window, anchors[key], env.install,
                                             config.base_image)
        logged_profiles: set = set()
        in_flight: dict[Any, Any] = {}
        queue = list(pending)
        kept = sum(1 for r in work.latest("executed").values() if r.get("verdict") == "kept")
        rejected = completed - kept
        with StageBar("tasks-mine", total, completed=completed, info=f"kept {kept} · rejected {rejected}",
                      show=show) as bar:
            while queue or in_flight:
                while queue and len(in_flight) < config.workers:
                    c = queue.pop(0)
                    env = resolved_env(specs[c.repo], c.repo, c.window)
                    settings = {"repos": str(config.repos), "runs": config.runs, "timeout": config.timeout,
                                "test_scope": config.test_scope,
                                "test_cmd": env.test_cmd, "network": env.network,
                                "limits": config.sandbox_limits.model_dump(exclude_none=True)}
                    in_flight[run.remote(c.to_dict(), profiles[(c.repo, c.window)], settings)] = c
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                c = in_flight.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayError as e:  # a bug or a dead worker: recorded, and mining goes on
                    result = {"id": c.id, "repo": c.repo, "commit": c.commit, "window": c.window,
                              "verdict": "rejected", "reason": "worker_error", "detail": str(e)[-2000:],
                              "before": [], "after": [], "fail_to_pass": [], "pass_to_pass": []}
                key = (c.repo, c.window)
                if key not in logged_profiles:
                    logged_profiles.add(key)
                    work.add({"event": "profile", "id": f"{c.repo}:{c.window}", **_profile(ray, profiles[key])})
                work.add({"event": "executed", **result})
                kept += result["verdict"] == "kept"
                rejected += result["verdict"] != "kept"
                bar.advance(f"kept {kept} · rejected {rejected} · {c.id}: {result['reason'] or 'kept'}")
    finally:
        if owned:
            ray.shutdown()


def _profile(ray, ref) -> dict:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        return {"error": str(e)[-2000:]}


def _ray_session(config: TasksMineConfig):
    """(ray, whether this call started it): a private local cluster by default, `config.ray` when given."""
    try:
        import ray
    except ImportError:
        raise BadInput("mining runs on Ray, an optional extra: pip install 'swepost[ray]'", key="ray") from None
    if ray.is_initialized():  # this process is already a Ray driver (a notebook, a test): share it
        return ray, False
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False, "logging_level": logging.WARNING}
    if config.ray in (None, "local"):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs.update(address="local", num_cpus=config.workers, include_dashboard=False)
    else:
        kwargs["address"] = config.ray
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise WorkFailed(f"no Ray cluster found at {config.ray}: {e}; start one with `ray start --head`") from None
    except (ValueError, RuntimeError) as e:
        raise BadInput(f"Ray cannot connect to {config.ray!r}: {e}", key="ray") from None
    return ray, True


# --- problem statements ---------------------------------------------------------------------------------------------

def _statements(config: TasksMineConfig, candidates: list, results: list[dict], work: WorkLog) -> dict[str, dict]:
    """id -> {text, source, ...} for every kept candidate; written ones are reused from the work log."""
    from concurrent.futures import ThreadPoolExecutor

    from swepost.mining.statements import DEFAULT_PROMPT, REMINDER, from_commit_message

    source = f"llm:{config.llm.model}" if config.llm else "commit_message"
    have = {k: v for k, v in work.latest("statement").items() if v.get("source") == source}
    kept = [(c, r) for c, r in zip(candidates, results, strict=True) if r["verdict"] == "kept"]
    todo = [(c, r) for c, r in kept if c.id not in have]
    if config.llm is None:
        for c, _ in todo:
            work.add({"event": "statement", "id": c.id, "source": source, "text": from_commit_message(c.to_dict())})
    elif todo:
        from swepost.stages.synth_qa import ChatLLM

        template = Path(config.statement_prompt or DEFAULT_PROMPT).read_text()
        llm = ChatLLM(config.llm, config.llm_attempts, REMINDER)
        try:
            with ThreadPoolExecutor(min(config.concurrency, len(todo)), thread_name_prefix="tasks-mine") as pool:
                for record in pool.map(lambda cr: _llm_statement(llm, template, source, *cr), todo):
                    work.add(record)
        finally:
            llm.close()
    return {k: v for k, v in work.latest("statement").items() if v.get("source") == source}


def _llm_statement(llm, template: str, source: str, cand, result: dict) -> dict:
    from swepost.mining.statements import Leaky, from_commit_message, write_statement
    from swepost.stages.synth_qa import LlmFailed, Unreadable

    def ask(prompt: str, parse):
        def checked(text: str):
            try:
                return parse(text)
            except Leaky as e:  # synth-qa's ChatLLM asks again, with the reminder, on Unreadable
                raise Unreadable(str(e)) from None

        return llm.ask(prompt, checked)

    try:
        text = write_statement(ask, template, cand.to_dict(), result["fail_to_pass"])
        return {"event": "statement", "id": cand.id, "source": source, "text": text}
    except LlmFailed as e:
        return {"event": "statement", "id": cand.id, "source": source, "fallback": "commit_message",
                "llm_error": str(e)[:1000], "text": from_commit_message(cand.to_dict())}


# --- the artifact ---------------------------------------------------------------------------------------------------

def instance_id(repo: str, commit: str) -> str:
    return f"{repo.replace('/', '__')}-{commit[:12]}"


def to_task(config: TasksMineConfig, cand, result: dict, statement: dict, spec: RepoSpec) -> Task:
    env = resolved_env(spec, cand.repo, cand.window)
    by_llm = statement["source"].startswith("llm:") and not statement.get("fallback")
    mining = {"commit": cand.commit, "parent": cand.parent, "window": cand.window, "merge": cand.merge,
              "commit_message": cand.message, "files": cand.files, "profile_image": result.get("profile"),
              "problem_statement_source": "llm" if by_llm else "commit_message",
              "llm": statement["source"].removeprefix("llm:") if by_llm else None,
              "llm_error": statement.get("llm_error"), "runs": config.runs,
              "before": result["before"], "after": result["after"]}
    return Task(instance_id=instance_id(cand.repo, cand.commit), repo=cand.repo, base_commit=cand.parent,
                problem_statement=statement["text"], patch=cand.patch, test_patch=cand.test_patch,
                version=cand.window, created_at=cand.date, env=env,
                verify=TaskVerify(fail_to_pass=result["fail_to_pass"], pass_to_pass=result["pass_to_pass"]),
                metadata={"mining": mining})


def build_report(candidates: list, results: list[dict], skipped: list[dict], profiles: dict[str, dict],
                 commits_seen: dict[str, int]) -> dict:
    """candidates -> executed -> kept, rejections and skips by reason, per repo and per window, profile reuse."""
    def counts(rows, key="reason"):
        return dict(Counter(r[key] for r in rows).most_common())

    rejected = [r for r in results if r["verdict"] != "kept"]
    used = {f"{r['repo']}:{r['window']}" for r in results if r.get("profile")}
    built = sum(1 for k in used if profiles.get(k, {}).get("built"))
    report: dict[str, Any] = {
        "commits": sum(commits_seen.values()), "candidates": len(candidates), "executed": len(results),
        "kept": len(results) - len(rejected), "skipped": counts(skipped), "rejected": counts(rejected),
        "profiles": {"used": len(used), "built": built, "cached": len(used) - built,
                     "failed": sum(1 for r in results if r["reason"] == "environment_failed"),
                     # SWE-Next's figure: candidates per environment (profile) they share
                     "reuse_ratio": round(sum(1 for r in results if r.get("profile")) / len(used), 3) if used else 0.0,
                     "build_seconds": round(sum(profiles.get(k, {}).get("seconds", 0) for k in used), 1)},
        "per_repo": {}, "per_window": {}, "verdicts": []}
    for repo, n in commits_seen.items():
        mine = [r for r in results if r["repo"] == repo]
        report["per_repo"][repo] = {"commits": n, "candidates": len(mine), "executed": len(mine),
                                    "kept": sum(r["verdict"] == "kept" for r in mine),
                                    "skipped": counts([s for s in skipped if s["repo"] == repo]),
                                    "rejected": counts([r for r in mine if r["verdict"] != "kept"])}
    for r in results:
        win = report["per_window"].setdefault(f"{r['repo']}:{r['window']}", {
            "candidates": 0, "kept": 0, "rejected": {}, "profile": r.get("profile"),
            "built": profiles.get(f"{r['repo']}:{r['window']}", {}).get("built")})
        win["candidates"] += 1
        win["kept"] += r["verdict"] == "kept"
        if r["verdict"] != "kept":
            win["rejected"][r["reason"]] = win["rejected"].get(r["reason"], 0) + 1
    for s in skipped:
        report["verdicts"].append({"repo": s["repo"], "commit": s["commit"], "window": s["window"],
                                   "verdict": "skipped", "reason": s["reason"], "subject": s.get("subject", "")})
    for c, r in zip(candidates, results, strict=True):
        report["verdicts"].append({"repo": c.repo, "commit": c.commit, "window": c.window, "verdict": r["verdict"],
                                   "reason": r["reason"], "detail": r.get("detail", ""),
                                   "subject": c.message.splitlines()[0] if c.message else "",
                                   "fail_to_pass": r["fail_to_pass"], "seconds": r.get("seconds")})
    return report


def _write(config: TasksMineConfig, store: ArtifactStore, candidates: list, results: list[dict],
           skipped: list[dict], statements: dict[str, dict], work: WorkLog, commits_seen: dict[str, int],
           resumed: int) -> Artifact:
    specs = repo_specs(config, sorted({c.repo for c in candidates}))
    profiles = {r["id"]: r for r in work.records if r.get("event") == "profile"}
    report = build_report(candidates, results, skipped, profiles, commits_seen)
    report["resumed"] = resumed  # executed by an earlier, interrupted run of the same command: not run again
    report["statements"] = dict(Counter(
        "commit_message" if s.get("fallback") or s["source"] == "commit_message" else "llm"
        for s in statements.values()))
    tasks = [to_task(config, c, r, statements[c.id], specs[c.repo])
             for c, r in zip(candidates, results, strict=True) if r["verdict"] == "kept"]
    data = config.model_dump(mode="json")
    producer = producer_record("tasks-mine", data, work_log=str(work.path))
    with store.write(config.name, "tasks", producer=producer) as w:
        with open(w.path / TASKS_FILE, "w") as f:
            for task in tasks:
                f.write(json.dumps(task.model_dump(mode="json"), ensure_ascii=False) + "\n")
        (w.path / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        w.stats.update({"tasks": len(tasks), "commits": report["commits"], "candidates": report["candidates"],
                        "executed": report["executed"], "kept": report["kept"],
                        "reuse_ratio": report["profiles"]["reuse_ratio"]})
    return w.artifact


def summary_lines(report: dict) -> list[str]:
    """What a user reads after a run: the funnel, the reasons, the profiles."""
    p = report["profiles"]
    lines = [f"commits {report['commits']} -> candidates {report['candidates']} -> executed {report['executed']} "
             f"-> kept {report['kept']}",
             f"profiles: {p['used']} used ({p['built']} built, {p['cached']} cached, {p['failed']} candidates "
             f"without one), {p['reuse_ratio']:g} candidates per profile"]
    if report["skipped"]:
        lines.append("skipped: " + ", ".join(f"{k} {v}" for k, v in report["skipped"].items()))
    if report["rejected"]:
        lines.append("rejected: " + ", ".join(f"{k} {v}" for k, v in report["rejected"].items()))
    for repo, r in report["per_repo"].items():
        lines.append(f"  {repo}: {r['commits']} commits, {r['candidates']} candidates, {r['kept']} kept")
    return lines
