"""Stage `collect`: run a policy on every task x sample, N episodes at once, each graded; crash-safe.

Finished episodes are appended (and fsynced) to a work file under $SWEPOST_HOME/work/ keyed by the
resolved config, and each running episode's partial trajectory is saved after every step. Run the same
command again after a crash or a kill -9 and only the missing episodes run: every task x sample ends up in
the artifact exactly once. Episodes that failed for infrastructure reasons (policy_error, sandbox_error) are
run again by that re-run; wrong answers are not. A task that failed so in `quarantine_after` runs is quarantined:
not run again, and listed in the artifact's quarantined.jsonl. When most episodes of a run have no verdict
(infrastructure failures or UNGRADED; quarantined tasks apart), the stage fails (exit 1) with the causes counted
and writes no artifact, so a dead model server is never stored as a score. The `eval` stage runs the same engine.

Public: the stage (`CollectConfig`, `EpisodeLimits`, `run_collect`, run through the registry by other stages),
the engine `eval` shares (`run_episodes`, `check_verdicts`, `episode_stats`, `input_parents`, `publish_quarantine`,
`write_trajectories`) and the artifact's file names. The rest is this stage's own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from swepost.agent import EnvironmentFields
from swepost.artifacts import Artifact, ArtifactStore, canonical_json, producer_record, without_secrets
from swepost.config import ArtifactInput, StageConfig
from swepost.errors import BadInput, WorkFailed
from swepost.policies.args import check_policy_args
from swepost.progress import StageBar
from swepost.records import ExitStatus, SandboxLimits, Task, Trajectory
from swepost.rewards.filters import failure_cause, is_infra_failure, is_ungraded
from swepost.sandbox.task_sandbox import sandbox_kwargs
from swepost.stages.tasks import load_tasks

TRAJECTORIES_FILE = "trajectories.jsonl"
QUARANTINE_FILE = "quarantined.jsonl"


class EpisodeLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(30, ge=1)
    max_context_tokens: int = Field(32768, ge=256)
    max_seconds: float = Field(1800.0, gt=0)
    max_consecutive_errors: int = Field(5, ge=1)
    tool_timeout: float = Field(120.0, gt=0, description="seconds for one bash command")


class CollectConfig(StageConfig, EnvironmentFields):
    NOT_IN_KEY = frozenset({"concurrency"})  # -j changes the speed, not the episodes: resume under another -j

    tasks: str = ArtifactInput(description="the tasks artifact to run on")
    name: str = Field("trajectories", description="output artifact name")
    policy: str = Field("oracle", description="openai | hf | scripted | oracle | module:Class")
    policy_args: dict[str, Any] = Field(default_factory=dict, description="the policy's keyword arguments "
                                        "(model, base_url, temperature, max_turn_tokens, max_model_len, path, "
                                        "...)")
    samples: int = Field(1, ge=1, le=1024, description="episodes per task")
    concurrency: int = Field(4, ge=1, le=512, description="episodes (sandboxes) at once")
    limit: int | None = Field(None, ge=1, description="only the first N tasks")
    grade: bool = Field(True, description="grade every episode's final diff in a fresh sandbox")
    seed: int = 0
    limits: EpisodeLimits = Field(default_factory=EpisodeLimits)
    sandbox_limits: SandboxLimits = Field(default_factory=SandboxLimits, description="sandbox limits over every "
                                          "task's own (cpus, memory_mb, pids, disk_mb, timeout_s, network_allow)")
    max_infra_failure_rate: float = Field(0.5, ge=0, le=1, description="the largest fraction of episodes that may "
                                          "end without a verdict (policy_error, sandbox_error, UNGRADED); above "
                                          "it the stage exits 1 and writes no artifact")
    quarantine_after: int = Field(3, ge=0, description="runs (of the same command, resumed) in which a task's "
                                  "episodes failed for infrastructure reasons before it is quarantined: not run "
                                  "again, listed in quarantined.jsonl, left out of max_infra_failure_rate; 0: never")

    @field_validator("policy_args")
    @classmethod
    def _typed_policy_args(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """A built-in policy's arguments are checked as the config is read (`recipes validate`, --print-config),
        naming the file and line; a plugged-in one's where it is built. A missing `model` is asked for when the
        policy is built (so --print-config works before it is given)."""
        return check_policy_args(info.data.get("policy"), value, later=("model",))


def work_key(config: CollectConfig, tasks_id: str, stage: str) -> str:
    """The work folder's name: what the episodes depend on. A new api_key resumes the same episodes."""
    body = config.model_dump(mode="json", exclude=set(config.NOT_IN_KEY) | {"repos", "name", "max_infra_failure_rate",
                                                                             "quarantine_after"})
    body = without_secrets(body)
    body.update(tasks=tasks_id, stage=stage)
    return hashlib.sha256(canonical_json(body)).hexdigest()[:20]


