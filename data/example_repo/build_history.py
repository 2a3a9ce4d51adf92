#!/usr/bin/env python3
"""Build two git repositories with a known history, and what a correct `swepost tasks mine` concludes of each commit.

    python data/example_repo/build_history.py --out DIR [--force]

creates, in the mirror layout, DIR/swepost__minicalc-history and DIR/swepost__plantedlib, and next to each
DIR/<owner__name>.expected.json: for every commit (oldest first) its sha, subject and the miner's expected verdict
with FAIL_TO_PASS / PASS_TO_PASS (test ids as swepost's pytest report plugin names them, `path::name[params]`).

* swepost__minicalc-history: minicalc's own history (build.py's first 15 commits, byte for byte the same hashes as
  swepost__minicalc), then each of its 7 task bugs fixed by a commit carrying the task's gold patch and test patch,
  interleaved with docs, test-only and source-only commits.
* swepost__plantedlib: a small package whose history plants fixes (one adding a new test file, one in the merge
  commit of a pull-request branch), regressions, test-only, docs/CI-only, flaky, no-improvement and oversized
  commits.

What the verdicts mean (see issue 17): a commit is executed when it changes both non-test Python files and tests and
stays within LIMITS; it is run at its (first) parent with its test files applied, and at itself, with the whole
test suite, run as swepost's grader runs it (`python -m pytest`, no extra flags: a test file the parent cannot
import stops the whole collection there). FAIL_TO_PASS are tests that fail or do not exist (collection error
included) before and pass after; PASS_TO_PASS pass on both sides. For verdicts not executed (docs_only, test_only,
no_tests, not_python, no_parent) both lists are empty; too_large lists what execution would show if the limit were
lifted. Like build.py: fixed authors, dates and messages, so the hashes are the same everywhere; standard library
only.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib.util
import itertools
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

_spec = importlib.util.spec_from_file_location("minicalc_build", Path(__file__).with_name("build.py"))
minicalc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = minicalc  # dataclasses look their module up by name
_spec.loader.exec_module(minicalc)
Edits, Git, apply_edits, src = minicalc.Edits, minicalc.Git, minicalc.apply_edits, minicalc.src

LIMITS = {"max_changed_files": 10, "max_changed_lines": 500,
          "counted": "every file the commit changes against its first parent; lines added + deleted"}
UTC = datetime.timezone.utc
PLANTED_START = datetime.datetime(2025, 2, 3, 9, 0, tzinfo=UTC)
HISTORY_START = datetime.datetime(2025, 2, 10, 9, 0, tzinfo=UTC)  # after minicalc's own commits (January)
MAINTAINER, CONTRIBUTOR = minicalc.MAINTAINER, minicalc.CONTRIBUTOR
FLAKY_CHANCE = ("each of the 3 flaky tests passes with probability 1/2 per run, independently: with r runs of the "
                "commit, the chance that none of them flips is (2 * 0.5**r)**3, 1/4096 for r=5, 2**-27 for r=10")


@dataclass
class Step:
    """One commit of a planted history and what a miner must conclude of it."""

    message: str
    edits: Edits
    expect: str
    fail_to_pass: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # regression: tests it takes from pass to fail
    flaky: list[str] = field(default_factory=list)  # tests whose result is random from this commit on
    steadied: list[str] = field(default_factory=list)  # flaky tests this commit makes deterministic
    branch: str | None = None  # commit on this branch (forked from main at its first use), not on main
    merge: str | None = None  # a merge commit of this branch into main (edits must be empty)
    author: tuple[str, str] = MAINTAINER
    task: str | None = None
    note: str = ""


def ids(path: str, *names: str) -> list[str]:
    return [f"{path}::{name}" for name in names]


# ---------------------------------------------------------------------------------------------------------------
# Test ids without running pytest: module-level `test*` functions, expanded by one @pytest.mark.parametrize of
# literal values the way pytest names them. tests/test_history_data.py checks every list against real runs.

def _param_id(value) -> str:
    if isinstance(value, str):
        return value.encode("unicode_escape").decode("ascii")
    if value is None or isinstance(value, (bool, int, float)):
        return str(value)
    raise ValueError(f"no pytest id rule here for {value!r}")


def collect_test_ids(git: Git, commit: str = "HEAD") -> list[str]:
    found = []
    for rel in git("ls-tree", "-r", "--name-only", commit, "tests").split():
        if not (rel.rsplit("/", 1)[-1].startswith("test_") and rel.endswith(".py")):
            continue
        for node in ast.parse(git("show", f"{commit}:{rel}")).body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test")):
                continue
            marks = [d for d in node.decorator_list if isinstance(d, ast.Call) and ast.unparse(d.func).endswith(
                "mark.parametrize")]
            if not marks:
                found.append(f"{rel}::{node.name}")
                continue
            if len(marks) > 1:
                raise ValueError(f"{rel}::{node.name}: one parametrize only")
            names = [n.strip() for n in ast.literal_eval(marks[0].args[0]).split(",")]
            for values in ast.literal_eval(marks[0].args[1]):
                values = values if len(names) > 1 else (values,)
                found.append(f"{rel}::{node.name}[{'-'.join(map(_param_id, values))}]")
    if len(found) != len(set(found)):
        raise ValueError(f"duplicate test ids at {commit}")
    return found


# ---------------------------------------------------------------------------------------------------------------


def play(repo: Path, steps: list[Step], when: datetime.datetime, gap: datetime.timedelta, unstable=()) -> list[dict]:
    """Commit `steps` on main of `repo` (a fresh one when it has no .git), one `gap` apart from `when`; the
    manifest entries. `unstable` are test ids already failing or flaky at the start."""
    git = Git(repo)
    if not (repo / ".git").exists():
        repo.mkdir(parents=True)
        git("init", "-q")
    unstable, entries = set(unstable), []
    for step in steps:
        when += gap
        stamp = when.isoformat()
        people = {"GIT_AUTHOR_NAME": step.author[0], "GIT_AUTHOR_EMAIL": step.author[1], "GIT_AUTHOR_DATE": stamp,
                  "GIT_COMMITTER_NAME": MAINTAINER[0], "GIT_COMMITTER_EMAIL": MAINTAINER[1],
                  "GIT_COMMITTER_DATE": stamp}
        if step.merge:
            git("merge", "-q", "--no-ff", "--no-verify", "-m", step.message, step.merge, env=people)
            git("branch", "-q", "-D", step.merge)  # a merged pull request's branch is deleted
            sha = git("rev-parse", "HEAD").strip()
        else:
            if step.branch:
                exists = git("branch", "--list", step.branch).strip()
                git("checkout", "-q", *([] if exists else ["-b"]), step.branch)
            apply_edits(repo, step.edits)
            sha = git.commit(step.message, step.author, when)
            if step.branch:
                git("checkout", "-q", "main")
        unstable |= set(step.broken) | set(step.flaky)
        unstable -= set(step.fail_to_pass) | set(step.steadied)
        executed = step.expect in ("fix", "regression", "flaky", "no_improvement", "too_large")
        entry = {"sha": sha, "subject": step.message.splitlines()[0], "date": stamp, "branch": step.branch or "main",
                 "expect": step.expect, "FAIL_TO_PASS": step.fail_to_pass if executed else [],
                 "PASS_TO_PASS": [t for t in collect_test_ids(git) if t not in unstable and t not in step.fail_to_pass]
                 if executed else []}
        if step.merge:
            entry["merge_of"] = step.merge
        for key in ("broken", "flaky", "task", "note"):
            if getattr(step, key):
                entry[key] = getattr(step, key)
        if step.flaky:
            entry["flaky_chance"] = FLAKY_CHANCE
        if step.expect == "too_large":
            entry["limits"] = LIMITS
        entries.append(entry)
    return entries


# ---------------------------------------------------------------------------------------------------------------
# swepost/minicalc-history


def minicalc_history_steps() -> list[Step]:
    tasks = {f"swepost__minicalc-{n}": task for n, task in enumerate(minicalc.TASKS, 1)}
    fix_subjects = [
        "stats: mean() of empty data raises ValueError again",
        "stats: median() of an even count keeps the fraction",
        "text: slugify() collapses runs of separators",
        "dates: 2000 and 2400 are leap years",
        "arith: round_half_up() rounds halves away from zero again",
        "dates: add_months() clamps to the end of a shorter month again",
        "text: truncate() keeps the suffix inside `width`",
    ]

    def fix(n: int) -> Step:
        task = tasks[f"swepost__minicalc-{n}"]
        return Step(fix_subjects[n - 1], {**task.fix, **task.tests}, "fix", task.fail_to_pass,
                    author=CONTRIBUTOR, task=f"swepost__minicalc-{n}",
                    note="FAIL_TO_PASS is the bundled task's; PASS_TO_PASS is every other test of the suite "
                         "(a superset of the bundled task's PASS_TO_PASS, which lists only its test file)")

    readme_note = "\n" + src("""
        ## Errors

        Every statistic raises `ValueError` for empty data; `dates.days_in_month()` raises it for a month
        outside 1..12.
        """)
    return [
        fix(1),
        Step("README: document errors", {"README.md": [(None, readme_note)]}, "docs_only"),
        fix(2),
        Step("tests: more slugify cases", {"tests/test_text.py": [(None, "\n\n" + src('''
            def test_slug_digits():
                assert slugify("Route 66") == "route-66"
            '''))]}, "test_only"),
        fix(3),
        Step("arith: explain percent()'s rounding", {"minicalc/arith.py": [(None, "\n\n# percent() rounds with "
             "round_half_up(), so 12.345% of a total shows as 12.35 whatever the float error.\n")]}, "no_tests"),
        fix(4),
        fix(5),
        Step("pyproject: require Python 3.9", {"pyproject.toml": [('requires-python = ">=3.8"',
                                                                   'requires-python = ">=3.9"')]}, "not_python"),
        fix(6),
        fix(7),
        Step("Release 0.1.2", {
            "pyproject.toml": [('version = "0.1.1"', 'version = "0.1.2"')],
            "minicalc/__init__.py": [('__version__ = "0.1.1"', '__version__ = "0.1.2"')],
            "CHANGELOG.md": [("## 0.1.1\n", "## 0.1.2\n\n- Fixes for mean(), median(), slugify(), is_leap_year(), "
                              "round_half_up(), add_months() and truncate().\n\n## 0.1.1\n")],
        }, "no_tests"),
    ]


# What a miner concludes of minicalc's own commits (build.py's, after its root commit): verdict, FAIL_TO_PASS.
# ALL: the commit's test file imports a name the parent lacks, so pytest collects nothing there ("errors during
# collection" stops the session): every test of the suite does not exist before, and so is FAIL_TO_PASS.
ALL = "all"
COLLECTION_NOTE = ("the parent cannot import the commit's test file, so the run there collects nothing: every "
                   "test counts as absent before and is FAIL_TO_PASS; a feature commit, not one of the 7 task "
                   "fixes, that the issue's rules keep (a miner that rejects runs with collection errors, as "
                   "hiding results, rejects it instead)")
FEATURE_NOTE = "a feature commit, not one of the 7 task fixes, that the issue's rules keep: its new test improves"
MINICALC_OWN = [
    ("no_improvement", [], "its new test passes at the parent too"),
    ("docs_only", [], ""),
    ("fix", ids("tests/test_stats.py", "test_median_even_ints_stays_int"), FEATURE_NOTE),
    ("fix", ALL, COLLECTION_NOTE),
    ("fix", ids("tests/test_text.py", "test_slug_keeps_underscores"), FEATURE_NOTE),
    ("fix", ALL, COLLECTION_NOTE),
    ("no_tests", [], ""),
    ("fix", ALL, COLLECTION_NOTE),
    ("no_tests", [], ""),
    ("fix", ALL, COLLECTION_NOTE),
    ("no_tests", [], ""),
    ("docs_only", [], ""),
    ("no_improvement", [], "its new test passes at the parent too"),
    ("no_tests", [], ""),
]


def build_minicalc_history(repo: Path) -> list[dict]:
    minicalc.build_repo(repo)
    git = Git(repo)
    shas = git("rev-list", "--reverse", "HEAD").split()
    assert len(shas) == 1 + len(MINICALC_OWN)
    entries = []
    for sha, (expect, fail_to_pass, note) in zip(shas, [("no_parent", [], "")] + MINICALC_OWN, strict=True):
        every = collect_test_ids(git, sha)
        fail_to_pass = every if fail_to_pass == ALL else fail_to_pass
        executed = expect in ("fix", "no_improvement")
        entries.append({"sha": sha, "subject": git("show", "-s", "--format=%s", sha).strip(),
                        "date": git("show", "-s", "--format=%cI", sha).strip(), "branch": "main", "expect": expect,
                        "FAIL_TO_PASS": fail_to_pass,
                        "PASS_TO_PASS": [t for t in every if t not in fail_to_pass] if executed else []})
        if note:
            entries[-1]["note"] = note
    assert datetime.datetime.fromisoformat(entries[-1]["date"]) < HISTORY_START
    return entries + play(repo, minicalc_history_steps(), HISTORY_START, datetime.timedelta(days=8, hours=3))


# ---------------------------------------------------------------------------------------------------------------
# swepost/plantedlib

PLANTED_INITIAL = {
    ".gitignore": "__pycache__/\n*.egg-info/\n.pytest_cache/\n",
    "README.md": "# plantedlib\n\nIntervals, durations, ini files and retry delays. Pure Python.\n",
    "pyproject.toml": src("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "plantedlib"
        version = "0.1.0"
        requires-python = ">=3.8"

        [tool.setuptools]
        packages = ["plantedlib"]
        """),
    "plantedlib/__init__.py": '"""plantedlib: intervals, durations, ini files and retry delays."""\n\n'
                              '__version__ = "0.1.0"\n',
    "plantedlib/intervals.py": src('''
        """Closed intervals of numbers as (start, end) pairs."""


        def merge(intervals):
            """The union of `intervals` as sorted, disjoint pairs: overlapping or touching intervals become one."""
            merged = []
            for start, end in sorted(intervals):
                if start > end:
                    raise ValueError(f"bad interval ({start}, {end})")
                if merged and start < merged[-1][1]:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], end))
                else:
                    merged.append((start, end))
            return merged


        def total_length(intervals):
            """Length covered by `intervals`, overlaps counted once."""
            return sum(end - start for start, end in merge(intervals))


        def contains(intervals, x):
            """Whether `x` lies in one of `intervals`."""
            return any(start <= x <= end for start, end in intervals)
        '''),
    "plantedlib/units.py": src('''
        """Durations written like "1h30m", "45s" or "2d"."""

        import re

        UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


        def parse_duration(text):
            """Seconds in `text`, a run of <number><unit> parts with units d, h, m, s: "1h30m" -> 5400."""
            return sum(int(n) * UNITS[unit] for n, unit in re.findall(r"(\\d+)([dhms])", text))


        def format_duration(seconds):
            """`seconds` the way parse_duration() reads it, from the largest unit used: 5400 -> "1h30m0s"."""
            if seconds < 0:
                raise ValueError(f"negative duration {seconds}")
            parts = []
            for unit, size in UNITS.items():
                count, seconds = divmod(seconds, size)
                if count or parts or unit == "s":
                    parts.append(f"{count}{unit}")
            return "".join(parts)
        '''),
    "plantedlib/inifile.py": src('''
        """A reader for ini-style text: [section] headers, key = value lines, comment lines."""


        def parse(text):
            """{section: {key: value}}; keys before any header go in section "". Lines starting with # or ; are
            comments."""
            sections = {"": {}}
            current = sections[""]
            for number, raw in enumerate(text.splitlines(), 1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                if line.startswith("[") and line.endswith("]"):
                    current = sections.setdefault(line[1:-1].strip(), {})
                elif "=" in line:
                    key, value = line.split("=", 1)
                    current[key.strip()] = value.strip()
                else:
                    raise ValueError(f"line {number}: expected [section] or key = value, got {raw!r}")
            return sections
        '''),
    "plantedlib/retry.py": src('''
        """Delays between retries: exponential backoff."""


        def backoff_delays(attempts, base=0.5, factor=2.0, max_delay=30.0):
            """The `attempts` delays (seconds) before each retry: base, base * factor, ..., none above `max_delay`."""
            return [base * factor**i for i in range(attempts)]
        '''),
    "tests/test_intervals.py": src('''
        import pytest

        from plantedlib.intervals import contains, merge, total_length


        def test_merge_overlapping():
            assert merge([(5, 8), (1, 3), (2, 4)]) == [(1, 4), (5, 8)]


        def test_merge_rejects_reversed():
            with pytest.raises(ValueError):
                merge([(3, 1)])


        def test_total_length():
            assert total_length([(0, 2), (1, 3), (10, 11)]) == 4


        @pytest.mark.parametrize("x, expected", [(0, True), (2.5, False), (4, True)])
        def test_contains(x, expected):
            assert contains([(0, 2), (3, 5)], x) is expected
        '''),
    "tests/test_units.py": src('''
        from plantedlib.units import parse_duration


        def test_parse_duration():
            assert parse_duration("1h30m") == 5400


        def test_parse_days():
            assert parse_duration("2d") == 172800
        '''),
    "tests/test_inifile.py": src('''
        import pytest

        from plantedlib.inifile import parse


        def test_sections():
            assert parse("a = 1\\n[db]\\nhost = x\\n") == {"": {"a": "1"}, "db": {"host": "x"}}


        def test_hash_comment():
            assert parse("# note\\nk = v\\n") == {"": {"k": "v"}}


        def test_value_with_hash():
            assert parse("color = #ff0000\\n") == {"": {"color": "#ff0000"}}


        def test_bad_line():
            with pytest.raises(ValueError, match="line 2"):
                parse("a = 1\\nnonsense\\n")
        '''),
}

