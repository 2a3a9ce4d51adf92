"""Judgements on disk, one JSON file per key, so re-running an eval or resuming RL never pays a judge twice.

The key is the sha256 of what decides the scores: question, answer (as the judge saw it), reference, rubric,
judge model and prompt hash. Weights stay out (the reward is recomputed from the axes), and so do failures.
Writes go to a temporary file renamed into place: threads and processes sharing a folder never read half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def judgement_key(*, question: str, answer: str, reference: str, rubric: Sequence[str], model: str,
                  prompt_sha256: str) -> str:
    fields = {"format": CACHE_FORMAT, "question": question, "answer": answer, "reference": reference,
              "rubric": list(rubric), "model": model, "prompt_sha256": prompt_sha256}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class JudgeCache:
    """A folder of judgements (e.g. $SWEPOST_HOME/cache/judge), made at the first write."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored record, or None (a file that cannot be read is a miss, and is written over)."""
        path = self.path(key)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("judge cache: ignoring unreadable %s (%s)", path, e)
            return None
        return record if isinstance(record, dict) and record.get("format") == CACHE_FORMAT else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"format": CACHE_FORMAT, **record}, f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
