"""``moesim compare``, ``report``, ``sweep`` and ``plan``: answers and reports for people who
decide what to train or serve, on which cluster."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
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
from moesim.cli.cells import fmt, ms
from moesim.cli.plan_tables import print_plan
from moesim.scenario_io import (
    ScenarioError,
    file_kind,
    load_scenario,
    load_yaml,
    parse_overrides,
)
from moesim.specs import Result, Scenario

COMPARISON_KEYS = {"name", "description", "scenarios"}


def load_comparison(
    path: Path, overrides: Sequence[tuple[str, Any]] = ()
) -> tuple[str, str, list[Scenario]]:
    """A comparison file: ``scenarios:`` lists scenario files (relative to it); ``overrides``
    (``--set``) apply to each of them."""
    data, _ = load_yaml(path)
    unknown = set(data) - COMPARISON_KEYS
    if unknown:
        raise ScenarioError(f"{path}: unknown keys {sorted(unknown)}: use name, description, "
                            "scenarios")  # fmt: skip
    files = data.get("scenarios")
    if not isinstance(files, list) or len(files) < 2:
        raise ScenarioError(f"{path}: scenarios: list at least two scenario files to compare")
    return (
        data.get("name", path.stem),
        data.get("description", ""),
        [load_scenario(path.parent / f, overrides) for f in files],
    )


def _scenarios_from_args(
    files: list[Path], overrides: Sequence[tuple[str, Any]] = ()
) -> tuple[str, str, list[Scenario], list[Path]]:
    if len(files) == 1:
        data, _ = load_yaml(files[0])
        if "scenarios" not in data:
            raise UserError(
                f"{files[0]}: give two or more scenario files, or a comparison file with a "
                "'scenarios:' list"
            )
        name, desc, scenarios = load_comparison(files[0], overrides)
        base = files[0].parent
        return name, desc, scenarios, [base / f for f in data["scenarios"]]
    scenarios = [load_scenario(f, overrides) for f in files]
    return " vs ".join(s.name for s in scenarios), "", scenarios, list(files)


def _simulate_all(
    scenarios: list[Scenario], paths: list[Path], traces: bool = False
) -> tuple[list[Result], list[list[dict]] | None]:
    """Each scenario's result and, with ``traces`` (for a report's timelines), its trace
    events, from one simulation each."""
    results, events = [], []
    with _progress() as bar:
        task = bar.add_task("simulating", total=len(scenarios))
        for s, p in zip(scenarios, paths, strict=True):
            r, ev = _simulate_one(s, p.parent, traces)
            results.append(r)
            events.append(ev)
            bar.advance(task)
    return results, (events if traces else None)


def _simulate_one(s: Scenario, base_dir: Path, trace: bool) -> tuple[Result, list[dict]]:
    try:
        if trace:
            from moesim.report.build import simulate_with_trace

            return simulate_with_trace(s, base_dir)
        from moesim.sim.run import simulate

        return simulate(s, base_dir=base_dir), []
    except ValueError as e:  # an unsupported stage or a bad routing file: the user's to fix
        raise UserError(f"{s.name}: {e}") from None


def _progress() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,  # stdout stays clean for --json
        transient=True,
    )


def _cells(values: list[float | None], applies: list[bool], f: str) -> list[str]:
    """Formatted cells, '–' where the metric does not apply to the scenario."""
    return [fmt(v if ok else None, f) for v, ok in zip(values, applies, strict=True)]


#: the time-breakdown parts ``compare`` shows, as ``simulate``'s time table names them
BREAKDOWN_ROWS = {
    "compute": "  compute s",
    "exposed_comm": "  exposed comm s",
    "bubble": "  bubble s",
    "imbalance": "  imbalance s",
    "offload": "  offload s",
}


def _breakdown_rows(results: list[Result]) -> dict[str, list[str]]:
    """Where each scenario's step goes (``time_breakdown_s``), one row per part any scenario
    has; seconds per step, '–' where a scenario has no such part."""
    rows = {}
    for key, label in BREAKDOWN_ROWS.items():
        values = [r.time_breakdown_s.get(key) for r in results]
        if any(v for v in values):
            rows[label] = [fmt(v, ".3f") for v in values]
    return rows


def compare_rows(scenarios: list[Scenario], results: list[Result]) -> dict[str, list[str]]:
    """The metrics of ``moesim compare``, one row each: training metrics when any scenario
    trains, serving metrics (latency percentiles, output tokens/s per GPU, $ per million output
    tokens) when any serves. A metric that does not apply to a scenario shows '–'."""
    trains = [r.stage != "inference" for r in results]
    serves = [not x for x in trains]
    rows = {"GPUs": [str(r.gpus) for r in results]}  # disaggregated RL: + rollout GPUs
    if any(trains):
        rows["step time s"] = _cells([r.step_time_s for r in results], trains, ".3f")
        rows["tokens/s"] = _cells([r.tokens_per_s for r in results], trains, ",.0f")
        rows["MFU"] = [fmt(r.mfu, ".1%") for r in results]
    if any(serves):
        rows |= {
            "TTFT p50 / p99 ms": [f"{ms(r.ttft_s_p50)} / {ms(r.ttft_s_p99)}" for r in results],
            "TPOT p50 / p99 ms": [f"{ms(r.tpot_s_p50)} / {ms(r.tpot_s_p99)}" for r in results],
            "output tokens/s": _cells([r.output_tokens_per_s for r in results], serves, ",.0f"),
            "out tokens/s/GPU": _cells([r.tokens_per_s_per_gpu for r in results], serves, ",.0f"),
            "$ per M out tokens": _cells(
                [getattr(r, "cost_per_million_tokens_usd", None) for r in results], serves, ",.2f"
            ),
        }
    rows |= _breakdown_rows(results)
    rows |= {
        "memory GB": [fmt(r.memory_per_gpu_GB.get("total"), ".1f") for r in results],
        "fits": ["yes" if r.fits_in_memory else "[red]NO[/]" for r in results],
    }
    if any(trains) or any(r.gpu_hours is not None for r in results):
        rows["GPU-hours"] = [fmt(r.gpu_hours, ",.0f") for r in results]
        rows["cost $"] = [fmt(r.cost_usd, ",.0f") for r in results]
    return rows


@app.command()
def compare(
    files: Annotated[list[Path], typer.Argument(help="scenario files, or one comparison file")],
    html: Annotated[Path | None, typer.Option("--html", help="write an HTML report")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    sets: SetOverrides = None,
) -> None:
    """Side by side: step time, tokens/s, MFU, memory, fits, GPU-hours and cost; for serving,
    TTFT and TPOT percentiles, output tokens/s per GPU and $ per million output tokens."""
    refuse_overwriting_inputs("--html", html, *files)
    name, desc, scenarios, paths = _scenarios_from_args(files, parse_overrides(sets or []))
    refuse_overwriting_inputs("--html", html, *paths)
    results, traces = _simulate_all(scenarios, paths, traces=html is not None)
    if as_json:
        print_json({"name": name, "results": [r.to_json_dict() for r in results]})
    else:
        # metrics as rows and one column per scenario: fits an 80-column terminal
        t = Table(title=escape(name))
        t.add_column("")
        for i, s in enumerate(scenarios, 1):
            t.add_column(escape(f"#{i} {s.model.name}"), justify="right", overflow="fold")
        for label, cells in compare_rows(scenarios, results).items():
            t.add_row(label, *cells)
        console.print(t)
        for i, s in enumerate(scenarios, 1):
            console.print(escape(f"  #{i} {s.name}"), highlight=False)
    if html is not None:
        from moesim.report.build import comparison_report

        dirs = [p.parent for p in paths]
        rep = comparison_report(scenarios, results, name, desc, base_dirs=dirs, traces=traces)
        out = rep.write(html)
        if not as_json:
            console.print(f"wrote {out}")


@app.command()
def report(
    file: Annotated[Path, typer.Argument(help="a scenario, comparison, sweep or plan file")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file to write")] = None,
    no_sensitivity: Annotated[
        bool, typer.Option("--no-sensitivity", help="skip the sensitivity curves (faster)")
    ] = False,
    sets: SetOverrides = None,
) -> None:
    """A self-contained HTML report (plotly inlined, opens offline) for any moesim file."""
    from moesim.report import build

    data, _ = load_yaml(file)
    kind = file_kind(data)
    out = out or Path("reports") / f"{file.stem}.html"
    refuse_overwriting_inputs("--out", out, file)
    overrides = parse_overrides(sets or [])
    if overrides and kind not in ("scenario", "comparison", "plan"):
        raise UserError(f"{file}: --set applies to scenario, comparison and plan files")
    if kind == "scenario":
        rep = build.scenario_report(
            load_scenario(file, overrides), base_dir=file.parent, sensitivity=not no_sensitivity
        )
    elif kind == "comparison":
        name, desc, scenarios = load_comparison(file, overrides)
        paths = [file.parent / f for f in data["scenarios"]]
        results, traces = _simulate_all(scenarios, paths, traces=True)
        rep = build.comparison_report(
            scenarios,
            results,
            name,
            desc,
            base_dirs=[p.parent for p in paths],
            sensitivity=not no_sensitivity,
            traces=traces,
        )
    elif kind == "sweep":
        from moesim.sweep import load_sweep, run_sweep

        spec = load_sweep(file)
        rep = build.sweep_report(_run_sweep_with_bar(spec, run_sweep, None, None), spec.name)
    else:
        from moesim.plan import load_plan

        rep = build.plan_report(
            _run_plan_with_bar(load_plan(file, overrides)), base_dir=file.parent
        )
    console.print(f"wrote {rep.write(out)}")


def safe_file_stem(name: str) -> str:
    """A sweep's name as a file name inside ./out: no folders (``/``, ``..``), no odd
    characters, at most 120 characters (a 300-character name failed as too long)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")[:120].strip(".-")
    return stem or "sweep"


