#!/usr/bin/env python3
"""Build `swepost/minicalc`, a small real Python project with a deterministic git history, and its bug-fixing tasks.

    python data/example_repo/build.py --out DIR [--write-tasks data/minicalc_tasks.jsonl]

creates the git repository DIR/swepost__minicalc (the `owner__name` layout of a swepost repo mirror). Its main
branch starts with a correct project; each task then adds a commit that introduces a bug (a plausible refactor
or feature that existing tests do not catch) followed by an unrelated commit, which is the task's base_commit.
Gold fixes and hidden tests are never committed: their diffs are taken in a throw-away clone, so the mirror
holds nothing an agent could find the answer in beyond ordinary history.

Authors, committers, dates and messages are fixed and the user's git configuration is ignored, so the commit
hashes (and so the task file) are the same on every machine and every run. Standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

REPO = "swepost/minicalc"
VERSION = "0.1"
START = datetime.datetime(2025, 1, 6, 9, 0, tzinfo=datetime.timezone.utc)
MAINTAINER = ("Mira Okafor", "mira@minicalc.invalid")
CONTRIBUTOR = ("Tomas Lindqvist", "tomas@minicalc.invalid")


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# ---------------------------------------------------------------------------------------------------------------
# The project as first committed: correct code, tests that pass.

INITIAL = {
    ".gitignore": "__pycache__/\n*.egg-info/\n.pytest_cache/\nbuild/\n",
    "README.md": src("""
        # minicalc

        Small arithmetic, statistics, text and calendar helpers. Pure Python, no dependencies.

        Run the tests with `python -m pytest`.
        """),
    "pyproject.toml": src("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "minicalc"
        version = "0.1.0"
        description = "Small arithmetic, statistics, text and calendar helpers"
        requires-python = ">=3.8"

        [project.optional-dependencies]
        test = ["pytest"]

        [tool.setuptools]
        packages = ["minicalc"]
        """),
    "conftest.py": "# Lets a plain `pytest` import minicalc from a checkout without installing it.\n",
    "minicalc/__init__.py": src('''
        """minicalc: small arithmetic, statistics, text and calendar helpers."""

        __version__ = "0.1.0"
        '''),
    "minicalc/arith.py": src('''
        """Clamping and rounding."""

        from decimal import ROUND_HALF_UP, Decimal


        def clamp(value, low, high):
            """`value` limited to the closed range [low, high]."""
            if low > high:
                raise ValueError(f"empty range: low={low!r} > high={high!r}")
            return max(low, min(value, high))


        def round_half_up(x, digits=0):
            """Round `x` to `digits` decimals with halves away from zero: 2.5 -> 3, -2.5 -> -3, 0.125 -> 0.13.

            The builtin round() rounds halves to even instead (round(2.5) == 2).
            Returns an int when `digits` is 0, else a float.
            """
            exponent = Decimal(1).scaleb(-digits)
            rounded = Decimal(repr(x)).quantize(exponent, rounding=ROUND_HALF_UP)
            return int(rounded) if digits == 0 else float(rounded)
        '''),
    "minicalc/stats.py": src('''
        """Descriptive statistics over sequences of numbers."""

        from collections import Counter


        def mean(values):
            """Arithmetic mean; ValueError for empty data."""
            data = list(values)
            if not data:
                raise ValueError("mean of empty data")
            return sum(data) / len(data)


        def median(values):
            """Middle value of the sorted data; the mean of the two middle values when the count is even."""
            data = sorted(values)
            if not data:
                raise ValueError("median of empty data")
            mid = len(data) // 2
            if len(data) % 2 == 1:
                return data[mid]
            return (data[mid - 1] + data[mid]) / 2


        def mode(values):
            """Most common value; the smallest of them on a tie."""
            counts = Counter(values)
            if not counts:
                raise ValueError("mode of empty data")
            best = max(counts.values())
            return min(value for value, count in counts.items() if count == best)


        def variance(values):
            """Population variance; ValueError for empty data."""
            data = list(values)
            if not data:
                raise ValueError("variance of empty data")
            centre = sum(data) / len(data)
            return sum((x - centre) ** 2 for x in data) / len(data)
        '''),
    "minicalc/text.py": src('''
        """Slugs and truncation."""

        import re
        import unicodedata


        def slugify(text, sep="-"):
            """Lowercase ASCII words of `text` joined by `sep`: "Hello, World!" -> "hello-world"."""
            ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
            return sep.join(re.findall(r"[a-z0-9]+", ascii_text.lower()))


        def truncate(text, width, suffix="..."):
            """`text` cut to at most `width` characters, ending in `suffix` when it had to be cut."""
            if len(text) <= width:
                return text
            if width < len(suffix):
                raise ValueError(f"width {width} leaves no room for the suffix {suffix!r}")
            return text[: width - len(suffix)].rstrip() + suffix
        '''),
    "minicalc/dates.py": src('''
        """Calendar helpers for datetime.date."""


        def is_leap_year(year):
            """Gregorian leap year: divisible by 4, except centuries not divisible by 400."""
            return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


        def days_in_month(year, month):
            """Number of days in `month` (1-12) of `year`."""
            if not 1 <= month <= 12:
                raise ValueError(f"month must be 1..12, got {month}")
            if month == 2:
                return 29 if is_leap_year(year) else 28
            return 30 if month in (4, 6, 9, 11) else 31


        def add_months(day, months):
            """`day` moved by `months` calendar months (negative goes back), clamped to the end of a shorter month."""
            index = day.year * 12 + day.month - 1 + months
            year, month = index // 12, index % 12 + 1
            return day.replace(year=year, month=month, day=min(day.day, days_in_month(year, month)))
        '''),
    "tests/test_arith.py": src('''
        import pytest

        from minicalc.arith import clamp, round_half_up


        @pytest.mark.parametrize("value, expected", [(5, 5), (-3, 0), (42, 10)])
        def test_clamp(value, expected):
            assert clamp(value, 0, 10) == expected


        def test_clamp_empty_range():
            with pytest.raises(ValueError):
                clamp(1, 5, 0)


        @pytest.mark.parametrize("x, expected", [(1.4, 1), (1.6, 2), (3.5, 4), (-1.6, -2)])
        def test_round_half_up(x, expected):
            assert round_half_up(x) == expected


        def test_round_half_up_digits():
            assert round_half_up(3.14159, 2) == 3.14
        '''),
    "tests/test_stats.py": src('''
        import pytest

        from minicalc.stats import mean, median, mode, variance


        def test_mean():
            assert mean([1, 2, 3, 4]) == 2.5


        def test_mean_single():
            assert mean([7]) == 7


        def test_median_odd():
            assert median([3, 1, 2]) == 2


        def test_median_single():
            assert median([5]) == 5


        def test_median_empty():
            with pytest.raises(ValueError):
                median([])


        def test_mode():
            assert mode([1, 2, 2, 3]) == 2


        def test_mode_tie_takes_smallest():
            assert mode([3, 1, 3, 1]) == 1


        def test_variance():
            assert variance([2, 4, 4, 4, 5, 5, 7, 9]) == 4
        '''),
    "tests/test_text.py": src('''
        import pytest

        from minicalc.text import slugify, truncate


        @pytest.mark.parametrize(
            "text, expected",
            [
                ("Hello World", "hello-world"),
                ("Hello, World!", "hello-world"),
            ],
        )
        def test_slug(text, expected):
            assert slugify(text) == expected


        def test_slug_strips_accents():
            assert slugify("D\u00e9j\u00e0 vu") == "deja-vu"


        def test_slug_custom_separator():
            assert slugify("Hello World", sep="_") == "hello_world"


        def test_truncate_short_text_unchanged():
            assert truncate("hello", 10) == "hello"


        def test_truncate():
            assert truncate("hello world", 8) == "hello..."


        def test_truncate_width_too_small():
            with pytest.raises(ValueError):
                truncate("hello world", 2)
        '''),
    "tests/test_dates.py": src('''
        import datetime

        import pytest

        from minicalc.dates import add_months, days_in_month, is_leap_year


        def d(text):
            return datetime.date.fromisoformat(text)


        @pytest.mark.parametrize("year, expected", [(2024, True), (2023, False), (1900, False), (2100, False)])
        def test_is_leap_year(year, expected):
            assert is_leap_year(year) is expected


        @pytest.mark.parametrize("month, expected", [(1, 31), (2, 28), (4, 30), (12, 31)])
        def test_days_in_month(month, expected):
            assert days_in_month(2023, month) == expected


        def test_days_in_month_leap_february():
            assert days_in_month(2024, 2) == 29


        def test_days_in_month_rejects_bad_month():
            with pytest.raises(ValueError):
                days_in_month(2024, 13)


        @pytest.mark.parametrize(
            "start, months, expected",
            [
                ("2024-01-15", 1, "2024-02-15"),
                ("2024-11-10", 3, "2025-02-10"),
                ("2024-03-10", -3, "2023-12-10"),
            ],
        )
        def test_add_months(start, months, expected):
            assert add_months(d(start), months) == d(expected)
        '''),
}

