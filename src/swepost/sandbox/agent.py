"""The session agent: the one program that runs inside every sandbox (docker, bubblewrap, local).

It keeps a persistent interactive bash on a pseudo-terminal, so `cd`, exported variables and background
jobs persist between commands, and it speaks newline-delimited JSON on stdin/stdout with the host. It
enforces what the host must not have to trust the sandbox for: the per-command timeout (Ctrl-C, then
SIGKILL of the foreground process group, then a fresh shell), the output cap (head and tail kept, the
middle dropped as it streams, so memory stays flat whatever the command prints), and OOM detection. While
a command runs, the one thing the host may send is INTERRUPT (its user's Ctrl-C): the same Ctrl-C path ends
that command with exit code 130 and the session goes on.

Standard library only, and no syntax newer than Python 3.6: task images bring their own python3.
The host starts it as `python3 -u -c <this source> <json options>`.
"""

import base64
import binascii
import io
import json
import os
import pty
import re
import resource
import select
import signal
import stat
import subprocess
import sys
import tarfile
import termios
import time

MARK = b"\x1eSWEPOST:"
INTERRUPT = b"\x03\n"  # from the host while a command runs: Ctrl-C it (a late one, after the command, is ignored)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STALE = re.compile("\x1eSWEPOST:[0-9a-f.]+:-?[0-9]+\x1e")  # markers of interrupted commands


class Capture:
    """Keep the first `head` and the last `tail` bytes of a stream; count what falls between."""

    def __init__(self, head, tail):
        self.h, self.t = head, tail
        self.head, self.tail = bytearray(), bytearray()
        self.dropped = 0
        self.total = 0

    def add(self, data):
        self.total += len(data)
        if len(self.head) < self.h:
            n = self.h - len(self.head)
            self.head += data[:n]
            data = data[n:]
        self.tail += data
        excess = len(self.tail) - (self.t + 512)  # slack keeps a marker split across reads whole
        if excess > 0:
            del self.tail[:excess]
            self.dropped += excess

    def cut_at(self, offset):
        """Forget everything from stream offset `offset` on (the end marker and what follows)."""
        tail_start = self.total - len(self.tail)
        if offset <= len(self.head) and tail_start <= len(self.head):
            del self.head[offset:]
            self.tail = bytearray()
        elif offset >= tail_start:
            del self.tail[offset - tail_start:]
        self.total = offset

    def text(self):
        return STALE.sub("", self._text())

    def _text(self):
        tail = self.tail
        if len(tail) > self.t:
            self.dropped += len(tail) - self.t
            tail = tail[len(tail) - self.t:]
        if self.dropped:
            middle = "\n[... swepost: %d bytes of output truncated ...]\n" % self.dropped
            return (bytes(self.head).decode("utf-8", "replace") + middle
                    + bytes(tail).decode("utf-8", "replace"))
        return (bytes(self.head) + bytes(tail)).decode("utf-8", "replace")


class DiskQuota:
    """Bytes an episode has added, since its first command, under the dirs the shell may write (workdir,
    temp dirs, home), counted by walking them: overlayfs without project quotas (docker's usual storage)
    offers no cheaper honest count. Checked at most every second (less often when a walk is slow)."""

    def __init__(self, opts):
        self.limit = opts.get("disk_bytes")
        roots = [opts["workdir"]] + list(opts.get("disk_roots") or [])
        if opts.get("switch_uid"):
            roots.append(opts["home"])
        real = []
        for r in roots:
            r = os.path.realpath(r)
            if os.path.isdir(r) and r not in real:
                real.append(r)
        self.roots = [r for r in real if not any(r.startswith(o.rstrip("/") + "/") for o in real if o != r)]
        self.baseline = None
        self.next_check = 0.0
        self.used = 0

    def usage(self):
        total, seen, todo = 0, set(), list(self.roots)
        while todo:
            try:
                entries = list(os.scandir(todo.pop()))
            except OSError:
                continue
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    todo.append(e.path)
        return total

    def begin(self):
        """Before the first command: what is there already is the task's, not the episode's."""
        if self.limit and self.baseline is None:
            self.baseline = self.usage()

    def over(self, force=False):
        """True when the episode has written more than its limit (`force`: check now, whatever the clock)."""
        if not self.limit or self.baseline is None or (not force and time.monotonic() < self.next_check):
            return False
        started = time.monotonic()
        self.used = self.usage() - self.baseline
        self.next_check = time.monotonic() + max(1.0, 20 * (time.monotonic() - started))
        return self.used > self.limit

    def message(self):
        return ("\n[swepost: disk quota exceeded: this sandbox has %d MB more on disk than at its first command, "
                "over its limit of %d MB; the command and every process it left running were killed. "
                "Delete files to go on.]\n" % (self.used >> 20, self.limit >> 20))


