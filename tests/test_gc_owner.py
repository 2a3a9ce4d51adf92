"""`sandbox gc` and the environment server's dead-worker sweep judge a sandbox's owner by its pid."""

from __future__ import annotations

import os
import socket
import subprocess
import time

from swepost.sandbox.base import owner_alive, pid_alive


def test_a_killed_owner_not_yet_reaped_counts_as_dead():
    """A SIGKILLed worker stays a zombie until its parent reaps it; its sandboxes are orphans already. gc took a
    zombie for alive, so the environment server's sweep (which ran before the reap) left the dead worker's
    containers behind."""
    child = subprocess.Popen(["sleep", "60"])
    label = f"{socket.gethostname()}:{child.pid}"
    try:
        assert pid_alive(child.pid) and owner_alive(label)
        os.kill(child.pid, 9)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # dead, not reaped: Popen.wait is not called yet
            with open(f"/proc/{child.pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("the killed child never became a zombie")
        assert not pid_alive(child.pid) and not owner_alive(label)
    finally:
        child.kill()
        child.wait()
    assert not owner_alive(label)
    assert owner_alive(f"another-host:{child.pid}")  # another machine's: not ours to judge