class EpisodeLog:
    """The append-only record of finished episodes, plus partial trajectories of running ones."""

    def __init__(self, folder: Path):
        self.folder = folder
        (folder / "partial").mkdir(parents=True, exist_ok=True)
        self.path = folder / "episodes.jsonl"
        self.lock = threading.Lock()
        self.done: dict[str, Trajectory] = {}
        if self.path.exists():
            good = 0
            with open(self.path, "rb") as f:
                for line in f:
                    try:
                        traj = Trajectory.model_validate_json(line)
                    except ValueError:
                        break  # a line torn by a kill: drop it and everything after
                    old = self.done.get(traj.episode_id)
                    if old is None or is_infra_failure(old):  # a re-run's record replaces an infra failure
                        self.done[traj.episode_id] = traj
                    good += len(line)
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def save_partial(self, traj: Trajectory) -> None:
        path = self.folder / "partial" / f"{_safe(traj.episode_id)}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(traj.model_dump_json())
        os.replace(tmp, path)

    def finish(self, traj: Trajectory) -> None:
        with self.lock:
            old = self.done.get(traj.episode_id)
            if old is not None and not is_infra_failure(old):
                return
            with open(self.path, "ab") as f:
                f.write(traj.model_dump_json().encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            self.done[traj.episode_id] = traj
        (self.folder / "partial" / f"{_safe(traj.episode_id)}.json").unlink(missing_ok=True)


class FailureLog:
    """Which tasks failed for infrastructure reasons in which runs of one work folder: what quarantine counts.
    Append-only and fsynced like the episode log, so a kill -9 loses at most the line being written.

    A task's count is the number of runs in which any of its episodes ended with no verdict (policy_error,
    sandbox_error, UNGRADED); wrong answers and the model's own endings never count. A policy_error counts only in
    a run where the server answered some request (this episode's earlier turns too): a server that is down, hung
    or answering HTML for a whole run blames no task. Nothing is quarantined while no episode of the work folder
    has a verdict: then the setup is broken, not the tasks.
    """

    def __init__(self, folder: Path):
        self.path = folder / "failures.jsonl"
        self.run = uuid.uuid4().hex[:12]
        self.lock = threading.Lock()
        self.answered = False  # has the policy answered any request in this run (recorded once)?
        self.lines: list[dict[str, Any]] = []
        if self.path.exists():
            for line in self.path.read_bytes().splitlines():
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    pass  # a line torn by a kill

    def record(self, traj: Trajectory) -> None:
        new = []
        with self.lock:
            if traj.turns and not self.answered:
                self.answered = True
                new.append({"run": self.run, "answered": True})
            if is_ungraded(traj):
                new.append({"run": self.run, "instance_id": traj.instance_id, "episode_id": traj.episode_id,
                            "exit_status": traj.exit_status, "cause": " ".join(failure_cause(traj).split())[:500]})
            if not new:
                return
            with open(self.path, "ab") as f:
                f.write(b"".join(json.dumps(x).encode() + b"\n" for x in new))
                f.flush()
                os.fsync(f.fileno())
            self.lines += new

    def quarantined(self, after: int, any_verdict: bool) -> dict[str, dict[str, Any]]:
        """instance_id -> {instance_id, failures (runs), last_cause, runs} for every task at or past `after`."""
        if after <= 0 or not any_verdict:
            return {}
        answered = {x["run"] for x in self.lines if x.get("answered")}
        runs: dict[str, list[str]] = {}
        last: dict[str, str] = {}
        for x in self.lines:
            task = x.get("instance_id")
            if not task or (x.get("exit_status") == ExitStatus.POLICY_ERROR and x["run"] not in answered):
                continue
            if x["run"] not in runs.setdefault(task, []):
                runs[task].append(x["run"])
            last[task] = x.get("cause") or ""
        return {task: {"instance_id": task, "failures": len(r), "last_cause": last[task]}
                for task, r in runs.items() if len(r) >= after}


def publish_quarantine(work: Path, folder: Path) -> int:
    """Copy the work folder's quarantine list into an artifact being written; the number of tasks in it."""
    source = work / QUARANTINE_FILE
    if not source.exists():
        return 0
    shutil.copyfile(source, folder / QUARANTINE_FILE)
    return sum(1 for line in source.read_text().splitlines() if line.strip())


def _safe(episode_id: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in episode_id)


def run_episodes(config: CollectConfig, store: ArtifactStore, stage: str) -> tuple[Artifact, list[Task],
                                                                                   list[Trajectory], Path]:
    """The shared engine of collect and eval: every task x sample once, resumable. Returns the trajectories
    in task order, and the work folder (removed by the caller once its artifact is written)."""
    from swepost.agent import AgentLimits, run_episode
    from swepost.policies.args import validate_policy_args
    from swepost.registry import POLICIES, load_component

    source = store.resolve(config.tasks)
    tasks = load_tasks(source)[: config.limit]
    if config.index is not None:  # by id in the work key: a rebuilt index under the same name is new work
        config = config.model_copy(update={"index": index_artifact(config.index, store).id})
    policy_cls = load_component(config.policy, POLICIES, "policy")
    policy_args = validate_policy_args(policy_cls, config.policy_args)  # exit 2 naming the key, before any episode
    make_env = stage_environment(config, tasks, store)
    log = EpisodeLog(store.root / "work" / f"{stage}-{work_key(config, source.id, stage)}")
    failures = FailureLog(log.folder)
    wanted = [(task, s) for task in tasks for s in range(config.samples)]
    # an episode the server or the sandbox failed is run again; a finished one (right or wrong) is kept; a
    # quarantined task is not run again
    kept = {k: t for k, t in log.done.items() if not is_infra_failure(t)}
    quarantine = failures.quarantined(config.quarantine_after, _any_verdict(log.done))
    pending = [(task, s) for task, s in wanted
               if f"{task.instance_id}#{s}" not in kept and task.instance_id not in quarantine]
    limits = AgentLimits(max_turns=config.limits.max_turns, max_context_tokens=config.limits.max_context_tokens,
                         max_seconds=config.limits.max_seconds,
                         max_consecutive_errors=config.limits.max_consecutive_errors)
    local = threading.local()  # one policy per worker: policies keep per-episode state

    def episode(task: Task, sample: int) -> Trajectory:
        if not hasattr(local, "policy"):
            try:
                local.policy = policy_cls(**policy_args)
            except (TypeError, ValueError) as e:  # an argument the policy does not take, or a bad value
                raise BadInput(f"policy {config.policy!r}: {e}", key="policy_args") from None
        env = make_env()
        traj = run_episode(local.policy, env, task, sample=sample, limits=limits, grade=config.grade,
                           on_step=log.save_partial)
        log.finish(traj)
        failures.record(traj)
        return traj

    with _Progress(stage, len(kept) + len(pending), list(kept.values())) as progress:
        with ThreadPoolExecutor(config.concurrency) as pool:
            futures = [pool.submit(episode, task, s) for task, s in pending]
            try:
                for future in as_completed(futures):
                    progress.update(future.result())
            except BaseException:
                for f in futures:  # stop at the first failure; what finished is already on disk
                    f.cancel()
                raise
    order = {f"{t.instance_id}#{s}": i for i, (t, s) in enumerate(wanted)}
    trajectories = sorted((log.done[k] for k in order if k in log.done), key=lambda t: order[t.episode_id])
    wanted_ids = {task.instance_id for task in tasks}
    quarantine = {k: v for k, v in failures.quarantined(config.quarantine_after, _any_verdict(log.done)).items()
                  if k in wanted_ids}
    _write_quarantine(log.folder, quarantine, config.quarantine_after)
    # quarantined tasks are reported apart: the check asks whether the run itself (server, sandboxes) worked on
    # the tasks it still runs, so a few broken tasks cannot block every re-run, nor hide a dead server
    check_verdicts(stage, [t for t in trajectories if t.instance_id not in quarantine],
                   config.max_infra_failure_rate, log.folder, quarantined=len(quarantine))
    return source, tasks, trajectories, log.folder


def stage_environment(config: CollectConfig, tasks: list[Task], store: ArtifactStore):
    """`make_env()` for this stage's episodes: the named environment or the tasks' kind's own, with the stage's
    sandbox settings, judge (cached under the store's cache/judge), index (its artifact's folder), env_url (a remote
    environment's server) and environment_args."""
    from swepost.agent import environment_factory, pick_environment, remote_settings

    name = pick_environment(config.environment, [t.kind for t in tasks])
    settings = {"repos": config.repos, "backend": config.backend, "tool_timeout": config.limits.tool_timeout,
                "grade": config.grade, **sandbox_kwargs(config.sandbox_limits),
                **remote_settings(name, config.env_url, config.environment_args)}
    if config.index is not None:
        settings["index"] = str(index_artifact(config.index, store).path)
    return environment_factory(name, settings=settings, args=config.environment_args, judge=config.judge,
                               judge_cache=store.root / "cache" / "judge")


def index_artifact(ref: str, store: ArtifactStore) -> Artifact:
    """The index artifact `ref` names; BadInput naming `index` when it is another kind."""
    art = store.resolve(ref)
    if art.kind != "index":
        raise BadInput(f"artifact {art.id} is a {art.kind!r} artifact, not an index (swepost corpus index)",
                       key="index")
    return art


def _any_verdict(done: dict[str, Trajectory]) -> bool:
    return any(not is_ungraded(t) for t in done.values())


def _write_quarantine(work: Path, quarantine: dict[str, dict[str, Any]], after: int) -> None:
    """The list in the work folder (published with the artifact), and on the terminal."""
    path = work / QUARANTINE_FILE
    if not quarantine:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(q) + "\n" for q in sorted(quarantine.values(),
                                                                key=lambda q: q["instance_id"])))
    os.replace(tmp, path)
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True)
    console.print(f"[yellow]quarantined {len(quarantine)} task(s)[/]: failed for infrastructure reasons in "
                  f"{after} or more runs; not run again (listed in {QUARANTINE_FILE})")
    for q in sorted(quarantine.values(), key=lambda q: q["instance_id"]):
        console.print(f"  {escape(q['instance_id'])}: {q['failures']} runs; last: {escape(q['last_cause'][:300])}",
                      soft_wrap=True)


