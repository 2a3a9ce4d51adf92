"""Candidate commits from a repository's history: commits (and pull-request merges) that change both non-test
Python source and tests, within size limits; every other commit is a skip with its reason counted.

Every commit HEAD reaches is looked at, each against its first parent: a pull request's merge commit then stands
for its whole branch (the branch's own commits are looked at too; a candidate whose diff an earlier one already
has is a `duplicate`). A candidate's diff is split in two: `test_patch` (test files, test data, conftest.py) and
`patch` (the rest: source, docs, config), exactly the two halves a task keeps.
"""

from __future__ import annotations

import datetime
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from swepost.sandbox.repos import git, mirror_path

TEST_DIRS = {"test", "tests", "testing"}
TEST_NAME = re.compile(r"(^test_.*\.py$)|(_test\.py$)|(^conftest\.py$)")
RUNNABLE_TEST = re.compile(r"(^|/)(test_[^/]*|[^/]*_test)\.py$")
DOC_SUFFIXES = (".md", ".rst", ".txt", ".adoc")
DOC_DIRS = {"doc", "docs", "documentation"}
DOC_NAMES = {"license", "licence", "authors", "changelog", "changes", "news", "contributing", "readme", "notice"}
CI_PREFIXES = (".github/", ".gitlab/", ".circleci/", ".azure-pipelines/", ".ci/")
CI_NAMES = {".gitlab-ci.yml", ".travis.yml", "azure-pipelines.yml", "appveyor.yml", ".pre-commit-config.yaml",
            "noxfile.py", "tox.ini", "codecov.yml", ".codecov.yml"}


@dataclass
class Commit:
    sha: str
    parents: list[str]
    date: str  # committer date, ISO 8601 with offset
    subject: str
    message: str


@dataclass
class Candidate:
    """A commit worth executing: everything a worker needs, as plain data (it travels to Ray workers)."""

    repo: str
    commit: str
    parent: str
    date: str
    window: str
    message: str
    merge: bool
    patch: str
    test_patch: str
    test_files: list[str]  # the runnable Python test files the candidate changes and leaves behind
    suite: list[str]  # every runnable Python test file at the candidate commit
    files: dict[str, list[str]] = field(default_factory=dict)  # kind -> paths

    @property
    def id(self) -> str:
        return f"{self.repo}@{self.commit[:12]}"

    def to_dict(self) -> dict:
        return asdict(self)


def file_kind(path: str) -> str:
    """test | source | docs | ci | other."""
    parts = path.split("/")
    name = parts[-1]
    if any(p.lower() in TEST_DIRS for p in parts[:-1]) or TEST_NAME.search(name):
        return "test"
    if name in CI_NAMES or path.startswith(CI_PREFIXES):
        return "ci"
    if name.endswith(".py"):
        return "source"
    if (any(p.lower() in DOC_DIRS for p in parts[:-1]) or name.lower().endswith(DOC_SUFFIXES)
            or name.lower().split(".")[0] in DOC_NAMES):
        return "docs"
    return "other"


class Mirror:
    """A repo's mirror as a git dir this process can read: a bundle is cloned bare once, into a temp folder that
    lives as long as this object."""

    def __init__(self, repos: str | Path, repo: str):
        self.repo = repo
        source = mirror_path(repos, repo)
        self._tmp = None
        if source.is_file():
            from swepost.sandbox.base import owner
            from swepost.sandbox.task_sandbox import CHECKOUT_PREFIX

            self._tmp = tempfile.TemporaryDirectory(prefix=f"{CHECKOUT_PREFIX}{owner()}-")
            # named owner__name.git inside a folder of its own: `repos.checkout` finds it there as a mirror
            self.folder = Path(self._tmp.name)
            self.git_dir = self.folder / (repo.replace("/", "__") + ".git")
            git("clone", "--quiet", "--bare", str(source), str(self.git_dir))
        else:
            self.folder, self.git_dir = Path(repos), source

    def git(self, *args: str) -> str:
        return git(*args, cwd=self.git_dir).stdout

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def history(mirror: Mirror, ref: str = "HEAD", first_parent: bool = False) -> list[Commit]:
    """Every commit `ref` reaches (or its first-parent chain), parents before children, oldest first."""
    args = ["--first-parent"] if first_parent else []
    out = mirror.git("log", *args, "--topo-order", "--reverse", "-z", "--format=%H%x1f%P%x1f%cI%x1f%B", ref)
    commits = []
    for record in out.split("\0"):
        if not record.strip():
            continue
        sha, parents, date, message = record.lstrip("\n").split("\x1f", 3)
        message = message.strip()
        commits.append(Commit(sha, parents.split(), date, message.splitlines()[0] if message else "", message))
    return commits


def window_of(date: str, size: str) -> str:
    """The time window a commit date falls in: 2025Q1 (quarter), 2025-03 (month), 2025-W09 (week), 2025 (year)."""
    d = datetime.datetime.fromisoformat(date).astimezone(datetime.timezone.utc)
    if size == "quarter":
        return f"{d.year}Q{(d.month - 1) // 3 + 1}"
    if size == "month":
        return f"{d.year}-{d.month:02d}"
    if size == "week":
        iso = d.isocalendar()
        return f"{iso[0]}-W{iso[1]:02d}"
    return f"{d.year}"


