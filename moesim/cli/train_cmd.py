"""``moesim train STAGE --model MODEL --steps N``: run the real PyTorch stage on a small model
and print what a user watches (DESIGN.md contract). torch is imported inside the command so
that the rest of the CLI works without it."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moesim.cli.app import UserError, app, console, err_console, print_json
from moesim.scenario_io import load_model_arg

STAGE_NAMES = ("pretrain", "sft", "dpo", "grpo")
BALANCING = ("aux", "bias", "none")


def _balance(kind: str):
    """``--balance``'s presets (γ of ``bias`` measured, see ``moesim.nn.balance``)."""
    from moesim.nn import BALANCE_PRESETS

    return BALANCE_PRESETS[kind]


@app.command()
def train(
    stage: Annotated[str, typer.Argument(help="pretrain | sft | dpo | grpo")],
    model: Annotated[str, typer.Option("--model", "-m", help="catalog id or model YAML")] = (
        "tiny-dense"
    ),
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 50,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="sequences (pairs for dpo) per step")] = 16,
    seq_len: Annotated[int, typer.Option(help="tokens per sequence")] = 64,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = 1e-3,
    seed: Annotated[int, typer.Option()] = 0,
    balance: Annotated[
        str, typer.Option(help="MoE balancing: aux (Switch loss), bias (aux-loss-free), none")
    ] = "aux",
    bf16: Annotated[bool, typer.Option(help="autocast to bf16 (CUDA)")] = False,
    routing_histogram: Annotated[
        Path | None,
        typer.Option(help="MoE: write tokens per expert here (routing.histogram_file)"),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="torch CPU threads (default: OMP_NUM_THREADS, else the CPUs this process may "
            "use less the load on them)",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
) -> None:
    """Train a small model with the real PyTorch implementation of a stage."""
    if stage not in STAGE_NAMES:
        raise UserError(f"unknown stage '{stage}': use one of {', '.join(STAGE_NAMES)}")
    if balance not in BALANCING:
        raise UserError(f"--balance must be one of {', '.join(BALANCING)}, got '{balance}'")
    if steps < 1:
        raise UserError("--steps must be at least 1")
    for option, value in (("--batch-size", batch_size), ("--seq-len", seq_len)):
        if value < 1:
            raise UserError(f"{option} must be at least 1, got {value}")
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr must be a finite positive learning rate, got {lr}: e.g. 1e-3")
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", device):
        raise UserError(f"--device must be cpu, cuda or cuda:N, got '{device}'")
    from moesim.file_io import output_problem

    if routing_histogram is not None and (problem := output_problem(routing_histogram)):
        raise UserError(f"--routing-histogram {problem} (checked before training)")
    if routing_histogram is not None and not routing_histogram.parent.is_dir():
        raise UserError(
            f"--routing-histogram {routing_histogram}: its folder does not exist: create it "
            "first (checked before training, so no run is lost)"
        )
    spec = load_model_arg(model)
    if seq_len > spec.max_seq_len:
        raise UserError(
            f"--seq-len {seq_len} exceeds {spec.name}'s max_seq_len {spec.max_seq_len}: "
            f"use at most {spec.max_seq_len}"
        )
    try:
        import torch
    except ImportError:
        raise UserError("moesim train needs PyTorch: pip install 'moesim[torch]'") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu)")
    if spec.n_encoder_layers:
        raise UserError(f"{spec.name}: encoder-decoder models cannot be trained by moesim train")
    from moesim.analytic.params import count_params
    from moesim.training.memory_check import available_host_bytes, training_memory_problem

    if device.startswith("cuda"):
        free_bytes, _ = torch.cuda.mem_get_info(torch.device(device))
        where = device
    else:
        free_bytes, where = available_host_bytes(), "this machine"
    problem = training_memory_problem(count_params(spec).total, free_bytes, where)
    if problem is not None:
        raise UserError(f"--model {model}: {problem}")
    from moesim.training.threads import choose_threads

    choice = choose_threads(threads)  # a shared machine: torch's default threads thrash
    torch.set_num_threads(choice.threads)

    from moesim.nn import write_routing_histogram
    from moesim.training import TrainConfig

    cfg = TrainConfig(
        batch_size=batch_size,
        seq_len=seq_len,
        lr=lr,
        seed=seed,
        device=device,
        bf16=bf16,
        balance=_balance(balance),
    )
    result = _run_with_progress(stage, spec, steps, cfg, show=not as_json)
    result.pop("history")
    result["cpu_threads"] = choice.threads
    result["cpu_threads_from"] = choice.why
    hist = result.pop("tokens_per_expert", None)
    if routing_histogram is not None:
        if hist is None:
            raise UserError(f"{spec.name} is dense: there is no routing histogram to write")
        write_routing_histogram(routing_histogram, hist)
    if as_json:
        print_json(result)
        return
    table = Table(title=f"moesim train {stage}: {spec.name}, {steps} steps on {result['device']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, f"{v:,.4g}" if isinstance(v, float) else str(v))
    console.print(table)
    if routing_histogram is not None:
        console.print(f"wrote {routing_histogram}")


def _run_with_progress(stage, spec, steps, cfg, show: bool) -> dict:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from moesim.training import run_stage

    if not show:
        return run_stage(stage, spec, steps, cfg)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(f"{stage} {spec.name}", total=steps, info="")

        def on_step(i: int, m: dict) -> None:
            info = f"loss {m['loss']:.3f}"
            for key in ("reward", "margin", "expert_load_cv"):
                if key in m:
                    info += f"  {key} {m[key]:.3f}"
            progress.update(task, advance=1, info=info)

        try:
            return run_stage(stage, spec, steps, cfg, on_step=on_step)
        except ValueError as e:
            raise UserError(str(e)) from None
