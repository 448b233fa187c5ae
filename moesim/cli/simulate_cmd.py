"""``moesim simulate``: one step of a scenario through the discrete-event simulator."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from moesim.cli.app import (
    SetOverrides,
    UserError,
    app,
    console,
    err_console,
    print_json,
    refuse_overwriting_inputs,
)
from moesim.scenario_io import EXPECT_KEY, file_kind, load_scenario, load_yaml, parse_overrides
from moesim.specs import POST_TRAINING_PHASES, Scenario

if TYPE_CHECKING:
    from moesim.reproduce.cases import Expect

#: the command that runs each kind of file ``moesim simulate`` does not (scenario_io.file_kind)
COMMAND_OF_KIND = {"sweep": "sweep", "comparison": "compare", "plan": "plan"}


def _fmt_s(x: float) -> str:
    return f"{x * 1e3:,.2f} ms" if x < 1 else f"{x:,.3f} s"


def _print_collective(s, d: dict) -> None:
    """The ``collective`` stage: one nccl-tests row (size, time, algbw, busbw) and NCCL's pick."""
    title = f"{s.name}: {d['collective']} over {d['gpus']}× {s.cluster.gpu.name}"
    table = Table(title=escape(title))
    table.add_column("metric")
    table.add_column("value", justify="right")
    t_us = d["collective_time_s"] * 1e6
    table.add_row("size (bytes per rank)", f"{d['size_bytes']:,.0f}")
    table.add_row("time", f"{t_us:,.2f} µs" if t_us < 1e4 else _fmt_s(d["collective_time_s"]))
    table.add_row("algorithm bandwidth", f"{d['algorithm_bandwidth_GBps']:,.2f} GB/s")
    table.add_row("bus bandwidth", f"{d['bus_bandwidth_GBps']:,.2f} GB/s")
    table.add_row("algorithm / protocol", f"{d['algorithm']} / {d['protocol']}")
    if "nccl_latency_us" in d:
        table.add_row("NCCL model latency", f"{d['nccl_latency_us']:,.2f} µs")
    console.print(table)