def check_verdicts(stage: str, trajectories: list[Trajectory], max_rate: float, work: Path,
                   quarantined: int = 0) -> None:
    """WorkFailed, with the causes counted, when more than `max_rate` of the episodes have no verdict: a dead
    model server or a broken sandbox is not a score. The work folder stays, so the same command continues.
    `trajectories` leaves out quarantined tasks; when they were all there was, the stage fails too."""
    if not trajectories and quarantined:
        raise WorkFailed(f"{stage}: every task is quarantined ({quarantined}; see {work / QUARANTINE_FILE}); no "
                         f"artifact written. Fix their cause and raise quarantine_after, or remove {work}.")
    failed = [t for t in trajectories if is_ungraded(t)]
    if not trajectories or len(failed) / len(trajectories) <= max_rate:
        return
    causes = Counter(" ".join(failure_cause(t).split())[:300] for t in failed).most_common(3)
    lines = "\n".join(f"  {n} x {cause}" for cause, n in causes)
    raise WorkFailed(
        f"{stage}: {len(failed)} of {len(trajectories)} episodes failed for infrastructure reasons (more than "
        f"max_infra_failure_rate {max_rate:g}); no artifact written. Most common causes:\n{lines}\n"
        f"Fix the cause and run the same command again: finished episodes are reused from {work}, failed ones "
        f"run again.")