# ---------------------------------------------------------------------------------------------------------------
# Edits: {path: [(old, new), ...]}, each `old` occurring exactly once in the file; old=None appends `new`.

Edits = dict[str, list[tuple[str | None, str]]]


@dataclass
class Commit:
    message: str
    edits: Edits
    author: tuple[str, str] = MAINTAINER


@dataclass
class Task:
    problem_statement: str
    introduce: Commit  # the commit that brings the bug in
    follow_up: Commit  # an unrelated later commit: the task's base_commit
    fix: Edits  # the gold patch (source files only)
    tests: Edits  # the hidden tests (tests/ only)
    fail_to_pass: list[str]
    pass_to_pass: list[str]
    base_commit: str = field(default="", init=False)


def ids(path: str, *names: str) -> list[str]:
    return [f"{path}::{name}" for name in names]


STATS_P2P = ids("tests/test_stats.py", "test_mean", "test_mean_single", "test_mean_generator", "test_median_odd",
                "test_median_single", "test_median_empty", "test_mode", "test_mode_tie_takes_smallest",
                "test_variance")
DATES_P2P = ids("tests/test_dates.py", "test_is_leap_year[2024-True]", "test_is_leap_year[2023-False]",
                "test_is_leap_year[1900-False]", "test_is_leap_year[2100-False]", "test_days_in_month[1-31]",
                "test_days_in_month[2-28]", "test_days_in_month[4-30]", "test_days_in_month[12-31]",
                "test_days_in_month_leap_february", "test_days_in_month_rejects_bad_month",
                "test_add_months[2024-01-15-1-2024-02-15]", "test_add_months[2024-11-10-3-2025-02-10]",
                "test_add_months[2024-03-10--3-2023-12-10]", "test_weekday_name")