@app.command()
def simulate(
    file: Annotated[Path, typer.Argument(help="a scenario YAML")],
    as_json: Annotated[bool, typer.Option("--json", help="print the Result as JSON")] = False,
    trace: Annotated[
        Path | None, typer.Option("--trace", help="write a Chrome/Perfetto trace JSON here")
    ] = None,
    fidelity: Annotated[
        str | None, typer.Option(help="symmetric (one rank per symmetry class) or full")
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            help="calibration profile: a JSON path or a device id (calibration/<id>.json, "
            "else calibration/published/<id>.json); overrides simulation.profile"
        ),
    ] = None,
    sets: SetOverrides = None,
) -> None:
    """Simulate one training step (or one MoE layer) of a scenario: step time, throughput,
    MFU, memory per GPU and where the time goes."""
    from moesim.sim.profile import ProfileError
    from moesim.sim.run import UnsupportedStage
    from moesim.sim.run import simulate as run_simulation

    if fidelity not in (None, "symmetric", "full"):
        raise UserError(f"--fidelity must be 'symmetric' or 'full', got {fidelity!r}")
    refuse_overwriting_inputs("--trace", trace, file)
    data = load_yaml(file)[0]
    kind = file_kind(data)
    if kind != "scenario":
        raise UserError(
            f"{file}: this is a {kind} file, not a scenario; run `moesim {COMMAND_OF_KIND[kind]} "
            f"{file}` (or `moesim report {file}` for an HTML report)"
        )
    expect = None
    if EXPECT_KEY in data:  # a published case: check its expect block, compare at the end
        from moesim.reproduce.cases import load_case

        case = load_case(file)
        if case.scenario is None:
            raise UserError(f"{file}: unsupported: {case.expect.unsupported}")
        expect = case.expect
    s = load_scenario(file, parse_overrides(sets or []))
    if profile is not None:
        s = s.model_copy(
            update={"simulation": s.simulation.model_copy(update={"profile": profile})}
        )
    _announce_long_run(s, fidelity)
    try:
        result = run_simulation(s, fidelity=fidelity, trace_path=trace, base_dir=file.parent)
    except (UnsupportedStage, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    except ProfileError as e:  # --profile / simulation.profile: the file's fault, not F's
        raise UserError(str(e)) from None
    except ValueError as e:  # a schedule or routing input that cannot be simulated
        raise UserError(f"{file}: {e}") from None
    d = result.to_json_dict()
    if as_json:
        print_json(d)
        return
    try:
        _print_tables(s, d, trace)
    finally:
        if expect is not None:
            _print_comparison(d, expect)


def _announce_long_run(s: Scenario, fidelity: str | None) -> None:
    """A run expected to take over half a minute says so first, on stderr, with the estimate
    (``moesim.sim.limits``): a long wait is then not taken for a hang."""
    from moesim.sim.limits import estimated_cpu_s, layer_passes

    fidelity = fidelity or s.simulation.fidelity
    est_s = estimated_cpu_s(s, fidelity)
    if est_s > 30:
        err_console.print(
            f"simulating {layer_passes(s, fidelity):,} layer passes at {fidelity} fidelity: "
            f"about {est_s / 60:.0f} CPU minutes",
            highlight=False,
        )


def _print_comparison(d: dict, expect: Expect) -> None:
    """The published case's line: published, predicted, signed error, within tolerance."""
    from moesim.reproduce.run import MetricError, extract_metric, is_within, relative_error

    try:
        predicted = extract_metric(d, expect.metric)
    except MetricError as e:
        console.print(f"[bold red]published case:[/] {escape(str(e))}", highlight=False)
        return
    err = relative_error(predicted, expect.value)
    ok = "[green]within[/]" if is_within(err, expect.tolerance) else "[red]outside[/]"
    console.print(
        f"published {escape(expect.metric)}: {expect.value:.4g}, predicted {predicted:.4g}, "
        f"error {err:+.1%} ({ok} ±{expect.tolerance:.0%}; {escape(expect.source)})",
        highlight=False,
    )


def _print_tables(s: Scenario, d: dict, trace: Path | None) -> None:
    """The result as tables: headline metrics, time, phases, memory."""
    if d["stage"] == "collective":
        _print_collective(s, d)
        return
    table = Table(title=escape(f"{s.name}: {s.model.name} on {s.gpus}× {s.cluster.gpu.name}"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("step time", _fmt_s(d["step_time_s"]) if "step_time_s" in d else None),
        ("tokens/s", f"{d['tokens_per_s']:,.0f}" if "tokens_per_s" in d else None),
        ("tokens/s per GPU", f"{d['tokens_per_s_per_gpu']:,.0f}" if "tokens_per_s" in d else None),
        ("model TFLOPS/GPU", f"{d['model_tflops_per_gpu']:,.1f}" if "mfu" in d else None),
        ("MFU (model FLOPs / bf16 peak)", f"{d['mfu']:.1%}" if "mfu" in d else None),
        (
            f"MFU (model FLOPs / {s.precision.compute} peak)",
            f"{d['mfu_compute_dtype']:.1%}"
            if "mfu_compute_dtype" in d and s.precision.compute != "bf16"
            else None,
        ),
        ("HFU (with recompute / bf16 peak)", f"{d['hfu']:.1%}" if "hfu" in d else None),
        ("dispatch", _fmt_s(d["dispatch_s"]) if "dispatch_s" in d else None),
        ("combine", _fmt_s(d["combine_s"]) if "combine_s" in d else None),
        ("expert compute", _fmt_s(d["expert_compute_s"]) if "expert_compute_s" in d else None),
        ("GPU-hours", f"{d['gpu_hours']:,.0f}" if "gpu_hours" in d else None),
        ("cost", f"${d['cost_usd']:,.0f}" if "cost_usd" in d else None),
        ("goodput (failures, checkpoints)", f"{d['goodput']:.1%}" if "goodput" in d else None),
        (
            "tokens/s over the run",
            f"{d['effective_tokens_per_s']:,.0f}" if "effective_tokens_per_s" in d else None,
        ),
        (
            "checkpoint interval",
            _fmt_s(d["reliability"]["checkpoint_interval_s"]) if "reliability" in d else None,
        ),
        (
            "GPU-hours with failures",
            f"{d['effective_gpu_hours']:,.0f}" if "effective_gpu_hours" in d else None,
        ),
        (
            "cost with failures",
            f"${d['effective_cost_usd']:,.0f}" if "effective_cost_usd" in d else None,
        ),
    ]
    for key, label in (  # serving and post-training extras (moesim.sim.inference, post_training)
        ("ttft_s_p50", "TTFT p50"),
        ("ttft_s_p99", "TTFT p99"),
        ("tpot_s_p50", "TPOT p50"),
        ("tpot_s_p99", "TPOT p99"),
    ):
        rows.append((label, _fmt_s(d[key]) if key in d else None))
    if "experts_touched_per_layer" in d:
        rows.append(("experts touched per layer", f"{d['experts_touched_per_layer']:.2f}"))
    if "cost_per_million_tokens_usd" in d:
        rows.append(("$ per million output tokens", f"{d['cost_per_million_tokens_usd']:,.2f}"))
    for k, v in rows:
        if v is not None:
            table.add_row(k, v)
    mem = d["memory_per_gpu_GB"]
    fits = "[green]fits[/]" if d.get("fits_in_memory") else "[bold red]does not fit[/]"
    table.add_row("memory per GPU", f"{mem['total']:,.1f} GB ({fits})")
    prof = d.get("profile")
    if isinstance(prof, dict):  # which calibration profile timed the ops
        table.add_row("profile", escape(f"{prof['device']} ({prof['kind']})"))
    console.print(table)
    if d["stage"] == "inference" and d.get("replicas"):
        console.print(_replica_line(s, d), highlight=False)
    if "note" in d:  # a result that needs a word (serving: no request arrived)
        console.print(f"[bold yellow]note:[/] {escape(d['note'])}", highlight=False)
    if "memory_note" in d:  # why it does not fit (serving, post-training)
        console.print(f"[bold red]does not fit:[/] {escape(d['memory_note'])}", highlight=False)
    tb = Table(title="time per step (mean over simulated ranks)")
    tb.add_column("part")
    tb.add_column("seconds", justify="right")
    for k in ("compute", "exposed_comm", "bubble", "imbalance"):
        if k in d["time_breakdown_s"]:  # serving has no imbalance
            label = {"bubble": "bubble (schedule)", "imbalance": "imbalance (stage wait)"}
            tb.add_row(label.get(k, k), _fmt_s(d["time_breakdown_s"][k]))
    parts = d["time_breakdown_s"]
    for k in ("all_to_all", "tp_comm", "cp_comm", "dp_comm", "pp_comm"):
        if k in parts:  # serving reports no cp_comm
            tb.add_row(f"[dim]{k} (incl. hidden)[/]", f"[dim]{_fmt_s(parts[k])}[/]")
    if parts.get("optimizer"):  # training: the optimizer step's part of compute
        tb.add_row("[dim]optimizer (in compute)[/]", f"[dim]{_fmt_s(parts['optimizer'])}[/]")
    console.print(tb)
    phases = {k: parts[k] for k in POST_TRAINING_PHASES if k in parts}
    if phases:  # post-training: the step's phases, in step order
        ph = Table(title="time per step by phase")
        ph.add_column("phase")
        ph.add_column("seconds", justify="right")
        ph.add_column("share", justify="right")
        step = d.get("step_time_s") or 0.0
        for k, v in phases.items():
            ph.add_row(k, _fmt_s(v), f"{v / step:.1%}" if step else "")
        console.print(ph)
    if "rollout_scheduler" in d:  # GRPO/PPO: the rollout engine (moesim.sim.rl_rollout)
        console.print(_rollout_line(d), highlight=False)
    if d.get("stages"):
        console.print(_stage_table(d))
    mt = Table(title="memory per GPU (GB, worst stage)")
    for k in mem:
        mt.add_column(k, justify="right")
    mt.add_row(*(f"{v:,.2f}" for v in mem.values()))
    console.print(mt)
    if trace is not None:
        console.print(f"wrote trace {escape(str(trace))} (open in https://ui.perfetto.dev)")


def _rollout_line(d: dict) -> str:
    """The rollout engine of the replica timed: scheduler, KV pool, max_num_seqs, the decode
    batch it ran and the sequences it preempted."""
    peak = d.get("rollout_peak_kv_tokens")
    held = f", peak {peak:,}" if peak is not None else ""
    return escape(
        f"rollout engine: {d['rollout_scheduler']}, KV pool {d['rollout_kv_pool_tokens']:,} "
        f"tokens{held}, max_num_seqs {d['rollout_concurrency']}, mean decode batch "
        f"{d['rollout_mean_decode_batch']:.1f}, {d['rollout_preemptions']} preemptions "
        "(one replica)"
    )


def _replica_line(s: Scenario, d: dict) -> str:
    """What a serving replica is (one model copy: tp × pp × ep GPUs) and that the batch or the
    request rate is per replica or split over the replicas."""
    p, w = s.parallel, s.workload
    replicas = int(d["replicas"])
    per = s.gpus // replicas if replicas else s.gpus
    line = (
        f"replica: one copy of the model on {per} GPU{'s' if per != 1 else ''} "
        f"(tp {p.tp} · pp {p.pp} · ep {p.ep} · etp {p.etp}); {replicas} replica"
        f"{'s' if replicas != 1 else ''} on {s.gpus} GPUs; "
    )
    if getattr(w, "batch_size", None) is not None:
        line += (
            f"batch_size {w.batch_size} is per replica ({w.batch_size * replicas:,} sequences "
            "in all); latencies are one replica's"
        )
    else:
        rate = getattr(w, "arrival_rate_per_s", 0.0) or 0.0
        line += (
            f"the {rate:g} requests/s are split over the replicas ({rate / max(replicas, 1):g} "
            "each); latencies are one replica's"
        )
    return escape(line)


def _stage_table(d: dict) -> Table:
    """Per pipeline rank: its layers, compute, exposed communication, idle, memory."""
    title = "pipeline stages"
    if d.get("pipeline_layout"):
        auto = " (chosen by pipeline_balance: auto)" if d.get("pipeline_balance") else ""
        title += escape(f": layout {d['pipeline_layout']}{auto}")
    t = Table(title=title)
    for col in ("stage", "layers", "compute", "exposed comm", "idle", "memory GB"):
        t.add_column(col, justify="left" if col == "layers" else "right")
    for st in d["stages"]:
        t.add_row(
            str(st["stage"]),
            escape(_runs(st["layers"])),
            _fmt_s(st["compute_s"]),
            _fmt_s(st["exposed_comm_s"]),
            _fmt_s(st["idle_s"]),
            f"{st['memory_GB']:,.1f}",
        )
    return t


def _runs(layers: str) -> str:
    """``"E t t t | t t"`` as ``"E t×3 | t×2"``."""
    chunks = []
    for chunk in layers.split(" | "):
        out: list[tuple[str, int]] = []
        for sym in chunk.split():
            if out and out[-1][0] == sym:
                out[-1] = (sym, out[-1][1] + 1)
            else:
                out.append((sym, 1))
        chunks.append(" ".join(f"{a}×{n}" if n > 1 else a for a, n in out))
    return " | ".join(chunks)
