"""Docker backend: one fresh, hardened container per episode, driven through the docker SDK.

The container's main process is the session agent (under docker's init), talked to over the attach socket,
so a command's round trip is a write and a read on one socket instead of a `docker exec` per command.
Defaults: no network, CPU / memory / pids limits, all capabilities dropped, no-new-privileges, no host
paths mounted. Every container carries labels (run id, owner) so `swepost sandbox gc` finds leftovers.

With `read_only_workdir` the workdir is a docker volume of its own, mounted read-only: filled through the engine
(a container that is created, never started, takes the working copy as an archive) or, without a working copy,
by the engine's copy of the image's own workdir. Neither the agent nor the shell holds CAP_SYS_ADMIN, so no
process in the container can remount it writable.
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import select
import socket
import struct
import tarfile
import threading
from pathlib import Path

from swepost.errors import WorkFailed
from swepost.sandbox.base import (
    AGENT_SOURCE,
    LABEL,
    Channel,
    Limits,
    Sandbox,
    SandboxError,
    agent_limits,
    owner,
    owner_alive,
)
from swepost.sandbox.images import DEFAULT_BASE_IMAGE, docker_client
from swepost.sandbox.network import ensure_network

OOM_FILES = ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"]
# What the agent (root in the container) needs; the shell it starts drops to `Limits.uid` and holds none:
# SETUID, SETGID  switch the shell and exec(user="sandbox") to the sandbox uid (setgroups, setgid, setuid)
# CHOWN           give the workdir, and what write_file / put_tar put there, to the sandbox uid
# DAC_OVERRIDE    read, write and list the model's files whatever modes it set (graders, get_tar, read_file)
# FOWNER          chmod and set mtimes on files the sandbox uid owns (write_file's mode, tar extraction)
# KILL            signal the shell's processes, which run as another uid (timeouts, quota, close)
# Left out: SYS_PTRACE (would let a root exec read the agent), NET_*, MKNOD, SYS_ADMIN, SETPCAP, AUDIT_WRITE...
AGENT_CAPS = ["SETUID", "SETGID", "CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL"]
# where the unprivileged shell can write, besides the workdir and its home: what the disk quota counts
DISK_ROOTS = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"]
LOADER_MOUNT = "/swepost-repo"  # where the loader container sees a read-only workdir's volume


def docker_available() -> bool:
    try:
        docker_client(timeout=5).close()
    except WorkFailed:
        return False
    return True


class AttachChannel(Channel):
    """The container's stdin/stdout over the attach socket; docker multiplexes frames when tty is off."""

    def __init__(self, raw: socket.socket, keepalive=None):
        self.sock = raw
        # The SDK's socket wrapper and the HTTP response it came from form a cycle we would otherwise drop: when
        # the garbage collector finalises it, the wrapper's close can close the socket's fd under us (a
        # "Bad file descriptor" mid-episode, seen once under RL's allocation load). Held until close().
        self.keepalive = keepalive
        self.pending = b""
        self.stderr = b""

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise SandboxError(f"docker sandbox is gone ({e})") from None

    def recv(self, timeout: float) -> bytes | None:
        while True:
            frame = self._frame()
            if frame is not None:
                stream, payload = frame
                if stream == 2:  # the agent's stderr: keep a little for diagnosis
                    self.stderr = (self.stderr + payload)[-4096:]
                    continue
                return payload
            try:
                ready, _, _ = select.select([self.sock], [], [], max(timeout, 0))
                if not ready:
                    return None
                chunk = self.sock.recv(1 << 20)
            except (OSError, ValueError):  # closed under us by close() on another thread: the agent is gone
                return b""
            if not chunk:
                return b""
            self.pending += chunk

    def _frame(self) -> tuple[int, bytes] | None:
        if len(self.pending) < 8:
            return None
        stream, size = self.pending[0], struct.unpack(">I", self.pending[4:8])[0]
        if len(self.pending) < 8 + size:
            return None
        payload, self.pending = self.pending[8:8 + size], self.pending[8 + size:]
        return stream, payload

    def close(self) -> None:
        try:  # wakes a thread blocked reading this socket (a close alone leaves it asleep until its timeout)
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for part in (self.sock, self.keepalive):
            try:
                if part is not None:
                    part.close()
            except OSError:
                pass


