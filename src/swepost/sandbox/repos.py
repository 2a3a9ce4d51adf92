"""Task repositories from a local mirror: nothing here assumes access to a code host.

A mirror folder holds one git repository per repo, named `owner__name` (a clone, a bare repo, or a
`owner__name.bundle` file made by `git bundle create`). `checkout` puts a task's repo at its base commit.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from swepost.errors import BadInput, WorkFailed
from swepost.records import Task


def mirror_path(repos: str | Path, repo: str) -> Path:
    """The mirror of `owner/name` inside `repos`: a folder or a bundle file named `owner__name`."""
    base = Path(repos) / repo.replace("/", "__")
    for candidate in (base, base.with_name(base.name + ".git"), base.with_name(base.name + ".bundle")):
        if candidate.exists():
            return candidate
    raise BadInput(f"repo {repo!r}: no {base.name} (folder, .git or .bundle) in {repos}")


def git(*args: str, cwd: str | Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["git", "-c", "advice.detachedHead=false", "-c", "init.defaultBranch=main", *args]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise WorkFailed(f"git {' '.join(args[:3])}: {r.stderr.strip()[-500:]}")
    return r


def checkout(task: Task, repos: str | Path, dest: str | Path) -> Path:
    """Clone the task's repo from the mirror into `dest` and check out its base commit (with history)."""
    if not task.repo or not task.base_commit:
        raise BadInput(f"{task.instance_id}: needs `repo` and `base_commit` to check out from a mirror")
    source = mirror_path(repos, task.repo)
    dest = Path(dest)
    git("clone", "--quiet", "--no-checkout", str(source), str(dest))
    if git("cat-file", "-e", f"{task.base_commit}^{{commit}}", cwd=dest, check=False).returncode != 0:
        raise BadInput(f"{task.instance_id}: base_commit {task.base_commit} is not in the mirror {source}")
    git("checkout", "--quiet", "--detach", task.base_commit, cwd=dest)
    git("remote", "remove", "origin", cwd=dest, check=False)  # the sandbox never reaches back to the mirror
    return dest
