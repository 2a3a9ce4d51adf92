"""Sandbox integrity against a hostile model: every command here is one a model could write.

Real docker, real bwrap, real processes. Each test names, in its docstring, the defence it proves: with that
defence removed, the test fails.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from conftest import require_or_skip

from swepost.sandbox import sandbox_class
from swepost.sandbox.base import Limits, SandboxError

ALL = ["docker", "bwrap", "local"]


@pytest.fixture
def open_box(request):
    """open_box(backend, **limits) -> a started sandbox, closed after the test whatever happens."""
    boxes = []

    def open_(backend: str, **limits):
        kwargs = {}
        if backend == "docker":
            kwargs["image"] = request.getfixturevalue("base_image")
        elif backend == "bwrap":
            from swepost.sandbox.bwrap import bwrap_available

            if not bwrap_available():
                require_or_skip("bubblewrap (bwrap) is missing or cannot create namespaces here")
        box = sandbox_class(backend)(limits=Limits(**limits), **kwargs).start()
        boxes.append(box)
        return box

    yield open_
    for box in boxes:
        box.close()


# --- 1. exec: a fresh process, never the model's shell --------------------------------------------------------

@pytest.mark.parametrize("backend", ALL)
def test_exec_ignores_what_the_model_defined_in_its_shell(backend, open_box):
    """Defence: `exec` spawns a new process from the agent with its own minimal env. Through the persistent
    shell (what `run` uses) the model's `git` function, alias and GIT_DIR would all apply."""
    box = open_box(backend)
    box.run("git() { echo FORGED-GIT; }; export -f git; export GIT_DIR=/forged LC_EVIL=1; "
            "alias cat='echo FORGED-ALIAS'; cd /")
    assert "FORGED-GIT" in box.run("git --version").output  # the shell really is poisoned
    r = box.exec("git --version; echo dir=${GIT_DIR-unset} evil=${LC_EVIL-unset}; pwd; echo hi | cat")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [r.output.splitlines()[0], "dir=unset evil=unset", box.workdir, "hi"]
    assert r.output.startswith("git version")
    env = box.exec(["env"]).output.splitlines()
    assert sorted(line.split("=")[0] for line in env) == ["HOME", "LANG", "PATH"]
    assert box.exec(["sh", "-c", "echo $X; cat"], env={"X": "given"}, stdin=b"fed", cwd="/").output == "given\nfed"


@pytest.mark.parametrize("backend", ALL)
def test_exec_timeout_kills_the_whole_process_group(backend, open_box):
    """Defence: at its timeout exec SIGKILLs the command's whole process group, so a backgrounded
    `sleep` dies too (killing only the leader would leave it running, and holding the output pipe)."""
    box = open_box(backend)
    marker = f"{time.time_ns() % 10**9}"
    started = time.monotonic()
    r = box.exec(f"sleep 100{marker} & sleep 100{marker}", timeout=1)
    assert r.timed_out and r.exit_code == 124 and time.monotonic() - started < 10
    left = box.exec(["sh", "-c", f"ps -eo args | grep '^sleep 100{marker}' || true"]).output
    assert left == "", left
    r = box.exec(f"sleep 100{marker} & echo done")  # exits at once: what it left behind is killed too
    assert (r.exit_code, r.output, r.timed_out) == (0, "done\n", False)
    assert box.exec(["sh", "-c", f"ps -eo args | grep '^sleep 100{marker}' || true"]).output == ""
