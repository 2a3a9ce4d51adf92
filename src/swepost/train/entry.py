"""Entry point of the processes `accelerate launch` starts for `swepost sft|rl --launch accelerate`.

`python -m swepost.train.entry STAGE launch-config.json`: the JSON (written by `swepost.train.launch`) holds the
resolved stage config, the store root and, by import path, the stage's config model and run function. Every
process runs the stage, which trains (resuming from the work folder's last checkpoint) and leaves publishing to
the `swepost` process that launched them. The stage is named by import path so that this layer (train) never
imports the stages above it: they hand it their run function, the way a caller hands a callback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from swepost.artifacts import ArtifactStore
    from swepost.config import validate
    from swepost.errors import BadInput, WorkFailed
    from swepost.registry import load_component
    from swepost.train.launch import CHILD_ENV

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m swepost.train.entry STAGE LAUNCH_CONFIG.json", file=sys.stderr)
        return 2
    stage, path = argv
    os.environ[CHILD_ENV] = "1"
    try:
        try:
            spec = json.loads(Path(path).read_text())
            run, config_model, data = spec["run"], spec["config_model"], spec["config"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BadInput(f"{stage}: {path} is no launch config written by swepost.train.launch ({e})") from None
        config = validate(load_component(config_model, {}, "config model"), data)
        load_component(run, {}, "stage run function")(config, ArtifactStore(spec.get("home")))
    except (BadInput, WorkFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, BadInput) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