class DockerSandbox(Sandbox):
    backend = "docker"

    def __init__(self, image: str | None = None, *, source_dir: str | Path | None = None,
                 workdir: str = "/testbed", limits: Limits | None = None, env: dict | None = None,
                 client=None, read_only_workdir: bool = False, **_ignored):
        super().__init__(workdir=workdir, limits=limits, env=env)
        self.image = image or DEFAULT_BASE_IMAGE
        self.source_dir = source_dir
        self.client = client
        self.read_only_workdir = read_only_workdir
        self.container = None
        self.volume = None

    def _labels(self) -> dict[str, str]:
        return {LABEL: "1", "swepost.run": self.run_id, "swepost.owner": owner()}

    def _read_only_mounts(self) -> list:
        """The workdir as a volume of this sandbox, mounted read-only; the working copy goes in as root-owned
        files (the model's uid could not write them even through a writable mount)."""
        from docker.types import Mount

        try:
            self.volume = self.client.volumes.create(labels=self._labels())
            if self.source_dir is not None:
                loader = self.client.containers.create(
                    self.image, command=["true"], network_mode="none", labels=self._labels(),
                    mounts=[Mount(LOADER_MOUNT, self.volume.name, type="volume")])
                try:
                    if not loader.put_archive(LOADER_MOUNT, _root_owned_tar(Path(self.source_dir))):
                        raise SandboxError("the engine refused the working copy's archive")
                finally:
                    loader.remove(force=True)
        except Exception as e:  # noqa: BLE001 - docker.errors.* and requests errors alike
            if isinstance(e, SandboxError):
                raise
            raise SandboxError(f"docker sandbox from {self.image!r}: could not prepare its read-only workdir: "
                               f"{e}") from None
        # no_copy: a working copy of our own is the workdir, never the image's files at that path
        return [Mount(self.workdir, self.volume.name, type="volume", read_only=True,
                      no_copy=self.source_dir is not None)]

    def _open(self) -> AttachChannel:
        self.client = self.client or docker_client()
        mounts = self._read_only_mounts() if self.read_only_workdir else None
        lim = self.limits
        opts = {"workdir": self.workdir, "env": self.env, "oom_files": OOM_FILES, "cmd_dir": "/tmp/.swepost",
                "uid": lim.uid, "disk_roots": DISK_ROOTS, **agent_limits(lim)}
        for attempt in (1, 2):
            sock = None
            try:
                self.container = self.client.containers.create(
                    self.image,
                    command=["sh", "-c", f'mkdir -p "{self.workdir}" && cd "{self.workdir}" && '
                             'exec python3 -u -c "$0" "$1"', AGENT_SOURCE, json.dumps(opts)],
                    stdin_open=True, tty=False, init=True, detach=True,
                    network_mode=ensure_network(self.client, lim.network_allow) if lim.network else "none",
                    mem_limit=f"{lim.memory_mb}m", memswap_limit=f"{lim.memory_mb}m",
                    pids_limit=lim.pids, nano_cpus=int(lim.cpus * 1e9),
                    cap_drop=["ALL"], cap_add=AGENT_CAPS, security_opt=["no-new-privileges"],
                    labels=self._labels(), environment={"HOME": "/root", **self.env}, mounts=mounts,
                )
                sock = self.container.attach_socket(params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
                raw = getattr(sock, "_sock", sock)
                self.container.start()
                break
            except Exception as e:  # noqa: BLE001 - docker.errors.* and requests errors alike
                if isinstance(e, SandboxError):
                    raise
                if attempt == 1 and lim.network and _network_vanished(e):
                    # another process freed idle networks (docker's pools ran out) between our ensure and start
                    with contextlib.suppress(Exception):
                        if sock is not None:
                            sock.close()
                    self._drop_container()
                    continue
                raise SandboxError(f"docker sandbox from {self.image!r} did not start: {e}") from None
        return AttachChannel(raw, keepalive=sock)

    def _drop_container(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.remove(force=True)
            self.container = None

    def start(self) -> DockerSandbox:
        super().start()
        if self.source_dir is not None and not self.read_only_workdir:  # through the agent: no host path mounted
            self.copy_contents_in(self.source_dir, self.workdir)
        return self

    def _teardown(self) -> None:
        for part in (self.container, self.volume):  # the container first: a volume in use cannot go
            if part is not None:
                try:
                    part.remove(force=True)
                except Exception:  # noqa: BLE001 - already gone is fine; gc catches the rest
                    pass

    def _diagnose(self) -> str:
        detail = ""
        if isinstance(self._channel, AttachChannel) and self._channel.stderr:
            detail = self._channel.stderr.decode(errors="replace").strip()[-500:]
        return f": {detail}" if detail else ""


class WarmPool:
    """Fresh containers started ahead of time for one image, so an episode starts without waiting.

    A container is handed out once and never returns to the pool; `acquire` refills in the background.
    """

    def __init__(self, image: str | None = None, size: int = 2, **sandbox_kwargs):
        self.image, self.size, self.kwargs = image, size, sandbox_kwargs
        self.ready: queue.Queue[DockerSandbox] = queue.Queue()
        self.stopped = threading.Event()
        self.wanted = threading.Semaphore(0)
        self.thread = threading.Thread(target=self._fill, name="swepost-warm-pool", daemon=True)
        for _ in range(size):
            self.wanted.release()
        self.thread.start()

    def _fill(self) -> None:
        while not self.stopped.is_set():
            if not self.wanted.acquire(timeout=0.2):
                continue
            if self.stopped.is_set():
                break
            try:
                box = DockerSandbox(self.image, **self.kwargs).start()
            except SandboxError:
                self.wanted.release()
                self.stopped.wait(1.0)
                continue
            if self.stopped.is_set():
                box.close()
                break
            self.ready.put(box)

    def acquire(self, timeout: float = 60.0) -> DockerSandbox:
        self.wanted.release()  # a replacement starts right away
        try:
            return self.ready.get(timeout=timeout)
        except queue.Empty:
            raise SandboxError(f"warm pool for {self.image!r} had no sandbox within {timeout} s") from None

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=60)
        while not self.ready.empty():
            self.ready.get_nowait().close()

    def __enter__(self) -> WarmPool:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def gc_docker(everything: bool = False, client=None) -> list[str]:
    """Remove swepost containers whose owner process is dead (all of them with everything=True)."""
    try:
        client = client or docker_client(timeout=30)
    except WorkFailed:
        return []
    removed = []
    # the low-level listing: its rows carry the labels, so a container removed meanwhile (by its owner's close or
    # another gc) is not inspected afterwards -- containers.list() inspects each one and raised NotFound
    for row in client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
        if everything or not owner_alive((row.get("Labels") or {}).get("swepost.owner", "")):
            try:
                client.api.remove_container(row["Id"], force=True)
                removed.append(((row.get("Names") or [row["Id"][:12]])[0]).lstrip("/"))
            except Exception:  # noqa: BLE001 - raced with another gc or the owner's own close
                pass
    try:  # read-only workdirs' volumes, once their containers are gone
        volumes = client.volumes.list(filters={"label": f"{LABEL}=1"})
    except Exception:  # noqa: BLE001 - an engine without volume listing: nothing of ours to find
        volumes = []
    for v in volumes:
        if everything or not owner_alive((v.attrs.get("Labels") or {}).get("swepost.owner", "")):
            try:
                v.remove(force=True)
                removed.append(f"volume {v.name}")
            except Exception:  # noqa: BLE001 - still in use by a live container, or raced
                pass
    return removed


def _root_owned_tar(folder: Path) -> bytes:
    """Everything inside `folder` as a tar whose entries belong to root."""
    def root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for child in sorted(folder.iterdir()):
            tar.add(child, arcname=child.name, filter=root)
    return buf.getvalue()


def _network_vanished(error: Exception) -> bool:
    """A create or start refused because the container's network is gone (removed as idle meanwhile)."""
    text = str(error).lower()
    return "network" in text and "not found" in text
