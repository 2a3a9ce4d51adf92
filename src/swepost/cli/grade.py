"""`swepost grade ...`: read test statuses from logs; grade patches against a task's hidden tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from swepost.cli.common import console, err_console

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)

FORMATS = ("pytest-log", "junit")
_COLOURS = {"PASSED": "green", "XPASS": "green", "FAILED": "red", "ERROR": "red", "SKIPPED": "yellow",
            "XFAIL": "yellow"}


@app.callback()
def _grade() -> None:
    """Read test statuses from logs; grade patches against a task's hidden tests."""


def _fail(message: str) -> NoReturn:
    from rich.markup import escape

    err_console.print(f"error: {escape(message)}")
    raise typer.Exit(2)


@app.command("log")
def log_cmd(
    file: Annotated[Path, typer.Argument(help="A pytest -rA log or a pytest --junitxml file.",
                                         show_default=False)],
    format: Annotated[str, typer.Option("--format", "-f", help="pytest-log | junit")] = "pytest-log",
    root: Annotated[Path | None, typer.Option(help="junit only: the directory pytest ran in, to tell "
                                                   "modules from classes in classnames.",
                                              show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {test id: status} as one JSON object.")] = False,
):
    """Print {test id: status} read from a test log (statuses from pytest's own summary only)."""
    from swepost.rewards.testlog import parse_junit_xml, parse_pytest_log

    if format not in FORMATS:
        _fail(f"unknown --format {format!r}: use one of {', '.join(FORMATS)}")
    try:
        data = file.read_bytes()
    except OSError as e:
        _fail(f"{file}: cannot read: {e.strerror or e}")
    if format == "junit":
        try:
            statuses = parse_junit_xml(data.decode("utf-8", errors="replace"), root=root)
        except ValueError as e:
            _fail(f"{file}: {e}")
    else:
        statuses = parse_pytest_log(data.decode("utf-8", errors="replace"))
    if as_json:
        print(json.dumps(statuses))
        return
    if not statuses:
        err_console.print(f"{file}: no test statuses found")
        return
    from rich.table import Table
    from rich.text import Text

    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    table = Table(title=f"{file}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    table.add_column("test", overflow="fold")
    table.add_column("status", no_wrap=True)
    for test_id, status in statuses.items():
        table.add_row(Text(test_id), Text(status, style=_COLOURS.get(status, "")))
    console.print(table)


@app.command("patch")
def patch_cmd(
    tasks: Annotated[str, typer.Argument(help="Tasks artifact: name, name@version, version prefix or path.")],
    instance_id: Annotated[str, typer.Argument(help="The task's instance_id.")],
    patch_file: Annotated[Path, typer.Argument(help="The candidate diff ('-' reads stdin).")],
    repos: Annotated[Path | None, typer.Option(help="Folder of owner__name git repos (or .bundle files), for "
                                                  "tasks without an image.", show_default=False)] = None,
    backend: Annotated[str, typer.Option(help="auto | docker | bwrap | local.")] = "auto",
    timeout: Annotated[float, typer.Option(help="Seconds for the test run.")] = 1800.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result and its evidence as one JSON "
                                          "object.")] = False,
):
    """Grade one diff for one task in a fresh sandbox: RESOLVED_FULL / PARTIAL / NO, the reward, and the
    evidence (per-test statuses, apply log, neutralised files, tampering seen, exit code). UNGRADED (a
    timeout, the memory limit, a failed sandbox: not a verdict on the diff) exits 1."""
    import sys

    from swepost.artifacts import ArtifactStore
    from swepost.rewards.grading import grade_patch
    from swepost.stages.tasks import load_tasks

    found = [t for t in load_tasks(ArtifactStore().resolve(tasks)) if t.instance_id == instance_id]
    if not found:
        _fail(f"{tasks}: no task with instance_id {instance_id!r}")
    try:
        patch = sys.stdin.read() if str(patch_file) == "-" else patch_file.read_text()
    except (OSError, UnicodeDecodeError) as e:
        _fail(f"{patch_file}: cannot read: {e}")
    result = grade_patch(found[0], patch, repos=repos, backend=backend, timeout=timeout)
    if as_json:
        print(json.dumps(result.to_dict()))
        if result.ungraded:
            sys.exit(1)
        return
    reward = "none: not a wrong answer" if result.reward is None else f"{result.reward:g}"
    print(f"{result.instance_id}: {result.resolved} (reward {reward})")
    if result.reason:
        print(f"  {result.reason}")
    if result.apply.get("ok") is False:  # why it did not apply: git apply's and patch's own words
        log = [ln for ln in str(result.apply.get("log", "")).splitlines() if ln.strip()]
        shown = log if len(log) <= 30 else [*log[:10], f"... {len(log) - 20} lines ...", *log[-10:]]
        print(f"  apply log ({result.apply.get('method', 'git apply')}):")
        for ln in shown:
            print(f"    {ln}")
    for test_id, status in result.tests.items():
        print(f"  {status:8} {test_id}")
    if result.neutralised:
        print(f"  reverted test infrastructure: {', '.join(result.neutralised)}")
    if result.ungraded:
        sys.exit(1)
