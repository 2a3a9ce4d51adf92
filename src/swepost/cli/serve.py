"""`swepost serve ...`: long-running servers on loopback (the retriever)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from swepost.cli.common import err_console, store
from swepost.errors import BadInput

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)

INDEX_FOLDER = "index"  # where an index artifact keeps its tantivy folder


def index_folder(ref: str) -> Path:
    """An index artifact (name, name@version, a version prefix or its folder) or a plain index folder."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            return path  # a plain index folder, as `build_index` writes it
        art = store().resolve(str(path))
    elif "/" in ref or ref.startswith((".", "~")):
        raise BadInput("no such index folder", file=ref)
    else:
        art = store().resolve(ref)
    if art.kind != "index":
        raise BadInput(f"artifact {art.id} is a {art.kind} artifact, not an index (make one with "
                       "`swepost corpus index`)")
    folder = art.path / INDEX_FOLDER
    if not folder.is_dir():
        raise BadInput(f"index artifact {art.id} has no {INDEX_FOLDER}/ folder", file=str(art.path))
    return folder


@app.command("retriever")
def retriever_cmd(
    index: Annotated[str, typer.Argument(help="An index artifact (name, name@version) or an index folder.",
                                         show_default=False)],
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on. 0.0.0.0 exposes the corpus to the network.")]
    = "127.0.0.1",
    topk: Annotated[int, typer.Option(help="Hits per query when a request gives no topk (Search-R1's --topk).")]
    = 3,
    max_topk: Annotated[int, typer.Option(help="Largest topk a request may ask for (more is a 422).")] = 100,
    max_queries: Annotated[int, typer.Option(help="Most queries in one request (more is a 422).")] = 512,
):
    """Serve Search-R1's retriever API (POST /retrieve) over an index, plus POST /documents and GET /health.

    Existing Search-R1 / VerlTool configs point at http://HOST:PORT/retrieve unchanged; many environment workers
    share one server. Stops cleanly on Ctrl-C or SIGTERM.
    """
    from swepost.serve.retriever import serve_retriever

    folder = index_folder(index)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach this address can "
                          "read the whole corpus")

    def ready(url: str, documents: int) -> None:
        print(f"retriever serving {documents} documents on {url} (Search-R1 retriever.url: {url}/retrieve)",
              flush=True)

    serve_retriever(folder, host, port, default_topk=topk, max_topk=max_topk, max_queries=max_queries,
                    on_ready=ready)
    err_console.print("retriever stopped")


def _env_args(pairs: list[str]) -> dict:
    """`--env-arg key=value` (repeatable; the value read as YAML: 3, true, [a, b]) -> environment_args."""
    import yaml

    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise BadInput(f"expected key=value, got {pair!r}", key="--env-arg")
        try:
            out[key.strip()] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as e:
            raise BadInput(f"{key}: the value is not YAML: {e}", key="--env-arg") from None
    return out