TEXT_P2P = ids("tests/test_text.py", "test_slug[Hello World-hello-world]", "test_slug[Hello, World!-hello-world]",
               "test_slug_strips_accents", "test_slug_custom_separator", "test_slug_keeps_underscores",
               "test_truncate_short_text_unchanged", "test_truncate", "test_truncate_width_too_small",
               "test_word_count")

TASKS = [
    Task(
        problem_statement=src("""
            `mean([])` raises ZeroDivisionError instead of ValueError

            Since upgrading to main, calling `minicalc.stats.mean` on an empty list crashes with a bare
            `ZeroDivisionError`:

            ```python
            >>> from minicalc.stats import mean
            >>> mean([])
            Traceback (most recent call last):
              ...
            ZeroDivisionError: division by zero
            ```

            The docstring says empty data gives a `ValueError`, and `median([])` / `variance([])` still do.
            Our report code catches `ValueError` to print "no data" for empty groups, so this now takes down
            the whole report. The same happens for an empty generator (`mean(x for x in [])`).

            Expected: `ValueError("mean of empty data")` for any empty iterable.
            """),
        introduce=Commit("stats: let mean() consume any iterable once instead of copying it", {
            "minicalc/stats.py": [(
                src('''
                    def mean(values):
                        """Arithmetic mean; ValueError for empty data."""
                        data = list(values)
                        if not data:
                            raise ValueError("mean of empty data")
                        return sum(data) / len(data)
                    '''),
                src('''
                    def mean(values):
                        """Arithmetic mean of any iterable, consumed once; ValueError for empty data."""
                        total = 0
                        count = 0
                        for value in values:
                            total += value
                            count += 1
                        return total / count
                    '''),
            )],
            "tests/test_stats.py": [(
                "def test_median_odd",
                "def test_mean_generator():\n    assert mean(x * x for x in range(4)) == 3.5\n\n\ndef test_median_odd",
            )],
        }, CONTRIBUTOR),
        follow_up=Commit("Add a changelog", {"CHANGELOG.md": [(None, src("""
            # Changelog

            ## Unreleased

            - `stats.mean()` consumes any iterable once instead of copying it into a list.

            ## 0.1.0

            - First release: `arith`, `stats`, `text` and `dates`.
            """))]}),
        fix={"minicalc/stats.py": [(
            "        count += 1\n    return total / count\n",
            "        count += 1\n    if count == 0:\n        raise ValueError(\"mean of empty data\")\n"
            "    return total / count\n",
        )]},
        tests={"tests/test_stats.py": [(
            "def test_median_odd",
            src('''
                def test_mean_empty():
                    with pytest.raises(ValueError, match="empty"):
                        mean([])


                def test_mean_empty_iterator():
                    with pytest.raises(ValueError, match="empty"):
                        mean(iter([]))


                def test_median_odd'''),
        )]},
        fail_to_pass=ids("tests/test_stats.py", "test_mean_empty", "test_mean_empty_iterator"),
        pass_to_pass=STATS_P2P,
    ),
    Task(
        problem_statement=src("""
            median() of an even number of values is rounded down

            `median` drops the fractional part when the two middle values have an odd sum:

            ```python
            >>> from minicalc.stats import median
            >>> median([1, 2, 3, 4])
            2
            >>> median([0.5, 1.0])
            0.0
            ```

            Expected `2.5` and `0.75`: the mean of the two middle values, as documented. This looks like it came
            in with the change that keeps the median of integers an integer (`median([2, 4, 6, 8]) == 5`), which
            is fine when the middle values add up to an even number, but not otherwise.
            """),
        introduce=Commit("stats: keep the median of an even count of ints an int", {
            "minicalc/stats.py": [("    return (data[mid - 1] + data[mid]) / 2\n",
                                   "    return (data[mid - 1] + data[mid]) // 2\n")],
            "tests/test_stats.py": [(
                "def test_median_empty",
                src('''
                    def test_median_even_ints_stays_int():
                        result = median([8, 2, 6, 4])
                        assert result == 5 and isinstance(result, int)


                    def test_median_empty'''),
            )],
        }, CONTRIBUTOR),
        follow_up=Commit("arith: add percent()", {
            "minicalc/arith.py": [(
                "\n\ndef round_half_up",
                '\n\ndef percent(part, whole):\n    """`part` as a percentage of `whole`."""\n'
                "    return 100 * part / whole\n\n\ndef round_half_up",
            )],
            "tests/test_arith.py": [
                ("import clamp, round_half_up", "import clamp, percent, round_half_up"),
                ("\n\n@pytest.mark.parametrize(\"x, expected\"",
                 "\n\ndef test_percent():\n    assert percent(1, 4) == 25.0\n    assert percent(3, 3) == 100.0\n"
                 "\n\n@pytest.mark.parametrize(\"x, expected\""),
            ],
        }),
        fix={"minicalc/stats.py": [(
            "    return (data[mid - 1] + data[mid]) // 2\n",
            "    total = data[mid - 1] + data[mid]\n    return total // 2 if total % 2 == 0 else total / 2\n",
        )]},
        tests={"tests/test_stats.py": [(
            "def test_median_empty",
            src('''
                def test_median_even():
                    assert median([4, 1, 3, 2]) == 2.5


                def test_median_even_floats():
                    assert median([0.5, 1.0]) == 0.75


                def test_median_empty'''),
        )]},
        fail_to_pass=ids("tests/test_stats.py", "test_median_even", "test_median_even_floats"),
        pass_to_pass=STATS_P2P[:5] + ids("tests/test_stats.py", "test_median_even_ints_stays_int") + STATS_P2P[5:],
    ),
    Task(
        problem_statement=src("""
            slugify() emits doubled separators for repeated spaces and for " - "

            Titles pasted from our CMS often contain two spaces or a spaced dash, and their slugs come out with
            doubled dashes:

            ```python
            >>> from minicalc.text import slugify
            >>> slugify("Hello  World")
            'hello--world'
            >>> slugify("a - b")
            'a--b'
            ```

            Expected `hello-world` and `a-b`: words joined by exactly one separator, as before underscores
            started being kept. Underscores should still survive (`slugify("snake_case name") == "snake_case-name"`).
            """),
        introduce=Commit("text: keep underscores in slugify()", {
            "minicalc/text.py": [(
                src('''
                    """Lowercase ASCII words of `text` joined by `sep`: "Hello, World!" -> "hello-world"."""
                        ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
                        return sep.join(re.findall(r"[a-z0-9]+", ascii_text.lower()))
                    '''),
                src('''
                    """Lowercase ASCII words of `text` joined by `sep`: "Hello, World!" -> "hello-world".

                        Underscores count as part of a word: "snake_case name" -> "snake_case-name".
                        """
                        ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
                        kept = re.sub(r"[^\\w\\s]", "", ascii_text.lower())
                        return sep.join(kept.strip().split(" "))
                    '''),
            )],
            "tests/test_text.py": [(
                "\n\ndef test_truncate_short_text_unchanged",
                "\n\ndef test_slug_keeps_underscores():\n"
                "    assert slugify(\"snake_case name\") == \"snake_case-name\"\n"
                "\n\ndef test_truncate_short_text_unchanged",
            )],
        }, CONTRIBUTOR),
        follow_up=Commit("text: add word_count()", {
            "minicalc/text.py": [
                ('"""Slugs and truncation."""', '"""Slugs, truncation and word counts."""'),
                (None, '\n\ndef word_count(text):\n    """Number of whitespace-separated words in `text`."""\n'
                       "    return len(text.split())\n"),
            ],
            "tests/test_text.py": [
                ("import slugify, truncate", "import slugify, truncate, word_count"),
                (None, "\n\ndef test_word_count():\n    assert word_count(\"one two  three\\nfour\") == 4\n"
                       "    assert word_count(\"\") == 0\n"),
            ],
        }),
        fix={"minicalc/text.py": [("    return sep.join(kept.strip().split(\" \"))\n",
                                   "    return sep.join(kept.split())\n")]},
        tests={"tests/test_text.py": [(
            '        ("Hello, World!", "hello-world"),\n',
            '        ("Hello, World!", "hello-world"),\n        ("Hello  World", "hello-world"),\n'
            '        ("a - b", "a-b"),\n',
        )]},
        fail_to_pass=ids("tests/test_text.py", "test_slug[Hello  World-hello-world]", "test_slug[a - b-a-b]"),
        pass_to_pass=TEXT_P2P,
    ),
    Task(
        problem_statement=src("""
            is_leap_year(2000) is False, so February 2000 has 28 days

            ```python
            >>> from minicalc.dates import is_leap_year, days_in_month
            >>> is_leap_year(2000)
            False
            >>> days_in_month(2000, 2)
            28
            ```

            2000 was a leap year: centuries are leap years when divisible by 400 (the docstring even says so).
            We noticed because a billing run for February 2000 test data skipped the 29th. 2400 is affected too.
            """),
        introduce=Commit("dates: table-driven days_in_month()", {
            "minicalc/dates.py": [
                ("\n\ndef is_leap_year",
                 "\n_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)\n\n\ndef is_leap_year"),
                ("    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)\n",
                 "    return year % 4 == 0 and year % 100 != 0\n"),
                ("    if month == 2:\n        return 29 if is_leap_year(year) else 28\n"
                 "    return 30 if month in (4, 6, 9, 11) else 31\n",
                 "    return _DAYS_IN_MONTH[month - 1] + (month == 2 and is_leap_year(year))\n"),
            ],
        }, CONTRIBUTOR),
        follow_up=Commit("dates: add weekday_name()", {
            "minicalc/dates.py": [
                ("_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)\n",
                 "_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)\n"
                 '_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")\n'),
                (None, '\n\ndef weekday_name(day):\n    """English name of the weekday of `day`."""\n'
                       "    return _WEEKDAYS[day.weekday()]\n"),
            ],
            "tests/test_dates.py": [
                ("import add_months, days_in_month, is_leap_year",
                 "import add_months, days_in_month, is_leap_year, weekday_name"),
                (None, '\n\ndef test_weekday_name():\n    assert weekday_name(d("2024-01-01")) == "Monday"\n'
                       '    assert weekday_name(d("2025-01-05")) == "Sunday"\n'),
            ],
        }),
        fix={"minicalc/dates.py": [("    return year % 4 == 0 and year % 100 != 0\n",
                                    "    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)\n")]},
        tests={"tests/test_dates.py": [
            ("(1900, False), (2100, False)]", "(1900, False), (2100, False), (2000, True), (2400, True)]"),
            ("\n\n@pytest.mark.parametrize(\n    \"start, months, expected\"",
             "\n\ndef test_days_in_month_february_2000():\n    assert days_in_month(2000, 2) == 29\n"
             "\n\n@pytest.mark.parametrize(\n    \"start, months, expected\""),
        ]},
        fail_to_pass=ids("tests/test_dates.py", "test_is_leap_year[2000-True]", "test_is_leap_year[2400-True]",
                         "test_days_in_month_february_2000"),
        pass_to_pass=DATES_P2P,
    ),
    Task(
        problem_statement=src("""
            round_half_up() rounds halves to even

            `round_half_up` is documented to round halves away from zero, but it now behaves like the builtin
            `round()`:

            ```python
            >>> from minicalc.arith import round_half_up
            >>> round_half_up(2.5), round_half_up(0.5), round_half_up(-2.5)
            (2, 0, -2)
            >>> round_half_up(0.125, 2), round_half_up(2.675, 2)
            (0.12, 2.67)
            ```

            Expected `(3, 1, -3)` and `(0.13, 2.68)`. Invoice totals are off by a cent because of this. Values
            like 2.675 are not exactly representable as floats, so the rounding has to work on the decimal
            value as written, not on the binary float.
            """),
        introduce=Commit("arith: drop Decimal from round_half_up()", {
            "minicalc/arith.py": [
                ('"""Clamping and rounding."""\n\nfrom decimal import ROUND_HALF_UP, Decimal\n',
                 '"""Clamping and rounding."""\n'),
                ("    The builtin round() rounds halves to even instead (round(2.5) == 2).\n"
                 "    Returns an int when `digits` is 0, else a float.\n"
                 '    """\n'
                 "    exponent = Decimal(1).scaleb(-digits)\n"
                 "    rounded = Decimal(repr(x)).quantize(exponent, rounding=ROUND_HALF_UP)\n"
                 "    return int(rounded) if digits == 0 else float(rounded)\n",
                 "    Returns an int when `digits` is 0, else a float.\n"
                 '    """\n'
                 "    return int(round(x)) if digits == 0 else round(x, digits)\n"),
            ],
        }),
        follow_up=Commit("stats: add stdev()", {
            "minicalc/stats.py": [
                ("from collections import Counter\n", "import math\nfrom collections import Counter\n"),
                (None, '\n\ndef stdev(values):\n    """Population standard deviation; ValueError for empty data."""\n'
                       "    return math.sqrt(variance(values))\n"),
            ],
            "tests/test_stats.py": [
                ("import mean, median, mode, variance", "import mean, median, mode, stdev, variance"),
                (None, "\n\ndef test_stdev():\n    assert stdev([2, 4, 4, 4, 5, 5, 7, 9]) == 2.0\n"),
            ],
        }, CONTRIBUTOR),
        fix={"minicalc/arith.py": [
            ('"""Clamping and rounding."""\n',
             '"""Clamping and rounding."""\n\nfrom decimal import ROUND_HALF_UP, Decimal\n'),
            ("    Returns an int when `digits` is 0, else a float.\n    \"\"\"\n"
             "    return int(round(x)) if digits == 0 else round(x, digits)\n",
             "    Works on the decimal value as written (repr), so 2.675 -> 2.68 although the float is 2.67499...\n"
             "    Returns an int when `digits` is 0, else a float.\n    \"\"\"\n"
             "    rounded = Decimal(repr(x)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)\n"
             "    return int(rounded) if digits == 0 else float(rounded)\n"),
        ]},
        tests={"tests/test_arith.py": [
            ("(3.5, 4), (-1.6, -2)]", "(3.5, 4), (-1.6, -2), (2.5, 3), (0.5, 1), (-2.5, -3)]"),
            (None, "\n\ndef test_round_half_up_digits_tie():\n    assert round_half_up(0.125, 2) == 0.13\n"
                   "    assert round_half_up(2.675, 2) == 2.68\n"),
        ]},
        fail_to_pass=ids("tests/test_arith.py", "test_round_half_up[2.5-3]", "test_round_half_up[0.5-1]",
                         "test_round_half_up[-2.5--3]", "test_round_half_up_digits_tie"),
        pass_to_pass=ids("tests/test_arith.py", "test_clamp[5-5]", "test_clamp[-3-0]", "test_clamp[42-10]",
                         "test_clamp_empty_range", "test_percent", "test_round_half_up[1.4-1]",
                         "test_round_half_up[1.6-2]", "test_round_half_up[3.5-4]", "test_round_half_up[-1.6--2]",
                         "test_round_half_up_digits"),
    ),
    Task(
        problem_statement=src("""
            add_months() crashes on the 31st when the target month is shorter

            ```python
            >>> import datetime
            >>> from minicalc.dates import add_months
            >>> add_months(datetime.date(2024, 1, 31), 1)
            Traceback (most recent call last):
              ...
            ValueError: day is out of range for month
            ```

            Expected `2024-02-29`: the docstring promises clamping to the end of a shorter month, and that is
            what our monthly schedule relies on (Jan 31 -> Feb 28/29 -> Mar 31 ...). Going back fails the same way:
            `add_months(datetime.date(2024, 5, 31), -1)` should be `2024-04-30`.
            """),
        introduce=Commit("dates: simplify add_months()", {
            "minicalc/dates.py": [(
                "    index = day.year * 12 + day.month - 1 + months\n"
                "    year, month = index // 12, index % 12 + 1\n"
                "    return day.replace(year=year, month=month, day=min(day.day, days_in_month(year, month)))\n",
                "    years, month_index = divmod(day.month - 1 + months, 12)\n"
                "    return day.replace(year=day.year + years, month=month_index + 1)\n",
            )],
        }, CONTRIBUTOR),
        follow_up=Commit("README: usage examples", {"README.md": [(None, "\n" + src("""
            ## Usage

            ```python
            >>> from minicalc.stats import mean
            >>> mean([1, 2, 3, 4])
            2.5
            >>> from minicalc.text import slugify
            >>> slugify("Hello, World!")
            'hello-world'
            ```
            """))]}),
        fix={"minicalc/dates.py": [(
            "    return day.replace(year=day.year + years, month=month_index + 1)\n",
            "    year, month = day.year + years, month_index + 1\n"
            "    return day.replace(year=year, month=month, day=min(day.day, days_in_month(year, month)))\n",
        )]},
        tests={"tests/test_dates.py": [(None, "\n\n" + src('''
            @pytest.mark.parametrize(
                "start, months, expected",
                [
                    ("2024-01-31", 1, "2024-02-29"),
                    ("2023-01-31", 1, "2023-02-28"),
                    ("2024-05-31", -1, "2024-04-30"),
                ],
            )
            def test_add_months_end_of_month(start, months, expected):
                assert add_months(d(start), months) == d(expected)
            '''))]},
        fail_to_pass=ids("tests/test_dates.py", "test_add_months_end_of_month[2024-01-31-1-2024-02-29]",
                         "test_add_months_end_of_month[2023-01-31-1-2023-02-28]",
                         "test_add_months_end_of_month[2024-05-31--1-2024-04-30]"),
        pass_to_pass=DATES_P2P,
    ),
    Task(
        problem_statement=src("""
            truncate() returns strings longer than `width`

            Since `truncate` learned to cut at word boundaries, the result can be longer than the width asked
            for, which breaks our fixed-width table output:

            ```python
            >>> from minicalc.text import truncate
            >>> truncate("abcdefghij", 5)
            'abcde...'
            >>> truncate("The quick brown fox", 11)
            'The quick...'
            ```

            The first is 8 characters for a width of 5, the second 12 for 11. The suffix has to fit inside
            `width`: expected `'ab...'` and `'The...'`. Cutting at word boundaries is still wanted
            (`truncate("The quick brown fox", 12) == "The quick..."`).
            """),
        introduce=Commit("text: truncate() at word boundaries", {
            "minicalc/text.py": [(
                '    """`text` cut to at most `width` characters, ending in `suffix` when it had to be cut."""\n',
                '    """`text` cut to at most `width` characters, at a word boundary where there is one, ending in\n'
                '    `suffix` when it had to be cut."""\n',
            ), (
                "    return text[: width - len(suffix)].rstrip() + suffix\n",
                "    cut = text[:width]\n"
                "    if text[width] != \" \" and \" \" in cut:  # would end inside a word: end at the last space\n"
                "        cut = cut[: cut.rindex(\" \")]\n"
                "    return cut.rstrip() + suffix\n",
            )],
            "tests/test_text.py": [(
                "\n\ndef test_truncate_width_too_small",
                "\n\ndef test_truncate_word_boundary():\n"
                "    assert truncate(\"The quick brown fox\", 12) == \"The quick...\"\n"
                "\n\ndef test_truncate_width_too_small",
            )],
        }, CONTRIBUTOR),
        follow_up=Commit("Release 0.1.1", {
            "pyproject.toml": [('version = "0.1.0"', 'version = "0.1.1"')],
            "minicalc/__init__.py": [('__version__ = "0.1.0"', '__version__ = "0.1.1"')],
            "CHANGELOG.md": [("## Unreleased\n\n", src("""
                ## 0.1.1

                - `stats.median()` of an even count of ints is an int; new `stats.stdev()`.
                - `text.slugify()` keeps underscores, `text.truncate()` cuts at word boundaries.
                - New `text.word_count()`.
                - New `arith.percent()` and `dates.weekday_name()`; `dates.days_in_month()` is table-driven.
                - `arith.round_half_up()` no longer uses `decimal`.
                """))],
        }),
        fix={"minicalc/text.py": [
            ("    cut = text[:width]\n    if text[width] != ",
             "    cut = text[: width - len(suffix)]\n    if text[len(cut)] != "),
        ]},
        tests={"tests/test_text.py": [(
            "\n\ndef test_truncate_width_too_small",
            "\n\n" + src('''
                def test_truncate_long_word():
                    assert truncate("abcdefghij", 5) == "ab..."


                def test_truncate_never_exceeds_width():
                    text = "The quick brown fox jumps"
                    for width in range(3, len(text) + 1):
                        assert len(truncate(text, width)) <= width, width


                def test_truncate_width_too_small''').rstrip("\n"),
        )]},
        fail_to_pass=ids("tests/test_text.py", "test_truncate_long_word", "test_truncate_never_exceeds_width"),
        pass_to_pass=TEXT_P2P[:7] + ids("tests/test_text.py", "test_truncate_word_boundary") + TEXT_P2P[7:],
    ),
]

