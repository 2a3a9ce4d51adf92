"""Sandbox base images without a registry: debootstrap a Debian rootfs and `docker import` it.

Also builds from a Dockerfile where a registry is reachable. Docker SDK only, never the docker CLI.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from swepost.errors import BadInput, WorkFailed

DEFAULT_BASE_IMAGE = "swepost-base:bookworm"
DEFAULT_PACKAGES = ("python3", "python3-pytest", "python3-pip", "python3-venv", "git", "ca-certificates",
                    "procps", "patch", "less")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CA_ENV = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def docker_client(timeout: int = 120):
    """A client for the local engine, or WorkFailed saying how to start one."""
    import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as e:  # DockerException, connection refused, missing socket
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise WorkFailed(f"no docker engine answers at {where}: start dockerd ({e})") from None


def split_name(name: str) -> tuple[str, str]:
    """`repo[:tag]` -> (repo, tag); a `:` before the last `/` is a registry port, not a tag."""
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return name, "latest"
    return repo, tag


def host_mirror(suite: str = "bookworm") -> str:
    """The Debian mirror this machine's apt uses for `suite` (deb822 or one-line sources), else deb.debian.org."""
    candidates: list[tuple[str, list[str]]] = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", Path(path).read_text(errors="replace")):
            fields = {}
            for line in stanza.splitlines():
                if line.strip().startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.split()
            if "deb" in fields.get("types", []) and fields.get("uris"):
                candidates += [(uri, fields.get("suites", [])) for uri in fields["uris"]]
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        if not os.path.exists(path):
            continue
        for line in Path(path).read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                candidates.append((words[1], [words[2]]))
    for uri, suites in candidates:
        if suite in suites and "security" not in uri:
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def image_id(client, name: str) -> str | None:
    import docker

    try:
        return client.images.get(name).id
    except docker.errors.ImageNotFound:
        return None


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def _remove_rootfs(tmp: Path, log) -> None:
    """Unmount whatever debootstrap left mounted (proc, sys, dev binds) before deleting anything."""
    rootfs = tmp / "rootfs"
    if rootfs.exists():
        for point in _mounts_under(rootfs):
            subprocess.run(["umount", "-l", point], capture_output=True)
        if _mounts_under(rootfs):
            log(f"left {tmp} in place: something is still mounted under it")
            return
    shutil.rmtree(tmp, ignore_errors=True)


