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


# Test modules that must not run beside each other on two pytest-xdist workers (`make test` runs `-n 2 --dist
# loadgroup`): both start a Ray head of their own, and two heads on one machine race for its session folder.
SERIAL_GROUPS = {"test_env_server_ray.py": "ray", "test_mine.py": "ray"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        group = SERIAL_GROUPS.get(item.path.name)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def require_or_skip(reason: str):
    """Skip a test that needs docker or bubblewrap; fail instead where SWEPOST_REQUIRE_DOCKER=1 (CI)."""
    if os.environ.get("SWEPOST_REQUIRE_DOCKER") == "1":
        pytest.fail(f"{reason} (SWEPOST_REQUIRE_DOCKER=1, so this fails instead of skipping)", pytrace=False)
    pytest.skip(f"{reason} (CI sets SWEPOST_REQUIRE_DOCKER=1 and fails instead)")


@pytest.fixture(scope="session")
def docker_client():
    """A docker SDK client for the local engine; skips (or fails in CI) when no engine answers."""
    from swepost.errors import WorkFailed
    from swepost.sandbox.images import docker_client as connect

    try:
        client = connect()
    except WorkFailed as e:
        require_or_skip(f"docker engine not running: {e}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    """The sandbox base image's name, built with debootstrap on first use (reused when present)."""
    from swepost.errors import BadInput
    from swepost.sandbox.images import DEFAULT_BASE_IMAGE, build_base_image

    try:
        build_base_image(DEFAULT_BASE_IMAGE)
    except BadInput as e:
        require_or_skip(f"cannot build {DEFAULT_BASE_IMAGE}: {e}")
    return DEFAULT_BASE_IMAGE


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    """The embedded tiny model's tokenizer (its chat template, <|im_end|>), built once per session."""
    from transformers import AutoTokenizer

    from swepost.train.tiny_model import build_tiny_model

    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    build_tiny_model(folder)
    return AutoTokenizer.from_pretrained(folder)
