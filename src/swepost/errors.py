"""The two ways a command fails: bad input (exit 2) and failed work (exit 1); and how to read what an HTTP API
server said when it refused a request (the policies' and the judge's OpenAI-compatible clients share it)."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any


class BadInput(Exception):
    """The user gave something swepost cannot use: a file, a key, a value, a reference.

    The message names where the problem is (file, line, dotted key) so that the CLI can print it
    as one line and exit with code 2, never with a traceback.
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None):
        self.file, self.line, self.key, self.detail = file, line, key, message
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}" if self.line else self.file
        if self.key:
            where = f"{where}: {self.key}" if where else self.key
        return f"{where}: {self.detail}" if where else self.detail


class BadInputs(BadInput):
    """Several problems found in one pass (a task file with many malformed lines, say)."""

    def __init__(self, problems: list[BadInput], limit: int = 20):
        self.problems = problems
        shown = [p.render() for p in problems[:limit]]
        if len(problems) > limit:
            shown.append(f"... and {len(problems) - limit} more")
        super().__init__("\n".join(shown))

    def render(self) -> str:
        return self.detail


class WorkFailed(Exception):
    """The input was fine but the work did not succeed (exit 1)."""

    exit_code = 1


def api_error_text(e: Any) -> str:
    """An API error's message with its body, when the body says more (the openai client's APIStatusError)."""
    text = str(getattr(e, "message", "") or e)
    body = getattr(e, "body", None)
    if body is not None:
        extra = body if isinstance(body, str) else json.dumps(body, default=str)
        if extra not in text:
            text = f"{text} {extra}"
    return text


def retry_after(e: Any, cap: float) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, or Retry-After in seconds or as a date), at most
    `cap`; None when it did not say."""
    headers = getattr(getattr(e, "response", None), "headers", None)
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return min(max(float(ms) / 1000, 0.0), cap)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), cap)
