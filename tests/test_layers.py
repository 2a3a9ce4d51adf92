"""Imports point one way (docs: ../shared/DESIGN.md, "The house"), read from the source with `ast`.

A package here is a subpackage of swepost (`swepost.train`) or a top-level module (`swepost.agent`). Imports inside
functions count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# the layers of DESIGN.md, top to bottom; a module not listed (registry, fingerprint) is a small shared helper
TOP = ["swepost.cli", "swepost.stages", "swepost.recipes", "swepost.serve"]
MIDDLE = ["swepost.agent", "swepost.policies", "swepost.envs", "swepost.rewards", "swepost.retrieval",
          "swepost.sandbox", "swepost.train", "swepost.taskkinds"]
BOTTOM = ["swepost.records", "swepost.artifacts", "swepost.config", "swepost.errors"]
# (importer, imported): the importer package must not import the other, nor anything under it
FORBIDDEN = [
    ("swepost.rewards", "swepost.agent"),  # rewards are plain functions shared by collect, filter, rl and eval
    *[(low, top) for low in MIDDLE + BOTTOM for top in TOP],  # e.g. train adapts TRL: stages call it, not back
    *[(low, mid) for low in BOTTOM for mid in MIDDLE],
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """swepost.train.rl -> swepost.train; swepost.agent -> swepost.agent; swepost -> swepost."""
    return ".".join(module.split(".")[:2])


def imports(path: Path, root: Path) -> list[tuple[int, str, str | None]]:
    """(line, imported module, imported name or None) for every import in the file, relative ones resolved."""
    module = module_name(path, root)
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            out += [(node.lineno, base, alias.name) for alias in node.names]
    return out


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(root: Path = SRC) -> list[str]:
    found = []
    for path in sorted((root / "swepost").rglob("*.py")):
        source_pkg = package_of(module_name(path, root))
        where = path.relative_to(root)
        for line, target, name in imports(path, root):
            if not target.startswith("swepost"):
                continue
            full = f"{target}.{name}" if name else target
            target_pkg = package_of(target)
            if target == "swepost" and name and ((root / "swepost" / name).is_dir()
                                                 or (root / "swepost" / f"{name}.py").is_file()):
                target_pkg = package_of(full)  # `from swepost import stages` imports a package
            for importer, imported in FORBIDDEN:
                if source_pkg == importer and (full == imported or full.startswith(imported + ".")):
                    found.append(f"{where}:{line}: {importer} imports {full} ({imported} is above it)")
            if target_pkg not in (source_pkg, "swepost"):
                private = [p for p in full.split(".")[2:] if is_private(p)]
                if private:
                    found.append(f"{where}:{line}: private {'.'.join(private)} of {target_pkg} imported by "
                                 f"{source_pkg} ({full}); give it a public home")
    return found


def test_imports_point_one_way_and_no_private_name_crosses_packages():
    found = violations()
    assert not found, "layering violations:\n" + "\n".join(found)


def test_the_check_finds_each_kind_of_violation(tmp_path):
    """The checker itself, on a small tree holding one violation of each kind (and allowed imports beside them)."""
    files = {
        "swepost/__init__.py": "",
        "swepost/agent.py": "def _loop(): ...\n",
        "swepost/rewards/__init__.py": "",
        "swepost/rewards/judge.py": "def grade():\n    from swepost.agent import run_episode\n",
        "swepost/rewards/match.py": "from swepost import agent\nfrom . import judge\nfrom ._text import _norm\n",
        "swepost/rewards/_text.py": "def _norm(): ...\n",
        "swepost/train/__init__.py": "",
        "swepost/train/entry.py": "import swepost.stages.sft\n",
        "swepost/train/rl.py": "from ..stages import get_stage\nfrom swepost.policies.hf import _template\n",
        "swepost/train/ok.py": "from swepost.records import Task\nfrom swepost.train.rl import _local\n",
        "swepost/stages/__init__.py": "from swepost.train._impl import thing\n",
        "swepost/records.py": "from swepost import __version__\nimport swepost.sandbox.base\n",
        "swepost/sandbox/__init__.py": "",
        "swepost/sandbox/base.py": "from swepost import recipes\n",
        "swepost/recipes.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = "\n".join(violations(tmp_path))
    assert "rewards/judge.py:2: swepost.rewards imports swepost.agent.run_episode" in found
    assert "rewards/match.py:1: swepost.rewards imports swepost.agent" in found
    assert "train/entry.py:1: swepost.train imports swepost.stages.sft" in found
    assert "train/rl.py:1: swepost.train imports swepost.stages.get_stage" in found
    assert "train/rl.py:2: private _template of swepost.policies" in found
    assert "stages/__init__.py:1: private _impl of swepost.train" in found
    assert "records.py:2: swepost.records imports swepost.sandbox.base" in found
    assert "sandbox/base.py:1: swepost.sandbox imports swepost.recipes" in found
    assert "records.py:1" not in found
    assert "match.py:2" not in found and "match.py:3" not in found and "ok.py" not in found  # within a package
    assert len(found.splitlines()) == 8, found
