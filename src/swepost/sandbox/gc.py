"""Clearing what dead processes left: the sandboxes, cgroups and temp copies whose owner process is gone.

`swepost sandbox gc` runs it by hand; the environment server runs it itself when one of its workers (a process or a
Ray actor) dies, so a killed worker's sandboxes do not outlive it.
"""

from __future__ import annotations

import contextlib
import time

from swepost.sandbox.base import pid_alive


def sweep_dead_owners(pids: list[int] | None = None, wait: float = 10.0) -> int:
    """What `swepost sandbox gc` does without --all, on this machine: remove the sandboxes, cgroups and temp
    copies whose owner process is dead; how many. First wait (up to `wait` s) for `pids` to be gone, so that a
    just-killed worker's sandboxes count as orphans. Never raises: a cleanup that fails leaves the rest to the next."""
    from swepost.sandbox.bwrap import gc_bwrap
    from swepost.sandbox.docker import docker_available, gc_docker
    from swepost.sandbox.local import gc_local
    from swepost.sandbox.task_sandbox import gc_checkouts

    deadline = time.monotonic() + wait
    for pid in pids or []:
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.1)
    removed = 0
    with contextlib.suppress(Exception):
        if docker_available():
            removed += len(gc_docker())
    with contextlib.suppress(Exception):
        removed += len(gc_bwrap()) + len(gc_local()) + len(gc_checkouts(False))
    return removed


alive = pid_alive  # a zombie (killed, not yet reaped) counts as gone; the name callers and tests use
