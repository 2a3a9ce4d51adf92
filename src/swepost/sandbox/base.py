"""The Sandbox protocol: what every backend offers, and the client of the session agent they all run.

A backend only says how to start the agent (`_open`, returning a byte channel) and how to tear everything
down (`_teardown`); running commands, files and cleanup on every path live here once.
"""

from __future__ import annotations

import atexit
import base64
import io
import json
import os
import select
import signal
import socket
import tarfile
import threading
import time
import uuid
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path

from swepost.errors import WorkFailed

AGENT_SOURCE = (Path(__file__).parent / "agent.py").read_text()
LABEL = "swepost.sandbox"
# variables of a shell itself, not of its image, and ones that steer git or pytest: left out of image_env()
SHELL_VARS = {"PWD", "OLDPWD", "SHLVL", "_", "PS1", "PS2", "PROMPT_COMMAND", "HISTFILE", "TERM", "PAGER", "GIT_PAGER",
              "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTHONSTARTUP", "PYTHONINSPECT", "BASH_ENV", "ENV"}
# how long past a command's own timeout the host waits for the agent's answer before calling it broken
REPLY_GRACE_S = 30.0
# the most the host buffers for one reply (file and tar transfers); a command's reply is capped tighter, by its
# output caps, and the agent's first line by HELLO_BYTES: whatever floods the channel cannot flood our memory
MAX_REPLY_BYTES = 128 << 20
HELLO_BYTES = 1 << 20


class SandboxError(WorkFailed):
    """The sandbox itself failed (did not start, agent gone, engine error): not the command's fault."""


@dataclass
class CommandResult:
    exit_code: int
    output: str
    timed_out: bool = False
    duration: float = 0.0
    truncated_bytes: int = 0
    oom_killed: bool = False
    session_restarted: bool = False
    disk_exceeded: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Limits:
    """Resource limits of one sandbox. Defaults suit one agent episode on a laptop."""

    cpus: float = 1.0
    memory_mb: int = 2048
    pids: int = 256
    network: bool = False  # no network unless the task opts in
    network_allow: list[str] = field(default_factory=list)  # local ADDR|CIDR[:PORT] a network sandbox may reach
    timeout_s: float = 120.0  # default per-command timeout
    output_head: int = 48 * 1024  # bytes of output kept from the start ...
    output_tail: int = 16 * 1024  # ... and from the end; the middle is dropped with a visible marker
    uid: int = 1000  # the unprivileged uid (and gid) model-written commands run as, where the backend can switch
    disk_mb: int = 4096  # what an episode may add on disk (workdir, temp dirs, home); also the largest file


def run_id() -> str:
    return os.environ.get("SWEPOST_RUN_ID") or uuid.uuid4().hex[:12]


# + owner + "-": the temp folders of repo checkouts (and the mirrors they are fetched through), so that
# `sandbox gc` clears what a killed process left
CHECKOUT_PREFIX = "swepost-checkout-"


