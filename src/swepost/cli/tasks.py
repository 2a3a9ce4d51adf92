"""`swepost tasks ...`: import task files into the store, list them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from swepost.cli.common import (
    ConfigOpt,
    JsonOpt,
    PrintConfigOpt,
    SetOpt,
    console,
    err_console,
    print_config,
    report,
    resolve_config,
    run_stage,
    store,
)
from swepost.cli.task_images import images_cmd
from swepost.registry import TASK_KINDS

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
app.command("images")(images_cmd)


@app.command("import")
def import_cmd(
    source: Annotated[Path | None, typer.Argument(help="SWE-bench-format rows: JSONL, JSON list, Parquet, or a "
                                                       "save_to_disk folder.", show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Output artifact name [default: tasks].",
                                             show_default=False)] = None,
    format: Annotated[str | None, typer.Option(help="auto | jsonl | json | parquet | hf-disk.",
                                               show_default=False)] = None,
    kind: Annotated[str | None, typer.Option(help=f"Kind of rows that do not say: {' | '.join(TASK_KINDS)} "
                                             "| module:NAME [default: swe].", show_default=False)] = None,
    split: Annotated[str | None, typer.Option(help="Split of a saved DatasetDict.", show_default=False)] = None,
    specs: Annotated[Path | None, typer.Option(help="YAML of per-repo specs: install, test_cmd, network, "
                                                    "per-version overrides.", show_default=False)] = None,
    strict: Annotated[bool | None, typer.Option("--strict", help="Fail (exit 2) on rows no stage can use, as "
                                                "their kind says (swe: no patch or test_patch, empty "
                                                "FAIL_TO_PASS), instead of warning.", show_default=False)] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_config_: PrintConfigOpt = False,
    as_json: JsonOpt = False,
):
    """Import a task file (FAIL_TO_PASS / PASS_TO_PASS as lists or JSON strings) as a `tasks` artifact.
    Every problem of the file is listed at once, by line and field."""
    from swepost.stages.tasks import TasksImportConfig

    cfg = resolve_config(TasksImportConfig, config, set_,
                         {"source": source, "name": name, "format": format, "kind": kind,
                          "split": split, "specs": specs, "strict": strict})
    if print_config_:
        return print_config(cfg)
    run_stage("tasks-import", cfg, as_json)


@app.command("ls")
def ls_cmd(
    ref: Annotated[str, typer.Argument(help="Tasks artifact: name, name@version, version prefix or path.")],
    limit: Annotated[int, typer.Option(help="Show at most this many rows (0: all).")] = 50,
):
    """Show the tasks of a tasks artifact as a table."""
    from rich.table import Table

    from swepost.stages.tasks import load_tasks

    art = store().resolve(ref)
    tasks = load_tasks(art)
    table = Table(title=f"{art.id}: {len(tasks)} tasks")
    table.add_column("instance_id", no_wrap=True)
    for col in ("kind", "repo", "base_commit", "F2P", "P2P", "image"):
        table.add_column(col, overflow="fold")
    for t in tasks[: limit or None]:
        table.add_row(t.instance_id, t.kind, t.repo or "", (t.base_commit or "")[:10],
                      str(len(t.verify.fail_to_pass)), str(len(t.verify.pass_to_pass)), t.env.image or "")
    console.print(table)
    if limit and len(tasks) > limit:
        console.print(f"… {len(tasks) - limit} more (--limit 0 shows all)")


@app.command("validate")
def validate_cmd(
    tasks: Annotated[str | None, typer.Argument(help="Tasks artifact to validate.", show_default=False)] = None,
    repos: Annotated[Path | None, typer.Option(help="Folder of owner__name git repos (or .bundle files).",
                                                  show_default=False)] = None,
    runs: Annotated[int | None, typer.Option(help="Repeats of each check; tests that flip are flaky "
                                                "[default: 1].", show_default=False)] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Tasks validated at once [default: 2].",
                                             show_default=False)] = None,
    backend: Annotated[str | None, typer.Option(help="auto | docker | bwrap | local [default: auto].",
                                                   show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Output artifact name "
                                                "[default: tasks-validated].", show_default=False)] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_config_: PrintConfigOpt = False,
    as_json: JsonOpt = False,
):
    """Check each task in fresh sandboxes: FAIL_TO_PASS fails without the fix, everything passes with the
    gold patch, nothing flips over --runs repeats. Writes a validated tasks artifact and its report; says on
    stderr why each dropped task was dropped and each removed test removed."""
    import json
    import sys

    from swepost.stages.validate import REPORT_FILE, TasksValidateConfig, dropped_lines, run_validate

    cfg = resolve_config(TasksValidateConfig, config, set_, {"tasks": tasks, "repos": repos, "runs": runs,
                                                             "jobs": jobs, "backend": backend, "name": name})
    if print_config_:
        return print_config(cfg)
    art = run_validate(cfg, store(), progress=not as_json and sys.stderr.isatty())
    for line in dropped_lines(json.loads((art.path / REPORT_FILE).read_text())):
        err_console.print(line, markup=False)
    report(art, as_json)


@app.command("synth-qa")
def synth_qa_cmd(
    issues: Annotated[Path | None, typer.Argument(help="Issue texts: JSONL of {repo, title, body} per line.",
                                                  show_default=False)] = None,
    repos: Annotated[Path | None, typer.Option(help="Folder of owner__name git repos (or .bundle files).",
                                                  show_default=False)] = None,
    commit: Annotated[list[str] | None, typer.Option("--commit", metavar="OWNER/NAME@COMMIT", help="The commit "
                                                     "questions about a repo are about (repeatable).",
                                                     show_default=False)] = None,
    model: Annotated[str | None, typer.Option(help="Model of the LLM endpoint (llm.model).",
                                              show_default=False)] = None,
    base_url: Annotated[str | None, typer.Option(help="The endpoint's /v1 URL (llm.base_url).",
                                                 show_default=False)] = None,
    backend: Annotated[str | None, typer.Option(help="Sandbox backend of the teacher: auto | docker | bwrap "
                                                "[default: auto].", show_default=False)] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Teacher episodes at once [default: 2].",
                                             show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Output artifact name "
                                             "[default: tasks-synth-qa].", show_default=False)] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_config_: PrintConfigOpt = False,
    as_json: JsonOpt = False,
):
    """Synthesize codeqa tasks from issue texts: an LLM writes what / why / where / how questions, near-duplicates
    go, topic clusters are sampled for balance, a teacher agent answers with the codeqa tools (the judge keeps
    good answers as references), and questions a direct answer without tools already solves are dropped. Writes
    a tasks artifact and report.json; says on stderr what was dropped or failed, and why."""
    import json

    from swepost.stages.synth_qa import REPORT_FILE, TasksSynthQaConfig, run_synth_qa, summary_lines

    cfg = resolve_config(TasksSynthQaConfig, config, set_,
                         {"issues": issues, "repos": repos, "commits": commit or None, "llm.model": model,
                          "llm.base_url": base_url, "backend": backend, "jobs": jobs, "name": name})
    if print_config_:
        return print_config(cfg)
    art = run_synth_qa(cfg, store())
    for line in summary_lines(json.loads((art.path / REPORT_FILE).read_text())):
        err_console.print(line, markup=False)
    report(art, as_json)


@app.command("select")
def select_cmd(
    tasks: Annotated[str | None, typer.Argument(help="Tasks artifact to select from.", show_default=False)] = None,
    attempts: Annotated[str | None, typer.Option("--attempts", "-a", help="Earlier attempts: an rl checkpoint, "
                                                 "or a trajectories / eval artifact.", show_default=False)] = None,
    max_solve_rate: Annotated[float | None, typer.Option(help="Keep tasks solved in at most this share of their "
                                                         "graded attempts [default: 0.5].",
                                                         show_default=False)] = None,
    min_solve_rate: Annotated[float | None, typer.Option(help="... and in at least this share [default: 0].",
                                                         show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Output artifact name [default: tasks-hard].",
                                             show_default=False)] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_config_: PrintConfigOpt = False,
    as_json: JsonOpt = False,
):
    """Keep the tasks that earlier attempts found hard (solve rate over graded attempts in a range): the task set
    of a curriculum's next phase. Ungraded attempts do not count."""
    from swepost.stages.select import TasksSelectConfig

    cfg = resolve_config(TasksSelectConfig, config, set_,
                         {"tasks": tasks, "attempts": attempts, "max_solve_rate": max_solve_rate,
                          "min_solve_rate": min_solve_rate, "name": name})
    if print_config_:
        return print_config(cfg)
    run_stage("tasks-select", cfg, as_json)


