"""Task images: a base image with a task's repo at `base_commit` in its workdir and its install commands run.

No Dockerfile and no registry: the repo is checked out on the host from the local mirror, copied into a
sandbox started from the base image (with network, so `pip install` works; the base image carries the
host's CA bundle and sets SSL_CERT_FILE / PIP_CERT), the install commands run in the session, and the
container is committed. The sandboxes later started from the image run without network, as every sandbox
does unless the task opts in.

Images are cached by a content key: sha256 of (base image id, repo, base_commit, install commands,
workdir) -> `swepost-task:<key[:20]>`, labelled `swepost.task-key=<key>`. An image with the key is reused
without work; two builds of one key at once both commit the same tag, and the last one wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from swepost.errors import BadInput, BadInputs, WorkFailed
from swepost.records import Task
from swepost.sandbox.base import LABEL, Limits, Sandbox, owner
from swepost.sandbox.images import DEFAULT_BASE_IMAGE, docker_client, image_id
from swepost.sandbox.repos import checkout

REPOSITORY = "swepost-task"
KEY_LABEL = "swepost.task-key"
INSTANCE_LABEL = "swepost.instance"
KEY_FORMAT = 3  # bump when what goes into a task image changes, so old images stop matching
# 2: the repo holds the base commit's history only (format 1 images hold the mirror's later commits)
INSTALL_TIMEOUT_S = 3600.0
# labels of the build container (and of the base image) that must not describe the task image
INHERITED_LABELS = (LABEL, "swepost.run", "swepost.owner", "swepost.base")
APT_CONF = "/etc/apt/apt.conf.d/99swepost-sandbox"


def build_limits() -> Limits:
    """Generous limits for a build: network on, room for compilers, one hour per install command."""
    # uid=0: the install commands are the task's own, trusted, and install system-wide (apt, pip): the shell stays
    # root here, unlike an episode's, whose model-written commands run as Limits.uid
    return Limits(network=True, cpus=float(max(1, min(4, os.cpu_count() or 1))), memory_mb=8192, pids=4096,
                  timeout_s=INSTALL_TIMEOUT_S, uid=0)


def task_image_key(task: Task, base_image_id: str) -> str:
    """The content key of a task's image: what its files depend on, and nothing else."""
    recipe = {"format": KEY_FORMAT, "base": base_image_id, "repo": task.repo, "base_commit": task.base_commit,
              "install": list(task.env.install), "workdir": task.env.workdir}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def task_image_tag(key: str) -> str:
    return f"{REPOSITORY}:{key[:20]}"


def _check_buildable(task: Task) -> None:
    if not task.repo or not task.base_commit:
        raise BadInput(f"{task.instance_id}: needs `repo` and `base_commit` to build a task image "
                       "(or an `image` of its own)")


def _base_id(client, base: str) -> str:
    found = image_id(client, base)
    if found is None:
        raise BadInput(f"base image {base} does not exist (build it with `swepost sandbox build-base`)")
    return found


def _tagged(client, tag: str, key: str) -> bool:
    import docker

    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return (image.labels or {}).get(KEY_LABEL) == key


def find_task_image(task: Task, client=None, base: str = DEFAULT_BASE_IMAGE) -> str | None:
    """The tag of the task's built image, or None (not built, base image missing, or nothing to build from)."""
    if not task.repo or not task.base_commit:
        return None
    own_client = client is None
    client = client or docker_client()
    try:
        base_id = image_id(client, base)
        if base_id is None:
            return None
        key = task_image_key(task, base_id)
        tag = task_image_tag(key)
        return tag if _tagged(client, tag, key) else None
    finally:
        if own_client:
            client.close()


# Build sandboxes still open, so an interrupted `build_task_images` can stop its workers' containers.
_BUILDING: set[Sandbox] = set()
_BUILDING_LOCK = threading.Lock()


