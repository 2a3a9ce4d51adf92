"""Canary tests: random must-fail and must-pass tests the grader puts into the real test files.

Tampering with pytest from inside the process under test (replacing `runtest`, rewriting reports, wrapping a
plugin's hooks, editing a reporter's state, rewriting the report at exit) is hard to rule out from inside the
same process. Canaries make it visible instead: they are generated fresh for every grading with random names
and a random failure token, appended to the very files that hold the graded tests (so they are imported,
collected and run exactly like them, as plain functions and as unittest cases), and the grader knows what each
must do. A must-fail canary that passes, or fails without its token, or any canary that goes missing, means
the outcome was not the tests' own: the run is RESOLVED_NO with reason `runner tampering`. Tampering that
forces tests through wholesale, or by file, cannot spare the canaries without knowing them.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

TEST_FILE = re.compile(r"(^|/)(test_[^/]*|[^/]*_test|tests?)\.py$")


@dataclass
class Canaries:
    token: str
    must_fail: list[str] = field(default_factory=list)  # node ids
    must_pass: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # path -> the text appended to it
    new_files: list[str] = field(default_factory=list)  # canary files made where no graded file could take them

    @property
    def ids(self) -> list[str]:
        return self.must_fail + self.must_pass

    def problems(self, statuses: dict[str, str], failure_texts: dict[str, str]) -> list[str]:
        """What the canaries say about the run: empty when every one came out as it must."""
        out = []
        for nodeid in self.must_fail:
            status = statuses.get(nodeid, "MISSING")
            if status != "FAILED":
                out.append(f"must-fail canary {nodeid} came out {status}")
            elif self.token not in failure_texts.get(nodeid, ""):
                out.append(f"must-fail canary {nodeid} failed without its token (its report was rewritten)")
        for nodeid in self.must_pass:
            status = statuses.get(nodeid, "MISSING")
            if status != "PASSED":
                out.append(f"must-pass canary {nodeid} came out {status}")
        return out


def _name(prefix: str = "test_") -> str:
    return prefix + secrets.token_hex(6)


def make_canaries(test_files: list[str], fallback_dir: str) -> Canaries:
    """Canaries for the graded Python test files (or, if none can take them, for one new file there)."""
    canaries = Canaries(token=secrets.token_hex(16))
    targets = [p for p in test_files if TEST_FILE.search(p)]
    if not targets:
        path = f"{fallback_dir.rstrip('/')}/{_name()}.py".lstrip("/")
        canaries.new_files.append(path)
        targets = [path]
    for path in targets:
        fail_fn, pass_fn = _name(), _name()
        cls, fail_m, pass_m = _name("Test"), _name(), _name()
        alias = _name("_unittest_")
        a, b = secrets.token_hex(4), secrets.token_hex(4)
        text = (
            f"\n\nimport unittest as {alias}\n\n\n"
            f"def {fail_fn}():\n    assert {a!r} == {b!r}, {canaries.token!r}\n\n\n"
            f"def {pass_fn}():\n    assert {a!r} == {a!r}\n\n\n"
            f"class {cls}({alias}.TestCase):\n"
            f"    def {fail_m}(self):\n        self.fail({canaries.token!r})\n\n"
            f"    def {pass_m}(self):\n        self.assertEqual({b!r}, {b!r})\n"
        )
        canaries.texts[path] = text
        canaries.must_fail += [f"{path}::{fail_fn}", f"{path}::{cls}::{fail_m}"]
        canaries.must_pass += [f"{path}::{pass_fn}", f"{path}::{cls}::{pass_m}"]
    return canaries
