"""The artifact store: versioned, content-hashed, atomically written datasets and checkpoints.

Layout under the store root ($SWEPOST_HOME):
    artifacts/<name>/<version>/manifest.json + data files   what `ls` sees
    staging/<name>.<pid>-<host>.<random>/                  writes in progress (invisible; `gc` clears the dead)
    cache/<key>.json                                       recipe cache key -> artifact id, and what the key
                                                           was made of (to say why a stage reruns)
    cache/hashes/                                          file hashes by (path, size, mtime); `gc` prunes gone paths
A write happens in staging/ and becomes visible with one rename, so a crash never leaves half an artifact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from swepost import __version__
from swepost.errors import BadInput

FORMAT = 1
KINDS = ("tasks", "trajectories", "sft-data", "checkpoint", "eval", "index")
MANIFEST = "manifest.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
KEY_LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "vllm")
# Fields of the manifest that do not enter the version hash: the version itself and when it was written.
_UNHASHED = ("id", "version", "created")


def default_home() -> Path:
    """$SWEPOST_HOME, else $XDG_DATA_HOME/swepost, else ~/.local/share/swepost."""
    if os.environ.get("SWEPOST_HOME"):
        return Path(os.environ["SWEPOST_HOME"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "swepost"


REDACTED = "<redacted>"
# Config keys whose values are credentials: api_key, hf_token, client_secret, password, ... (not max_tokens or
# a tokenizer's pad_token, which are settings)
_SECRET_KEY = re.compile(r"(api[_-]?key|secret|passw(or)?d|credential|authorization|^token$|"
                         r"(^|[_-])(hf|hub|auth|access|api|bearer|refresh|github|gh|wandb|openai)[_-]?token$)", re.I)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def redact_secrets(obj: Any) -> Any:
    """A copy with the value of every credential-named key replaced by REDACTED, at any depth: configs are
    written into manifests, summaries and logs, and secrets must never reach an artifact."""
    if isinstance(obj, dict):
        return {k: REDACTED if isinstance(k, str) and is_secret_key(k) and v not in (None, "")
                else redact_secrets(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_secrets(v) for v in obj]
    return obj


def without_secrets(obj: Any) -> Any:
    """A copy without credential-named keys, at any depth: for keys and hashes, which a new api_key must not
    change (it changes no result) and which must not be a function of a secret either."""
    if isinstance(obj, dict):
        return {k: without_secrets(v) for k, v in obj.items() if not (isinstance(k, str) and is_secret_key(k))}
    if isinstance(obj, (list, tuple)):
        return [without_secrets(v) for v in obj]
    return obj


def producer_record(stage: str, config: dict, *, seed: int | None = None, **extra: Any) -> dict:
    """What made an artifact: the stage, its resolved config (secrets redacted), the code and the libraries."""
    libs = {}
    for lib in KEY_LIBRARIES:
        try:
            libs[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return {"stage": stage, "config": redact_secrets(config), "seed": seed, "swepost_version": __version__,
            "git_commit": _code_commit(), "libraries": libs, **redact_secrets(extra)}


def _code_commit() -> str | None:
    """The git commit of the swepost code itself (with '+dirty' for uncommitted edits), if it is a checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's files (names and contents, in a stable order)."""
    if not path.is_dir():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def version_of(manifest: dict) -> str:
    """The short content hash: every manifest field (file hashes included) but id, version and created."""
    body = {k: v for k, v in manifest.items() if k not in _UNHASHED}
    return hashlib.sha256(canonical_json(body)).hexdigest()[:12]


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def parents(self) -> list[str]:
        return list(self.manifest.get("parents", []))

    @property
    def created(self) -> str:
        return self.manifest.get("created", "")

    @property
    def stats(self) -> dict:
        return self.manifest.get("stats", {})

    @classmethod
    def load(cls, path: Path) -> Artifact:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            manifest["id"], manifest["kind"]  # noqa: B018 - the minimum every manifest has
        except (OSError, ValueError, KeyError) as e:
            raise BadInput(f"not a readable swepost artifact ({e})", file=str(path)) from None
        return cls(path, manifest)


