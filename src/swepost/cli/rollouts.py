"""`swepost collect` and `swepost eval`: the same rollout engine, two outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from swepost.cli.common import ConfigOpt, JsonOpt, PrintConfigOpt, SetOpt, print_config, resolve_config, run_stage

TasksArg = Annotated[str | None, typer.Argument(help="Tasks artifact: name, name@version, prefix or path.",
                                                show_default=False)]
PolicyOpt = Annotated[str | None, typer.Option(help="openai | hf | scripted | oracle | module:Class.",
                                               show_default=False)]
ModelOpt = Annotated[str | None, typer.Option(help="The policy's model: a served model name, a local folder "
                                              "or a checkpoint artifact (sets policy_args.model).",
                                              show_default=False)]
SamplesOpt = Annotated[int | None, typer.Option("--samples", "-k", help="Episodes per task [default: 1].",
                                                show_default=False)]
ConcurrencyOpt = Annotated[int | None, typer.Option("--concurrency", "-j", help="Episodes (sandboxes) at once "
                                                    "[default: 4].", show_default=False)]
ReposOpt = Annotated[Path | None, typer.Option(help="Folder of owner__name git repos (or .bundle files).",
                                               show_default=False)]
BackendOpt = Annotated[str | None, typer.Option(help="auto | docker | bwrap | local.", show_default=False)]
NameOpt = Annotated[str | None, typer.Option("--name", "-n", help="Output artifact name.", show_default=False)]
LimitOpt = Annotated[int | None, typer.Option(help="Only the first N tasks.", show_default=False)]
IndexOpt = Annotated[str | None, typer.Option(help="An index artifact to search (search tasks; swepost corpus "
                                              "index).", show_default=False)]


def _flags(tasks, policy, model, samples, concurrency, repos, backend, name, limit, index) -> dict:
    return {"tasks": tasks, "policy": policy, "policy_args.model": model, "samples": samples,
            "concurrency": concurrency, "repos": repos, "backend": backend, "name": name, "limit": limit,
            "index": index}


def collect_cmd(tasks: TasksArg = None, policy: PolicyOpt = None, model: ModelOpt = None,
                samples: SamplesOpt = None, concurrency: ConcurrencyOpt = None, repos: ReposOpt = None,
                backend: BackendOpt = None, name: NameOpt = None, limit: LimitOpt = None, index: IndexOpt = None,
                config: ConfigOpt = None, set_: SetOpt = None, print_config_: PrintConfigOpt = False,
                as_json: JsonOpt = False):
    """Run a policy on every task x sample in sandboxes, N at once; grade each episode; write trajectories.
    Crash-safe: run the same command again and only the missing episodes run."""
    from swepost.stages.collect import CollectConfig

    cfg = resolve_config(CollectConfig, config, set_,
                         _flags(tasks, policy, model, samples, concurrency, repos, backend, name, limit, index))
    if print_config_:
        return print_config(cfg)
    run_stage("collect", cfg, as_json)


def eval_cmd(tasks: TasksArg = None, policy: PolicyOpt = None, model: ModelOpt = None,
             samples: SamplesOpt = None, concurrency: ConcurrencyOpt = None, repos: ReposOpt = None,
             backend: BackendOpt = None, name: NameOpt = None, limit: LimitOpt = None, index: IndexOpt = None,
             config: ConfigOpt = None, set_: SetOpt = None, print_config_: PrintConfigOpt = False,
             as_json: JsonOpt = False):
    """Evaluate a policy: resolved rate, unbiased pass@k, exit statuses, turns and tokens; an eval artifact
    with SWE-bench predictions.jsonl and a Markdown summary."""
    from swepost.stages.evaluate import EvalConfig

    cfg = resolve_config(EvalConfig, config, set_,
                         _flags(tasks, policy, model, samples, concurrency, repos, backend, name, limit, index))
    if print_config_:
        return print_config(cfg)
    run_stage("eval", cfg, as_json)
