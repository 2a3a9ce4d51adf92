"""The sandbox base image: built without a registry, and it has what a SWE task needs, offline."""

from __future__ import annotations

import pytest

from swepost.sandbox.images import DEFAULT_BASE_IMAGE, build_base_image, host_mirror, split_name


def run(client, image, command, **kwargs) -> str:
    out = client.containers.run(image, command, remove=True, network_mode="none", **kwargs)
    return out.decode().strip()


@pytest.mark.docker
def test_base_image_is_reused_and_labelled(docker_client, base_image):
    image = docker_client.images.get(base_image)
    assert build_base_image(base_image) == image.id  # present: no second build
    assert image.labels.get("swepost.base") == "1"
    assert image.attrs["Config"]["WorkingDir"] == "/testbed"


@pytest.mark.docker
def test_base_image_has_python_pytest_git_offline(docker_client, base_image):
    out = run(docker_client, base_image, ["python3", "-c", "import pytest, sys; print(sys.version_info[0], "
                                          "pytest.__version__)"])
    assert out.startswith("3 ")
    assert run(docker_client, base_image, ["git", "--version"]).startswith("git version")
    assert run(docker_client, base_image, ["pwd"]) == "/testbed"
    assert "ps" in run(docker_client, base_image, ["sh", "-c", "command -v ps patch"])


@pytest.mark.docker
def test_no_network_container_has_only_loopback(docker_client, base_image):
    out = run(docker_client, base_image, ["python3", "-c", (
        "import socket\ns = socket.socket(); s.settimeout(3)\n"
        "try:\n    s.connect(('172.17.0.1', 80)); print('reached')\n"
        "except OSError as e:\n    print('blocked', e.errno)")])
    assert out.startswith("blocked")


def test_names_and_mirror():
    assert split_name(DEFAULT_BASE_IMAGE) == ("swepost-base", "bookworm")
    assert split_name("localhost:5000/x") == ("localhost:5000/x", "latest")
    assert host_mirror().startswith(("http://", "https://"))
