"""``moesim calibrate run``: every benchmark on one device, with a progress bar, then the CSV,
the fitted profile and (for the CPU) the measured device spec, then the validation.

Files written under ``out_dir`` (``calibration/`` by default), ``<id>`` = the catalog GPU id
(``h100-sxm`` …) or ``cpu``::

    <id>/measurements.csv     every measurement (records.COLUMNS)
    <id>.json                 the profile the simulator reads (--profile <id> or by GPU id)
    <id>.device.yaml          CPU only: the measured device spec (peaks, bandwidths)
    <id>/predictions.csv      validation: each held-out measurement with its prediction
    <id>/report.html          validation: predicted against measured, self-contained
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moesim.file_io import write_atomic

BENCHES = ("gemm", "moe", "attention", "memory", "copy", "collectives", "steps")
# the op classes each benchmark writes (``append`` replaces exactly these rows)
BENCH_CLASSES = {
    "gemm": ("gemm",),
    "moe": ("grouped_gemm", "moe_layer"),
    "attention": ("attention",),
    "memory": ("memory_bound", "launch"),
    "copy": ("copy", "host_copy"),
    "collectives": ("collective",),
    "steps": ("step",),
}


#: the benchmarks a CPU's device spec is derived from (``cpu_spec_from``: fp32 GEMMs, d2d copy)
CPU_SPEC_BENCHES = ("gemm", "copy")


@dataclass
class RunOutput:
    measurements: Path
    profile: Path
    device_spec: Path | None
    rows: int
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    validation: dict[str, Any] | None = None


def _timers(cuda: bool, quick: bool):
    from moesim.calibrate.timing import Timer

    if cuda:
        ops = Timer("cuda", warmup=3 if quick else 5, min_repeats=5 if quick else 10,
                    max_repeats=50 if quick else 100, budget_s=0.05 if quick else 0.15)  # fmt: skip
        steps = Timer("cuda", warmup=2, min_repeats=3 if quick else 5, max_repeats=20,
                      budget_s=0.3 if quick else 1.0)  # fmt: skip
    else:
        ops = Timer("cpu", warmup=1 if quick else 2, min_repeats=3 if quick else 5,
                    max_repeats=30 if quick else 50, budget_s=0.03 if quick else 0.25)  # fmt: skip
        steps = Timer("cpu", warmup=1, min_repeats=3, max_repeats=10,
                      budget_s=0.2 if quick else 1.5)  # fmt: skip
    return ops, steps


def _modules():
    from moesim.calibrate import (
        bench_attention,
        bench_collectives,
        bench_copy,
        bench_gemm,
        bench_memory,
        bench_moe,
        bench_steps,
    )

    return {
        "gemm": bench_gemm,
        "moe": bench_moe,
        "attention": bench_attention,
        "memory": bench_memory,
        "copy": bench_copy,
        "collectives": bench_collectives,
        "steps": bench_steps,
    }


def cpu_spec_from(df, info) -> dict[str, Any]:
    """The CPU's device spec from its own measurements (this host's memory size)."""
    from moesim.calibrate.device import total_memory_GB

    return measured_cpu_spec(df, info.name, info.environment["date"], total_memory_GB())


def measured_cpu_spec(df, name: str, date: str, memory_GB: float) -> dict[str, Any]:
    """A CPU's device spec from measurements: best GEMM rates, best d2d copy bandwidth, best
    gloo all-reduce bus bandwidth. Validation calls it on the fitting rows alone, so that no
    held-out measurement sets the peaks its own prediction is scaled by."""
    from moesim.calibrate.device import cpu_device_spec
    from moesim.calibrate.fit import fit_collectives

    g = df[df["op_class"] == "gemm"]
    rate = g["flops"].astype(float) / g["time_s_median"].astype(float)
    fp32 = rate[g["dtype"] == "fp32"]
    bf16 = rate[g["dtype"] == "bf16"]
    copies = df[(df["op_class"] == "copy") & (df["op"] == "d2d")]
    if fp32.empty or copies.empty:
        raise RuntimeError("the CPU spec needs fp32 GEMM and d2d copy measurements (gemm, copy)")
    bw = (copies["bytes"].astype(float) / copies["time_s_median"].astype(float)).max()
    coll = fit_collectives(df).get("all_reduce")
    return cpu_device_spec(
        name,
        float(fp32.max()),
        float(bf16.max()) if not bf16.empty else None,
        float(bw),
        coll["busbw_GBps_max"] * 1e9 if coll else None,
        memory_GB,
        date,
    )


def run_calibration(
    device: str = "cpu",
    *,
    quick: bool = False,
    out_dir: str | Path = "calibration",
    only: tuple[str, ...] | None = None,
    threads: int | None = None,
    gpu_id: str | None = None,
    validate: bool = True,
    seed: int = 0,
    append: bool = False,
    console=None,
) -> RunOutput:
    """Measure, write the CSV, fit and write the profile (and the CPU spec), validate.

    ``append``: keep the rows of an existing measurements.csv except those of the benchmarks
    run now (to split a long calibration over several calls with ``only``)."""
    import os

    import pandas as pd
    import torch
    import yaml
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from moesim.calibrate.context import Context
    from moesim.calibrate.device import detect
    from moesim.calibrate.fit import fit_profile, read_measurements
    from moesim.calibrate.records import COLUMNS
    from moesim.catalog import load_gpu
    from moesim.specs import GPUSpec

    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    info = detect(device, gpu_id)
    info.environment["load_average_start"] = list(os.getloadavg())
    info.environment["quick"] = quick
    ops_timer, steps_timer = _timers(info.kind == "cuda", quick)
    mods = _modules()
    selected = only or BENCHES
    unknown = set(selected) - set(BENCHES)
    if unknown:
        raise ValueError(f"unknown benchmarks {sorted(unknown)}: choose from {', '.join(BENCHES)}")
    csv_before = Path(out_dir) / info.profile_id / "measurements.csv"
    lacking = [b for b in CPU_SPEC_BENCHES if b not in selected]
    if info.kind == "cpu" and lacking and not (append and csv_before.is_file()):
        raise ValueError(  # refused before minutes of benchmarks, not after them
            f"--only {','.join(selected)} on a CPU: the CPU's spec is derived from the gemm and "
            f"copy benchmarks, and {', '.join(lacking)} is not run; add it (--only "
            f"{','.join([*selected, *lacking])}) or --append to an earlier run's measurements"
        )
    cases = []
    for name in selected:
        timer = steps_timer if name == "steps" else ops_timer
        ctx = Context(info, timer, quick=quick, seed=seed)
        cases += [(name, c) for c in mods[name].cases(ctx)]
    if "steps" in selected and (why := mods["steps"].available()):
        console.print(f"[yellow]steps skipped:[/] {why}")
    console.print(
        f"calibrating [bold]{info.name}[/] as '{info.profile_id}' ({info.dtype}), "
        f"{len(cases)} cases{' (quick)' if quick else ''}, torch {info.environment['torch']}, "
        f"{torch.get_num_threads()} threads"
    )
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[case]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("calibrate", total=len(cases), case="")
        for i, (_, case) in enumerate(cases):
            bar.update(task, case=case.label)
            if not console.is_terminal:  # logs and pipes: one line per case instead of a bar
                console.print(f"[{i + 1}/{len(cases)}] {case.label}", highlight=False)
            try:
                rows += case.run()
            except Exception as e:  # one failing case must not lose the others
                failures.append(f"{case.label}: {type(e).__name__}: {e}")
                console.print(f"[red]failed[/] {case.label}: {type(e).__name__}: {e}")
                console.print(traceback.format_exc(limit=3), highlight=False)
                if info.kind == "cuda":
                    torch.cuda.empty_cache()
            bar.advance(task)
    info.environment["load_average_end"] = list(os.getloadavg())
    out_dir = Path(out_dir)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    csv_path = out_dir / info.profile_id / "measurements.csv"
    if append and csv_path.is_file():
        old = read_measurements(csv_path)  # legacy labels relabelled, written back new
        replaced = [c for b in selected for c in BENCH_CLASSES[b]]
        kept = old[~old["op_class"].isin(replaced)]
        df = pd.concat([kept, df], ignore_index=True)[list(COLUMNS)]
        console.print(f"appended to {csv_path}: kept {len(kept)} rows of other benchmarks")
    # everything is derived before anything is written: a fit that fails (--only gemm on a CPU
    # has no copy rows for the device spec) leaves no measurements.csv nor spec behind
    spec_path = None
    spec = None
    if info.kind == "cpu":
        spec = cpu_spec_from(df, info)
        spec_path = out_dir / f"{info.profile_id}.device.yaml"
        gpu = GPUSpec.model_validate(spec)
    else:
        gpu = load_gpu(info.profile_id)
    profile = fit_profile(
        df,
        gpu,
        dtype=info.dtype,
        device_id=info.profile_id,
        environment=info.environment,
        measurements=csv_path,
    )
    profile["measured"]["failures"] = failures
    profile["measured"]["seconds"] = round(time.perf_counter() - t_start, 1)
    profile_path = out_dir / f"{info.profile_id}.json"
    from moesim.calibrate.validate import write_profile

    (out_dir / info.profile_id).mkdir(parents=True, exist_ok=True)
    write_atomic(csv_path, df.to_csv(index=False))
    if spec_path is not None:
        write_atomic(spec_path, yaml.safe_dump(spec, sort_keys=False))
    write_profile(profile_path, profile)
    out = RunOutput(csv_path, profile_path, spec_path, len(df), failures)
    if validate:
        from moesim.calibrate.validate import validate_profile

        out.validation = validate_profile(profile_path, measurements=csv_path, seed=seed)
    out.seconds = time.perf_counter() - t_start
    return out
