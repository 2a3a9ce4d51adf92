"""Test statuses from test-run output: pytest `-rA` logs and pytest `--junitxml` files.

Plain functions, standard library only. Statuses use SWE-bench's TestStatus names plus XPASS:
PASSED, FAILED, SKIPPED, ERROR, XFAIL, XPASS; PASSED and XPASS count as passing.

Parsing stdout can never be made unforgeable (code under test writes to the same stream), which is why
swepost's own grader reads pytest's report objects instead (`rewards/test_runner.py`). These parsers are
for logs that already exist: SWE-bench run logs, CI output, junit files.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path

STATUSES = ("PASSED", "FAILED", "SKIPPED", "ERROR", "XFAIL", "XPASS")
PASSING = ("PASSED", "XPASS")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_STATUS_LINE = re.compile(r"^(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS) +(\S.*)$")
_SUMMARY_HEADER = re.compile(r"^=+ short test summary info =+$")
_SEPARATOR = re.compile(r"^=+ .* =+$")  # pytest's `=== title ===` lines; the final stats line is one
_SKIP_COUNT = re.compile(r"^\[\d+\]$")  # `SKIPPED [2] path:line: reason`: a folded skip, no test id
_XFAIL_WHEN = re.compile(r"^at (setup|teardown|call) of ")
# the statuses pytest prints after each passing one in its summary (`-rA` = p s x X E f)
_LATER = {"PASSED": {"SKIPPED", "XFAIL", "XPASS", "ERROR", "FAILED"}, "XPASS": {"ERROR", "FAILED"}}


def parse_pytest_log(text: str) -> dict[str, str]:
    """{test id: status} from the output of `pytest -rA` (SWE-bench's convention, read more carefully).

    Statuses are read only from pytest's "short test summary info" section: the lines between the LAST
    `=== short test summary info ===` header and the next `=== ... ===` line (the final `=== N passed
    in 1.2s ===`). So `PASSED x` lines printed by the code under test in captured output, and whole
    forged summary blocks printed before pytest's own, are ignored. Each summary line is
    `STATUS nodeid` or `STATUS nodeid - message`, exactly as SWE-bench's `parse_log_pytest` reads it, except:

    - ids whose parametrisation contains spaces stay whole (`t.py::f[Hello  World]`, `t.py::f[a - b]`):
      the id ends at the first `]` that balances the brackets and is followed by ` - ` or the line's end
      (unbalanced ids such as `f[[]` end at the first `] - ` or the line's end);
    - `XPASS` lines are read (SWE-bench has no XPASS status and drops them), and `XFAIL at setup of ID`
      gives ID (SWE-bench records the word `at`);
    - ANSI colour codes are removed first (here and in the fallback);
    - inside the section, lines that pytest could not have written are ignored: a PASSED line after
      any other status, an XPASS line after an ERROR or FAILED one (pytest prints them in the order
      p s x X E f, so these can only be continuation lines of a multi-line message), and a passing status
      never replaces a non-passing one for the same id (`PASSED x` then `ERROR x` in teardown is ERROR,
      as in SWE-bench; `ERROR x` then a forged `PASSED x` stays ERROR). Otherwise the last line wins;
    - a header that follows the previous one with no `===` line between them (a forged header inside a
      multi-line message of the real section, as `-vv` or CI print them, or a forged block right before
      the real header) does not clear what came before: statuses come from the last section, but a test
      that the earlier part reports as not passing stays not passing.

    Consequences: skipped tests appear only with `--no-fold-skipped` (folded `SKIPPED [N] path:line`
    lines name no test, as in SWE-bench); with a custom `-r` order that prints passes after failures
    those passes are dropped (they read as missing, i.e. not passing). Not caught: output written after
    pytest's summary (an atexit hook), and a multi-line skip or xfail reason that forges an XPASS line
    for a test that has no summary line of its own.

    A log with no summary section at all falls back to SWE-bench's `parse_log_pytest` on the whole log
    (every line starting with a status word; ids cut at the first space), with XPASS added.
    """
    lines = [_ANSI.sub("", line).rstrip() for line in text.split("\n")]
    starts = [i for i, line in enumerate(lines) if _SUMMARY_HEADER.match(line)]
    if not starts:
        return _parse_like_swebench(lines)
    statuses = _parse_section(lines, starts[-1])
    # a header with no `===` line between it and the previous one continues that section: a forged
    # header inside a message of the real section, or a forged block just before the real header.
    # Passing statuses come only from the last part; a non-passing one from any part stands.
    k = len(starts) - 1
    while k > 0 and not any(_SEPARATOR.match(line) for line in lines[starts[k - 1] + 1:starts[k]]):
        k -= 1
        for test_id, status in _parse_section(lines, starts[k]).items():
            if status not in PASSING and statuses.get(test_id, "PASSED") in PASSING:
                statuses[test_id] = status
    return statuses


def _parse_section(lines: list[str], header: int) -> dict[str, str]:
    statuses: dict[str, str] = {}
    seen: set[str] = set()
    for line in lines[header + 1:]:
        if _SEPARATOR.match(line):
            break
        m = _STATUS_LINE.match(line)
        if not m:
            continue
        status, rest = m.groups()
        if status == "XFAIL":
            rest = _XFAIL_WHEN.sub("", rest)
        if status in _LATER and seen & _LATER[status]:
            continue  # out of pytest's order: part of an earlier line's message
        seen.add(status)
        test_id = _node_id(rest)
        if not test_id or test_id == "-" or (status == "SKIPPED" and _SKIP_COUNT.match(test_id)):
            continue
        if status in PASSING and test_id in statuses and statuses[test_id] not in PASSING:
            continue
        statuses[test_id] = status
    return statuses


def _node_id(rest: str) -> str:
    """The node id at the start of `nodeid` or `nodeid - message`, parametrisations with spaces kept."""
    head = rest.split(" ", 1)[0]
    if "[" not in head:
        return head
    depth, first_end = 0, None
    for i, ch in enumerate(rest):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            end = i + 1
            if end == len(rest) or rest.startswith(" - ", end):
                if depth == 0:
                    return rest[:end]
                if first_end is None:
                    first_end = end
    return rest[:first_end] if first_end is not None else head


def _parse_like_swebench(lines: list[str]) -> dict[str, str]:
    """SWE-bench's `parse_log_pytest` (swebench.harness.log_parsers.python), with XPASS recognised."""
    statuses: dict[str, str] = {}
    for line in lines:
        if not line.startswith(STATUSES):
            continue
        if line.startswith("FAILED"):
            line = line.replace(" - ", " ")
        words = line.split()
        if len(words) <= 1:
            continue
        if words[0] == "SKIPPED" and _SKIP_COUNT.match(words[1]):
            continue
        statuses[words[1]] = words[0]
    return statuses


# junit: a test that fails and then errors in teardown is written as two <testcase>s; keep the worst,
# failure first (pytest -rA prints FAILED after ERROR, so a -rA parse gives FAILED too)
_JUNIT_RANK = {"PASSED": 0, "SKIPPED": 1, "XFAIL": 1, "ERROR": 2, "FAILED": 3}


def parse_junit_xml(text: str, root: Path | None = None) -> dict[str, str]:
    """{pytest node id: status} from a pytest `--junitxml` file.

    pytest writes `classname` as the dotted file path (without `.py`) followed by any class names, and
    `name` as the function name with its parametrisation: `tests.test_x.TestC` + `test_y[p]` becomes
    `tests/test_x.py::TestC::test_y[p]`. With `root` (the directory pytest ran in), the module is the
    longest dotted prefix that exists under it as `a/b/c.py` (or as `a/b.c`, for doctest text files);
    without it, trailing parts that start with an uppercase letter are taken as classes. Directories
    with dots in their names cannot be told apart from packages. A collection error
    (`classname=""`, `name="tests.test_bad"`) gives the file's id, as in a -rA log.

    Statuses: <failure> FAILED, <error> ERROR, <skipped type="pytest.xfail"> XFAIL, other <skipped>
    SKIPPED, none PASSED. junit cannot tell XPASS from PASSED (pytest writes a non-strict XPASS as a
    plain pass), so XPASS never appears here. Raises ValueError on text that is not XML.
    """
    try:
        tree = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"not a junit XML file: {e}") from None
    statuses: dict[str, str] = {}
    for case in tree.iter("testcase"):
        test_id = _junit_node_id(case.get("classname") or "", case.get("name") or "", root)
        if not test_id:
            continue
        status = _junit_status(case)
        old = statuses.get(test_id)
        if old is None or _JUNIT_RANK[status] > _JUNIT_RANK[old]:
            statuses[test_id] = status
    return statuses


def _junit_status(case: ET.Element) -> str:
    tags = {child.tag: child for child in case}
    if "failure" in tags:
        return "FAILED"
    if "error" in tags:
        return "ERROR"
    if "skipped" in tags:
        return "XFAIL" if tags["skipped"].get("type") == "pytest.xfail" else "SKIPPED"
    return "PASSED"


def _junit_node_id(classname: str, name: str, root: Path | None) -> str:
    if not classname:  # a file-level report (collection error): name is the dotted file path
        return _module_path(name.split("."), root, whole=True)[0] if name else ""
    parts = classname.split(".")
    path, n = _module_path(parts, root)
    return "::".join([path, *parts[n:], name])


def _module_path(parts: list[str], root: Path | None, whole: bool = False) -> tuple[str, int]:
    """(file path, how many of parts it used) for a dotted classname; whole: all parts are the path."""
    if root is not None:
        for n in range(len(parts), len(parts) - 1 if whole else 0, -1):
            candidates = ["/".join(parts[:n]) + ".py"]
            if n > 1:
                candidates.append("/".join(parts[:n - 1]) + "." + parts[n - 1])
            for candidate in candidates:
                if (root / candidate).is_file():
                    return candidate, n
    n = len(parts)
    while not whole and n > 1 and parts[n - 1][:1].isupper():
        n -= 1
    return "/".join(parts[:n]) + ".py", n


def summarize(statuses: Mapping[str, str], fail_to_pass: Iterable[str] | str,
              pass_to_pass: Iterable[str] | str) -> dict[str, dict[str, int]]:
    """Per-list counts: {"fail_to_pass": {"passed", "failed", "missing", "total"}, "pass_to_pass": {...}}.

    Only PASSED and XPASS pass; an id with any other status (FAILED, ERROR, SKIPPED, XFAIL) is failed,
    an id with no status at all is missing (also not passing). Lists may be given as SWE-bench's JSON
    strings; repeated ids count once.
    """
    return {"fail_to_pass": _count(statuses, fail_to_pass), "pass_to_pass": _count(statuses, pass_to_pass)}


def _count(statuses: Mapping[str, str], ids: Iterable[str] | str) -> dict[str, int]:
    if isinstance(ids, str):
        ids = json.loads(ids)
    counts = {"passed": 0, "failed": 0, "missing": 0, "total": 0}
    for test_id in dict.fromkeys(ids):
        status = statuses.get(test_id)
        counts["missing" if status is None else "passed" if status in PASSING else "failed"] += 1
        counts["total"] += 1
    return counts
