"""Stage `collect`: run a policy on every task x sample, N episodes at once, each graded; crash-safe.

Finished episodes are appended (and fsynced) to a work file under $SWEPOST_HOME/work/ keyed by the
resolved config, and each running episode's partial trajectory is saved after every step. Run the same
command again after a crash or a kill -9 and only the missing episodes run: every task x sample ends up in
the artifact exactly once. Episodes that failed for infrastructure reasons (policy_error, sandbox_error) are
run again by that re-run; wrong answers are not. When most episodes of a run have no verdict (infrastructure
failures or UNGRADED), the stage fails (exit 1) with the causes counted and writes no artifact, so a dead model
server is never stored as a score. The `eval` stage runs the same engine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from swepost.artifacts import Artifact, ArtifactStore, canonical_json, producer_record
from swepost.config import ArtifactInput, PathInput, StageConfig
from swepost.errors import BadInput, WorkFailed
from swepost.records import SandboxLimits, Task, Trajectory
from swepost.rewards.filters import failure_cause, is_infra_failure, is_ungraded
from swepost.stages.tasks import load_tasks

TRAJECTORIES_FILE = "trajectories.jsonl"


class EpisodeLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(30, ge=1)
    max_context_tokens: int = Field(32768, ge=256)
    max_seconds: float = Field(1800.0, gt=0)
    max_consecutive_errors: int = Field(5, ge=1)
    tool_timeout: float = Field(120.0, gt=0, description="seconds for one bash command")


class CollectConfig(StageConfig):
    tasks: str = ArtifactInput(description="the tasks artifact to run on")
    name: str = Field("trajectories", description="output artifact name")
    policy: str = Field("oracle", description="openai | hf | scripted | oracle | module:Class")
    policy_args: dict[str, Any] = Field(default_factory=dict, description="the policy's keyword arguments "
                                        "(model, base_url, temperature, max_turn_tokens, max_model_len, path, "
                                        "...)")
    environment: str = Field("swe", description="swe | module:Class")
    repos: Path | None = PathInput(description="mirror folder of owner__name repos (tasks without an image)")
    backend: str = Field("auto", description="sandbox backend: auto, docker, bwrap, local")
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


def sandbox_kwargs(overrides: SandboxLimits) -> dict:
    """The environment's `limits` argument, given only when the stage sets some (custom environments need not
    take it otherwise)."""
    return {"limits": overrides} if overrides.model_dump(exclude_none=True) else {}


def work_key(config: CollectConfig, tasks_id: str, stage: str) -> str:
    body = config.model_dump(mode="json", exclude={"repos", "name", "max_infra_failure_rate"})
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


def _safe(episode_id: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in episode_id)


def run_episodes(config: CollectConfig, store: ArtifactStore, stage: str) -> tuple[Artifact, list[Task],
                                                                                   list[Trajectory], Path]:
    """The shared engine of collect and eval: every task x sample once, resumable. Returns the trajectories
    in task order, and the work folder (removed by the caller once its artifact is written)."""
    from swepost.agent import AgentLimits, run_episode
    from swepost.registry import ENVIRONMENTS, POLICIES, load_component

    source = store.resolve(config.tasks)
    tasks = load_tasks(source)[: config.limit]
    policy_cls = load_component(config.policy, POLICIES, "policy")
    env_cls = load_component(config.environment, ENVIRONMENTS, "environment")
    log = EpisodeLog(store.root / "work" / f"{stage}-{work_key(config, source.id, stage)}")
    wanted = [(task, s) for task in tasks for s in range(config.samples)]
    # an episode the server or the sandbox failed is run again; a finished one (right or wrong) is kept
    kept = {k: t for k, t in log.done.items() if not is_infra_failure(t)}
    pending = [(task, s) for task, s in wanted if f"{task.instance_id}#{s}" not in kept]
    limits = AgentLimits(max_turns=config.limits.max_turns, max_context_tokens=config.limits.max_context_tokens,
                         max_seconds=config.limits.max_seconds,
                         max_consecutive_errors=config.limits.max_consecutive_errors)
    local = threading.local()  # one policy per worker: policies keep per-episode state

    def episode(task: Task, sample: int) -> Trajectory:
        if not hasattr(local, "policy"):
            try:
                local.policy = policy_cls(**config.policy_args)
            except (TypeError, ValueError) as e:  # an argument the policy does not take, or a bad value
                raise BadInput(f"policy {config.policy!r}: {e}", key="policy_args") from None
        env = env_cls(repos=config.repos, backend=config.backend, tool_timeout=config.limits.tool_timeout,
                      grade=config.grade, **sandbox_kwargs(config.sandbox_limits))
        traj = run_episode(local.policy, env, task, sample=sample, limits=limits, grade=config.grade,
                           on_step=log.save_partial)
        log.finish(traj)
        return traj

    with _Progress(stage, len(wanted), list(kept.values())) as progress:
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
    check_verdicts(stage, trajectories, config.max_infra_failure_rate, log.folder)
    return source, tasks, trajectories, log.folder


def check_verdicts(stage: str, trajectories: list[Trajectory], max_rate: float, work: Path) -> None:
    """WorkFailed, with the causes counted, when more than `max_rate` of the episodes have no verdict: a dead
    model server or a broken sandbox is not a score. The work folder stays, so the same command continues."""
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
    """The tasks, and the policy's model when it is a stored checkpoint: lineage reaches both."""
    parents = [tasks_id]
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
    shutil.rmtree(work, ignore_errors=True)
    return w.artifact


class _Progress:
    """A live bar on stderr: episodes done, resolved so far, tokens/s, errors."""

    def __init__(self, stage: str, total: int, done: list[Trajectory]):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.started = time.monotonic()
        self.tokens = 0
        self.bar = Progress(TextColumn(f"[bold]{stage}[/]"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=False,
                            console=Console(stderr=True))  # stdout stays clean for --json
        self.resolved = sum(1 for t in done if t.resolved == "RESOLVED_FULL")
        self.ungraded = sum(1 for t in done if is_ungraded(t))
        self.errors = sum(1 for t in done if t.exit_status not in ("submitted", None))
        self.task = self.bar.add_task(stage, total=total, completed=len(done), info=self._info())

    def _info(self) -> str:
        rate = self.tokens / max(time.monotonic() - self.started, 1e-6)
        return f"resolved {self.resolved} · ungraded {self.ungraded} · errors {self.errors} · {rate:.0f} tok/s"

    def update(self, traj: Trajectory) -> None:
        self.tokens += traj.prompt_tokens + traj.completion_tokens
        self.resolved += traj.resolved == "RESOLVED_FULL"
        self.ungraded += is_ungraded(traj)
        self.errors += traj.exit_status != "submitted"
        self.bar.update(self.task, advance=1, info=self._info())

    def __enter__(self) -> _Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.bar.stop()
        return False
