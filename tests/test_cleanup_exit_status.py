"""Exit statuses are ExitStatus members in the code, never their strings: a renamed or added status is then
found by the type checker and by grep, and a typo cannot silently never match. Read from the source with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

from swepost.records import ExitStatus
from swepost.train.rl import EXIT_STATUSES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "swepost"
VALUES = {s.value for s in ExitStatus}


def is_exit_status(node: ast.AST) -> bool:
    """`x.exit_status`, `row["exit_status"]`, `row.get("exit_status")`."""
    if isinstance(node, ast.Attribute):
        return node.attr == "exit_status"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "exit_status"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "exit_status"
    return False


def status_strings(node: ast.AST) -> list[str]:
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [i.value for i in items if isinstance(i, ast.Constant) and i.value in VALUES]


def literal_statuses(path: Path) -> list[tuple[int, str]]:
    """(line, status string) for every exit status written as a string in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        literals: list[str] = []
        if isinstance(node, ast.Compare) and any(map(is_exit_status, [node.left, *node.comparators])):
            literals = [s for side in [node.left, *node.comparators] for s in status_strings(side)]
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if is_exit_status(target):
                    literals += status_strings(node.value)
                elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    literals += [s for t, v in zip(target.elts, node.value.elts, strict=False) if is_exit_status(t)
                                 for s in status_strings(v)]
                elif isinstance(target, ast.Name) and target.id.endswith("STATUSES"):
                    literals += status_strings(node.value)
        found += [(node.lineno, s) for s in literals]
    return sorted(found)


def test_no_exit_status_is_written_as_a_string():
    files = [p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "records.py"]
    assert len(files) > 20
    assert [f"{p.relative_to(ROOT)}:{line}: {s!r}" for p in files for line, s in literal_statuses(p)] == []


def test_the_check_finds_a_string_status(tmp_path):
    f = tmp_path / "probe.py"
    sample = ('if t.exit_status != "deadline": pass\nok = row.get("exit_status") in ("submitted", None)\n'
              'traj.exit_status, traj.reward = "deadline", None\nX_STATUSES = ("max_turns",)\n'
              'why = "deadline"\n')
    f.write_text(sample)
    assert literal_statuses(f) == [(1, "deadline"), (2, "submitted"), (3, "deadline"), (4, "max_turns")]


def test_rl_logs_a_metric_for_every_exit_status():
    assert set(EXIT_STATUSES) == set(ExitStatus) and len(EXIT_STATUSES) == len(ExitStatus)
    assert all(isinstance(s, ExitStatus) for s in EXIT_STATUSES)