class Shell:
    def __init__(self, workdir, env, oom_files, opts):
        self.workdir, self.env, self.oom_files, self.opts = workdir, env, oom_files, opts
        self.pid = self.fd = None
        self.quota = DiskQuota({"workdir": workdir})  # no limit until main() sets the real one
        self.notice = ""  # said at the start of the next command's output (a kill between commands)
        self.pending = b""  # request bytes read from fd 0 while a command ran (the next request's start)
        self.host_gone = False
        self.start()

    def start(self):
        pid, fd = pty.fork()
        if pid == 0:  # the child: an interactive bash without readline, so the tty's own modes apply
            try:
                os.chdir(self.workdir)
            except OSError:
                pass
            become_sandbox(self.opts)
            os.execvpe("bash", ["bash", "--noprofile", "--norc", "--noediting", "-i"], self.env)
        self.pid, self.fd, self.exit_status = pid, fd, None
        attrs = termios.tcgetattr(fd)
        attrs[1] &= ~termios.ONLCR  # keep \n as \n
        attrs[3] &= ~termios.ECHO  # the shell must not echo what the host sends
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self.send(b"set +H; set +o history 2>/dev/null; unset HISTFILE PROMPT_COMMAND; PS1=''; PS2=''\n")
        if self.sync(10.0) is None:
            raise RuntimeError("bash did not start")

    def send(self, data):
        while data:
            n = os.write(self.fd, data)
            data = data[n:]

    def nonce(self):
        # unpredictable, so a command cannot print the end marker of its own run to cut its output short
        # or fake its exit code (a counter or the pid could be guessed)
        return binascii.hexlify(os.urandom(12))

    def sync(self, timeout):
        """Ask the shell to print a fresh marker; return its exit status field or None on timeout."""
        nonce = self.nonce()
        self.send(b"printf '\\036SWEPOST:%s:%%d\\036' 0\n" % nonce)
        cap = Capture(0, 4096)
        return self.read_until(nonce, cap, time.monotonic() + timeout)

    def read_until(self, nonce, cap, deadline, watch=None, interruptible=False):
        """The marker's exit status; None on timeout, "eof" if the shell ended, "disk" when over the quota and
        above `watch` bytes (what was used as the command began: one deleting files must be let finish),
        "interrupt" when `interruptible` and the host sends INTERRUPT (its user pressed Ctrl-C)."""
        pattern = re.compile(re.escape(MARK + nonce + b":") + rb"(-?\d+)\x1e")
        window = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if watch is not None and self.quota.over() and self.quota.used > watch:
                return "disk"
            watched = [self.fd, 0] if interruptible and not self.host_gone else [self.fd]
            ready, _, _ = select.select(watched, [], [], min(left, 0.25))
            if 0 in ready and self.host_input():
                return "interrupt"
            if self.fd not in ready:
                # a background job can hold the terminal open after the shell exits: look for that too
                if self.exited():
                    return "eof"
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                data = b""
            if not data:  # the shell is gone (it ran `exit`, or was killed)
                return "eof"
            cap.add(data)
            window = (window + data)[-(len(data) + 64 + len(nonce)):]
            start = cap.total - len(window)  # the stream offset of window[0]
            m = pattern.search(window)
            if m:
                cap.cut_at(start + m.start())
                return int(m.group(1))

    def host_input(self):
        """Read what the host sent while a command runs: True for INTERRUPT; anything else (a close sent from
        another thread) is kept for the request loop."""
        data = os.read(0, 1 << 16)
        if not data:
            self.host_gone = True  # the request loop sees the end of input itself
            return False
        self.pending += data
        if INTERRUPT in self.pending:
            self.pending = self.pending.replace(INTERRUPT, b"", 1)
            return True
        return False

    def exited(self):
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False
        self.exit_status = exit_code(status)
        return True

    def oom_kills(self):
        return oom_kills(self.oom_files)

    def run(self, command, timeout, head, tail, cmd_dir):
        path = os.path.join(cmd_dir, "cmd")
        with open(path, "w") as f:
            f.write(command + "\n")
        nonce = self.nonce()
        oom_before = self.oom_kills()
        self.quota.begin()
        started = time.monotonic()
        self.send(b"source %s </dev/null; printf '\\036SWEPOST:%s:%%d\\036' \"$?\"\n" % (path.encode(), nonce))
        cap = Capture(head, tail)
        if self.notice:
            cap.add(self.notice.encode())
            self.notice = ""
        status = self.read_until(nonce, cap, started + timeout, watch=self.quota.used, interruptible=True)
        timed_out = status is None
        restarted = False
        if status not in (None, "eof", "disk") and self.quota.over(force=True):
            status = "disk"
        disk = status == "disk"
        if disk:  # 153 = 128 + SIGXFSZ, what a process over RLIMIT_FSIZE dies of
            cap.add(self.quota.message().encode())
            self.kill_all()
            status, restarted = 153, True
            self.start()
        elif status == "eof":  # the command ended the shell: report how, and give the next command a new one
            self.kill_all()
            status, restarted = self.exit_status, True
            self.start()
        elif timed_out:
            status, restarted = 124, self.interrupt(cap)
        elif status == "interrupt":  # 130 = 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
            status, restarted = 130, self.interrupt(cap)
        return {"exit_code": status, "output": cap.text(), "timed_out": timed_out,
                "truncated_bytes": cap.dropped, "duration": round(time.monotonic() - started, 6),
                "oom_killed": self.oom_kills() > oom_before, "session_restarted": restarted, "disk_exceeded": disk}

    def interrupt(self, cap):
        """Ctrl-C; then SIGKILL the foreground process group; then a new shell. True if restarted."""
        self.send(b"\x03")
        for escalate in (False, True):
            if escalate:
                try:
                    fg = os.tcgetpgrp(self.fd)
                    if fg > 1 and fg not in (self.pid, os.getpgrp()):  # never our own group
                        os.killpg(fg, signal.SIGKILL)
                except OSError:
                    pass
            nonce = self.nonce()
            self.send(b"printf '\\036SWEPOST:%s:%%d\\036' 0\n" % nonce)
            if self.read_until(nonce, cap, time.monotonic() + 1.0) not in (None, "eof"):
                return False
        self.kill_all()
        self.start()
        return True

    def watch_disk(self):
        """Between commands: a background writer over the quota is killed with the whole session."""
        if self.quota.over():
            self.notice = self.quota.message()
            self.kill_all()
            self.start()

    def kill_all(self):
        """SIGKILL every process of the shell's session (background jobs included), and with a sandbox uid of
        its own, every process of that uid (what left the session with setsid too). Listed and killed again
        until none is left: a loop killed after its child may fork a new one in between (`for ...; do head ...`)."""
        for _ in range(200):
            members = session_members(self.pid)
            if self.opts.get("switch_uid"):
                members += uid_members(self.opts["uid"])
            if not members:
                break
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.002)
        try:
            os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)
            if self.exit_status is None:
                self.exit_status = exit_code(status)
        except OSError:
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass


