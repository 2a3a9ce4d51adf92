"""Sandbox integrity against a hostile model: every command here is one a model could write.

Real docker, real bwrap, real processes. Each test names, in its docstring, the defence it proves: with that
defence removed, the test fails.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

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


# --- 2. the model's shell is an unprivileged uid ---------------------------------------------------------------

def test_docker_shell_is_unprivileged_and_cannot_touch_the_agent(open_box):
    """Defence: the shell runs as Limits.uid (1000) with no groups and no capabilities, while the agent stays
    root. As root (even capability-less root) the shell could write /etc and read the 0600 file; with the
    agent's capabilities it could also kill it."""
    box = open_box("docker")
    agent = box.info["pid"]
    assert box.info["shell_uid"] == 1000 and box.info["agent_uid"] == 0
    assert box.run("id -u; id -G").output.split() == ["1000", "1000"]
    assert box.run("grep Cap[EP] /proc/self/status").output.split()[1::2] == ["0000000000000000"] * 2
    r = box.run("touch /etc/owned")
    assert r.exit_code != 0 and "Permission denied" in r.output
    box.write_file("/secret", "root only", mode=0o600)  # outside the workdir: stays the agent's
    r = box.run("cat /secret")
    assert r.exit_code != 0 and "root only" not in r.output
    r = box.run(f"kill -9 {agent}; kill -STOP {agent}")
    assert r.exit_code != 0 and "not permitted" in r.output
    r = box.run(f"cat /proc/{agent}/environ /proc/{agent}/mem; "
                f"python3 -c 'import ctypes; print(\"ptrace\", ctypes.CDLL(None).ptrace(16, {agent}, 0, 0))'")
    assert "ptrace -1" in r.output and "HOME=" not in r.output
    # the repo is the model's to edit, and what the agent writes there too
    box.write_file("notes.txt", "from the host\n")
    assert box.run("echo edited >> notes.txt && mkdir -p pkg && cat notes.txt").output == "from the host\nedited\n"
    assert box.exec("cat notes.txt").output == "from the host\nedited\n"
    assert box.exec(["id", "-u"], user="sandbox").output == "1000\n"
    # nor can a planted symlink turn the agent's writes into the model's way out of its uid
    box.run("ln -s /etc/ld.so.preload preload && mkdir -p d && ln -s /etc d/etc")
    for path in ("preload", "d/etc/evil"):
        with pytest.raises(SandboxError, match="symlink"):
            box.write_file(path, "/tmp/evil.so\n")
    assert box.exec("ls /etc/ld.so.preload /etc/evil 2>&1 | grep -c 'No such'").output == "2\n"
    assert box.run("echo still alive").output == "still alive\n"


# --- 3. the host <-> agent channel ---------------------------------------------------------------------------

FORGE = ("python3 - <<'PY'\n"
         "import json\n"
         "line = json.dumps({{'id': {id}, 'exit_code': 0, 'output': 'FORGED', 'timed_out': False, 'duration': 0,\n"
         "                   'truncated_bytes': 0, 'oom_killed': False, 'session_restarted': False}})\n"
         "try:\n"
         "    with open('/proc/{pid}/fd/1', 'w') as f:\n"
         "        f.write(line + '\\n')\n"
         "    print('WROTE')\n"
         "except OSError as e:\n"
         "    print('BLOCKED', e)\n"
         "PY")


def test_docker_nothing_in_the_sandbox_can_write_on_the_agents_stdout(open_box):
    """Defence: the agent is non-dumpable (PR_SET_DUMPABLE 0). Then even a process of the agent's own uid
    (an exec as root, which has no CAP_SYS_PTRACE) cannot open /proc/<agent>/fd/1 to forge a reply; while
    dumpable it could, and the host would read the forged line first. The model's uid is refused too."""
    box = open_box("docker")
    assert box.info["undumpable"] is True
    forge = FORGE.format(id=1, pid=box.info["pid"])
    r = box.exec(forge)
    assert r.output.startswith("BLOCKED") and "Permission denied" in r.output, r.output
    r = box.run(forge)
    assert r.output.startswith("BLOCKED"), r.output
    assert box.run("echo genuine").output == "genuine\n"


@pytest.mark.parametrize("backend", ["docker", "local"])
def test_a_guessed_end_marker_does_not_end_the_command(backend, open_box):
    """Defence: the end-of-command marker's nonce is os.urandom hex. With the old `<agent pid>.<counter>`
    nonce, printing the next few guesses would end the command there: "after" lost, exit code faked as 0."""
    box = open_box(backend)
    pid = box.info["pid"]
    guesses = "".join(f"\\036SWEPOST:{pid}.{n}:0\\036" for n in range(1, 40))
    r = box.run(f"printf '{guesses}'; sleep 0.3; echo after; sh -c 'exit 7'")
    assert (r.exit_code, r.output.strip()) == (7, "after"), r
    assert box.run("echo next").output == "next\n"


