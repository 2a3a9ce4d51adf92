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


# Tests that must run on one pytest-xdist worker, one after another (`make test` runs `-n 2 --dist loadgroup`):
# - "ray": both modules start a Ray head of their own, and two heads on one machine race for its session folder;
# - "network": one test fills docker's address pools, the others that make fenced networks wait for it;
# - "taught": test_rl's module fixture (an SFT of the tiny model, minutes) is built once, not on each worker.
SERIAL_GROUPS = {"test_env_server_ray.py": "ray", "test_mine.py": "ray",
                 "test_sandbox_network.py": "network", "test_codeqa_env.py": "network"}
FIXTURE_GROUPS = {"taught": "taught"}


def xdist_group_of(item) -> str | None:
    group = SERIAL_GROUPS.get(item.path.name)
    for fixture, name in FIXTURE_GROUPS.items():
        if fixture in getattr(item, "fixturenames", ()):
            group = name
    return group


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which writes the marks into the node ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = xdist_group_of(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    # the long groups first: started last, one of them would keep a worker busy after the other is done
    items.sort(key=lambda item: xdist_group_of(item) is None)


def swepost_in(home: Path, *commands: list[str]) -> Path:
    """Run each swepost command (a list of arguments) with SWEPOST_HOME=home from the repository's root; `home`."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "SWEPOST_HOME": str(home)}
    for args in commands:
        subprocess.run([sys.executable, "-m", "swepost", *map(str, args)], env=env, cwd=repo, check=True,
                       capture_output=True, timeout=120)
    return home


def index_and_import_search(home: Path) -> Path:
    """The bundled pydocs corpus indexed as `idx` and its questions imported as search tasks `q`, in `home`."""
    data = Path(__file__).resolve().parents[1] / "data"
    return swepost_in(home, ["corpus", "index", data / "pydocs_corpus.jsonl", "--name", "idx"],
                      ["tasks", "import", data / "pydocs_questions.jsonl", "--kind", "search", "--name", "q"])


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
