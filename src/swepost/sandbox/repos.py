"""Task repositories from a local mirror: nothing here assumes access to a code host.

A mirror folder holds one git repository per repo, named `owner__name` (a clone, a bare repo, or a
`owner__name.bundle` file made by `git bundle create`). `checkout` puts a task's repo at its base commit, with
none of the later history.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from swepost.errors import BadInput, WorkFailed
from swepost.records import Task
from swepost.sandbox.base import CHECKOUT_PREFIX, owner


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
    """A fresh repo in `dest` holding the task's base commit and its history, and nothing later.

    The agent must not find the fix in git: no branch, tag, remote, reflog or stash, and no object of a later
    commit. So the repo is not a clone of the mirror (a clone, or a fetch from a bundle, copies every object,
    referenced or not): it is `git init` plus a fetch of the base commit over git's pack protocol, which sends
    exactly the objects the base commit reaches. HEAD is left detached at the base commit; no ref exists.
    """
    if not task.repo or not task.base_commit:
        raise BadInput(f"{task.instance_id}: needs `repo` and `base_commit` to check out from a mirror")
    source = mirror_path(repos, task.repo)
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix=f"{CHECKOUT_PREFIX}{owner()}-") as tmp:  # a kill -9 leaves it to gc
        upstream = source
        if source.is_file():  # a bundle: fetching from it would unpack all of it, so it is unbundled first
            upstream = Path(tmp) / "unbundled.git"
            git("clone", "--quiet", "--bare", str(source), str(upstream))
        found = git("rev-parse", "--verify", "--quiet", f"{task.base_commit}^{{commit}}", cwd=upstream, check=False)
        if found.returncode != 0:
            raise BadInput(f"{task.instance_id}: base_commit {task.base_commit} is not in the mirror {source}")
        base = found.stdout.strip()
        git("init", "--quiet", str(dest))
        # protocol v2 lets a client want any commit of the upstream, not only the tips of its refs
        git("-c", "protocol.version=2", "fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
            str(upstream.resolve()), base, cwd=dest)
    git("checkout", "--quiet", "--detach", base, cwd=dest)
    for ref in git("for-each-ref", "--format=%(refname)", cwd=dest).stdout.split():
        git("update-ref", "-d", ref, cwd=dest)
    git("reflog", "expire", "--expire=now", "--all", cwd=dest)
    shutil.rmtree(dest / ".git" / "logs", ignore_errors=True)
    return dest


# Run inside a sandbox: one line per way the repo at $W reaches past the base commit $B. The object check is
# the one that matters (refs, reflogs and stashes only point at objects); the others say where a leak hangs.
_LEAK_SCRIPT = r"""
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_OPTIONAL_LOCKS=0 LC_ALL=C
g() { git -c safe.directory='*' -c core.fsmonitor=false -C "$W" "$@"; }
g rev-parse --verify --quiet "$B^{commit}" >/dev/null || { echo "base commit $B is not in the repo"; exit 0; }
head=$(g rev-parse --verify --quiet HEAD)
[ "$head" = "$B" ] || echo "HEAD is $head, not the base commit"
g for-each-ref --format='%(objectname) %(refname)' | while read -r oid ref; do
  g merge-base --is-ancestor "$oid" "$B" 2>/dev/null || echo "ref $ref points past the base commit ($oid)"
done
g reflog show --all --format='%H %gd' 2>/dev/null | sort -u -k1,1 | while read -r oid what; do
  g merge-base --is-ancestor "$oid" "$B" 2>/dev/null || echo "reflog $what holds $oid, past the base commit"
done
t=$(mktemp -d)
g cat-file --batch-all-objects --batch-check='%(objectname) %(objecttype)' | sort > "$t/all"
g rev-list --objects "$B" | cut -d' ' -f1 | sort -u > "$t/reach"
join -v1 "$t/all" "$t/reach" > "$t/extra"
n=$(wc -l < "$t/extra")
[ "$n" -eq 0 ] || echo "$n object(s) the base commit does not reach, commits among them:" \
  $(awk '$2 == "commit" {print $1}' "$t/extra" | head -5)
rm -rf "$t"
"""


def future_history_leaks(box, task: Task) -> list[str]:
    """What the task's repo in a started sandbox holds beyond its base commit (empty: nothing). For auditing
    repos swepost did not build: an `image_name` task's image (SWE-bench-style images keep the whole clone,
    so `git log --all` shows the fix). Without a `base_commit`, the repo's HEAD stands for it."""
    base = task.base_commit or "HEAD"
    script = f"W={shlex.quote(task.env.workdir)}; B=$(cd \"$W\" && git -c safe.directory='*' rev-parse " \
             f"--verify --quiet {shlex.quote(base + '^{commit}')} || echo {shlex.quote(base)});" + _LEAK_SCRIPT
    r = box.run(script, timeout=600)
    if r.exit_code != 0:
        return [f"the audit itself failed (exit {r.exit_code}): {r.output[-500:]}"]
    return [line for line in r.output.splitlines() if line.strip()]
