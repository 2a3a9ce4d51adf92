"""Bubblewrap backend: the agent in fresh namespaces, on a read-only host system, limited by cgroups.

For machines without a docker engine (CI runners, laptops): no network unless `limits.network`, a root
built from read-only binds of the host's system dirs (or of a `rootfs` tree such as a debootstrap
chroot) with the home, work and secret dirs left out, and one writable working copy at `workdir` (a read-only
bind with `read_only_workdir`: the sandbox holds no capabilities and may not make user namespaces, so nothing in it
can remount it).
bwrap has no resource limits of its own, so the bwrap process is moved into fresh memory/pids/cpu
cgroups before it execs (v1 or pure v2); without cgroup access it falls back to RLIMIT_AS.
Every cgroup dir and temp copy carries its owner (host:pid) in its name so `gc_bwrap` finds leftovers.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path

from swepost.sandbox.base import (
    AGENT_SOURCE,
    Limits,
    PipeChannel,
    Sandbox,
    SandboxError,
    agent_limits,
    owner,
    owner_alive,
    remove_orphan_dirs,
)
from swepost.sandbox.network import UNFENCED_ENV

CGROUP = Path("/sys/fs/cgroup")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TEMP_PREFIX = "swepost-bwrap-"
# host top-level entries the sandbox sees (read-only); /etc is rebuilt below; /opt, /var, /root, /home, /work,
# /mnt, /srv, /run ... never (the sandbox runs as namespaced uid 0, which owns the host's secrets)
SYSTEM = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"}
# the host /etc entries programs need (loader, CA bundle, alternatives, name service, python's config);
# passwd, group, hosts and hostname are made up for the sandbox; resolv.conf only with network
ETC_KEEP = ["alternatives", "ca-certificates", "ca-certificates.conf", "ssl/certs", "ssl/openssl.cnf", "ld.so.cache",
            "ld.so.conf", "ld.so.conf.d", "nsswitch.conf", "localtime", "timezone", "os-release", "debian_version",
            "protocols", "services", "mime.types", "python3", *sorted(p.name for p in Path("/etc").glob("python3.*"))]
# without cgroups: rlimits set inside the sandbox, by its own python, just before it execs the agent. Inside,
# so RLIMIT_NPROC counts the sandbox's user namespace alone, not every process of the host user (a root host
# user is exempt from it: root gets cgroups instead, or no process limit). RLIMIT_CPU is a backstop against a
# process that escaped its command and spins for the rest of the episode.
CPU_BACKSTOP_S = 4 * 3600
RLIMITS = ("import os, resource, sys\n"
           "for name, value in zip(('RLIMIT_AS', 'RLIMIT_NPROC', 'RLIMIT_CPU'), sys.argv[1:4]):\n"
           "    resource.setrlimit(getattr(resource, name), (int(value), int(value)))\n"
           "os.execv(sys.argv[4], sys.argv[4:])")
NEVER_BOUND = {"proc", "dev", "sys", "tmp", "run"}  # provided fresh (or not at all) in every sandbox


@functools.cache
def _hardening() -> tuple[str, ...] | None:
    """Extra flags this bwrap accepts (None: bwrap missing or cannot make namespaces here)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return None
    probe = ["--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"]
    # --disable-userns (bwrap >= 0.8) stops nested user namespaces, the usual road to regaining capabilities
    for extra in (("--unshare-user", "--disable-userns"), ()):
        try:
            if subprocess.run([exe, *extra, *probe], capture_output=True, timeout=30).returncode == 0:
                return extra
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


def bwrap_available() -> bool:
    return _hardening() is not None


def _write(path: Path, value) -> None:
    path.write_text(f"{value}\n")


def _cgroup_parents() -> list[Path]:
    if (CGROUP / "cgroup.controllers").exists():  # pure cgroup v2: one tree for all controllers
        return [CGROUP / "swepost"]
    return [CGROUP / ctl / "swepost" for ctl in ("memory", "pids", "cpu")]


