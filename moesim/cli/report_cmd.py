"""``moesim compare``, ``report``, ``sweep`` and ``plan``: answers and reports for people who
decide what to train or serve, on which cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from moesim.cli.app import UserError, app, console, err_console, print_json
from moesim.scenario_io import ScenarioError, file_kind, load_scenario, load_yaml
from moesim.specs import Result, Scenario

COMPARISON_KEYS = {"name", "description", "scenarios"}


def load_comparison(path: Path) -> tuple[str, str, list[Scenario]]:
    """A comparison file: ``scenarios:`` lists scenario files (relative to it)."""
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
        [load_scenario(path.parent / f) for f in files],
    )


def _scenarios_from_args(files: list[Path]) -> tuple[str, str, list[Scenario], list[Path]]:
    if len(files) == 1:
        data, _ = load_yaml(files[0])
        if "scenarios" not in data:
            raise UserError(
                f"{files[0]}: give two or more scenario files, or a comparison file with a "
                "'scenarios:' list"
            )
        name, desc, scenarios = load_comparison(files[0])
        base = files[0].parent
        return name, desc, scenarios, [base / f for f in data["scenarios"]]
    scenarios = [load_scenario(f) for f in files]
    return " vs ".join(s.name for s in scenarios), "", scenarios, list(files)


def _simulate_all(scenarios: list[Scenario], paths: list[Path]) -> list[Result]:
    from moesim.sim.run import simulate

    results = []
    with _progress() as bar:
        task = bar.add_task("simulating", total=len(scenarios))
        for s, p in zip(scenarios, paths, strict=True):
            results.append(_simulate_one(simulate, s, p.parent))
            bar.advance(task)
    return results


def _simulate_one(simulate: Any, s: Scenario, base_dir: Path) -> Result:
    try:
        return simulate(s, base_dir=base_dir)
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


def _fmt(x: float | None, f: str) -> str:
    return "–" if x is None else format(x, f)


@app.command()
def compare(
    files: Annotated[list[Path], typer.Argument(help="scenario files, or one comparison file")],
    html: Annotated[Path | None, typer.Option("--html", help="write an HTML report")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
) -> None:
    """Side by side: step time, tokens/s, MFU, memory, fits, GPU-hours and cost."""
    name, desc, scenarios, paths = _scenarios_from_args(files)
    results = _simulate_all(scenarios, paths)
    if as_json:
        print_json({"name": name, "results": [r.to_json_dict() for r in results]})
    else:
        # metrics as rows and one column per scenario: fits an 80-column terminal
        t = Table(title=name)
        t.add_column("")
        for i, s in enumerate(scenarios, 1):
            t.add_column(f"#{i} {s.model.name}", justify="right", overflow="fold")
        rows = {
            "GPUs": [str(s.gpus) for s in scenarios],
            "step time s": [_fmt(r.step_time_s, ".3f") for r in results],
            "tokens/s": [_fmt(r.tokens_per_s, ",.0f") for r in results],
            "MFU": [_fmt(r.mfu and 100 * r.mfu, ".1f") + "%" for r in results],
            "memory GB": [_fmt(r.memory_per_gpu_GB.get("total"), ".1f") for r in results],
            "fits": ["yes" if r.fits_in_memory else "[red]NO[/]" for r in results],
            "GPU-hours": [_fmt(r.gpu_hours, ",.0f") for r in results],
            "cost $": [_fmt(r.cost_usd, ",.0f") for r in results],
        }
        for label, cells in rows.items():
            t.add_row(label, *cells)
        console.print(t)
        for i, s in enumerate(scenarios, 1):
            console.print(f"  #{i} {s.name}", highlight=False)
    if html is not None:
        from moesim.report.build import comparison_report

        out = comparison_report(scenarios, results, name, desc).write(html)
        if not as_json:
            console.print(f"wrote {out}")


@app.command()
def report(
    file: Annotated[Path, typer.Argument(help="a scenario, comparison, sweep or plan file")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file to write")] = None,
    no_sensitivity: Annotated[
        bool, typer.Option("--no-sensitivity", help="skip the sensitivity curves (faster)")
    ] = False,
) -> None:
    """A self-contained HTML report (plotly inlined, opens offline) for any moesim file."""
    from moesim.report import build

    data, _ = load_yaml(file)
    kind = file_kind(data)
    out = out or Path("reports") / f"{file.stem}.html"
    if kind == "scenario":
        rep = build.scenario_report(
            load_scenario(file), base_dir=file.parent, sensitivity=not no_sensitivity
        )
    elif kind == "comparison":
        name, desc, scenarios = load_comparison(file)
        paths = [file.parent / f for f in data["scenarios"]]
        rep = build.comparison_report(scenarios, _simulate_all(scenarios, paths), name, desc)
    elif kind == "sweep":
        from moesim.sweep import load_sweep, run_sweep

        spec = load_sweep(file)
        rep = build.sweep_report(_run_sweep_with_bar(spec, run_sweep, None, None), spec.name)
    else:
        from moesim.plan import load_plan

        rep = build.plan_report(_run_plan_with_bar(load_plan(file)))
    console.print(f"wrote {rep.write(out)}")


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
    workers: Annotated[int | None, typer.Option(help="local processes (default: cores)")] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="a Dask scheduler address, e.g. tcp://host:8786")
    ] = None,
    html: Annotated[Path | None, typer.Option("--html", help="write an HTML report")] = None,
) -> None:
    """Simulate every point of a grid over scenario fields (local processes or Dask)."""
    from moesim.sweep import load_sweep, run_sweep, write_frame

    spec = load_sweep(file)
    frame = _run_sweep_with_bar(spec, run_sweep, workers, scheduler)
    out = out or Path("out") / f"{spec.name}.csv"
    console.print(f"{len(frame)} scenarios → wrote {write_frame(frame, out)}")
    if html is not None:
        from moesim.report.build import sweep_report

        console.print(f"wrote {sweep_report(frame, spec.name).write(html)}")


@app.command()
def plan(
    file: Annotated[Path, typer.Argument(help="a plan file (model, gpu, workload, search)")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="write an HTML report")] = None,
) -> None:
    """Search GPU counts and parallel layouts for the cheapest or fastest configuration that
    fits and meets the constraints; report the Pareto front of time vs cost."""
    from moesim.plan import load_plan

    result = _run_plan_with_bar(load_plan(file))
    if as_json:
        print_json(result.to_json_dict())
    else:
        d = result.to_json_dict()
        console.print(
            f"{d['considered']} layouts considered, {d['fit_in_memory']} fit, "
            f"{d['simulated']} simulated, objective: {d['objective']}"
        )
        t = Table(title=f"best configurations: {d['name']}")
        t.add_column("GPUs", justify="right", no_wrap=True)
        t.add_column("layout", overflow="fold", ratio=1)
        for col in ("mem GB", "step s", "MFU", "days", "cost $"):
            t.add_column(col, justify="right", no_wrap=True)
        for b in d["best"]:
            layout = (
                f"tp{b['tp']} pp{b['pp']} dp{b['dp']} ep{b['ep']} z{b['zero_stage']} "
                f"mb{b['microbatch_size']} {b['recompute']}"
            )
            t.add_row(
                str(b["gpus"]), layout, _fmt(b["memory_GB"], ".1f"), _fmt(b["step_time_s"], ".3f"),
                _fmt(b["mfu"] and 100 * b["mfu"], ".1f") + "%", _fmt(b["run_days"], ".1f"),
                _fmt(b["run_cost_usd"], ",.0f"),
            )  # fmt: skip
        console.print(t if d["best"] else "[red]no configuration meets the constraints[/]")
    if html is not None:
        from moesim.report.build import plan_report

        out = plan_report(result).write(html)
        if not as_json:
            console.print(f"wrote {out}")