@app.command("audit")
def audit_cmd(
    tasks: Annotated[str, typer.Argument(help="Tasks artifact (or a task file) to audit.")],
    repos: Annotated[Path | None, typer.Option(help="Folder of owner__name git repos (or .bundle files).",
                                                  show_default=False)] = None,
    backend: Annotated[str, typer.Option(help="auto | docker | bwrap | local.")] = "auto",
    jobs: Annotated[int, typer.Option(help="Gradings at once.")] = 2,
    limit: Annotated[int, typer.Option(help="Audit at most this many tasks (0: all).")] = 0,
    as_json: JsonOpt = False,
):
    """Run swepost's reward-hacking battery against every task: the gold patch must resolve, every attack
    (runner tampering, shadowing, pytest config at any depth, hidden files, .git in the diff, test support)
    must be rejected, and the checkout must hold no history past base. Exit 1 if anything gets through."""
    import json
    import sys

    from swepost.errors import BadInput
    from swepost.stages.audit import audit_tasks, summary_lines
    from swepost.stages.tasks import load_tasks, read_task_file
    from swepost.taskkinds import task_kind

    path = Path(tasks)
    if path.suffix in (".jsonl", ".json") and path.is_file():
        task_list = read_task_file(path)
    else:
        task_list = load_tasks(store().resolve(tasks))
    runs_in = {k: task_kind(k).environment for k in {t.kind for t in task_list}}
    task_list = [t for t in task_list if runs_in[t.kind] == "swe"][: limit or None]  # the battery attacks its grader
    if not task_list:
        raise BadInput(f"{tasks}: no bug-fixing tasks to audit")
    report = audit_tasks(task_list, repos=repos, backend=backend, jobs=jobs)
    if as_json:
        print(json.dumps(report))
    else:
        for line in summary_lines(report):
            console.print(line, markup=False, highlight=False)
    if not report["ok"]:
        sys.exit(1)