def input_parents(config: CollectConfig, store: ArtifactStore, tasks_id: str) -> list[str]:
    """The tasks, the index searched, and the policy's model when it is a stored checkpoint: lineage reaches
    them all."""
    parents = [tasks_id]
    if config.index is not None:
        parents.append(store.resolve(config.index).id)
    model = config.policy_args.get("model")
    if isinstance(model, str) and model:
        try:
            parents.append(store.resolve(model).id)
        except BadInput:
            pass  # a hub id or a plain folder: recorded in the config, not in the store
    return parents


def episode_stats(trajectories: list[Trajectory]) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for t in trajectories:
        statuses[t.exit_status or "unfinished"] = statuses.get(t.exit_status or "unfinished", 0) + 1
    resolved = sum(1 for t in trajectories if t.resolved == "RESOLVED_FULL")
    # an episode the grader could not judge is no wrong answer: counted apart, out of the rate's denominator
    ungraded = sum(1 for t in trajectories if is_ungraded(t))
    graded = len(trajectories) - ungraded
    return {"episodes": len(trajectories), "resolved": resolved,
            "resolved_rate": round(resolved / graded, 4) if graded else 0.0,
            "ungraded": ungraded, "ungraded_rate": round(ungraded / len(trajectories), 4) if trajectories else 0.0,
            "exit_status": statuses, "tool_errors": sum(t.tool_errors for t in trajectories),
            "mean_turns": round(sum(t.turns for t in trajectories) / max(len(trajectories), 1), 2),
            "tokens": sum(t.prompt_tokens + t.completion_tokens for t in trajectories)}