def _make_cgroups(name: str, limits: Limits) -> list[Path]:
    """Fresh cgroups with the limits set, or [] when this host does not let us (not root, read-only)."""
    mem, pids = limits.memory_mb << 20, limits.pids
    quota = max(int(limits.cpus * 100_000), 1000) if limits.cpus > 0 else None
    if (CGROUP / "cgroup.controllers").exists():  # pure v2: one dir, every controller
        plan = {CGROUP / "swepost" / name: [("memory.max", mem), ("memory.swap.max", 0), ("pids.max", pids),
                                            ("cpu.max", f"{quota or 'max'} 100000")]}
    else:  # v1: a dir per controller; memsw after memory (it may not be below it) so swap cannot dodge the limit
        memory = [("memory.limit_in_bytes", mem), ("memory.memsw.limit_in_bytes", mem)]
        plan = {CGROUP / "memory/swepost" / name: memory,
                CGROUP / "pids/swepost" / name: [("pids.max", pids)],
                CGROUP / "cpu/swepost" / name: [("cpu.cfs_period_us", 100_000), ("cpu.cfs_quota_us", quota or -1)]}
    made: list[Path] = []
    try:
        for d, settings in plan.items():
            hierarchy = d.parent.parent
            if not (hierarchy / "cgroup.procs").exists():  # /sys/fs/cgroup may be a plain writable tmpfs
                if hierarchy.name == "cpu":
                    continue  # a cpu quota is a nicety; memory and pids are what protect the host
                raise OSError(f"no cgroup hierarchy at {hierarchy}")
            d.parent.mkdir(exist_ok=True)
            for up in (hierarchy, d.parent) if hierarchy == CGROUP else ():  # v2 children get what parents delegate
                for ctl in ("memory", "pids", "cpu"):
                    try:
                        _write(up / "cgroup.subtree_control", f"+{ctl}")
                    except OSError:
                        pass  # already on, or unavailable: the limit writes below tell
            d.mkdir()
            made.append(d)
            for file, value in settings:
                if file.startswith(("memory.memsw", "memory.swap", "cpu")) and not (d / file).exists():
                    continue  # no swap accounting, or no cpu controller: that limit is skipped, not the rest
                _write(d / file, value)
    except OSError:
        _kill_and_remove(made)
        return []
    return made


def _kill_and_remove(dirs: list[Path], wait: float = 5.0) -> list[Path]:
    """SIGKILL whatever is left in each cgroup, then rmdir it (retried: rmdir fails while tasks remain)."""
    removed, deadline = [], time.monotonic() + wait
    for d in dirs:
        while d.is_dir():
            try:
                if (d / "cgroup.kill").exists():  # v2 kills the whole subtree atomically, forks included
                    _write(d / "cgroup.kill", 1)
                for pid in (d / "cgroup.procs").read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except OSError:
                        pass
                d.rmdir()
                removed.append(d)
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
    return removed


