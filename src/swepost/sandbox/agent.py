"""The session agent: the one program that runs inside every sandbox (docker, bubblewrap, local).

It keeps a persistent interactive bash on a pseudo-terminal, so `cd`, exported variables and background
jobs persist between commands, and it speaks newline-delimited JSON on stdin/stdout with the host. It
enforces what the host must not have to trust the sandbox for: the per-command timeout (Ctrl-C, then
SIGKILL of the foreground process group, then a fresh shell), the output cap (head and tail kept, the
middle dropped as it streams, so memory stays flat whatever the command prints), and OOM detection.

Standard library only, and no syntax newer than Python 3.6: task images bring their own python3.
The host starts it as `python3 -u -c <this source> <json options>`.
"""

import base64
import io
import json
import os
import pty
import re
import select
import signal
import sys
import tarfile
import termios
import time

MARK = b"\x1eSWEPOST:"
STALE = re.compile("\x1eSWEPOST:[0-9.]+:-?[0-9]+\x1e")  # markers of interrupted commands


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


class Shell:
    def __init__(self, workdir, env, oom_files):
        self.workdir, self.env, self.oom_files = workdir, env, oom_files
        self.pid = self.fd = None
        self.counter = 0
        self.start()

    def start(self):
        pid, fd = pty.fork()
        if pid == 0:  # the child: an interactive bash without readline, so the tty's own modes apply
            try:
                os.chdir(self.workdir)
            except OSError:
                pass
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
        self.counter += 1
        return ("%d.%d" % (os.getpid(), self.counter)).encode()

    def sync(self, timeout):
        """Ask the shell to print a fresh marker; return its exit status field or None on timeout."""
        nonce = self.nonce()
        self.send(b"printf '\\036SWEPOST:%s:%%d\\036' 0\n" % nonce)
        cap = Capture(0, 4096)
        return self.read_until(nonce, cap, time.monotonic() + timeout)

    def read_until(self, nonce, cap, deadline):
        pattern = re.compile(re.escape(MARK + nonce + b":") + rb"(-?\d+)\x1e")
        window = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.25))
            if not ready:
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
        total = 0
        for path in self.oom_files:
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith("oom_kill "):
                            total += int(line.split()[1])
            except (OSError, ValueError):
                pass
        return total

    def run(self, command, timeout, head, tail, cmd_dir):
        path = os.path.join(cmd_dir, "cmd")
        with open(path, "w") as f:
            f.write(command + "\n")
        nonce = self.nonce()
        oom_before = self.oom_kills()
        started = time.monotonic()
        self.send(b"source %s </dev/null; printf '\\036SWEPOST:%s:%%d\\036' \"$?\"\n" % (path.encode(), nonce))
        cap = Capture(head, tail)
        status = self.read_until(nonce, cap, started + timeout)
        timed_out = status is None
        restarted = False
        if status == "eof":  # the command ended the shell: report how, and give the next command a new one
            self.kill_all()
            status, restarted = self.exit_status, True
            self.start()
        elif timed_out:
            status, restarted = 124, self.interrupt(cap)
        return {"exit_code": status, "output": cap.text(), "timed_out": timed_out,
                "truncated_bytes": cap.dropped, "duration": round(time.monotonic() - started, 6),
                "oom_killed": self.oom_kills() > oom_before, "session_restarted": restarted}

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

    def kill_all(self):
        """SIGKILL every process of the shell's session (background jobs included)."""
        for pid in session_members(self.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
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
            if int(fields[3]) == sid:  # field 6 of stat: the session id
                out.append(int(name))
        except (OSError, IndexError, ValueError):
            pass
    return out


def resolve(workdir, path):
    return path if os.path.isabs(path) else os.path.join(workdir, path)


def handle(shell, req, opts):
    op = req.get("op")
    workdir = opts["workdir"]
    if op == "run":
        return shell.run(req["command"], float(req.get("timeout", 60)), int(req.get("head", 65536)),
                         int(req.get("tail", 16384)), opts["cmd_dir"])
    if op == "ping":
        return {"pong": True}
    if op == "write_file":
        path = resolve(workdir, req["path"])
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent)
        with open(path, "wb") as f:
            f.write(base64.b64decode(req["data"]))
        if req.get("mode") is not None:
            os.chmod(path, int(req["mode"]))
        return {"written": len(base64.b64decode(req["data"]))}
    if op == "read_file":
        with open(resolve(workdir, req["path"]), "rb") as f:
            data = f.read(int(req.get("limit", 64 << 20)) + 1)
        if len(data) > int(req.get("limit", 64 << 20)):
            return {"error": "file larger than the read limit"}
        return {"data": base64.b64encode(data).decode()}
    if op == "put_tar":
        dest = resolve(workdir, req["dest"])
        if not os.path.isdir(dest):
            os.makedirs(dest)
        with tarfile.open(fileobj=io.BytesIO(base64.b64decode(req["data"]))) as tar:
            for member in tar.getmembers():
                if member.name.startswith("/") or ".." in member.name.split("/"):
                    return {"error": "unsafe path in archive: %s" % member.name}
            tar.extractall(dest)
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


def main():
    opts = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    opts.setdefault("workdir", os.getcwd())
    opts["cmd_dir"] = opts.get("cmd_dir") or "/tmp/.swepost-%d" % os.getpid()
    if not os.path.isdir(opts["cmd_dir"]):
        os.makedirs(opts["cmd_dir"], 0o700)
    env = dict(os.environ)
    env.update({"TERM": "dumb", "PAGER": "cat", "GIT_PAGER": "cat", "PS1": "", "PS2": ""})
    env.update(opts.get("env") or {})
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
    shell = Shell(opts["workdir"], env, opts.get("oom_files") or [])
    signal.signal(signal.SIGTERM, lambda *_: (shell.kill_all(), os._exit(0)))
    out.write((json.dumps({"ready": True, "pid": os.getpid(), "python": sys.version.split()[0]}) + "\n").encode())
    out.flush()
    for line in sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
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