def capable(*bits):
    """Whether this process holds every capability numbered in `bits` (CAP_SETGID 6, CAP_SETUID 7)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    eff = int(line.split()[1], 16)
                    return all(eff & (1 << b) for b in bits)
    except (OSError, ValueError):
        pass
    return False


def become_sandbox(opts):
    """In a child before exec: the unprivileged sandbox uid (no groups, hence no capabilities left) and the
    shell's rlimits. Without a uid to switch to (bwrap, local) only the rlimits apply."""
    for name, value in (opts.get("rlimits") or {}).items():
        try:
            resource.setrlimit(getattr(resource, name), (int(value), int(value)))
        except (AttributeError, ValueError, OSError):
            pass
    if opts.get("switch_uid"):
        os.setgroups([])
        os.setgid(opts["gid"])
        os.setuid(opts["uid"])


def make_undumpable():
    """PR_SET_DUMPABLE 0: same-uid processes without CAP_SYS_PTRACE can then neither open /proc/<agent>/fd/*
    (to forge replies on our stdout) nor read our memory or environ. True if it took."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
        return libc.prctl(3, 0, 0, 0, 0) == 0  # PR_GET_DUMPABLE
    except Exception:  # no ctypes or no libc in the image: carry on, dumpable
        return False


def chown_tree(path, uid, gid):
    """Give `path` and everything under it to uid:gid, skipping what is already theirs (a chown on overlayfs
    copies the file up into the container's layer: images built with the right owner cost nothing)."""
    todo = [path]
    while todo:
        p = todo.pop()
        try:
            st = os.lstat(p)
            if st.st_uid != uid or st.st_gid != gid:
                os.lchown(p, uid, gid)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                todo.extend(os.path.join(p, name) for name in os.listdir(p))
            except OSError:
                pass


def mounted_read_only(path):
    """Whether the filesystem holding `path` is mounted read-only (for every process, root included)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def oom_kills(oom_files):
    total = 0
    for path in oom_files:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith("oom_kill "):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def exit_code(status):
    """A wait status as a shell reports it: the exit code, or 128 + the signal that killed it."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def session_members(sid):
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":  # fields 6 and 3 of stat: session id, state
                out.append(int(name))
        except (OSError, IndexError, ValueError):
            pass
    return out


def run_process(req, opts):
    """The `exec` op: a NEW process spawned here, never through the persistent shell (whose functions,
    aliases and variables the model controls), with exactly the env it is given, in its own session;
    on timeout its whole process group is SIGKILLed, and so is what it leaves behind when it exits."""
    argv = [str(a) for a in req["argv"]]
    timeout, head, tail = float(req.get("timeout", 60)), int(req.get("head", 65536)), int(req.get("tail", 16384))
    drop = req.get("user", "root") == "sandbox"
    env = req.get("env")
    if env is None:
        home = opts["home"] if drop else ("/root" if os.getuid() == 0 else "/tmp")
        env = {"PATH": PATH, "HOME": home, "LANG": "C.UTF-8"}
    cwd = resolve(opts["workdir"], req.get("cwd") or opts["workdir"])
    stdin = base64.b64decode(req["stdin"]) if req.get("stdin") is not None else None
    oom_before = oom_kills(opts.get("oom_files") or [])
    started = time.monotonic()
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=w, stderr=w, cwd=cwd, env={str(k): str(v) for k, v in env.items()},
                                close_fds=True, start_new_session=True,
                                preexec_fn=(lambda: become_sandbox(opts)) if drop else None)
    except OSError as e:
        os.close(r)
        os.close(w)
        return {"exit_code": 127, "output": "swepost exec: %s: %s\n" % (argv[0] if argv else "", e),
                "timed_out": False, "truncated_bytes": 0, "duration": round(time.monotonic() - started, 6),
                "oom_killed": False}
    os.close(w)
    cap = Capture(head, tail)
    pending = stdin
    if pending is not None and not pending:
        proc.stdin.close()
        pending = None
    timed_out, status, deadline = False, None, started + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        writers = [proc.stdin] if pending else []
        ready_r, ready_w, _ = select.select([r], writers, [], min(left, 0.25))
        if ready_w:
            try:
                n = os.write(proc.stdin.fileno(), pending[:65536])
                pending = pending[n:]
            except OSError:
                pending = b""
            if not pending:
                proc.stdin.close()
                pending = None
        if ready_r:
            data = os.read(r, 65536)
            if data:
                cap.add(data)
                continue
            break  # EOF: every holder of the output pipe has exited
        if proc.poll() is not None:
            break  # exited, but something it started still holds the pipe: killed below
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group: background children die with it, on timeout or not
    except OSError:
        pass
    status = proc.wait()
    drain_until = time.monotonic() + 1.0
    while time.monotonic() < drain_until:  # what the killed group printed last; escapees do not hold us up
        ready_r, _, _ = select.select([r], [], [], 0.1)
        if not ready_r:
            continue
        data = os.read(r, 65536)
        if not data:
            break
        cap.add(data)
    os.close(r)
    if proc.stdin is not None and not proc.stdin.closed:
        try:
            proc.stdin.close()
        except OSError:
            pass
    code = 124 if timed_out else (128 - status if status < 0 else status)
    return {"exit_code": code, "output": cap.text(), "timed_out": timed_out, "truncated_bytes": cap.dropped,
            "duration": round(time.monotonic() - started, 6),
            "oom_killed": oom_kills(opts.get("oom_files") or []) > oom_before}


