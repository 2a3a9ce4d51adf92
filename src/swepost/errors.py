"""The two ways a command fails: bad input (exit 2) and failed work (exit 1)."""

from __future__ import annotations


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
