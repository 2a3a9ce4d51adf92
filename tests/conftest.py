"""Shared fixtures: an empty store home per test, and the real CLI run in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from swepost.artifacts import ArtifactStore

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("SWEPOST_HOME", str(path))
    return path


@pytest.fixture
def store(home) -> ArtifactStore:
    return ArtifactStore(home)


@pytest.fixture
def swepost(home):
    """Run `python -m swepost ARGS...` against this test's store; returns the CompletedProcess."""

    def run(*args, input=None, check=None) -> subprocess.CompletedProcess:
        env = {**os.environ, "SWEPOST_HOME": str(home), "HF_HUB_OFFLINE": "1"}
        r = subprocess.run([sys.executable, "-m", "swepost", *map(str, args)], input=input, env=env,
                           cwd=REPO_ROOT, text=True, capture_output=True, timeout=120)
        if check is not None:
            assert r.returncode == check, f"exit {r.returncode}, expected {check}\n{r.stdout}\n{r.stderr}"
        return r

    return run