def write_trajectories(folder: Path, trajectories: list[Trajectory]) -> None:
    with open(folder / TRAJECTORIES_FILE, "w") as f:
        for t in trajectories:
            f.write(t.model_dump_json() + "\n")
    logs = folder / "logs"
    logs.mkdir()
    for t in trajectories:
        (logs / f"{_safe(t.episode_id)}.log").write_text(transcript(t))


def transcript(traj: Trajectory) -> str:
    """A readable per-episode log: every message, the exit status and the grade."""
    lines = [f"# {traj.episode_id}  policy={traj.policy.get('name')}  exit={traj.exit_status}  "
             f"resolved={traj.resolved}  turns={traj.turns}"]
    for m in traj.messages:
        lines.append(f"\n--- {m.get('role')}{' (' + m['name'] + ')' if m.get('name') else ''}")
        if m.get("content"):
            lines.append(str(m["content"]))
        for call in m.get("tool_calls") or []:
            fn = call.get("function", {}) if isinstance(call, dict) else {}
            lines.append(f"[tool call] {fn.get('name')} {str(fn.get('arguments'))[:2000]}")
    if traj.error:
        lines.append(f"\n--- error\n{traj.error}")
    lines.append(f"\n--- final diff\n{traj.final_diff}")
    return "\n".join(lines) + "\n"


def run_collect(config: CollectConfig, store: ArtifactStore) -> Artifact:
    source, _, trajectories, work = run_episodes(config, store, "collect")
    data = config.model_dump(mode="json")
    data["tasks"] = source.id
    producer = producer_record("collect", data, seed=config.seed)
    with store.write(config.name, "trajectories", producer=producer,
                     parents=input_parents(config, store, source.id)) as w:
        write_trajectories(w.path, trajectories)
        w.stats.update(episode_stats(trajectories))
        w.stats["quarantined"] = publish_quarantine(work, w.path)
    shutil.rmtree(work, ignore_errors=True)
    return w.artifact


class _Progress(StageBar):
    """The collect / eval bar: episodes done, resolved so far, ungraded, errors, tokens/s."""

    def __init__(self, stage: str, total: int, done: list[Trajectory]):
        self.started = time.monotonic()
        self.tokens = 0
        self.resolved = sum(1 for t in done if t.resolved == "RESOLVED_FULL")
        self.ungraded = sum(1 for t in done if is_ungraded(t))
        self.errors = sum(1 for t in done if t.exit_status not in (ExitStatus.SUBMITTED, None))
        super().__init__(stage, total, completed=len(done), info=self._info())

    def _info(self) -> str:
        rate = self.tokens / max(time.monotonic() - self.started, 1e-6)
        return f"resolved {self.resolved} · ungraded {self.ungraded} · errors {self.errors} · {rate:.0f} tok/s"

    def update(self, traj: Trajectory) -> None:
        self.tokens += traj.prompt_tokens + traj.completion_tokens
        self.resolved += traj.resolved == "RESOLVED_FULL"
        self.ungraded += is_ungraded(traj)
        self.errors += traj.exit_status != ExitStatus.SUBMITTED
        self.advance(self._info())