def uid_members(uid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/status" % name) as f:
                    zombie = False
                    for line in f:
                        if line.startswith("State:"):  # before Uid: in the file
                            zombie = line.split()[1] == "Z"
                        elif line.startswith("Uid:"):
                            if int(line.split()[1]) == uid and not zombie:
                                out.append(int(name))
                            break
            except (OSError, IndexError, ValueError):
                pass
    return out


def first_missing(path):
    """The topmost dir of `path` that does not exist yet (makedirs will create it and all below), or None."""
    missing = None
    while path and path != "/" and not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def symlink_escape(opts, path):
    """Why the agent (root) must not write `path`: inside the model's workdir, a symlink the model planted
    would make it write outside (say /etc/ld.so.preload). None when it may."""
    if not opts.get("switch_uid"):
        return None  # the shell is the agent's own uid: a symlink gives it nothing it does not have
    top = os.path.realpath(opts["workdir"]).rstrip("/") + "/"
    lexical = os.path.normpath(path)
    if not (lexical + "/").startswith(top) or (os.path.realpath(path) + "/").startswith(top):
        return None
    return "refusing to follow a symlink out of the workdir: %s" % path


def give_to_sandbox(opts, paths):
    """What the agent writes inside the workdir belongs to the sandbox uid, so the model can edit it;
    elsewhere (graders' files, say) it stays the agent's."""
    if not opts.get("switch_uid"):
        return
    top = os.path.realpath(opts["workdir"]).rstrip("/") + "/"
    for path in paths:
        real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if (real + "/").startswith(top):
            chown_tree(real, opts["uid"], opts["gid"])


def resolve(workdir, path):
    return path if os.path.isabs(path) else os.path.join(workdir, path)


def handle(shell, req, opts):
    op = req.get("op")
    workdir = opts["workdir"]
    if op == "run":
        return shell.run(req["command"], float(req.get("timeout", 60)), int(req.get("head", 65536)),
                         int(req.get("tail", 16384)), opts["cmd_dir"])
    if op == "exec":
        return run_process(req, opts)
    if op == "ping":
        return {"pong": True}
    if op == "write_file":
        path = resolve(workdir, req["path"])
        escape = symlink_escape(opts, path)
        if escape:
            return {"error": escape}
        parent = os.path.dirname(path)
        made = first_missing(parent)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_NOFOLLOW if opts.get("switch_uid") else 0)
        with os.fdopen(os.open(path, flags, 0o644), "wb") as f:
            f.write(base64.b64decode(req["data"]))
        if req.get("mode") is not None:
            os.chmod(path, int(req["mode"]))
        give_to_sandbox(opts, [path] if made is None else [path, made])
        return {"written": len(base64.b64decode(req["data"]))}
    if op == "read_file":
        with open(resolve(workdir, req["path"]), "rb") as f:
            data = f.read(int(req.get("limit", 64 << 20)) + 1)
        if len(data) > int(req.get("limit", 64 << 20)):
            return {"error": "file larger than the read limit"}
        return {"data": base64.b64encode(data).decode()}
    if op == "put_tar":
        dest = resolve(workdir, req["dest"])
        made = first_missing(dest)
        if not os.path.isdir(dest):
            os.makedirs(dest)
        with tarfile.open(fileobj=io.BytesIO(base64.b64decode(req["data"]))) as tar:
            for member in tar.getmembers():
                if member.name.startswith("/") or ".." in member.name.split("/"):
                    return {"error": "unsafe path in archive: %s" % member.name}
            tar.extractall(dest)
            names = [os.path.join(dest, m.name) for m in tar.getmembers()]
        give_to_sandbox(opts, names if made is None else names + [made])
        return {"extracted": True}
    if op == "get_tar":
        src = resolve(workdir, req["path"])
        if not os.path.exists(src):
            return {"error": "no such file or directory: %s" % req["path"]}
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(src, arcname=os.path.basename(src.rstrip("/")) or ".")
        return {"data": base64.b64encode(buf.getvalue()).decode()}
    return {"error": "unknown op %r" % op}


