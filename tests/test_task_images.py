"""Task images: built from the base image with the repo at base_commit and the install run; cached by key."""

from __future__ import annotations

import json
import time

import pytest
import typer
from typer.testing import CliRunner

from swepost.errors import BadInput, WorkFailed
from swepost.records import Task, TaskEnv, TaskVerify
from swepost.sandbox.base import Limits
from swepost.sandbox.repos import git
from swepost.sandbox.task_images import (
    APT_CONF,
    INSTANCE_LABEL,
    KEY_LABEL,
    build_task_image,
    build_task_images,
    find_task_image,
    task_image_key,
    task_image_tag,
)

pytestmark = pytest.mark.docker

MARKER = "python3 -c 'open(\"/testbed/installed.txt\",\"w\").write(\"ok\")'"


def commit_all(repo, message: str) -> str:
    git("add", "-A", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo).stdout.strip()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """repos/acme__widget: a module with a bug at the first commit, fixed in the second."""
    repos = tmp_path_factory.mktemp("tmp") / "repos"
    repo = repos / "acme__widget"
    repo.mkdir(parents=True)
    git("init", "--quiet", cwd=repo)
    (repo / "widget.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "test_widget.py").write_text("from widget import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    first = commit_all(repo, "widget")
    (repo / "widget.py").write_text("def add(a, b):\n    return a + b\n")
    second = commit_all(repo, "fix add")
    return repos, first, second


def make_task(first: str, instance_id: str = "acme__widget-1", install=None) -> Task:
    return Task(instance_id=instance_id, problem_statement="add() subtracts", repo="acme/widget",
                base_commit=first, env=TaskEnv(install=[MARKER] if install is None else install),
                verify=TaskVerify(fail_to_pass=["test_widget.py::test_add"]))


@pytest.fixture(scope="module")
def made(docker_client):
    """Tags the tests built; removed at the end so the machine does not fill up."""
    tags: set[str] = set()
    yield tags
    for tag in tags:
        try:
            docker_client.images.remove(tag, force=True)
        except Exception:  # noqa: BLE001 - never built (a failed test) or already gone
            pass


@pytest.fixture(scope="module")
def built(mirror, base_image, docker_client, made):
    repos, first, _ = mirror
    task = make_task(first)
    assert find_task_image(task, client=docker_client) is None
    start = time.monotonic()
    tag = build_task_image(task, repos, base=base_image, client=docker_client)
    made.add(tag)
    return task, tag, time.monotonic() - start


def test_image_holds_repo_at_base_commit_installed_and_offline(built, mirror, docker_client, base_image):
    from swepost.sandbox.docker import DockerSandbox

    task, tag, _ = built
    key = task_image_key(task, docker_client.images.get(base_image).id)
    assert tag == task_image_tag(key) == f"swepost-task:{key[:20]}"
    image = docker_client.images.get(tag)
    assert image.labels[KEY_LABEL] == key and image.labels[INSTANCE_LABEL] == task.instance_id
    # docker merges the build container's labels into the image: they are blanked, so that `sandbox gc`
    # takes no container of the image for a dead build's leftover, and the image for no base image
    assert all(not image.labels.get(name) for name in ("swepost.sandbox", "swepost.owner", "swepost.base"))
    config = image.attrs["Config"]
    assert config["Cmd"] == ["/bin/bash"] and not config.get("Entrypoint")
    assert config["WorkingDir"] == "/testbed"
    assert find_task_image(task, client=docker_client) == tag

    with DockerSandbox(tag, limits=Limits()) as box:  # default limits: no network
        assert box.run("git rev-parse HEAD").output.strip() == mirror[1]
        assert box.run("cat /testbed/installed.txt").output.strip() == "ok"
        assert box.run("pwd").output.strip() == "/testbed"
        assert box.run("ls /sys/class/net").output.split() == ["lo"]
        assert box.run(f"cat {APT_CONF}").output.strip() == 'APT::Sandbox::User "root";'
        r = box.run("python3 -m pytest -q test_widget.py")
        assert r.exit_code == 1 and "assert -1 == 5" in r.output  # the bug is there at base_commit


def test_second_build_is_cached(built, mirror, docker_client, base_image):
    task, tag, _ = built
    before = docker_client.images.get(tag).id
    start = time.monotonic()
    assert build_task_image(task, mirror[0], base=base_image, client=docker_client) == tag
    assert time.monotonic() - start < 5
    assert docker_client.images.get(tag).id == before


def test_key_follows_what_the_image_depends_on(mirror):
    _, first, second = mirror
    task = make_task(first)
    key = task_image_key(task, "sha256:base")
    assert key == task_image_key(make_task(first, instance_id="other"), "sha256:base")  # not the id
    assert key != task_image_key(make_task(first, install=[MARKER, "true"]), "sha256:base")
    assert key != task_image_key(make_task(second), "sha256:base")
    assert key != task_image_key(task, "sha256:other-base")
    moved = make_task(first)
    moved.env.workdir = "/work"
    assert key != task_image_key(moved, "sha256:base")


def test_failing_install_names_instance_command_and_output(mirror, base_image, docker_client, made):
    task = make_task(mirror[1], instance_id="acme__widget-broken",
                     install=["true", "echo boom-output; exit 3"])
    made.add(task_image_tag(task_image_key(task, docker_client.images.get(base_image).id)))
    with pytest.raises(WorkFailed) as e:
        build_task_image(task, mirror[0], base=base_image, client=docker_client)
    message = str(e.value)
    assert "acme__widget-broken" in message and "echo boom-output; exit 3" in message
    assert "exit 3" in message and "boom-output" in message
    assert find_task_image(task, client=docker_client) is None


def test_build_many_in_parallel_and_cli(mirror, base_image, docker_client, made, store, built):
    repos, first, second = mirror
    tasks = [make_task(first, "acme__widget-a", install=[MARKER, "echo a > a.txt"]),
             make_task(second, "acme__widget-b", install=["echo b > b.txt"]),
             make_task(second, "acme__widget-b2", install=["echo b > b.txt"]),  # same key as b: built once
             make_task(first, "has-image").model_copy(update={"env": TaskEnv(image="someone/else:1")})]
    images = build_task_images(tasks, repos, base=base_image, jobs=2, progress=False)
    made.update(v for v in images.values() if v.startswith("swepost-task:"))
    assert list(images) == [t.instance_id for t in tasks]
    assert images["has-image"] == "someone/else:1"
    assert images["acme__widget-b"] == images["acme__widget-b2"] != images["acme__widget-a"]
    for t in tasks[:3]:
        assert find_task_image(t, client=docker_client) == images[t.instance_id]

    from swepost.artifacts import producer_record
    from swepost.cli.task_images import images_cmd
    from swepost.stages.tasks import TASKS_FILE

    with store.write("tasks", "tasks", producer=producer_record("test", {})) as w:
        (w.path / TASKS_FILE).write_text("".join(json.dumps(t.model_dump(mode="json")) + "\n"
                                                 for t in [built[0], *tasks]))
    app = typer.Typer()
    app.command("images")(images_cmd)
    app.command("noop")(lambda: None)  # two commands, so `images` is a subcommand as in `swepost tasks`
    runner = CliRunner()
    r = runner.invoke(app, ["images", "tasks", "--repos", str(repos), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {built[0].instance_id: built[1], **images}
    r = runner.invoke(app, ["images", "tasks"])  # no --repos, and some tasks have no image
    assert isinstance(r.exception, BadInput) and "--repos" in str(r.exception)