def _run_sweep_with_bar(spec, run_sweep, workers, scheduler):
    with _progress() as bar:
        task = bar.add_task(f"sweep {spec.name}", total=spec.size)
        return run_sweep(
            spec, workers=workers, scheduler=scheduler, progress=lambda n: bar.advance(task, n)
        )


def _run_plan_with_bar(spec):
    from moesim.plan import run_plan

    with _progress() as bar:
        task = bar.add_task(f"plan {spec.name}", total=spec.simulate_max)
        return run_plan(spec, progress=lambda n: bar.advance(task, n))


@app.command()
def sweep(
    file: Annotated[Path, typer.Argument(help="a sweep file (base scenario + grid)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help=".parquet or .csv")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="local processes, at least 1 (default: cores)")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="a Dask scheduler address, e.g. tcp://host:8786")
    ] = None,
    html: Annotated[Path | None, typer.Option("--html", help="write an HTML report")] = None,
) -> None:
    """Simulate every point of a grid over scenario fields (local processes or Dask)."""
    from moesim.sweep import load_sweep, run_sweep, sweep_summary, write_frame

    refuse_overwriting_inputs("--out", out, file)
    refuse_overwriting_inputs("--html", html, file)
    spec = load_sweep(file)
    frame = _run_sweep_with_bar(spec, run_sweep, workers, scheduler)
    failed = frame["error"].notna() if "error" in frame else None
    if failed is not None and len(frame) and bool(failed.all()):
        raise UserError(
            f"{file}: every one of the {len(frame)} points failed, so nothing was written; "
            f"the first: {frame['error'].iloc[0]}"
        )
    out = out or Path("out") / f"{safe_file_stem(spec.name)}.csv"
    replaced = out.exists()
    written = write_frame(frame, out)
    console.print(
        f"{len(frame)} scenarios → wrote {written}" + (" (replaced it)" if replaced else "")
    )
    for line in sweep_summary(frame):
        console.print(f"  {escape(line)}", highlight=False)
    if html is not None:
        from moesim.report.build import sweep_report

        console.print(f"wrote {sweep_report(frame, spec.name).write(html)}")


@app.command()
def plan(
    file: Annotated[Path, typer.Argument(help="a plan file (model, gpu, workload, search)")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="write an HTML report")] = None,
    sets: SetOverrides = None,
) -> None:
    """Search GPU counts and parallel layouts for the cheapest or fastest configuration that
    fits and meets the constraints; report the Pareto front of time vs cost."""
    from moesim.plan import load_plan

    refuse_overwriting_inputs("--html", html, file)
    result = _run_plan_with_bar(load_plan(file, parse_overrides(sets or [])))
    if as_json:
        print_json(result.to_json_dict())
    else:
        print_plan(result.to_json_dict())
    if html is not None:
        from moesim.report.build import plan_report

        out = plan_report(result, base_dir=file.parent).write(html)
        if not as_json:
            console.print(f"wrote {out}")