def setup_identity(opts, env):
    """Who the shell runs as. With a sandbox uid asked for and CAP_SETUID/CAP_SETGID held (docker: the agent
    is root in the container), the shell and `exec(user="sandbox")` switch to it, and the workdir and a home
    become its own; otherwise (bwrap maps a single uid, local runs as you) they run as the agent does."""
    uid = opts.get("uid")
    opts["switch_uid"] = uid is not None and uid != os.getuid() and capable(6, 7)
    if not opts["switch_uid"]:
        opts["uid"], opts["gid"] = os.getuid(), os.getgid()
        opts["home"] = env.get("HOME") or "/tmp"
        return
    opts["gid"] = opts.get("gid", uid)
    home = "/home/sandbox"
    try:
        if not os.path.isdir(home):
            os.makedirs(home, 0o755)
    except OSError:  # a read-only /home: somewhere under /tmp then
        home = "/tmp/.swepost-home"
        if not os.path.isdir(home):
            os.makedirs(home, 0o755)
    os.lchown(home, opts["uid"], opts["gid"])
    opts["home"] = env["HOME"] = home
    env["USER"] = env["LOGNAME"] = "sandbox"
    chown_tree(opts["workdir"], opts["uid"], opts["gid"])


class RequestReader:
    """Newline-delimited requests from fd 0; `idle` runs about every second while none is coming."""

    def __init__(self, idle, shell=None):
        self.idle, self.chunks, self.shell = idle, [], shell

    def __iter__(self):
        while True:
            if self.shell is not None and self.shell.pending:  # read while a command ran
                chunk, self.shell.pending = self.shell.pending, b""
            else:
                ready, _, _ = select.select([0], [], [], 1.0)
                if not ready:
                    self.idle()
                    continue
                chunk = os.read(0, 1 << 20)
                if not chunk:
                    return
            while b"\n" in chunk:
                head, chunk = chunk.split(b"\n", 1)
                self.chunks.append(head)
                yield b"".join(self.chunks)
                self.chunks = []
            if chunk:
                self.chunks.append(chunk)


