"""Local backend: the agent as a plain subprocess in a temporary working copy. It isolates nothing.

For trusted use only (your own commands, debugging); `auto` picks it last, with a warning.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

from swepost.sandbox.base import (
    AGENT_SOURCE,
    Limits,
    PipeChannel,
    Sandbox,
    SandboxError,
    agent_limits,
    owner,
    remove_orphan_dirs,
)

TEMP_PREFIX = "swepost-local-"
_warned = threading.Event()


def warn_no_isolation(message: str = "the local sandbox isolates nothing: commands run as you, with your "
                      "network and files") -> None:
    """Say once per process that commands run unisolated; a run opens hundreds of sandboxes."""
    # not left to the warnings registry: anything that touches the warning filters resets it
    if not _warned.is_set():
        _warned.set()
        warnings.warn(message, stacklevel=3)


class LocalSandbox(Sandbox):
    backend = "local"
    isolates = False

    def __init__(self, source_dir: str | Path | None = None, *, limits: Limits | None = None,
                 env: dict | None = None, read_only_workdir: bool = False, **_ignored):
        if read_only_workdir:  # the shell runs as you, owner of the copy: any mode bits set, it can undo
            raise SandboxError("the local backend cannot make the workdir read-only (commands run as you, the "
                               "owner of the working copy); use docker or bwrap")
        self.scratch = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{owner()}-"))
        work = self.scratch / "work"
        if source_dir is not None:
            shutil.copytree(source_dir, work, symlinks=True)
        else:
            work.mkdir()
        super().__init__(workdir=str(work), limits=limits, env=env)
        self.proc: subprocess.Popen | None = None

    def _open(self) -> PipeChannel:
        warn_no_isolation()
        # no uid to switch to: the shell runs as you (info["shell_uid"]); the quota counts the working copy only
        opts = {"workdir": self.workdir, "env": self.env, "cmd_dir": str(self.scratch / "cmd"),
                **agent_limits(self.limits)}
        self.proc = subprocess.Popen([sys.executable, "-u", "-c", AGENT_SOURCE, json.dumps(opts)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=self.workdir,
                                     start_new_session=True)
        return PipeChannel(self.proc)

    def _teardown(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=5)  # the agent kills its shell's session when told to close
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)


def gc_local(everything: bool = False) -> list[str]:
    """Temporary working copies left by local sandboxes whose process died."""
    return remove_orphan_dirs(TEMP_PREFIX, everything)