def build_task_image(task: Task, repos: str | Path, *, base: str = DEFAULT_BASE_IMAGE, client=None,
                     log: Callable[[str], None] | None = None) -> str:
    """The tag of the task's image, built unless an image with its key exists. WorkFailed names the
    instance, the command and its output tail when an install command fails."""
    import docker

    from swepost.sandbox.docker import DockerSandbox

    log = log or (lambda message: None)
    _check_buildable(task)
    own_client = client is None
    client = client or docker_client(timeout=900)
    try:
        key = task_image_key(task, _base_id(client, base))
        tag = task_image_tag(key)
        if _tagged(client, tag, key):
            log(f"cached {tag}")
            return tag
        scratch = Path(tempfile.mkdtemp(prefix=f"swepost-checkout-{owner()}-"))
        try:
            log(f"checkout {task.repo}@{task.base_commit[:10]}")
            checkout(task, repos, scratch / "repo")
            log(f"copy into {base}")
            box = DockerSandbox(base, source_dir=scratch / "repo", workdir=task.env.workdir,
                                limits=build_limits(), client=client)
            with _BUILDING_LOCK:
                _BUILDING.add(box)
            try:
                box.start()
                shutil.rmtree(scratch, ignore_errors=True)  # in the container now; free the disk early
                # apt drops to its _apt user with setgroups, which a sandbox without capabilities may not
                # do: installs that apt-get would fail without this (it stays in the image, harmlessly)
                box.run(f"[ -d /etc/apt/apt.conf.d ] && echo 'APT::Sandbox::User \"root\";' > {APT_CONF}; true",
                        timeout=60)
                for n, command in enumerate(task.env.install, start=1):
                    log(f"install {n}/{len(task.env.install)}: {command}")
                    r = box.run(command, timeout=INSTALL_TIMEOUT_S)
                    if not r.ok:
                        why = f"timed out after {INSTALL_TIMEOUT_S:.0f} s" if r.timed_out else f"exit {r.exit_code}"
                        if r.oom_killed:
                            why += ", out of memory"
                        raise WorkFailed(f"{task.instance_id}: install command failed ({why}): {command}\n"
                                         + _tail(r.output))
                box.run("rm -rf /root/.cache/pip", timeout=300)  # the download cache is dead weight
                # the repo belongs to the user model commands run as, so an episode need not chown (and on
                # overlay2 copy up) every file of it before its first command
                box.run(f"chown -R {Limits().uid}:{Limits().uid} {shlex.quote(task.env.workdir)}", timeout=600)
                log(f"commit {tag}")
                labels = {KEY_LABEL: key, INSTANCE_LABEL: task.instance_id, "swepost.repo": task.repo,
                          "swepost.base-commit": task.base_commit, "swepost.base-image": base,
                          **{name: "" for name in INHERITED_LABELS}}
                # The build container's command is the session agent with its options: the image gets a
                # plain shell instead. docker merges the container's labels into the image's and cannot
                # drop one, so the build sandbox's own (run, owner: `sandbox gc` reads them on every
                # container started from the image) and the base image's are blanked.
                try:
                    box.container.commit(repository=REPOSITORY, tag=key[:20],
                                         changes=['CMD ["/bin/bash"]', f"WORKDIR {task.env.workdir}"],
                                         conf={"Labels": labels})
                except docker.errors.APIError as e:
                    raise WorkFailed(f"{task.instance_id}: docker commit of {tag} failed: "
                                     f"{e.explanation or e}") from None
            finally:
                with _BUILDING_LOCK:
                    _BUILDING.discard(box)
                box.close()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if not _tagged(client, tag, key):
            raise WorkFailed(f"{task.instance_id}: committed {tag} but no image with key {key[:20]} exists")
        return tag
    finally:
        if own_client:
            client.close()


def _tail(output: str, lines: int = 30, chars: int = 3000) -> str:
    return "\n".join(output.rstrip().splitlines()[-lines:])[-chars:]


def build_task_images(tasks: Iterable[Task], repos: str | Path | None, *, base: str = DEFAULT_BASE_IMAGE,
                      jobs: int = 2, progress: bool = True) -> dict[str, str]:
    """{instance_id: image} for every task: its own `env.image` as it is, else its task image, built with
    `jobs` builds at once (tasks sharing a key are built once). Failed builds are reported together in one
    WorkFailed after the others finish; what was built stays cached."""
    tasks = list(tasks)
    result: dict[str, str] = {t.instance_id: t.env.image for t in tasks if t.env.image}
    todo = [t for t in tasks if not t.env.image]
    if not todo:
        return result
    problems = []
    for t in todo:
        try:
            _check_buildable(t)
        except BadInput as e:
            problems.append(e)
    if problems:
        raise BadInputs(problems)
    if repos is None:
        raise BadInput(f"{len(todo)} task(s) have no image: give --repos DIR (a folder of owner__name repos) "
                       "to build them")
    if not Path(repos).is_dir():
        raise BadInput("not a folder", file=str(repos))
    client = docker_client()
    try:
        base_id = _base_id(client, base)
        groups: dict[str, list[Task]] = {}
        for t in todo:
            groups.setdefault(task_image_key(t, base_id), []).append(t)
        missing = {}
        for key, group in groups.items():
            if _tagged(client, task_image_tag(key), key):
                result.update({t.instance_id: task_image_tag(key) for t in group})
            else:
                missing[key] = group
    finally:
        client.close()
    if missing:
        result.update(_build_all(missing, repos, base, max(1, jobs), progress))
    return {t.instance_id: result[t.instance_id] for t in tasks}


def _build_all(missing: dict[str, list[Task]], repos, base: str, jobs: int, show: bool) -> dict[str, str]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, disable=not show, transient=False)
    built: dict[str, str] = {}
    failures: list[str] = []
    with bar:
        overall = bar.add_task("task images", total=len(missing))

        def one(group: list[Task]) -> str:
            first = group[0]
            row = bar.add_task(f"  {first.instance_id}", total=None, start=True)
            start = time.monotonic()
            try:
                tag = build_task_image(first, repos, base=base, log=lambda m: bar.update(
                    row, description=f"  {first.instance_id}: {m[:80]}"))
            finally:
                bar.remove_task(row)
            if show:
                bar.console.print(f"built {first.instance_id} -> {tag} ({time.monotonic() - start:.0f}s)")
            return tag

        pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="swepost-task-image")
        futures: dict[Future, list[Task]] = {pool.submit(one, group): group for group in missing.values()}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    group = futures[f]
                    try:
                        tag = f.result()
                    except (WorkFailed, BadInput) as e:
                        failures.append(str(e))
                        if show:
                            bar.console.print(f"[red]failed[/] {group[0].instance_id}: {str(e).splitlines()[0]}")
                    else:
                        built.update({t.instance_id: tag for t in group})
                    bar.advance(overall)
        except BaseException:  # Ctrl-C: drop what has not started, stop the containers of what has
            pool.shutdown(wait=False, cancel_futures=True)
            with _BUILDING_LOCK:
                boxes = list(_BUILDING)
            for box in boxes:
                box.close()
            raise
        pool.shutdown(wait=True)
    if failures:
        raise WorkFailed(f"{len(failures)} of {len(missing)} task image build(s) failed:\n" + "\n".join(failures))
    return built