def main():
    undumpable = make_undumpable()
    opts = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    opts.setdefault("workdir", os.getcwd())
    env = dict(os.environ)
    env.update({"TERM": "dumb", "PAGER": "cat", "GIT_PAGER": "cat", "PS1": "", "PS2": ""})
    env.update(opts.get("env") or {})
    setup_identity(opts, env)
    opts["cmd_dir"] = opts.get("cmd_dir") or "/tmp/.swepost-%d" % os.getpid()
    if not os.path.isdir(opts["cmd_dir"]):
        os.makedirs(opts["cmd_dir"], 0o700)
    if opts["switch_uid"]:  # the shell reads its commands from here; only the agent may write
        os.chmod(opts["cmd_dir"], 0o755)
    quota = DiskQuota(opts)
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
    shell = Shell(opts["workdir"], env, opts.get("oom_files") or [], opts)
    shell.quota = quota
    signal.signal(signal.SIGTERM, lambda *_: (shell.kill_all(), os._exit(0)))
    out.write((json.dumps({"ready": True, "pid": os.getpid(), "python": sys.version.split()[0],
                           "shell_uid": opts["uid"], "agent_uid": os.getuid(), "undumpable": undumpable,
                           "home": opts["home"], "workdir_read_only": mounted_read_only(opts["workdir"])})
                + "\n").encode())
    out.flush()
    for line in RequestReader(shell.watch_disk, shell):
        if not line.strip() or line == INTERRUPT.strip():
            continue
        try:
            req = json.loads(line.decode("utf-8"))
        except ValueError as e:
            reply = {"error": "bad request: %s" % e}
            req = {}
        else:
            if req.get("op") == "close":
                break
            try:
                reply = handle(shell, req, opts)
            except Exception as e:  # report, keep serving: one bad request must not end the session
                reply = {"error": "%s: %s" % (type(e).__name__, e)}
        reply["id"] = req.get("id")
        out.write((json.dumps(reply) + "\n").encode())
        out.flush()
    shell.kill_all()  # stdin closed (the host went away) or close: nothing of the session survives


if __name__ == "__main__":
    main()