@app.command("env")
def env_cmd(
    tasks: Annotated[str, typer.Option("--tasks", help="The tasks artifact whose tasks the server runs "
                                       "(extra_fields.instance_id names one).", show_default=False)],
    env: Annotated[str | None, typer.Option("--env", help="swe | codeqa | search | module:Class; unset: the "
                                            "tasks' kind's own environment.")] = None,
    index: Annotated[str | None, typer.Option(help="An index artifact the environment searches (search).")] = None,
    repos: Annotated[Path | None, typer.Option(help="Mirror folder of owner__name repos (tasks without an image).")]
    = None,
    backend: Annotated[str, typer.Option(help="Sandbox backend: auto, docker, bwrap, local.")] = "auto",
    host: Annotated[str, typer.Option(help="Address to listen on. 0.0.0.0 lets anyone who can reach it run "
                                      "commands in sandboxes.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes; a trajectory lives in worker "
                                         "crc32(id) % workers. 1: threads of the server's own process.")] = 1,
    ray: Annotated[str | None, typer.Option("--ray", help="A Ray cluster address (auto: the one `ray start` "
                                            "started here): one Ray actor per live environment.")] = None,
    ray_cpus: Annotated[float, typer.Option(help="CPUs Ray reserves for each environment's actor (0.25: four "
                                            "light environments per core).")] = 1.0,
    max_envs: Annotated[int, typer.Option(help="Live environments at most; more is a 503 with Retry-After.")]
    = 512,
    idle_ttl: Annotated[float, typer.Option(help="Seconds without an action before an environment is closed.")]
    = 1200.0,
    call_timeout: Annotated[float, typer.Option(help="Seconds one action may run.")] = 300.0,
    grading_timeout: Annotated[float, typer.Option(help="Seconds grading may run; past it the episode is "
                                                   "ungraded.")] = 600.0,
    tool_timeout: Annotated[float, typer.Option(help="Seconds one tool command may run in the sandbox.")] = 120.0,
    concurrency: Annotated[int, typer.Option(help="Actions running at once per process.")] = 64,
    env_arg: Annotated[list[str] | None, typer.Option("--env-arg", help="An environment argument key=value "
                                                      "(repeatable), as environment_args in a recipe.")] = None,
    judge_base_url: Annotated[str | None, typer.Option(help="The judge's OpenAI-compatible endpoint (codeqa, "
                                                       "search with verify judge).")] = None,
    judge_model: Annotated[str | None, typer.Option(help="The judge's model.")] = None,
    log: Annotated[Path | None, typer.Option(help="The JSONL request log (default: "
                                             "$SWEPOST_HOME/logs/env-server-<time>.jsonl).")] = None,
    task_rows: Annotated[bool, typer.Option("--task-rows/--no-task-rows", help="Run a task row a client sends "
                                            "in extra_fields.task when its instance_id is not one of --tasks.")]
    = True,
):
    """Serve environments over VerlTool's protocol: POST /get_observation, GET /health, GET /metrics.

    Trainers (VerlTool, verl) and swepost's own `environment: remote` send the model's raw text per trajectory id;
    the server keeps each trajectory's environment (sandbox, index, judge), grades the episode when it ends and
    puts the reward in the last observation. Stops cleanly on Ctrl-C or SIGTERM, closing every sandbox.
    """
    import datetime as dt

    from swepost.agent import pick_environment
    from swepost.records import SandboxLimits
    from swepost.rewards.judge import JudgeConfig
    from swepost.sandbox.task_sandbox import sandbox_kwargs
    from swepost.serve.envserver import EnvServer, ServerOptions, make_backend, serve_env
    from swepost.serve.envsession import EnvSpec
    from swepost.stages.collect import index_artifact
    from swepost.stages.tasks import load_tasks

    for name, value in (("--max-envs", max_envs), ("--concurrency", concurrency)):
        if value < 1:
            raise BadInput(f"must be at least 1, not {value}", key=name)
    for name, value in (("--idle-ttl", idle_ttl), ("--call-timeout", call_timeout),
                        ("--grading-timeout", grading_timeout), ("--tool-timeout", tool_timeout)):
        if not value > 0:
            raise BadInput(f"must be above 0, not {value}", key=name)
    st = store()
    task_list = load_tasks(st.resolve(tasks))
    name = pick_environment(env, [t.kind for t in task_list])
    if name == "remote":
        raise BadInput("the server runs environments; remote is its client", key="--env")
    settings = {"repos": repos, "backend": backend, "tool_timeout": tool_timeout, "grade": True,
                **sandbox_kwargs(SandboxLimits())}
    if index is not None:
        settings["index"] = str(index_artifact(index, st).path)
    judge = None
    if judge_base_url or judge_model:
        judge = JudgeConfig(base_url=judge_base_url, model=judge_model).model_dump(mode="json")
    spec = EnvSpec(name, settings=settings, args=_env_args(env_arg or []), judge=judge,
                   judge_cache=str(st.root / "cache" / "judge"), grading_timeout=grading_timeout)
    spec.factory()  # a bad setting stops here, with exit 2, before anything listens
    if log is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        log = st.root / "logs" / f"env-server-{stamp}-{__import__('os').getpid()}.jsonl"
    options = ServerOptions(max_envs=max_envs, idle_ttl=idle_ttl, call_timeout=call_timeout,
                            grading_timeout=grading_timeout, concurrency=concurrency, log_path=log)
    if not ray_cpus > 0:
        raise BadInput(f"must be above 0, not {ray_cpus}", key="--ray-cpus")
    backend = make_backend(spec, workers=workers, ray=ray, concurrency=concurrency,
                           ray_options={"num_cpus": ray_cpus})
    server = EnvServer(backend, spec, task_list,
                       options, allow_task_rows=task_rows)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach this address can run "
                          "commands in the sandboxes")
    where = f"ray {ray}" if ray else (f"{workers} worker processes" if workers > 1 else "threads")

    def ready(url: str) -> None:
        print(f"env server ready on {url} ({name}, {len(task_list)} tasks, {where}; POST {url}/get_observation; "
              f"log {log})", flush=True)

    serve_env(server, host, port, on_ready=ready)
    err_console.print("environment server stopped; every environment closed")
