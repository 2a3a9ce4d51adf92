"""`swepost sandbox ...`: run commands in a sandbox by hand, build base images, clean up leftovers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from swepost.cli.common import console, err_console

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)

BackendOpt = Annotated[str, typer.Option("--backend", "-b", help="auto | docker | bwrap | local | module:Class.")]
ImageOpt = Annotated[str | None, typer.Option("--image", "-i", help="Docker image [default: the swepost "
                                                 "base image].", show_default=False)]
NetworkOpt = Annotated[bool, typer.Option("--network", help="Allow network access (off by default).")]
DirOpt = Annotated[Path | None, typer.Option("--dir", "-d", help="Host folder copied in as the working "
                                                "copy.", show_default=False, exists=True, file_okay=False)]
TimeoutOpt = Annotated[float, typer.Option("--timeout", "-t", help="Seconds before the command is killed.")]
MemoryOpt = Annotated[int, typer.Option("--memory-mb", help="Memory limit.")]


def _limits(network: bool, timeout: float, memory_mb: int):
    from swepost.sandbox.base import Limits

    return Limits(network=network, timeout_s=timeout, memory_mb=memory_mb)


@app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_cmd(command: Annotated[list[str], typer.Argument(help="The command, after `--`.")],
             backend: BackendOpt = "auto", image: ImageOpt = None, network: NetworkOpt = False,
             dir: DirOpt = None, timeout: TimeoutOpt = 120.0, memory_mb: MemoryOpt = 2048):
    """Run one command in a fresh sandbox; print its output and exit with its exit code."""
    import shlex

    from swepost.sandbox import open_sandbox

    line = command[0] if len(command) == 1 else shlex.join(command)
    with open_sandbox(backend, image=image, source_dir=dir, limits=_limits(network, timeout, memory_mb)) as box:
        result = box.run(line, timeout=timeout)
    sys.stdout.write(result.output)
    if result.timed_out:
        err_console.print(f"[red]timed out after {timeout:g} s[/]")
    if result.oom_killed:
        err_console.print("[red]killed: out of memory[/]")
    raise typer.Exit(result.exit_code)


@app.command("shell")
def shell_cmd(backend: BackendOpt = "auto", image: ImageOpt = None, network: NetworkOpt = False,
              dir: DirOpt = None, timeout: TimeoutOpt = 120.0, memory_mb: MemoryOpt = 2048):
    """An interactive session: each line you type runs in the sandbox's persistent shell. Ctrl-C stops the
    running command (the session goes on); Ctrl-D ends."""
    from swepost.sandbox import open_sandbox

    with open_sandbox(backend, image=image, source_dir=dir, limits=_limits(network, timeout, memory_mb)) as box:
        err_console.print(f"[bold]{box.backend}[/] sandbox ready; Ctrl-C stops a command, Ctrl-D leaves.")
        prompt = "sandbox$ " if sys.stdin.isatty() else ""  # piped input gets clean output
        while True:
            try:
                line = input(prompt)
            except EOFError:
                break
            except KeyboardInterrupt:  # at the prompt, like a shell: a fresh line
                print(file=sys.stderr)
                continue
            if line.strip():
                result = _run_interruptibly(box, line)
                sys.stdout.write(result.output)
                if result.exit_code:
                    err_console.print(f"[dim]exit {result.exit_code}{' (timed out)' if result.timed_out else ''}[/]")


def _run_interruptibly(box, line: str):
    """`box.run(line)` in a worker thread, so that Ctrl-C here interrupts the command in the sandbox (exit 130)
    instead of ending the session."""
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as Pending

    with ThreadPoolExecutor(1, thread_name_prefix="swepost-shell") as pool:
        future = pool.submit(box.run, line)
        while True:
            try:
                return future.result(timeout=0.1)
            except Pending:
                continue
            except KeyboardInterrupt:
                box.interrupt()


@app.command("gc")
def gc_cmd(everything: Annotated[bool, typer.Option("--all", help="Also remove sandboxes of live processes.")]
           = False):
    """Remove containers, processes and cgroups left by runs that died (kill -9, crash)."""
    from swepost.sandbox.bwrap import gc_bwrap
    from swepost.sandbox.docker import gc_docker
    from swepost.sandbox.local import gc_local
    from swepost.sandbox.network import gc_networks
    from swepost.sandbox.task_sandbox import gc_checkouts

    containers = gc_docker(everything=everything)
    other = gc_bwrap(everything=everything) + gc_local(everything=everything) + gc_checkouts(everything)
    networks = gc_networks(everything)  # only with --all: an idle fenced network costs nothing
    console.print(f"removed {len(containers)} container(s), {len(other)} bubblewrap / local leftover(s), "
                  f"{len(networks)} network(s)")


@app.command("build-base")
def build_base_cmd(
    name: Annotated[str | None, typer.Argument(help="Image name [default: swepost-base:bookworm].",
                                                  show_default=False)] = None,
    packages: Annotated[str | None, typer.Option(help="Comma-separated Debian packages [default: python3, "
                                                    "pytest, pip, git, ...].", show_default=False)] = None,
    suite: Annotated[str, typer.Option(help="Debian suite for debootstrap.")] = "bookworm",
    dockerfile: Annotated[Path | None, typer.Option(help="Build from this Dockerfile's folder instead "
                                                       "(needs a reachable registry).", show_default=False)] = None,
    rebuild: Annotated[bool, typer.Option(help="Build even if the image exists.")] = False,
):
    """Build a Debian base image without any registry (debootstrap + docker import), or from a Dockerfile."""
    from swepost.sandbox import images

    name = name or images.DEFAULT_BASE_IMAGE
    if dockerfile is not None:
        image_id = images.build_image_from_dockerfile(dockerfile, name)
    else:
        kwargs = {"packages": tuple(p.strip() for p in packages.split(",") if p.strip())} if packages else {}
        image_id = images.build_base_image(name, suite=suite, rebuild=rebuild, **kwargs)
    console.print(f"[green]ready[/] {name} ({image_id[:19]})")
