"""A fresh sandbox holding a task's repo at its base commit: from the task's image, or from a mirror."""

from __future__ import annotations

import functools
import io
import shlex
import shutil
import tarfile
import tempfile
from dataclasses import fields
from pathlib import Path

from swepost.config import validate
from swepost.errors import BadInput, WorkFailed
from swepost.records import SandboxLimits, Task
from swepost.sandbox import open_sandbox, pick_backend
from swepost.sandbox.base import CHECKOUT_PREFIX, Limits, Sandbox, owner, remove_orphan_dirs
from swepost.sandbox.repos import checkout, mirror_path


def gc_checkouts(everything: bool = False) -> list[str]:
    return remove_orphan_dirs(CHECKOUT_PREFIX, everything)


@functools.lru_cache(maxsize=16)
def _checkout_tar_cached(mirror: str, repo: str, base_commit: str, instance_id: str) -> bytes:
    task = Task(instance_id=instance_id, problem_statement="", repo=repo, base_commit=base_commit)
    with tempfile.TemporaryDirectory(prefix=f"{CHECKOUT_PREFIX}{owner()}-") as tmp:
        checkout(task, Path(mirror).parent, Path(tmp) / "repo")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(Path(tmp) / "repo", arcname="repo")
        return buf.getvalue()


def _checkout_tar(mirror: str, task: Task) -> bytes:
    """The task's repo at base_commit as a tar, made once per (mirror, commit) in this process: episodes on
    the same task (samples, validation runs) skip the clone."""
    return _checkout_tar_cached(mirror, task.repo or "", task.base_commit or "", task.instance_id)


def limits_for(task: Task, overrides: SandboxLimits | dict | None = None) -> Limits:
    """The one place sandbox limits are decided: Limits' defaults <- the task's `env.limits` <- `overrides`
    (a stage's `sandbox_limits`). Network on or off is the task's alone; an override's network_allow replaces
    the task's. A dict is checked like a config: an unknown key is BadInput naming it."""
    layers = [task.env.limits, overrides if not isinstance(overrides, dict)
              else validate(SandboxLimits, overrides, prefix=("sandbox_limits",))]
    merged: dict = {}
    for layer in layers:
        merged.update(layer.model_dump(exclude_none=True) if layer is not None else {})
    unsupported = sorted(set(merged) - {f.name for f in fields(Limits)})
    if unsupported:
        raise BadInput(f"{task.instance_id}: this swepost's sandboxes cannot enforce {', '.join(unsupported)} yet",
                       key="limits." + unsupported[0])
    return Limits(network=task.env.network, **merged)


def sandbox_kwargs(overrides: SandboxLimits) -> dict:
    """An environment's `limits` argument from a stage's `sandbox_limits`, given only when the stage sets some
    (custom environments need not take it otherwise)."""
    return {"limits": overrides} if overrides.model_dump(exclude_none=True) else {}


def open_task_sandbox(task: Task, *, repos: str | Path | None = None, backend: str = "auto",
                      limits: Limits | SandboxLimits | dict | None = None, read_only_workdir: bool = False) -> Sandbox:
    """Started and ready at `task.env.workdir`. `limits`: a stage's overrides merged by `limits_for`, or a
    complete Limits used as given (the task's own settings then do not apply). `read_only_workdir`: the repo is
    a read-only mount (see `open_sandbox`); the task's install commands still run, and fail if they write it."""
    limits = limits if isinstance(limits, Limits) else limits_for(task, limits)
    backend = pick_backend(backend)
    image = task.env.image
    if backend == "docker" and image is None:
        from swepost.sandbox.task_images import find_task_image

        image = find_task_image(task)
    if image is not None:
        if backend != "docker":
            raise BadInput(f"{task.instance_id}: its repo lives in image {image}, which needs --backend docker")
        return open_sandbox("docker", image=image, limits=limits, workdir=task.env.workdir,
                            read_only_workdir=read_only_workdir)
    if repos is None:
        raise BadInput(f"{task.instance_id}: no task image; give --repos DIR (a folder of owner__name repos)")
    scratch = Path(tempfile.mkdtemp(prefix=f"{CHECKOUT_PREFIX}{owner()}-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(_checkout_tar(str(mirror_path(repos, task.repo or "")), task))) as tar:
            tar.extractall(scratch, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
        box = open_sandbox(backend, source_dir=scratch / "repo", limits=limits, workdir=task.env.workdir,
                           read_only_workdir=read_only_workdir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        # install commands are the task's, not the model's: root, a fresh process, then the repo back to the
        # unprivileged user the model's shell runs as
        workdir = shlex.quote(box.workdir)
        for command in task.env.install:
            r = box.exec(f"cd {workdir} && {command}", timeout=1800, user="root", env=box.image_env())
            if r.exit_code != 0:
                raise WorkFailed(f"{task.instance_id}: install command failed ({r.exit_code}): {command}\n"
                                 f"{r.output[-1000:]}")
        uid = box.info.get("shell_uid")
        if task.env.install and not read_only_workdir and uid not in (None, 0, box.info.get("agent_uid")):
            box.exec(f"chown -R {int(uid)}:{int(uid)} {workdir}", timeout=600, user="root")
    except BaseException:
        box.close()
        raise
    return box
