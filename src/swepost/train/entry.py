"""Entry point of the processes `accelerate launch` starts for `swepost sft|rl --launch accelerate`.

`python -m swepost.train.entry STAGE CONFIG.json`: the JSON holds the resolved stage config ({"config": {...},
"home": store root}). Every process runs the stage, which trains (resuming from the work folder's last
checkpoint) and leaves publishing to the `swepost` process that launched them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

LAUNCHABLE = ("sft", "rl")


def main(argv: list[str] | None = None) -> int:
    from swepost.artifacts import ArtifactStore
    from swepost.config import validate
    from swepost.errors import BadInput, WorkFailed
    from swepost.stages import get_stage
    from swepost.stages.sft import CHILD_ENV

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in LAUNCHABLE:
        print(f"usage: python -m swepost.train.entry {{{','.join(LAUNCHABLE)}}} CONFIG.json", file=sys.stderr)
        return 2
    os.environ[CHILD_ENV] = "1"
    stage = get_stage(argv[0])
    try:
        spec = json.loads(Path(argv[1]).read_text())
        config = validate(stage.config_model(), spec["config"])
        stage.runner()(config, ArtifactStore(spec.get("home")))
    except (BadInput, WorkFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, BadInput) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