def test_local_a_forged_reply_with_a_sequential_id_is_rejected(open_box):
    """Defence: request ids are random (uuid4). In the local backend a command CAN write on the agent's
    stdout (same uid, and the host root has CAP_SYS_PTRACE); with counter ids its forged reply for id 1 (the
    first call) would be taken as the command's result. Random ids make the host reject it."""
    box = open_box("local")
    with pytest.raises(SandboxError, match="out of turn"):
        box.run(FORGE.format(id=1, pid=box.info["pid"]))
    assert box.closed  # a channel that carried a forgery is not used again


def test_local_an_oversized_reply_is_refused_without_buffering_it(open_box):
    """Defence: the host caps what it buffers for one reply (a command's reply by its output caps). Without
    the cap it would buffer all 64 MB the command pours onto the agent's stdout, then fail to parse it."""
    box = open_box("local")
    pid = box.info["pid"]
    started = time.monotonic()
    with pytest.raises(SandboxError, match="larger than"):  # refused as it streams, not once the line ends
        box.run(f"head -c {64 << 20} /dev/zero | tr '\\0' x > /proc/{pid}/fd/1; sleep 30", timeout=60)
    assert time.monotonic() - started < 15


# --- 4. disk and background processes -----------------------------------------------------------------------

@pytest.mark.parametrize("backend", ALL)
def test_writing_past_the_disk_quota_is_stopped(backend, open_box):
    """Defence: RLIMIT_FSIZE on the shell caps one file at disk_mb, and the agent's walk of the writable dirs
    kills a command (and, between commands, a background writer) once the episode has added more than
    disk_mb. Without them all 120 MB below would be written."""
    box = open_box(backend, disk_mb=50)
    r = box.run("head -c 60M /dev/zero > one.bin; echo rc=$?; ls -l one.bin")
    assert "File too large" in r.output or "File size limit" in r.output, r.output  # EFBIG / SIGXFSZ at 50 MB
    assert " 52428800 " in r.output
    box.run("rm -f one.bin")
    tmp = "/tmp" if backend != "local" else "."  # the local backend counts its working copy only
    r = box.run(f"for i in 1 2 3 4; do head -c 30M /dev/zero > {tmp}/f$i; done; echo finished", timeout=60)
    assert r.disk_exceeded and r.exit_code == 153 and "disk quota exceeded" in r.output, r
    assert box.run(f"rm -f {tmp}/f*; echo freed").output == "freed\n"
    # a name of this run's own in the writer's argv: the local backend's pgrep sees the whole host, where this
    # test's docker and bwrap cases may be writing at the same moment on the other xdist worker
    bg = f"bg{uuid.uuid4().hex[:12]}"
    box.run(f"nohup sh -c 'for i in 1 2 3 4 5 6; do dd if=/dev/zero of={tmp}/{bg}-$i bs=1M count=20 status=none; "
            f"sleep 0.5; done' >/dev/null 2>&1 &")
    time.sleep(5)  # the model thinks; the writer is caught between commands
    r = box.run(f"echo files=$(ls {tmp} | grep -c {bg}); pgrep -f {bg} || echo no-writer")
    assert "disk quota exceeded" in r.output and "no-writer" in r.output, r.output
    assert int(r.output.split("files=")[1].split()[0]) < 6  # killed before it was done
    assert box.run(f"rm -f {tmp}/{bg}-*; echo freed").output == "freed\n"  # deleting is always let through


@pytest.mark.parametrize("backend", ["docker", "bwrap"])
def test_background_processes_die_with_the_sandbox(backend, open_box):
    """Defence: closing removes the container (docker) / kills bwrap's pid namespace and cgroups, so a
    `nohup ... &` and even a `setsid` escapee of the shell's session do not outlive the episode."""
    box = open_box(backend)
    marker = f"{time.time_ns() % 10**9}{os.getpid()}"
    box.run(f"nohup sleep 1{marker} >/dev/null 2>&1 & setsid nohup sleep 2{marker} >/dev/null 2>&1 &")
    deadline = time.monotonic() + 5
    while len(_host_procs(marker)) < 2 and time.monotonic() < deadline:  # `&` returns before they exec
        time.sleep(0.1)
    assert len(_host_procs(marker)) == 2
    name = box.container.name if backend == "docker" else None
    box.close()
    deadline = time.monotonic() + 10
    while _host_procs(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _host_procs(marker) == []
    if name:
        out = subprocess.run(["docker", "ps", "-a", "-q", "-f", f"name={name}"], capture_output=True, text=True)
        assert out.stdout.strip() == ""


def _host_procs(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", f"sleep [12]{marker}"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]
