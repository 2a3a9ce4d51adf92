"""Problem statements of mined tasks: written by an LLM from the fix and its failing tests, as a user would report
the bug, never naming the tests nor revealing the fix; without an endpoint, the commit message, flagged as such.

A reply that names a FAIL_TO_PASS test, its file or function, or quotes an added line of the fix is asked again
with a reminder (the asking and retrying is the caller's `ask`, e.g. synth-qa's ChatLLM over OpenAIPolicy).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_PROMPT = Path(__file__).parent / "prompts" / "problem_statement.md"
REMINDER = ("Your issue could not be used ({cause}). Write it again as the bug's reporter: describe the "
            "behaviour only, never name tests, test files or test functions, and never quote or describe the fix.")
MAX_DIFF_CHARS = 12000
MIN_QUOTE_CHARS = 25  # an added line of the fix this long, found verbatim in the reply, gives the fix away


class Leaky(ValueError):
    """The reply names a test or quotes the fix."""


def render(template: str, cand: dict[str, Any], fail_to_pass: list[str]) -> str:
    return template.format(repo=cand["repo"], message=cand["message"].strip() or "(none)",
                           patch=cand["patch"][:MAX_DIFF_CHARS], test_patch=cand["test_patch"][:MAX_DIFF_CHARS],
                           failing_tests="\n".join(f"- {t}" for t in fail_to_pass[:30]))


def leaks(text: str, cand: dict[str, Any], fail_to_pass: list[str]) -> list[str]:
    """What in `text` names a test or quotes the fix."""
    found = []
    lowered = text.lower()
    for test_id in fail_to_pass:
        path, _, rest = test_id.partition("::")
        names = [path, path.rsplit("/", 1)[-1]] + [re.sub(r"\[.*$", "", p) for p in rest.split("::") if p]
        for name in names:
            if len(name) >= 6 and name.lower() in lowered:
                found.append(f"it names the test {name!r}")
    for line in cand["patch"].splitlines():
        added = line[1:].strip()
        if line.startswith("+") and not line.startswith("+++") and len(added) >= MIN_QUOTE_CHARS and added in text:
            found.append(f"it quotes the fix ({added[:60]!r})")
    return sorted(set(found))


def write_statement(ask: Callable[[str, Callable[[str], Any]], Any], template: str, cand: dict[str, Any],
                    fail_to_pass: list[str]) -> str:
    """The LLM's issue text; raises whatever `ask` raises when no usable reply comes."""

    def parse(text: str) -> str:
        problems = leaks(text, cand, fail_to_pass)
        if problems:
            raise Leaky("; ".join(problems))
        return text.strip()

    return ask(render(template, cand, fail_to_pass), parse)


def from_commit_message(cand: dict[str, Any]) -> str:
    return cand["message"].strip() or f"Fix in {cand['repo']} (commit {cand['commit'][:12]})"