INTERVALS, UNITS, INI, RETRY = (f"tests/test_{name}.py" for name in ("intervals", "units", "inifile", "retry"))
JITTER = ids(RETRY, "test_jitter_within_half[0]", "test_jitter_within_half[1]", "test_jitter_within_half[2]")


def quantity_module(number: int) -> str:
    """One of the oversized commit's generated conversion tables: 45 lines."""
    rows = "".join(f'    "u{number}_{k}": {10 ** (k % 12)}.0 * {k + 1},\n' for k in range(38))
    return (f'"""Generated conversion table {number}: factors to the base unit of quantity {number}."""\n\n'
            f"BASE = \"u{number}_0\"\nFACTORS = {{\n{rows}}}\n\n\ndef to_base(value, unit):\n"
            "    return value * FACTORS[unit]\n")


def plantedlib_steps() -> list[Step]:
    quantities = {f"plantedlib/quantities/q{n:02d}.py": [(None, quantity_module(n))] for n in range(1, 33)}
    return [
        Step("docs: README usage and a CI workflow", {
            "README.md": [(None, "\nRun the tests with `python -m pytest`.\n")],
            ".github/workflows/tests.yml": [(None, src("""
                name: tests
                on: [push, pull_request]
                jobs:
                  test:
                    runs-on: ubuntu-latest
                    steps:
                      - uses: actions/checkout@v4
                      - run: pip install pytest && python -m pytest
                """))],
        }, "docs_only"),
        Step("intervals: merge() joins touching intervals", {
            "plantedlib/intervals.py": [("if merged and start < merged", "if merged and start <= merged")],
            INTERVALS: [(None, "\n\ndef test_merge_touching():\n    assert merge([(3, 5), (1, 3)]) == [(1, 5)]\n")],
        }, "fix", ids(INTERVALS, "test_merge_touching"), author=CONTRIBUTOR),
        Step("tests: cover format_duration()", {UNITS: [
            ("from plantedlib.units import parse_duration", "from plantedlib.units import format_duration, "
             "parse_duration"),
            (None, "\n\ndef test_format_duration():\n    assert format_duration(90061) == \"1d1h1m1s\"\n"
                   "\n\ndef test_format_zero():\n    assert format_duration(0) == \"0s\"\n")]}, "test_only"),
        Step("units: compile the duration pattern once", {"plantedlib/units.py": [
            ('UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}\n',
             'UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}\nPART = re.compile(r"(\\d+)([dhms])")\n'),
            ('re.findall(r"(\\d+)([dhms])", text)', "PART.findall(text)")]}, "no_tests"),
        Step("retry: cap backoff delays at max_delay", {
            "plantedlib/retry.py": [("    return [base * factor**i for i in range(attempts)]\n",
                                     "    return [min(max_delay, base * factor**i) for i in range(attempts)]\n")],
            RETRY: [(None, src('''
                from plantedlib.retry import backoff_delays


                def test_delays_grow():
                    assert backoff_delays(3) == [0.5, 1.0, 2.0]


                def test_no_attempts():
                    assert backoff_delays(0) == []


                def test_delays_capped():
                    assert backoff_delays(8, max_delay=10.0)[-3:] == [10.0, 10.0, 10.0]
                '''))],
        }, "fix", ids(RETRY, "test_delays_capped"), author=CONTRIBUTOR,
            note="tests/test_retry.py is new: with it applied at the parent, test_delays_grow and "
                 "test_no_attempts pass there too, so they are PASS_TO_PASS"),
        Step("inifile: strip inline comments", {
            "plantedlib/inifile.py": [("            current[key.strip()] = value.strip()\n",
                                       "            current[key.strip()] = value.split(\"#\", 1)[0].strip()\n")],
            INI: [(None, "\n\ndef test_inline_comment():\n"
                         "    assert parse(\"timeout = 5  # seconds\\n\") == {\"\": {\"timeout\": \"5\"}}\n")],
        }, "regression", ids(INI, "test_inline_comment"), broken=ids(INI, "test_value_with_hash"),
            author=CONTRIBUTOR, note="improves test_inline_comment, breaks test_value_with_hash"),
        Step("units: leave zero parts out of format_duration()", {
            "plantedlib/units.py": [('    """`seconds` the way parse_duration() reads it, from the largest unit '
                                     'used: 5400 -> "1h30m0s"."""\n',
                                     '    """`seconds` the way parse_duration() reads it, zero parts left out: '
                                     '5400 -> "1h30m"."""\n'),
                                    ("        if count or parts or unit == \"s\":\n", "        if count:\n")],
            UNITS: [(None, "\n\ndef test_format_skips_zero_parts():\n    assert format_duration(5400) == \"1h30m\"\n")],
        }, "regression", ids(UNITS, "test_format_skips_zero_parts"), broken=ids(UNITS, "test_format_zero"),
            author=CONTRIBUTOR, note="improves test_format_skips_zero_parts, breaks test_format_zero"),
        Step("inifile: an inline comment needs whitespace before '#'", {
            "plantedlib/inifile.py": [
                ('comment lines."""\n', 'comment lines."""\n\nimport re\n'),
                ("value.split(\"#\", 1)[0].strip()", "re.sub(r\"\\s+#.*\", \"\", value.strip())")],
            INI: [(None, "\n\ndef test_hash_inside_value():\n"
                         "    assert parse(\"url = http://x/#top\\n\") == {\"\": {\"url\": \"http://x/#top\"}}\n")],
        }, "fix", ids(INI, "test_value_with_hash", "test_hash_inside_value"),
            note="repairs test_value_with_hash, which the earlier regression broke"),
        Step("intervals: total_length() of nothing is 0", {
            "plantedlib/intervals.py": [('    """Length covered by `intervals`, overlaps counted once."""\n',
                                         '    """Length covered by `intervals`, overlaps counted once; 0 for none."""\n'
                                         "    if not intervals:\n        return 0\n")],
            INTERVALS: [(None, "\n\ndef test_total_length_empty():\n    assert total_length([]) == 0\n")],
        }, "no_improvement", note="the new test passes at the parent too"),
        Step("tests: ini comments starting with ';'", {INI: [(None, "\n\ndef test_semicolon_comment():\n"
                                                                    "    assert parse(\"; note\\nk = v\\n\") == "
                                                                    "{\"\": {\"k\": \"v\"}}\n")]},
             "test_only", branch="ini-semicolon", author=CONTRIBUTOR),
        Step("CHANGELOG: unreleased changes", {"CHANGELOG.md": [(None, src("""
            # Changelog

            ## Unreleased

            - intervals: merge() joins touching intervals; retry: delays capped at max_delay.
            - inifile: inline comments; units: format_duration() leaves zero parts out.
            """))]}, "docs_only"),
        Step("inifile: skip ';' comment lines", {"plantedlib/inifile.py": [
            ('line.startswith("#")', 'line.startswith(("#", ";"))')]}, "no_tests", branch="ini-semicolon",
             author=CONTRIBUTOR),
        Step("Merge pull request #7 from ini-semicolon\n\ninifile: ';' starts a comment line too", {}, "fix",
             ids(INI, "test_semicolon_comment"), merge="ini-semicolon",
             note="the fix is the merge commit (against its first parent); the branch's own commits are test-only "
                  "and source-only"),
        Step("pyproject: declare the test extra", {"pyproject.toml": [(
            'requires-python = ">=3.8"\n', 'requires-python = ">=3.8"\n\n[project.optional-dependencies]\n'
                                           'test = ["pytest"]\n')]}, "not_python"),
        Step("retry: jitter so that clients do not retry in lockstep", {
            "plantedlib/retry.py": [
                ('"""Delays between retries: exponential backoff."""\n',
                 '"""Delays between retries: exponential backoff, optionally with jitter."""\n\nimport random\n\n'
                 "# OS entropy: a test runner or caller seeding `random` must not put clients in lockstep\n"
                 "_rng = random.SystemRandom()\n"),
                ("max_delay=30.0):\n", "max_delay=30.0, jitter=False):\n"),
                ("    return [min(max_delay, base * factor**i) for i in range(attempts)]\n",
                 "    delays = [min(max_delay, base * factor**i) for i in range(attempts)]\n"
                 "    return [d * _rng.uniform(1, 2) for d in delays] if jitter else delays\n")],
            RETRY: [("from plantedlib.retry", "import pytest\n\nfrom plantedlib.retry"), (None, "\n\n" + src('''
                @pytest.mark.parametrize("attempt", [0, 1, 2])
                def test_jitter_within_half(attempt):
                    plain = backoff_delays(3)[attempt]
                    assert plain <= backoff_delays(3, jitter=True)[attempt] <= plain * 1.5
                '''))],
        }, "flaky", flaky=JITTER, author=CONTRIBUTOR,
            note="the jitter is uniform in [1, 2) times the delay but the tests allow only up to 1.5"),
        Step("tests: bound the jitter the way retry.py draws it", {RETRY: [
            ("def test_jitter_within_half(attempt):", "def test_jitter_within_half(attempt):  # up to double, really"),
            ("<= plain * 1.5\n", "<= plain * 2\n")]}, "test_only", steadied=JITTER),
        Step("units: format_duration(0) is \"0s\" again", {
            "plantedlib/units.py": [('    return "".join(parts)\n', '    return "".join(parts) or "0s"\n')],
            UNITS: [(None, "\n\ndef test_format_zero_parses():\n    assert parse_duration(format_duration(0)) == 0\n")],
        }, "fix", ids(UNITS, "test_format_zero"), author=CONTRIBUTOR,
            note="repairs test_format_zero, which the earlier regression broke; test_format_zero_parses passes "
                 "on both sides"),
        Step("quantities: generated conversion tables for 32 quantities", {
            **quantities,
            "plantedlib/quantities/__init__.py": [(None, '"""Generated unit-conversion tables, one module per '
                                                         'quantity."""\n')],
            "tests/test_quantities.py": [(None, src('''
                import importlib

                import pytest


                def table(number):
                    return importlib.import_module(f"plantedlib.quantities.q{number:02d}")


                @pytest.mark.parametrize("number", [1, 16, 32])
                def test_base_unit_factor(number):
                    assert table(number).to_base(3, table(number).BASE) == 3.0


                def test_scaled_unit():
                    assert table(32).to_base(2, "u32_1") == 40.0
                '''))],
        }, "too_large", ids("tests/test_quantities.py", "test_base_unit_factor[1]", "test_base_unit_factor[16]",
                               "test_base_unit_factor[32]", "test_scaled_unit"),
            note="34 files and about 1,500 added lines, far beyond LIMITS; otherwise a clean improvement, so "
                 "FAIL_TO_PASS / PASS_TO_PASS say what execution would show"),
        Step("Release 0.2.0", {
            "pyproject.toml": [('version = "0.1.0"', 'version = "0.2.0"')],
            "plantedlib/__init__.py": [('__version__ = "0.1.0"', '__version__ = "0.2.0"')],
            "CHANGELOG.md": [("## Unreleased", "## 0.2.0")]}, "no_tests"),
    ]