def _prepare_rootfs(rootfs: Path) -> None:
    """Clean apt caches, add the host's CA bundle, make /testbed, let pip install into the system python."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
                    "var/log/*.log", "var/log/apt/*"):
        for p in glob.glob(str(rootfs / pattern)):
            if os.path.isfile(p) or os.path.islink(p):
                os.unlink(p)
    if os.path.isfile(HOST_CA_BUNDLE):
        dest = rootfs / HOST_CA_BUNDLE.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink():
            dest.unlink()
        shutil.copyfile(HOST_CA_BUNDLE, dest)
        # Keep the host's extra CAs (a TLS-inspecting proxy's) if someone runs update-ca-certificates inside.
        local = rootfs / "usr/local/share/ca-certificates"
        local.mkdir(parents=True, exist_ok=True)
        for crt in glob.glob("/usr/local/share/ca-certificates/*.crt"):
            shutil.copyfile(crt, local / os.path.basename(crt))
    for marker in glob.glob(str(rootfs / "usr/lib/python3*/EXTERNALLY-MANAGED")):
        os.unlink(marker)  # a throwaway sandbox: `pip install` into the system python is what tasks expect
    (rootfs / "testbed").mkdir(exist_ok=True)


def build_base_image(name: str = DEFAULT_BASE_IMAGE, *, packages=DEFAULT_PACKAGES, suite: str = "bookworm",
                     mirror: str | None = None, rebuild: bool = False, log=print) -> str:
    """The id of image `name`, built from a debootstrap rootfs unless it already exists (or `rebuild`)."""
    client = docker_client(timeout=900)
    old = image_id(client, name)
    if old and not rebuild:
        return old
    debootstrap = shutil.which("debootstrap") or next(
        (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.path.exists(p)), None)
    if not debootstrap:
        raise BadInput("debootstrap is not installed (apt-get install debootstrap): it builds the sandbox base "
                       "image without a registry")
    mirror = mirror or host_mirror(suite)
    repo, tag = split_name(name)
    tmp = Path(tempfile.mkdtemp(prefix="swepost-rootfs-", dir=os.environ.get("SWEPOST_BUILD_TMP")))
    rootfs, logfile = tmp / "rootfs", tmp / "debootstrap.log"
    start = time.monotonic()
    try:
        log(f"debootstrap {suite} from {mirror} into {rootfs} (packages: {', '.join(packages)})")
        cmd = [debootstrap, "--variant=minbase", f"--include={','.join(packages)}", suite, str(rootfs), mirror]
        with open(logfile, "wb") as out:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        if rc != 0:
            tail = logfile.read_text(errors="replace").splitlines()[-20:]
            debootstrap_log = rootfs / "debootstrap/debootstrap.log"
            if debootstrap_log.exists():
                tail += ["--- debootstrap/debootstrap.log:"]
                tail += debootstrap_log.read_text(errors="replace").splitlines()[-20:]
            raise WorkFailed(f"debootstrap exited {rc}:\n" + "\n".join(tail))
        for point in _mounts_under(rootfs):
            subprocess.run(["umount", "-l", point], capture_output=True)
        _prepare_rootfs(rootfs)
        log(f"importing {rootfs} as {name}")
        changes = [f"ENV PATH={PATH}", "ENV LANG=C.UTF-8", *(f"ENV {k}={HOST_CA_BUNDLE}" for k in CA_ENV),
                   "WORKDIR /testbed", 'CMD ["/bin/bash"]',
                   f'LABEL swepost.base="1" swepost.suite="{suite}" swepost.packages="{",".join(packages)}"']
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "--one-file-system", "--xattrs",
                                "-cf", "-", "."], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            client.api.import_image(src=tar.stdout, repository=repo, tag=tag, changes=changes, stream_src=True)
        finally:
            tar.stdout.close()
            err = tar.stderr.read().decode(errors="replace")
            tar.wait()
        if tar.returncode != 0:
            raise WorkFailed(f"tar of {rootfs} failed ({tar.returncode}): {err.strip()[-2000:]}")
    finally:
        _remove_rootfs(tmp, log)
    new = image_id(client, name)
    if not new:
        raise WorkFailed(f"docker import finished but image {name} does not exist")
    if old and old != new:
        try:
            client.images.remove(old)
        except Exception:  # still used by a container, or tagged elsewhere: leave it
            pass
    log(f"built {name} ({new[:19]}) in {time.monotonic() - start:.0f}s")
    return new


def build_image_from_dockerfile(context_dir, tag: str, *, dockerfile: str = "Dockerfile", log=print) -> str:
    """Build `tag` from a Dockerfile (needs a reachable registry for its FROM); returns the image id."""
    import docker

    client = docker_client(timeout=900)
    context = Path(context_dir)
    if not (context / dockerfile).is_file():
        raise BadInput(f"no {dockerfile} in {context}")
    try:
        image, lines = client.images.build(path=str(context), dockerfile=dockerfile, tag=tag, rm=True,
                                           forcerm=True)
    except docker.errors.BuildError as e:
        tail = [chunk.get("stream", chunk.get("error", "")).rstrip() for chunk in e.build_log][-20:]
        raise WorkFailed(f"docker build of {tag} failed: {e.msg}\n" + "\n".join(t for t in tail if t)) from None
    except docker.errors.APIError as e:
        raise WorkFailed(f"docker build of {tag} failed: {e.explanation or e}") from None
    for chunk in lines:
        if chunk.get("stream", "").strip():
            log(chunk["stream"].rstrip())
    return image.id