# ---------------------------------------------------------------------------------------------------------------


def apply_edits(root: Path, edits: Edits) -> None:
    for path, changes in edits.items():
        file = root / path
        text = file.read_text(encoding="utf-8") if file.exists() else ""
        for old, new in changes:
            if old is None:
                text += new
            elif text.count(old) != 1:
                sys.exit(f"build.py: edit of {path} expects exactly one {old!r}, found {text.count(old)}")
            else:
                text = text.replace(old, new)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text, encoding="utf-8", newline="\n")


class Git:
    """git in one repository, deaf to the user's configuration and to GIT_* variables of the caller."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        self.env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1", LC_ALL="C", TZ="UTC")

    def __call__(self, *args: str, env: dict | None = None) -> str:
        cmd = ["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false",
               "-c", f"user.name={MAINTAINER[0]}", "-c", f"user.email={MAINTAINER[1]}", *args]
        r = subprocess.run(cmd, cwd=self.root, env={**self.env, **(env or {})}, capture_output=True,
                           encoding="utf-8")
        if r.returncode != 0:
            sys.exit(f"build.py: {' '.join(cmd)} failed:\n{r.stderr}")
        return r.stdout

    def commit(self, message: str, author: tuple[str, str], when: datetime.datetime) -> str:
        stamp = when.isoformat()
        self("add", "-A")
        self("commit", "-q", "--no-verify", "-m", message, env={
            "GIT_AUTHOR_NAME": author[0], "GIT_AUTHOR_EMAIL": author[1], "GIT_AUTHOR_DATE": stamp,
            "GIT_COMMITTER_NAME": MAINTAINER[0], "GIT_COMMITTER_EMAIL": MAINTAINER[1], "GIT_COMMITTER_DATE": stamp})
        return self("rev-parse", "HEAD").strip()

    def staged_diff(self, *paths: str) -> str:
        return self("diff", "--cached", "--no-color", "--no-ext-diff", "--no-renames", "--src-prefix=a/",
                    "--dst-prefix=b/", "HEAD", "--", *paths)


def build_repo(repo: Path) -> None:
    """Create the repository and record each task's base_commit in TASKS."""
    repo.mkdir(parents=True)
    git = Git(repo)
    git("init", "-q")
    apply_edits(repo, {path: [(None, text)] for path, text in INITIAL.items()})
    when = START
    git.commit("minicalc: arithmetic, statistics, text and date helpers", MAINTAINER, when)
    for task in TASKS:
        for commit in (task.introduce, task.follow_up):
            when += datetime.timedelta(days=1, hours=1)
            apply_edits(repo, commit.edits)
            sha = git.commit(commit.message, commit.author, when)
        task.base_commit = sha