def build_plantedlib(repo: Path) -> list[dict]:
    root = Step("plantedlib: intervals, durations, ini files and retry delays",
                {path: [(None, text)] for path, text in PLANTED_INITIAL.items()}, "no_parent")
    first = play(repo, [root], PLANTED_START - datetime.timedelta(days=9), datetime.timedelta(days=9))
    return first + play(repo, plantedlib_steps(), PLANTED_START, datetime.timedelta(days=9, hours=2))


# ---------------------------------------------------------------------------------------------------------------

REPOS = {"swepost/minicalc-history": build_minicalc_history, "swepost/plantedlib": build_plantedlib}


def build(out: Path, force: bool = False) -> dict[str, list[dict]]:
    """Build both repositories under `out`; their manifests, also written as `out/<owner__name>.expected.json`."""
    manifests = {}
    for name, builder in REPOS.items():
        repo = out / name.replace("/", "__")
        if repo.exists():
            if not force:
                raise FileExistsError(f"{repo} exists (pass --force to replace it)")
            shutil.rmtree(repo)
        commits = builder(repo)
        manifests[name] = commits
        doc = {"repo": name, "rules": __doc__.split("What the verdicts mean ")[1].split(" Like build.py")[0]
               .replace("\n", " "), "limits": LIMITS, "commits": commits}
        out.joinpath(repo.name + ".expected.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return manifests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="mirror folder to build the repositories in")
    parser.add_argument("--force", action="store_true", help="replace repositories that exist")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        manifests = build(args.out, args.force)
    except FileExistsError as e:
        parser.error(str(e))
    for name, commits in manifests.items():
        counts = {k: len(list(g)) for k, g in itertools.groupby(sorted(c["expect"] for c in commits))}
        print(f"built {args.out / name.replace('/', '__')}: {len(commits)} commits {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
