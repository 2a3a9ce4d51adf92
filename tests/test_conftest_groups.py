"""`make test` runs two pytest-xdist workers with `--dist loadgroup`, and tests/conftest.py groups the tests that
must share a worker (two Ray heads race for one session folder; a fixture that trains for minutes is built once).
pytest 9.2 broke that silently: xdist 3.8 writes the group into `Node._nodeid`, which 9.2 no longer reads, so
every test became its own group. This runs xdist for real on two marked tests and checks the group took."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("xdist")

TESTS = '''
import json, os, pytest

@pytest.mark.xdist_group("pair")
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_marked(n, request):
    with open(os.environ["OUT"] + f"/{n}.json", "w") as f:
        json.dump({"nodeid": request.node.nodeid, "worker": os.environ.get("PYTEST_XDIST_WORKER")}, f)
'''


def test_xdist_groups_reach_the_node_ids(tmp_path):
    (tmp_path / "test_pair.py").write_text(TESTS)
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
                        "--dist", "loadgroup", str(tmp_path / "test_pair.py")],
                       cwd=tmp_path, env={"OUT": str(out), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    seen = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert len(seen) == 4
    assert all(s["nodeid"].endswith("@pair") for s in seen), seen
    assert len({s["worker"] for s in seen}) == 1, seen


def test_the_project_groups_are_marked(pytestconfig):
    """The conftest marks what its comment says: both Ray modules, the network modules, test_rl's taught tests."""
    from conftest import SERIAL_GROUPS

    assert set(SERIAL_GROUPS.values()) == {"ray", "network"}
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "xdist_group", "-p",
                        "no:cacheprovider", "tests/test_rl.py", "tests/test_mine.py"],
                       cwd=pytestconfig.rootpath, capture_output=True, text=True, timeout=120)
    ids = [line for line in r.stdout.splitlines() if "::" in line]
    assert any("test_rl.py::test_rl_resumes_after_a_kill" in i for i in ids), r.stdout
    assert not any("test_rl.py::test_settings_that_would_hang" in i for i in ids), r.stdout
    assert any(i.startswith("tests/test_mine.py::") for i in ids), r.stdout