def task_rows(repo: Path) -> list[dict]:
    """The SWE-bench rows, with diffs taken in a throw-away clone so no fix or hidden test reaches the mirror."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="minicalc-") as tmp:
        scratch = Path(tmp) / "scratch"
        Git(Path(tmp))("clone", "-q", str(repo), str(scratch))
        git = Git(scratch)
        for number, task in enumerate(TASKS, 1):
            git("checkout", "-q", "--detach", task.base_commit)
            bad = [p for p in task.fix if p.startswith("tests/")]
            bad += [p for p in task.tests if not p.startswith("tests/")]
            if bad:
                sys.exit(f"build.py: task {number}: fix must not touch tests/, tests must stay in tests/: {bad}")
            apply_edits(scratch, task.fix)
            apply_edits(scratch, task.tests)
            git("add", "-A")
            patch, test_patch = git.staged_diff(*task.fix), git.staged_diff(*task.tests)
            git("reset", "-q", "--hard")
            based = datetime.datetime.fromisoformat(git("show", "-s", "--format=%cI", "HEAD").strip())
            created = based + datetime.timedelta(days=1, hours=5, minutes=17 * number)
            rows.append({
                "instance_id": f"{REPO.replace('/', '__')}-{number}",
                "repo": REPO,
                "base_commit": task.base_commit,
                "problem_statement": task.problem_statement,
                "patch": patch,
                "test_patch": test_patch,
                "FAIL_TO_PASS": json.dumps(task.fail_to_pass),
                "PASS_TO_PASS": json.dumps(task.pass_to_pass),
                "version": VERSION,
                "created_at": created.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "environment_setup_commit": task.base_commit,
                "hints_text": "",
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="mirror folder to create swepost__minicalc in (default: a temp dir)")
    parser.add_argument("--write-tasks", type=Path, metavar="JSONL", help="write the SWE-bench task rows here")
    parser.add_argument("--force", action="store_true", help="replace an existing DIR/swepost__minicalc")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="minicalc-mirror-") as tmp:
        repo = (args.out or Path(tmp)) / REPO.replace("/", "__")
        if repo.exists():
            if not args.force:
                parser.error(f"{repo} exists (pass --force to replace it)")
            shutil.rmtree(repo)
        build_repo(repo)
        rows = task_rows(repo)
        if args.write_tasks:
            args.write_tasks.parent.mkdir(parents=True, exist_ok=True)
            args.write_tasks.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        if args.out:
            print(f"built {repo}")
        for row in rows:
            print(f"{row['instance_id']}  {row['base_commit']}  {row['problem_statement'].splitlines()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
