"""Entry point of the processes `accelerate launch` starts for `swepost sft --launch accelerate`.

`python -m swepost.train.sft_entry CONFIG.json`: the JSON holds the resolved stage config ({"config": {...},
"home": store root}). Every process runs the sft stage, which trains (resuming from the work folder's last
checkpoint) and leaves publishing to the `swepost sft` process that launched them.
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
    from swepost.stages.sft import CHILD_ENV, SftConfig, run_sft

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m swepost.train.sft_entry CONFIG.json", file=sys.stderr)
        return 2
    os.environ[CHILD_ENV] = "1"
    try:
        spec = json.loads(Path(argv[0]).read_text())
        config = validate(SftConfig, spec["config"])
        run_sft(config, ArtifactStore(spec.get("home")))
    except (BadInput, WorkFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, BadInput) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