class ArtifactWriter:
    """Context manager for one artifact write: fill `.path`, then leave the block to publish it.

    On an exception the staging folder is removed; on a kill it stays invisible in staging/ until `gc`.
    """

    def __init__(self, store: ArtifactStore, name: str, kind: str, parents: list[str], producer: dict):
        if not NAME_RE.match(name):
            raise BadInput(f"artifact name {name!r}: use letters, digits, '.', '_' and '-' (no '@' or '/')")
        if kind not in KINDS:
            raise BadInput(f"artifact kind {kind!r}: expected one of {', '.join(KINDS)}")
        self.store, self.name, self.kind, self.producer = store, name, kind, producer
        self.parents = sorted({store.resolve(p).id for p in parents})
        self.stats: dict[str, Any] = {}
        self.path = store.root / "staging" / f"{name}.{_writer_tag()}.{uuid.uuid4().hex[:8]}"
        self.artifact: Artifact | None = None
        self._adopted: list[tuple[Path, Path]] = []  # (where it came from, where it is in staging)

    def adopt(self, source: str | Path, rel: str) -> Path:
        """Move `source` (a file or folder, e.g. a trained model in a work folder) into the artifact as `rel`
        instead of copying it: a rename on the same filesystem, so a 100 GB checkpoint costs no copy and is
        read once, by the hash. If the write fails, it is moved back where it was: nothing is lost."""
        source, dest = Path(source), self.path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(dest))  # a rename when it can be, a copy and delete across filesystems
        self._adopted.append((source, dest))
        return dest

    def __enter__(self) -> ArtifactWriter:
        self.path.mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._give_back()
            shutil.rmtree(self.path, ignore_errors=True)
            return False
        try:
            self.artifact = self._publish()
        except BaseException:
            self._give_back()
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        return False

    def _give_back(self) -> None:
        for source, dest in reversed(self._adopted):
            if dest.exists() and not source.exists():
                source.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(dest), str(source))

    def _publish(self) -> Artifact:
        files = {}
        for f in sorted(self.path.rglob("*")):
            rel = f.relative_to(self.path).as_posix()
            if f.is_symlink() or not (f.is_file() or f.is_dir()):
                raise BadInput(f"artifact {self.name}: {rel} is not a regular file")
            if f.is_file():
                if rel == MANIFEST:
                    raise BadInput(f"artifact {self.name}: {MANIFEST} is reserved")
                files[rel] = {"sha256": sha256_file(f), "size": f.stat().st_size}
                _fsync(f)
        manifest = {"format": FORMAT, "name": self.name, "kind": self.kind, "parents": self.parents,
                    "producer": redact_secrets(self.producer), "stats": redact_secrets(self.stats), "files": files}
        version = version_of(manifest)
        manifest = {"id": f"{self.name}@{version}", "version": version,
                    "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"), **manifest}
        (self.path / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        _fsync(self.path / MANIFEST)
        _fsync(self.path)
        final = self.store.root / "artifacts" / self.name / version
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self.path, final)  # the one atomic step that makes the artifact visible
        except OSError:
            if not (final / MANIFEST).exists():
                raise
            shutil.rmtree(self.path, ignore_errors=True)  # same content already stored: keep the first
        _fsync(final.parent)
        return Artifact.load(final)


class ArtifactStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else default_home()

    # --- writing ---------------------------------------------------------------------------------------
    def write(self, name: str, kind: str, *, producer: dict, parents: list[str] | tuple = ()) -> ArtifactWriter:
        return ArtifactWriter(self, name, kind, list(parents), producer)

    # --- reading ---------------------------------------------------------------------------------------
    def all(self) -> list[Artifact]:
        out = []
        for manifest in (self.root / "artifacts").glob(f"*/*/{MANIFEST}"):
            try:
                out.append(Artifact.load(manifest.parent))
            except BadInput:
                continue  # a damaged manifest shows up in `verify`, not here
        return sorted(out, key=lambda a: (a.created, a.id))

    def resolve(self, ref: str | Path) -> Artifact:
        """`name` (latest), `name@version`, `name@prefix`, a unique version prefix, or a folder path."""
        ref = str(ref).strip()
        if not ref:
            raise BadInput("empty artifact reference")
        if "/" in ref or ref.startswith((".", "~")) or os.sep in ref:
            path = Path(ref).expanduser()
            if (path / MANIFEST).is_file():
                return Artifact.load(path)
            raise BadInput(f"artifact reference {ref!r}: no {MANIFEST} in that folder")
        name, _, version = ref.partition("@")
        if version or "@" in ref:
            found = [a for a in self._versions(name) if a.version.startswith(version)]
            if len(found) == 1:
                return found[0]
            known = ", ".join(a.id for a in self._versions(name)) or "none"
            if not found:
                raise BadInput(f"no artifact {ref!r} (versions of {name!r}: {known})")
            raise BadInput(f"artifact reference {ref!r} is ambiguous: {', '.join(a.id for a in found)}")
        versions = self._versions(name)
        if versions:
            return versions[-1]
        found = [a for a in self.all() if a.version.startswith(ref)] if len(ref) >= 4 else []
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise BadInput(f"version prefix {ref!r} is ambiguous: {', '.join(a.id for a in found)}")
        raise BadInput(f"no artifact named {ref!r} in {self.root} (see `swepost artifacts ls`)")

    def _versions(self, name: str) -> list[Artifact]:
        if not NAME_RE.match(name):
            return []
        folder = self.root / "artifacts" / name
        out = [Artifact.load(p) for p in folder.iterdir() if (p / MANIFEST).is_file()] if folder.is_dir() else []
        return sorted(out, key=lambda a: (a.created, a.id))

    def find(self, artifact_id: str) -> Artifact | None:
        name, _, version = artifact_id.partition("@")
        path = self.root / "artifacts" / name / version
        return Artifact.load(path) if version and (path / MANIFEST).is_file() else None

    # --- checking --------------------------------------------------------------------------------------
    def verify(self, art: Artifact) -> list[tuple[str, str]]:
        """(problem, file) pairs: 'edited', 'missing' or 'extra' file; an empty list means intact."""
        problems = []
        listed = art.manifest.get("files", {})
        present = {f.relative_to(art.path).as_posix() for f in art.path.rglob("*")
                   if f.is_file() or f.is_symlink()}
        present.discard(MANIFEST)
        for rel in sorted(listed):
            if rel not in present:
                problems.append(("missing", rel))
            elif (art.path / rel).is_symlink() or sha256_file(art.path / rel) != listed[rel].get("sha256"):
                problems.append(("edited", rel))
        problems.extend(("extra", rel) for rel in sorted(present - set(listed)))
        if version_of(art.manifest) != art.version or art.id != f"{art.name}@{art.version}":
            problems.append(("edited", MANIFEST))
        return problems

    def children(self, art: Artifact) -> list[Artifact]:
        return [a for a in self.all() if art.id in a.parents]

    def lineage(self, art: Artifact, _seen: frozenset = frozenset()) -> dict:
        """{'artifact': Artifact, 'parents': [...]} down to the roots; a missing parent is {'missing': id}."""
        parents = []
        for pid in art.parents:
            parent = self.find(pid)
            if parent is None:
                parents.append({"missing": pid})
            elif pid in _seen:
                parents.append({"cycle": pid})
            else:
                parents.append(self.lineage(parent, _seen | {art.id}))
        return {"artifact": art, "parents": parents}

    # --- removing --------------------------------------------------------------------------------------
    def remove(self, art: Artifact, *, force: bool = False) -> None:
        users = self.children(art)
        if users and not force:
            raise BadInput(f"{art.id} is a parent of {', '.join(a.id for a in users)}; "
                           "remove those first or pass --force")
        trash = self.root / "staging" / f"rm-{art.name}.{_writer_tag()}.{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(art.path, trash)  # disappears at once; the bytes go after
        shutil.rmtree(trash, ignore_errors=True)
        try:
            art.path.parent.rmdir()
        except OSError:
            pass

    def gc(self, *, everything: bool = False) -> dict[str, list[str]]:
        """Remove writes whose process is gone (or all, with everything=True) and dangling cache entries.

        A store may be shared by several hosts (a cluster's network filesystem): a staging folder carries
        its writer's host, and only writes of this host whose process is gone are removed; another host's
        are left to that host's gc, whatever their pid means here."""
        removed: dict[str, list[str]] = {"staging": [], "cache": []}
        for entry in sorted((self.root / "staging").glob("*")):
            pid, host = _staging_owner(entry.name)
            if host not in (None, _host_key()) and not everything:
                continue
            if everything or pid is None or not _alive(pid):
                shutil.rmtree(entry, ignore_errors=True)
                removed["staging"].append(entry.name)
        for entry in sorted((self.root / "cache").glob("*.json")):
            try:
                target = json.loads(entry.read_text())["id"]
            except (OSError, ValueError, KeyError):
                target = None
            if target is None or self.find(target) is None:
                entry.unlink(missing_ok=True)
                removed["cache"].append(entry.stem)
        return removed

    # --- recipe cache ----------------------------------------------------------------------------------
    def cached(self, key: str) -> Artifact | None:
        try:
            target = json.loads((self.root / "cache" / f"{key}.json").read_text())["id"]
        except (OSError, ValueError, KeyError):
            return None
        return self.find(target)

    def remember(self, key: str, art: Artifact, *, recipe: str | None = None, step: str | None = None,
                 parts: dict | None = None) -> None:
        """Record key -> artifact, with the recipe step that ran it and the parts of its key (what it
        depended on), so that a later plan can say what changed."""
        folder = self.root / "cache"
        folder.mkdir(parents=True, exist_ok=True)
        entry = {"id": art.id, "recipe": recipe, "step": step, "parts": parts,
                 "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")}
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(entry) + "\n")
        os.replace(tmp, folder / f"{key}.json")

    def last_run(self, recipe: str, step: str) -> dict | None:
        """The key parts recorded by the latest run of this recipe step, or None."""
        best = None
        for entry in (self.root / "cache").glob("*.json"):
            try:
                found = json.loads(entry.read_text())
            except (OSError, ValueError):
                continue
            if (isinstance(found, dict) and found.get("recipe") == recipe and found.get("step") == step
                    and isinstance(found.get("parts"), dict)
                    and (best is None or str(found.get("time")) > str(best.get("time")))):
                best = found
        return best["parts"] if best else None


def _host_key() -> str:
    """This host, as a staging folder names it: a short hash of the hostname (which may hold dots)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:10]


def _writer_tag() -> str:
    return f"{os.getpid()}-{_host_key()}"


def _staging_owner(name: str) -> tuple[int | None, str | None]:
    """(pid, host key) of a staging folder's writer; host None for folders named before hosts were."""
    parts = name.split(".")
    if len(parts) < 3:
        return None, None
    pid, _, host = parts[-2].partition("-")
    try:
        return int(pid), host or None
    except ValueError:
        return None, None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
