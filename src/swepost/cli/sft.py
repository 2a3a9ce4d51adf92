"""`swepost sft`: supervised fine-tuning on an sft-data artifact (TRL SFTTrainer), one process or many."""

from __future__ import annotations

from typing import Annotated

import typer

from swepost.cli.common import (
    ConfigOpt,
    JsonOpt,
    PrintConfigOpt,
    SetOpt,
    console,
    print_config,
    report,
    resolve_config,
    store,
)

DataArg = Annotated[str | None, typer.Argument(help="sft-data artifact: name, name@version, prefix or path.",
                                               show_default=False)]


def _opt(help: str, *names: str):
    return typer.Option(*names, help=help, show_default=False)


def sft_cmd(
    data: DataArg = None,
    model: Annotated[str | None, _opt("Model to fine-tune: a checkpoint artifact, a local folder or a hub id.")] = None,
    name: Annotated[str | None, _opt("Output artifact name [default: sft].", "--name", "-n")] = None,
    lora: Annotated[bool | None, _opt("Train a LoRA adapter instead of the full model [default: no-lora].",
                                      "--lora/--no-lora")] = None,
    max_steps: Annotated[int | None, _opt("Optimizer steps (overrides epochs).")] = None,
    epochs: Annotated[float | None, _opt("Passes over the data [default: 1].")] = None,
    learning_rate: Annotated[float | None, _opt("Peak learning rate [default: 1e-05].")] = None,
    deepspeed: Annotated[str | None, _opt("zero2 | zero3 | a DeepSpeed JSON file.")] = None,
    launch: Annotated[str | None, _opt("none (this process) | accelerate (accelerate launch: multi-GPU, "
                                       "multi-node) [default: none].")] = None,
    accelerate_config: Annotated[str | None, _opt("single_gpu | multi_gpu | zero2 | zero3 | fsdp | a YAML file "
                                                  "[default: multi_gpu].")] = None,
    num_processes: Annotated[int | None, _opt("Processes over all machines (with --launch accelerate).")] = None,
    num_machines: Annotated[int | None, _opt("Machines of a multi-node run (accelerate --num_machines).")] = None,
    machine_rank: Annotated[int | None, _opt("This machine's rank; rank 0 publishes the artifact.")] = None,
    main_process_ip: Annotated[str | None, _opt("Address of the rank-0 machine.")] = None,
    main_process_port: Annotated[int | None, _opt("Port of the rank-0 machine.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_config_: PrintConfigOpt = False,
    as_json: JsonOpt = False,
):
    """Fine-tune a model on chat trajectories: loss on assistant turns only (tool calls and end-of-turn
    included; turns marked "train": false excluded), full or LoRA, packed, resumable (run the same command
    again after a crash). Writes a checkpoint artifact. More settings: --set KEY=VALUE (see --print-config)."""
    from swepost.stages.sft import SftConfig, run_sft

    cfg = resolve_config(SftConfig, config, set_, {
        "data": data, "model": model, "name": name, "lora": lora, "max_steps": max_steps, "epochs": epochs,
        "learning_rate": learning_rate, "deepspeed": deepspeed, "launch": launch,
        "accelerate_config": accelerate_config, "num_processes": num_processes})
    multi_node = {"--num_machines": num_machines, "--machine_rank": machine_rank,
                  "--main_process_ip": main_process_ip, "--main_process_port": main_process_port}
    extra = [a for flag, v in multi_node.items() if v is not None for a in (flag, str(v))]
    if extra:
        cfg = SftConfig.model_validate({**cfg.model_dump(), "launch_args": [*cfg.launch_args, *extra]})
    if print_config_:
        return print_config(cfg)
    art = run_sft(cfg, store())
    if art is None:  # a machine of rank > 0 in a multi-node run: rank 0 publishes
        console.print("sft: training done on this machine; machine rank 0 writes the artifact")
        return
    report(art, as_json)