_spawns: queue.SimpleQueue = queue.SimpleQueue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def _spawn(args: list[str], **kwargs) -> subprocess.Popen:
    """Popen from one long-lived daemon thread. --die-with-parent is PR_SET_PDEATHSIG, which fires when the
    *thread* that forked bwrap exits: a sandbox opened in a short-lived worker thread would die with it."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            _spawner = threading.Thread(target=_spawn_loop, name="swepost-bwrap-spawner", daemon=True)
            _spawner.start()
    done: Future = Future()
    _spawns.put((done, args, kwargs))
    return done.result()


def _spawn_loop() -> None:
    while True:
        done, args, kwargs = _spawns.get()
        try:
            done.set_result(subprocess.Popen(args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            done.set_exception(e)


class BwrapSandbox(Sandbox):
    backend = "bwrap"

    def __init__(self, source_dir: str | Path | None = None, *, workdir: str = "/testbed",
                 rootfs: str | Path | None = None, limits: Limits | None = None, env: dict | None = None,
                 read_only_workdir: bool = False, **_ignored):
        super().__init__(workdir=workdir, limits=limits, env=env)
        self.read_only_workdir = read_only_workdir
        if rootfs is not None and not os.path.isdir(rootfs):
            raise SandboxError(f"bwrap rootfs {rootfs} is not a directory")
        self.rootfs = str(rootfs) if rootfs is not None else None
        self.proc: subprocess.Popen | None = None
        self.cgroups: list[Path] = []
        self.stderr_tail = ""
        self.scratch = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{owner()}-"))
        self.work = self.scratch / "work"
        try:
            if source_dir is not None:
                shutil.copytree(source_dir, self.work, symlinks=True)
            else:
                self.work.mkdir()
        except BaseException:
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise

    def _binds(self, root: str, rel: str) -> list[str]:
        """Read-only binds of `root`'s entries into bwrap's new root, an empty tmpfs. Entry by entry so that the
        host's other dirs stay out, and so that the dirs on the way to `workdir` are made on the tmpfs (then
        filled the same way, one level down): a mount point cannot be created inside a read-only bind."""
        args, target = [], self.workdir.strip("/")
        for name in sorted(os.listdir(os.path.join(root, rel))):
            path, src = f"{rel}/{name}".lstrip("/"), os.path.join(root, rel, name)
            if not rel and (name in NEVER_BOUND or (self.rootfs is None and name not in SYSTEM)):
                continue
            if os.path.islink(src):
                args += ["--symlink", os.readlink(src), "/" + path]
            elif target.startswith(path + "/") and os.path.isdir(src):
                args += ["--dir", "/" + path, *self._binds(root, path)]
            elif path != target:  # the working copy goes there
                args += ["--ro-bind", src, "/" + path]
        return args

    def _command(self, flags: tuple[str, ...]) -> list[str]:
        root = self.rootfs or "/"
        args = ["bwrap", *flags, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                "--hostname", "sandbox"]
        if self.limits.network:  # only with UNFENCED_ENV=1: _open refuses otherwise
            args.append("--share-net")
        args += self._binds(root, "")
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run"]
        if os.path.isdir(os.path.join(root, "var/tmp")) and not os.path.islink(os.path.join(root, "var")):
            args += ["--tmpfs", "/var/tmp"]
        if self.rootfs is None:
            args += self._etc()
        # the agent needs a python3 inside: the tree's own, else (host without one) the interpreter running us
        if os.path.lexists(os.path.join(root, "usr/bin/python3")):
            python = "/usr/bin/python3"
        elif self.rootfs is not None:
            python = "python3"
        else:
            prefix = os.path.realpath(sys.base_prefix)  # the real install, not a venv
            python = os.path.join(prefix, "bin", "python3")
            args += ["--ro-bind", prefix, prefix]
        args += ["--ro-bind" if self.read_only_workdir else "--bind", str(self.work), self.workdir,
                 "--chdir", self.workdir]
        # bwrap maps a single uid, so the shell runs as the agent's (namespaced) uid: info["shell_uid"] says so
        opts = {"workdir": self.workdir, "env": {"HOME": "/tmp", "PATH": PATH, **self.env}, "cmd_dir": "/tmp/.swepost",
                "disk_roots": ["/tmp", "/var/tmp"], **agent_limits(self.limits)}
        agent = [python, "-u", "-c", AGENT_SOURCE, json.dumps(opts)]
        if not self.cgroups:
            lim = self.limits
            return args + [python, "-c", RLIMITS, str(lim.memory_mb << 20), str(lim.pids), str(CPU_BACKSTOP_S), *agent]
        return args + agent

    def _etc(self) -> list[str]:
        """A minimal /etc: the host's ETC_KEEP entries read-only, and a passwd / group / hosts naming only
        the sandbox's own users, so nothing of the host's accounts or secrets shows."""
        made = self.scratch / "etc"
        made.mkdir(exist_ok=True)
        uid, gid = os.getuid(), os.getgid()
        users = {0: "root", 65534: "nobody", uid: "root" if uid == 0 else "sandbox"}
        groups = {0: "root", 65534: "nogroup", gid: "root" if gid == 0 else "sandbox"}
        (made / "passwd").write_text("".join(f"{n}:x:{u}:{u if u in groups else 65534}:{n}:"
                                             f"{'/root' if u == 0 else '/tmp'}:/bin/sh\n" for u, n in users.items()))
        (made / "group").write_text("".join(f"{n}:x:{g}:\n" for g, n in groups.items()))
        (made / "hosts").write_text("127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost\n")
        (made / "hostname").write_text("sandbox\n")
        args = ["--dir", "/etc"]
        for name in ("passwd", "group", "hosts", "hostname"):
            args += ["--ro-bind", str(made / name), f"/etc/{name}"]
        for name in ETC_KEEP + (["resolv.conf"] if self.limits.network else []):
            src = f"/etc/{name}"
            if os.path.islink(src):
                args += ["--symlink", os.readlink(src), src]
            elif os.path.exists(src):
                args += ["--ro-bind", src, src]
        return args

    def _open(self) -> PipeChannel:
        flags = _hardening()
        if flags is None:
            raise SandboxError("bubblewrap is missing or cannot create namespaces on this host")
        if self.limits.network and os.environ.get(UNFENCED_ENV) != "1":
            # sharing the host's network namespace would hand the sandbox the host's loopback services, LAN
            # and cloud metadata; bwrap has no fence like the docker backend's (sandbox/network.py)
            raise SandboxError(f"the bwrap backend cannot give a sandbox network without the host's own "
                               f"services; use the docker backend (or set {UNFENCED_ENV}=1 to share the host's "
                               "network namespace)")
        self.cgroups = _make_cgroups(f"{self.run_id}-{uuid.uuid4().hex[:8]}@{owner()}", self.limits)
        self.info["limits"] = "cgroup" if self.cgroups else "rlimit (best effort)"
        # A tiny sh joins the cgroups and execs bwrap, so bwrap and all it forks start inside them with no
        # window. preexec_fn could do the same but runs Python in a forked child: unsafe when other threads
        # (parallel episodes) hold locks. No cgroups: RLIMITS inside the sandbox instead (see _command).
        steps = [f"echo $$ > {shlex.quote(str(cg / 'cgroup.procs'))}" for cg in self.cgroups]
        script = " && ".join(steps + ['exec "$@"'])
        self._stderr = open(self.scratch / "stderr", "w+b")
        # a minimal environment: the host's variables (tokens, keys) must not leak into the sandbox
        env = {"PATH": PATH, "HOME": "/tmp", "LANG": "C.UTF-8"}
        self.proc = _spawn(["/bin/sh", "-c", script, "sh", *self._command(flags)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=self._stderr, env=env, cwd="/", start_new_session=True)
        return PipeChannel(self.proc)

    def _oom_count(self) -> int | None:
        for cg in self.cgroups:
            for name in ("memory.oom_control", "memory.events"):  # v1, v2
                try:
                    for line in (cg / name).read_text().splitlines():
                        if line.startswith("oom_kill "):
                            return int(line.split()[1])
                except (OSError, ValueError):
                    pass
        return None

    def _diagnose(self) -> str:
        self._keep_stderr()
        return f": {self.stderr_tail}" if self.stderr_tail else ""

    def _keep_stderr(self) -> None:
        """bwrap's and the agent's last words, kept in memory: base calls _diagnose after the teardown."""
        if getattr(self, "_stderr", None) is None or self._stderr.closed:
            return
        try:
            self._stderr.seek(max(os.fstat(self._stderr.fileno()).st_size - 2000, 0))
            self.stderr_tail = self._stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            pass
        self._stderr.close()

    def _teardown(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self.proc.wait(timeout=5)  # the agent kills its shell's session when told to close
                except subprocess.TimeoutExpired:
                    self.proc.kill()  # bwrap gone: --die-with-parent takes the sandbox's pid 1 with it
                    self.proc.wait(timeout=5)
            _kill_and_remove(self.cgroups)  # anything that escaped the session (setsid, double fork)
        except Exception:  # noqa: BLE001 - teardown never raises; gc_bwrap catches what is left
            pass
        finally:
            self._keep_stderr()
            shutil.rmtree(self.scratch, ignore_errors=True)


def gc_bwrap(everything: bool = False) -> list[str]:
    """Remove swepost cgroups and temp working copies whose owner process is dead (all with everything=True)."""
    removed = []
    for parent in _cgroup_parents():
        for d in sorted(parent.glob("*@*")) if parent.is_dir() else []:
            if everything or not owner_alive(d.name.rpartition("@")[2]):
                removed += [str(p) for p in _kill_and_remove([d])]
    return removed + remove_orphan_dirs(TEMP_PREFIX, everything)