def owner() -> str:
    """Who owns a sandbox: host and pid, so `gc` can tell a crashed run's leftovers from live ones."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(label: str) -> bool:
    host, _, pid = label.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's sandbox: not ours to judge
    return pid_alive(int(pid))


def pid_alive(pid: int) -> bool:
    """Is the process running? A killed child its parent has not reaped yet (a zombie) is gone: a killed
    environment-server worker stays one until the server notices, and its sandboxes are orphans already."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_orphan_dirs(prefix: str, everything: bool = False) -> list[str]:
    """Remove temp folders `<prefix><host:pid>-<random>` whose owner process is gone (all with everything)."""
    import shutil
    import tempfile

    removed = []
    for d in sorted(Path(tempfile.gettempdir()).glob(prefix + "*")):
        label = d.name[len(prefix):].rpartition("-")[0]  # mkdtemp's random suffix has no "-"
        if d.is_dir() and (everything or not owner_alive(label)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    return removed


class Channel:
    """Bytes to and from the agent. Backends give `send`, `recv(timeout)` (b'' at EOF) and `close`."""

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def recv(self, timeout: float) -> bytes | None:
        """Some bytes, b'' at EOF, or None if nothing came within `timeout` seconds."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class PipeChannel(Channel):
    """The agent as a child process on pipes (local and bubblewrap backends)."""

    def __init__(self, proc):
        self.proc = proc
        self.out = proc.stdout.fileno()

    def send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as e:
            raise SandboxError(f"sandbox agent is gone ({e})") from None

    def recv(self, timeout: float) -> bytes | None:
        ready, _, _ = select.select([self.out], [], [], max(timeout, 0))
        if not ready:
            return None
        return os.read(self.out, 1 << 20)

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class Sandbox:
    """One episode's sandbox. Use as a context manager; it is closed on every path out."""

    backend = "base"

    def __init__(self, *, workdir: str = "/testbed", limits: Limits | None = None, env: dict | None = None):
        self.workdir = workdir
        self.limits = limits or Limits()
        self.env = dict(env or {})
        self.run_id = run_id()
        self._channel: Channel | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        self.closed = False
        self.info: dict = {}
        self._image_env: dict[str, str] | None = None

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> Sandbox:
        _install_handlers()
        _LIVE.add(self)
        try:
            self._channel = self._open()
            hello = self._read_reply(timeout=60.0)
        except BaseException:
            self.close()
            raise
        if not hello.get("ready"):
            self.close()
            raise SandboxError(f"{self.backend} sandbox agent did not start: {hello}")
        self.info.update(hello)
        return self

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self._channel is not None:
                try:
                    self._channel.send(b'{"op": "close"}\n')
                except SandboxError:
                    pass
                self._channel.close()
        finally:
            self._teardown()
            _LIVE.discard(self)

    def __enter__(self) -> Sandbox:
        return self if self._channel is not None else self.start()

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    # --- what backends supply ----------------------------------------------------------------------------
    def _open(self) -> Channel:
        raise NotImplementedError

    def _teardown(self) -> None:
        raise NotImplementedError

    def _oom_count(self) -> int | None:
        """Host-side count of OOM kills in the sandbox's cgroup, where the agent cannot see it."""
        return None

    # --- commands and files --------------------------------------------------------------------------------
    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        """Run `command` in the persistent shell; stdout and stderr come back interleaved, capped."""
        timeout = self.limits.timeout_s if timeout is None else timeout
        before = self._oom_count()
        reply = self._call({"op": "run", "command": command, "timeout": timeout,
                            "head": self.limits.output_head, "tail": self.limits.output_tail},
                           wait=timeout + REPLY_GRACE_S)
        after = self._oom_count()
        oom = bool(reply.get("oom_killed")) or (before is not None and after is not None and after > before)
        return CommandResult(exit_code=reply["exit_code"], output=reply["output"], timed_out=reply["timed_out"],
                             duration=reply["duration"], truncated_bytes=reply["truncated_bytes"],
                             oom_killed=oom, session_restarted=reply["session_restarted"],
                             disk_exceeded=bool(reply.get("disk_exceeded")))

    def interrupt(self) -> None:
        """Ctrl-C the command `run` is running now (from another thread): it ends with exit code 130 and its
        output so far; the session goes on. Does nothing between commands."""
        if self.closed or self._channel is None:
            return
        try:
            self._channel.send(b"\x03\n")  # not a request: the agent reads it while a command runs
        except SandboxError:
            pass

    def exec(self, command: str | list[str], *, timeout: float | None = None, cwd: str | None = None,
             env: dict | None = None, user: str = "root", stdin: bytes | None = None) -> CommandResult:
        """Run `command` as a NEW process the agent spawns itself, never through the persistent shell.

        The persistent shell (`run`) is the model's: its functions, aliases, variables and cwd are whatever
        the model left there. Graders and `final_diff` use this instead. A str runs via `/bin/sh -c`, a list
        is the argv. `env` is exactly the environment (default: PATH, HOME and LANG=C.UTF-8 only); `cwd`
        defaults to the workdir. It runs in its own session; at its timeout, or once it has exited, its whole
        process group is SIGKILLed. `user="root"` is the agent's own identity; `user="sandbox"` is the
        unprivileged uid of the shell (`info["shell_uid"]`; the agent's own where the backend cannot switch).
        Output (stdout and stderr interleaved) is capped like `run`'s. Git on the model's repo: prefer
        user="sandbox"; as root git refuses a repo another uid owns, and would obey the model's .git/config.
        """
        if user not in ("root", "sandbox"):
            raise ValueError(f"exec user must be 'root' or 'sandbox', not {user!r}")
        timeout = self.limits.timeout_s if timeout is None else timeout
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else [str(a) for a in command]
        before = self._oom_count()
        reply = self._call({"op": "exec", "argv": argv, "timeout": timeout, "cwd": cwd, "user": user,
                            "env": None if env is None else {str(k): str(v) for k, v in env.items()},
                            "stdin": None if stdin is None else base64.b64encode(stdin).decode(),
                            "head": self.limits.output_head, "tail": self.limits.output_tail},
                           wait=timeout + REPLY_GRACE_S)
        after = self._oom_count()
        oom = bool(reply.get("oom_killed")) or (before is not None and after is not None and after > before)
        return CommandResult(exit_code=reply["exit_code"], output=reply["output"], timed_out=reply["timed_out"],
                             duration=reply["duration"], truncated_bytes=reply["truncated_bytes"], oom_killed=oom)

    def image_env(self) -> dict[str, str]:
        """The environment a fresh shell of this sandbox has (the image's PATH, conda and so on), without the
        shell's own state and with nothing that steers git or pytest. Read once from the persistent shell and
        kept: call it before the model has had the shell (graders and task installs open fresh sandboxes).
        Pass it as `exec(env=...)` where a command needs the image's tools."""
        if self._image_env is None:
            env = {}
            for item in self.run("env -0", timeout=30).output.split("\0"):
                key, sep, value = item.partition("=")
                key = key.strip("\n")
                if sep and key and key not in SHELL_VARS and not key.startswith(("GIT_", "BASH_FUNC_", "SWEPOST_")):
                    env[key] = value
            env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            env.setdefault("HOME", "/tmp")
            env["LANG"] = env.get("LANG") or "C.UTF-8"
            self._image_env = env
        return dict(self._image_env)

    def write_file(self, path: str, data: bytes | str, mode: int | None = None) -> None:
        if isinstance(data, str):
            data = data.encode()
        self._call({"op": "write_file", "path": path, "data": base64.b64encode(data).decode(), "mode": mode})

    def read_file(self, path: str, limit: int = 64 << 20) -> bytes:
        return base64.b64decode(self._call({"op": "read_file", "path": path, "limit": limit})["data"])

    def copy_in(self, src: str | Path, dest: str) -> None:
        """Copy a host file or folder into the sandbox folder `dest` (created if missing)."""
        src = Path(src)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(src, arcname=src.name)
        self._call({"op": "put_tar", "dest": dest, "data": base64.b64encode(buf.getvalue()).decode()})

    def copy_contents_in(self, src: str | Path, dest: str) -> None:
        """Copy everything inside the host folder `src` into the sandbox folder `dest`, in one transfer."""
        src = Path(src)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for child in sorted(src.iterdir()):
                tar.add(child, arcname=child.name)
        self._call({"op": "put_tar", "dest": dest, "data": base64.b64encode(buf.getvalue()).decode()})

    def copy_out(self, src: str, dest: str | Path) -> Path:
        """Copy a sandbox file or folder into the host folder `dest`; returns the host path."""
        data = base64.b64decode(self._call({"op": "get_tar", "path": src})["data"])
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            names = tar.getnames()
        return dest / names[0].split("/")[0] if names else dest

    # --- the wire --------------------------------------------------------------------------------------
    def _call(self, request: dict, wait: float = 120.0) -> dict:
        if self.closed or self._channel is None:
            raise SandboxError(f"{self.backend} sandbox is not running")
        with self._lock:
            # random, not a counter: a command that reaches the agent's stdout cannot guess the id to forge
            request["id"] = uuid.uuid4().hex
            self._channel.send(json.dumps(request).encode() + b"\n")
            reply = self._read_reply(timeout=wait, cap=_reply_cap(request))
        if reply.get("id") != request["id"]:
            self.close()  # a forged or stray line: nothing more this channel says can be trusted
            raise SandboxError(f"sandbox agent answered out of turn: {str(reply)[:200]}")
        if "error" in reply:
            raise SandboxError(f"sandbox {request['op']} failed: {reply['error']}")
        return reply

    def _read_reply(self, timeout: float, cap: int = HELLO_BYTES) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if len(self._buffer) > cap:
                self.close()
                raise SandboxError(f"{self.backend} sandbox agent sent a reply larger than {cap} bytes")
            chunk = self._channel.recv(deadline - time.monotonic())
            if chunk is None:
                if time.monotonic() >= deadline:
                    self.close()
                    raise SandboxError(f"{self.backend} sandbox agent did not answer within {timeout:.0f} s")
                continue
            if chunk == b"":
                why = self._diagnose()  # before teardown removes what it reads
                self.close()
                raise SandboxError(f"{self.backend} sandbox agent exited{why}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        if len(line) > cap:
            self.close()
            raise SandboxError(f"{self.backend} sandbox agent sent a reply larger than {cap} bytes")
        try:
            reply = json.loads(line)
        except ValueError:
            self.close()
            raise SandboxError(f"{self.backend} sandbox agent sent a garbled reply: {line[:200]!r}") from None
        if not isinstance(reply, dict):
            self.close()
            raise SandboxError(f"{self.backend} sandbox agent sent a garbled reply: {line[:200]!r}")
        return reply

    def _diagnose(self) -> str:
        return ""


def agent_limits(limits: Limits) -> dict:
    """The agent's options every backend passes on: the disk quota, and the largest file a command may write."""
    return {"disk_bytes": limits.disk_mb << 20, "rlimits": {"RLIMIT_FSIZE": limits.disk_mb << 20}}


def _reply_cap(request: dict) -> int:
    """The largest honest reply to `request`: JSON escapes a byte of output into at most 6 characters."""
    if request["op"] in ("run", "exec"):
        return 6 * (int(request["head"]) + int(request["tail"]) + 4096) + HELLO_BYTES
    if request["op"] == "read_file":
        return int(request["limit"]) * 4 // 3 + HELLO_BYTES
    return MAX_REPLY_BYTES


# Every sandbox still open, so that exiting or a SIGTERM closes them instead of leaking containers.
_LIVE: weakref.WeakSet[Sandbox] = weakref.WeakSet()


def close_all() -> None:
    for box in list(_LIVE):
        try:
            box.close()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def _on_sigterm(signum, frame):
    close_all()
    raise SystemExit(128 + signum)


_handlers_installed = False


def _install_handlers() -> None:
    """On the first sandbox: close every sandbox at exit and on SIGTERM (SIGKILL is what `gc` is for)."""
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(close_all)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)