@app.command("mine")
def mine_cmd(
    repos: Annotated[Path | None, typer.Option(help="Folder of owner__name git repos (or .bundle files) to mine.",
                                                  show_default=False)] = None,
    repo: Annotated[list[str] | None, typer.Option("--repo", metavar="OWNER/NAME", help="Mine this repo "
                                                   "(repeatable) [default: every mirror in --repos].",
                                                   show_default=False)] = None,
    since: Annotated[str | None, typer.Option(help="First commit date, YYYY-MM-DD.", show_default=False)] = None,
    until: Annotated[str | None, typer.Option(help="Last commit date, YYYY-MM-DD.", show_default=False)] = None,
    max_candidates: Annotated[int | None, typer.Option(help="Execute at most this many candidates.",
                                                       show_default=False)] = None,
    specs: Annotated[Path | None, typer.Option(help="YAML of per-repo install commands, test_cmd, network.",
                                                  show_default=False)] = None,
    runs: Annotated[int | None, typer.Option(help="Executions of each side; a test that flips is flaky "
                                             "[default: 2].", show_default=False)] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-j", help="Candidates executing at once "
                                                "[default: 2].", show_default=False)] = None,
    ray: Annotated[str | None, typer.Option("--ray", metavar="ADDRESS", help="Ray cluster (host:port or auto) "
                                            "[default: a private local one].", show_default=False)] = None,
    model: Annotated[str | None, typer.Option(help="Model of the LLM endpoint that writes problem statements "
                                              "(llm.model) [default: none, the commit message].",
                                              show_default=False)] = None,
    base_url: Annotated[str | None, typer.Option(help="The endpoint's /v1 URL (llm.base_url).",
                                                 show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Output artifact name [default: tasks-mined].",
                                             show_default=False)] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_config_: PrintConfigOpt = False,
    as_json: JsonOpt = False,
):
    """Mine bug-fixing tasks from git history (SWE-Next style, on Ray): commits changing source and tests are
    executed before and after in sandboxes from per-window environment profiles; strict improvements with no
    regression and no flaky test become tasks. Writes a tasks artifact and report.json; resumable."""
    import json
    import sys

    from swepost.stages.mine import REPORT_FILE, TasksMineConfig, run_mine, summary_lines

    cfg = resolve_config(TasksMineConfig, config, set_,
                         {"repos": repos, "repo": repo or None, "since": since, "until": until,
                          "max_candidates": max_candidates, "specs": specs, "runs": runs, "workers": workers,
                          "ray": ray, "llm.model": model, "llm.base_url": base_url, "name": name})
    if print_config_:
        return print_config(cfg)
    art = run_mine(cfg, store(), progress=not as_json and sys.stderr.isatty())
    for line in summary_lines(json.loads((art.path / REPORT_FILE).read_text())):
        err_console.print(line, markup=False)
    report(art, as_json)
