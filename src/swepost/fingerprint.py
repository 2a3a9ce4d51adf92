"""Fingerprints of what a stage depends on outside its config: swepost's own code, plugged-in modules, local
files and folders by content, hub models by revision, docker images by id. Recipes put them in cache keys.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import subprocess
from pathlib import Path

from pydantic import BaseModel

from swepost.artifacts import sha256_file
from swepost.config import file_inputs
from swepost.errors import BadInput

PACKAGE_DIR = Path(__file__).resolve().parent
UNRESOLVED = "unresolved"


def hash_memo(root: Path) -> Path:
    """Where `path_fingerprint` remembers file hashes for the store at `root` (`swepost gc` prunes it)."""
    return Path(root) / "cache" / "hashes"


def with_file_contents(config: BaseModel, body: dict, memo: Path | None) -> dict:
    """`body` (a key's mapping of the config's values) with each input file the config names (FileInput fields,
    shipped names aside) replaced by the hash of its content: an edited file changes the key, a moved one
    does not. A missing file stays as its text (the stage itself says that it is missing)."""
    out = dict(body)
    for field in file_inputs(type(config), body):
        path = Path(str(body[field])).expanduser()
        if path.exists():
            out[field] = path_fingerprint(path, memo)
    return out


def code_fingerprint(package_dir: Path | None = None) -> dict[str, str]:
    """{"hash": ..., "commit": ...}: the package's git tree plus a hash of uncommitted changes in a git checkout
    (a commit that touches no file of the package keeps the hash), else a hash of the package's files. Computed
    once per process and folder."""
    return _code_fingerprint(Path(package_dir or PACKAGE_DIR).resolve())


@functools.cache
def _code_fingerprint(package_dir: Path) -> dict[str, str]:
    git = _git_state(package_dir)
    if git is not None:
        return git
    return {"hash": "files:" + path_fingerprint(package_dir, None, skip=("__pycache__",)), "commit": ""}


def _git_state(folder: Path) -> dict[str, str] | None:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, timeout=30)

    try:
        # the package's files must be tracked here: a site-packages copy inside some other checkout is not
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return None
        commit = git("rev-parse", "HEAD").stdout.decode().strip()
        tree = git("rev-parse", "HEAD:./").stdout.decode().strip()
        diff = git("diff", "HEAD", "--binary", "--", ".").stdout
        untracked = git("ls-files", "-z", "--others", "--exclude-standard", "--", ".").stdout.decode().split("\0")
    except (OSError, subprocess.SubprocessError):
        return None
    if not commit or not tree:
        return None
    h = hashlib.sha256(diff)
    for rel in sorted(u for u in untracked if u):
        f = folder / rel
        if f.is_file():
            h.update(rel.encode() + b"\0" + sha256_file(f).encode() + b"\n")
    dirty = bool(diff) or any(untracked)
    return {"hash": f"git:{tree}" + (f"+{h.hexdigest()[:16]}" if dirty else ""),
            "commit": commit[:12] + ("+uncommitted" if dirty else "")}


def module_origin(target: str) -> Path | None:
    """The source file of the module in `module:attr` / `module.attr`, found without importing it."""
    module, sep, _ = target.partition(":")
    if not sep:
        module = target.rpartition(".")[0]
    if not module:
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    return Path(origin) if origin and origin not in ("built-in", "frozen") and Path(origin).is_file() else None


def module_fingerprint(target: str) -> tuple[str, str]:
    """(sha256 of the module's source, its path) for a plugged-in component named by import path."""
    origin = module_origin(target)
    if origin is None:
        raise BadInput(f"{target!r}: no module found on the Python path (expected module:name)")
    return sha256_file(origin), str(origin)


def path_fingerprint(path: Path, cache_dir: Path | None, skip: tuple[str, ...] = ()) -> str:
    """sha256 of a file's or folder's content (names and bytes; folders named in `skip` left out). File hashes
    are remembered in `cache_dir` by (path, size, mtime), so a 15 GB model folder is read once, not at every
    plan. A memo file records the path it is of, so `prune_hash_memo` can drop those of paths that are gone."""
    path = path.resolve()
    memo_file = cache_dir / (hashlib.sha256(str(path).encode()).hexdigest()[:24] + ".json") if cache_dir else None
    try:
        stored = json.loads(memo_file.read_text()) if memo_file else {}
        memo = stored["files"] if stored.get("path") == str(path) else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        memo = {}
    files = sorted(p for p in path.rglob("*") if p.is_file() and not set(p.relative_to(path).parts) & set(skip)) \
        if path.is_dir() else [path]
    new: dict[str, list] = {}
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        rel = f.relative_to(path).as_posix() if path.is_dir() else ""  # a file: its name does not count
        old = memo.get(rel)
        digest = old[2] if old and old[:2] == [st.st_size, st.st_mtime_ns] else sha256_file(f)
        new[rel] = [st.st_size, st.st_mtime_ns, digest]
        h.update(rel.encode() + b"\0" + digest.encode() + b"\n")
    if memo_file and new != memo:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"path": str(path), "files": new}))
        os.replace(tmp, memo_file)
    return ("dir:" if path.is_dir() else "file:") + h.hexdigest()


def prune_hash_memo(cache_dir: Path, *, everything: bool = False) -> list[str]:
    """Remove the memo files of paths that no longer exist (and unreadable ones, or every one with
    everything=True); returns the paths (or file names) they were of. The memo only saves time: a pruned path
    is hashed again the next time it is needed."""
    removed = []
    for memo_file in sorted(Path(cache_dir).glob("*.json")) if Path(cache_dir).is_dir() else []:
        try:
            of = json.loads(memo_file.read_text()).get("path")
        except (OSError, ValueError, AttributeError):
            of = None
        if everything or not isinstance(of, str) or not Path(of).exists():
            memo_file.unlink(missing_ok=True)
            removed.append(of if isinstance(of, str) else memo_file.name)
    return removed


@functools.cache
def hub_revision(model_id: str, revision: str = "main") -> str:
    """The commit a hub model id resolves to: asked of the hub when online; offline (HF_HUB_OFFLINE=1), the
    locally cached snapshot's, which is what would be loaded; else "unresolved"."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return UNRESOLVED
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not offline:
        try:
            from huggingface_hub import HfApi

            return HfApi().model_info(model_id, revision=revision, timeout=10).sha or UNRESOLVED
        except Exception:  # no network, unknown id, gated: the local cache below is the best answer left
            pass
    ref = Path(constants.HF_HUB_CACHE) / f"models--{model_id.replace('/', '--')}" / "refs" / revision
    try:
        return ref.read_text().strip() or UNRESOLVED
    except OSError:
        return UNRESOLVED


@functools.cache
def docker_image_id(name: str) -> str | None:
    """The id of a local docker image, or None when no engine answers (the key then records no image)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        return client.images.get(name).id
    except Exception:  # no docker SDK, no engine, no such image
        return None
