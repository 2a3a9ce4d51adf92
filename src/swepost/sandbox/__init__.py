"""Where model-written commands run: docker, bubblewrap or a local subprocess, behind one protocol.

    agent.py    the session agent that runs inside every sandbox (persistent shell, timeouts, output cap)
    base.py     the Sandbox protocol and the agent client every backend shares
    docker.py   hardened containers through the docker SDK, warm pool, gc
    bwrap.py    bubblewrap namespaces with cgroup limits
    network.py  the fenced docker network of sandboxes with network: internet yes, host and LAN no
    local.py    a subprocess in a temporary working copy (isolates nothing)
    images.py   base images without a registry (debootstrap + docker import)
"""

from __future__ import annotations


def pick_backend(name: str = "auto") -> str:
    """`auto`: docker if an engine answers, else bubblewrap, else local (with a warning)."""
    if name != "auto":
        return name
    from swepost.sandbox.docker import docker_available

    if docker_available():
        return "docker"
    from swepost.sandbox.bwrap import bwrap_available

    if bwrap_available():
        return "bwrap"
    from swepost.sandbox.local import warn_no_isolation

    warn_no_isolation("no docker engine and no working bubblewrap: falling back to the local backend, "
                      "which isolates nothing")
    return "local"


def sandbox_class(name: str):
    """A backend by short name (docker, bwrap, local) or by import path (`mypkg.mod:MySandbox`)."""
    from swepost.registry import SANDBOXES, load_component

    return load_component(name, SANDBOXES, "sandbox backend")


def open_sandbox(backend: str = "auto", *, image: str | None = None, source_dir=None, limits=None,
                 env: dict | None = None, workdir: str | None = None, read_only_workdir: bool = False):
    """A started sandbox; use it as a context manager so it is always closed.

    `read_only_workdir`: the workdir is a read-only mount (docker: a volume mounted read-only; bwrap: a read-only
    bind; local: refused), checked once started by the agent inside (statvfs), so a backend that ignored the
    option is refused, never used writable."""
    cls = sandbox_class(pick_backend(backend))
    kwargs = {"image": image, "source_dir": source_dir, "limits": limits, "env": env}
    if workdir:
        kwargs["workdir"] = workdir
    if read_only_workdir:  # only when asked: backends of users' own need not know the option
        kwargs["read_only_workdir"] = True
    box = cls(**kwargs).start()
    if read_only_workdir and box.info.get("workdir_read_only") is not True:
        box.close()
        from swepost.sandbox.base import SandboxError

        raise SandboxError(f"the {box.backend} sandbox did not mount its workdir {box.workdir} read-only")
    return box
