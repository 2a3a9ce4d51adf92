"""TRL's private trainer attributes are read in one place, swepost.train.trl_compat; the package and the
benchmarks go through its functions (when TRL renames them, one module changes)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPAT = ROOT / "src" / "swepost" / "train" / "trl_compat.py"
# the private trainer attributes trl_compat wraps
WRAPPED = {"_metrics", "_log_completion_extra"}


def private_trainer_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in WRAPPED
            and not (isinstance(node.value, ast.Name) and node.value.id == "self")]


def test_trl_private_attributes_are_read_only_in_trl_compat():
    files = [p for folder in ("src", "bench") for p in sorted((ROOT / folder).rglob("*.py")) if p != COMPAT]
    assert len(files) > 10
    assert [use for p in files for use in private_trainer_uses(p)] == []
    assert private_trainer_uses(COMPAT)  # the check sees them where they are
