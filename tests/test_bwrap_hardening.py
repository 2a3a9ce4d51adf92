"""What a bubblewrap sandbox sees of the host, its network and its limits without cgroups (real bwrap)."""

from __future__ import annotations

import subprocess

import pytest
from conftest import require_or_skip

import swepost.sandbox.bwrap as bwrap
from swepost.sandbox.base import Limits, SandboxError
from swepost.sandbox.bwrap import BwrapSandbox

MODULES = ["ssl", "sqlite3", "json", "venv", "pytest"]
IMPORTS = "python3 -c \"import importlib.util as u; print(' '.join(m for m in {mods} if u.find_spec(m)))\""


@pytest.fixture(autouse=True)
def need_bwrap():
    if not bwrap.bwrap_available():
        require_or_skip("bubblewrap (bwrap) is missing or cannot create namespaces here")


def test_no_host_etc_opt_or_var():
    """Defence: /etc is rebuilt from a short list and made-up account files; /opt and /var are not bound
    (before, the host's whole /etc, /opt and /var were, with a few secrets masked)."""
    with BwrapSandbox() as box:
        out = box.run("for p in /etc/shadow /etc/gshadow /etc/ssh /etc/ssl/private /etc/pip.conf /opt /var/log "
                      "/var/lib; do test -e $p && echo VISIBLE $p; done; echo done").output
        assert "VISIBLE" not in out, out
        passwd = box.run("cat /etc/passwd").output
        assert passwd != open("/etc/passwd").read()
        names = {line.split(":")[0] for line in passwd.splitlines() if line}
        assert names <= {"root", "nobody", "sandbox"}, names
        assert box.run("touch /var/tmp/x && echo ok").output.strip() == "ok"


def test_programs_still_work_inside():
    """What the minimal /etc must keep: python with its CA bundle, git, bash, patch, pytest (if the host's)."""
    host_python = IMPORTS.replace("python3", "/usr/bin/python3", 1)  # the interpreter the sandbox runs
    outside = subprocess.run(["bash", "-c", host_python.format(mods=MODULES)], capture_output=True, text=True)
    with BwrapSandbox() as box:
        assert box.run(IMPORTS.format(mods=MODULES)).output.split() == outside.stdout.split()
        assert box.run("python3 -c 'import ssl; print(ssl.create_default_context().cert_store_stats()"
                       "[\"x509_ca\"] > 0)'").output.strip() == "True"
        script = ("cd /tmp && git init -q r && cd r && echo a > f && git add f && "
                  "git -c user.name=t -c user.email=t@t commit -qm one && echo b > f && git diff > /tmp/p && "
                  "git checkout -q f && patch -p1 < /tmp/p && bash -c 'cat f'")
        r = box.run(script)
        assert r.exit_code == 0 and r.output.strip().endswith("b"), r.output


def test_network_is_refused_rather_than_shared(monkeypatch):
    """Defence: no --share-net. bwrap cannot fence a network like docker's backend, so network=True is an
    error (the host's loopback services would otherwise be one connect away)."""
    monkeypatch.delenv("SWEPOST_UNFENCED_NETWORK", raising=False)
    with pytest.raises(SandboxError, match="cannot give a sandbox network"):
        BwrapSandbox(limits=Limits(network=True)).start()


def test_rlimits_stand_in_for_cgroups(monkeypatch):
    """Defence: without cgroups, RLIMIT_NPROC (pids), RLIMIT_AS (memory) and an RLIMIT_CPU backstop are set
    inside the sandbox. (NPROC binds only where the host user is not root; root is exempt.)"""
    monkeypatch.setattr(bwrap, "_make_cgroups", lambda name, limits: [])  # as on a host without cgroup access
    with BwrapSandbox(limits=Limits(pids=50, memory_mb=1024)) as box:
        assert box.info["limits"].startswith("rlimit")
        limits = box.run("cat /proc/self/limits").output
    rows = {line[:26].strip(): line[26:].split()[0] for line in limits.splitlines()[1:]}
    assert rows["Max processes"] == "50"
    assert rows["Max address space"] == str(1024 << 20)
    assert rows["Max cpu time"] == str(bwrap.CPU_BACKSTOP_S)