def in_range(date: str, since: str | None, until: str | None) -> bool:
    """`since` and `until` are dates (YYYY-MM-DD, UTC), both included."""
    day = datetime.datetime.fromisoformat(date).astimezone(datetime.timezone.utc).date().isoformat()
    return (since is None or day >= since) and (until is None or day <= until)


def numstat(mirror: Mirror, parent: str, commit: str) -> list[tuple[str, int | None, int | None]]:
    """(path, added, deleted) per changed file; None for a binary file."""
    out = mirror.git("diff", "--numstat", "-z", "--no-renames", parent, commit)
    rows = []
    for record in out.split("\0"):
        if not record.strip():
            continue
        added, deleted, path = record.split("\t", 2)
        rows.append((path, None if added == "-" else int(added), None if deleted == "-" else int(deleted)))
    return rows


def skip_reason(kinds: dict[str, list[str]], binary: bool, lines: int, max_files: int, max_lines: int,
                runnable: list[str]) -> str | None:
    """Why a commit is not a candidate, or None when it is."""
    if binary:
        return "binary_change"
    if not kinds.get("source") and not kinds.get("test"):
        present = {k for k, v in kinds.items() if v}
        if present == {"ci"}:
            return "ci_only"
        return "docs_only" if present <= {"docs", "ci"} else "not_python"
    if not kinds.get("source"):
        return "test_only"
    if not kinds.get("test"):
        return "no_tests"
    if sum(len(v) for v in kinds.values()) > max_files:
        return "too_many_files"
    if lines > max_lines:
        return "too_many_lines"
    if not runnable:
        return "no_runnable_tests"
    return None


def scan(mirror: Mirror, *, window: str, since: str | None, until: str | None, max_files: int, max_lines: int,
         ref: str = "HEAD") -> tuple[list[Candidate], list[dict]]:
    """(candidates oldest first, skipped commits as {commit, window, reason}) in the date range."""
    import hashlib

    candidates, skipped, seen = [], [], {}
    for c in history(mirror, ref):
        if not in_range(c.date, since, until):
            continue
        win = window_of(c.date, window)
        if not c.parents:
            skipped.append({"repo": mirror.repo, "commit": c.sha, "window": win, "reason": "root_commit",
                            "subject": c.subject})
            continue
        parent = c.parents[0]
        stats = numstat(mirror, parent, c.sha)
        kinds: dict[str, list[str]] = {}
        for path, _, _ in stats:
            kinds.setdefault(file_kind(path), []).append(path)
        binary = any(a is None for _, a, _ in stats)
        lines = sum((a or 0) + (d or 0) for _, a, d in stats)
        present = _present(mirror, c.sha, kinds["test"]) if kinds.get("test") else []
        runnable = [p for p in present if RUNNABLE_TEST.search(p)]
        reason = skip_reason(kinds, binary, lines, max_files, max_lines, runnable)
        if reason is not None:
            skipped.append({"repo": mirror.repo, "commit": c.sha, "window": win, "reason": reason,
                            "subject": c.subject})
            continue
        tests = kinds["test"]
        rest = [p for p, _, _ in stats if p not in set(tests)]
        patch, test_patch = _diff(mirror, parent, c.sha, rest), _diff(mirror, parent, c.sha, tests)
        digest = hashlib.sha256((patch + "\0" + test_patch).encode()).hexdigest()
        if digest in seen:  # a one-commit pull request: its merge has the commit's own diff
            skipped.append({"repo": mirror.repo, "commit": c.sha, "window": win, "reason": "duplicate",
                            "subject": c.subject, "detail": f"same diff as {seen[digest]}"})
            continue
        seen[digest] = c.sha
        candidates.append(Candidate(
            repo=mirror.repo, commit=c.sha, parent=parent, date=c.date, window=win, message=c.message,
            merge=len(c.parents) > 1, patch=patch, test_patch=test_patch, test_files=sorted(runnable),
            suite=[p for p in _present(mirror, c.sha, []) if RUNNABLE_TEST.search(p) and file_kind(p) == "test"],
            files=kinds))
    return candidates, skipped


def window_anchor(mainline: list[Commit], everything: list[Commit], win: str, size: str) -> str:
    """The commit a window's environment profile is built at: the window's last commit on the first-parent
    chain, else its last commit at all (what the window is, not which of its commits are candidates, so a
    resumed run builds the same profile)."""
    for commits in (mainline, everything):
        inside = [c.sha for c in commits if window_of(c.date, size) == win]
        if inside:
            return inside[-1]
    raise ValueError(f"no commit in window {win}")


def _present(mirror: Mirror, commit: str, paths: list[str] | None) -> list[str]:
    """Which of `paths` the commit's tree holds (every file when `paths` is empty)."""
    out = mirror.git("--literal-pathspecs", "ls-tree", "-r", "-z", "--name-only", commit, "--", *paths)
    return [p for p in out.split("\0") if p]


def _diff(mirror: Mirror, parent: str, commit: str, paths: list[str]) -> str:
    if not paths:
        return ""
    return mirror.git("--literal-pathspecs", "diff", "--no-renames", "--no-color", "--no-ext-diff", parent, commit,
                      "--", *paths)
