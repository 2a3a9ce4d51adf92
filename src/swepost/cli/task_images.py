"""`swepost tasks images`: build (or find) the docker image of every task without one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from swepost.cli.common import JsonOpt, console, store


def images_cmd(
    tasks: Annotated[str, typer.Argument(help="Tasks artifact: name, name@version, version prefix or path.")],
    repos: Annotated[Path | None, typer.Option(help="Folder of owner__name git repos (or .bundle files); "
                                                  "needed unless every task has an image.",
                                                  show_default=False)] = None,
    base: Annotated[str | None, typer.Option(help="Base image the task images start from [default: the "
                                                "swepost base image].", show_default=False)] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Builds at once.")] = 2,
    as_json: JsonOpt = False,
) -> dict[str, str]:
    """Build a docker image per task: the repo at base_commit in its workdir, install commands run (with
    network; the image's sandboxes run without). Cached by content; rows with an image are listed as-is."""
    from swepost.sandbox.images import DEFAULT_BASE_IMAGE
    from swepost.sandbox.task_images import build_task_images
    from swepost.stages.tasks import load_tasks

    art = store().resolve(tasks)
    rows = load_tasks(art)
    images = build_task_images(rows, repos, base=base or DEFAULT_BASE_IMAGE, jobs=jobs, progress=not as_json)
    if as_json:
        print(json.dumps(images))
    else:
        own = {t.instance_id for t in rows if t.env.image}
        for instance_id, image in images.items():
            console.print(f"{instance_id}\t{image}{'' if instance_id not in own else '  (from the task row)'}")
    return images
