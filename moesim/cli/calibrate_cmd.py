"""``moesim calibrate run|validate``: measure a device, fit its profile, score the simulator.
torch is imported only when a command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moesim.cli.app import UserError, app, console, print_json

calibrate_app = typer.Typer(
    help="Microbenchmarks → calibration profile (calibration/<device>.json) → prediction error.",
    no_args_is_help=True,
)
app.add_typer(calibrate_app, name="calibrate")


def _print_validation(validation: dict) -> None:
    table = Table(title="simulator error on held-out measurements")
    for col in ("op class", "n", "median |rel err|", "max |rel err|", "predicted by"):
        table.add_column(col)
    for cls, v in validation.items():
        if cls.startswith("_"):
            continue

        def pct(x):
            return "–" if x is None else f"{100 * x:.1f}%"

        table.add_row(
            cls, str(v["n"]), pct(v["median_abs_rel_error"]), pct(v["max_abs_rel_error"]),
            str(v.get("method", "")),
        )  # fmt: skip
    console.print(table)
    missing = validation.get("_split", {}).get("missing_classes")
    if missing:
        console.print(f"[yellow]no held-out measurements for:[/] {', '.join(missing)}")


#: said with every --quick result (its scores, e.g. a median gemm error of 366%, mean nothing)
QUICK_NOTE = (
    "tiny sizes that no GPU or CPU runs at its speed, so its fit and errors say nothing about "
    "the device; run without --quick for a profile"
)


@calibrate_app.command("run")
def run_cmd(
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    quick: Annotated[
        bool, typer.Option("--quick", help="tiny sizes (CI, ~1 min on a CPU)")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="output folder (default: calibration/; with --quick out/calibration-quick/, "
            "so a smoke test never replaces a committed profile)"
        ),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(
            help="comma-separated subset: gemm,moe,attention,memory,copy,collectives,steps"
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads (default: torch's)")
    ] = None,
    gpu_id: Annotated[
        str | None, typer.Option(help="catalog GPU id when the device name does not map to one")
    ] = None,
    validate: Annotated[bool, typer.Option(help="score the simulator afterwards")] = True,
    seed: Annotated[int, typer.Option(help="random inputs and the validation split")] = 0,
    append: Annotated[
        bool,
        typer.Option(
            "--append",
            help="keep the existing measurements of the benchmarks not run now (with --only)",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Run every benchmark on DEVICE, write calibration/<id>/measurements.csv, the fitted
    profile calibration/<id>.json (and calibration/cpu.device.yaml on a CPU), and validate."""
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise UserError("moesim calibrate needs torch: pip install 'moesim[torch]'") from e
    from moesim.calibrate.run import run_calibration

    if out is None:
        out = Path("out") / "calibration-quick" if quick else Path("calibration")
    try:
        result = run_calibration(
            device,
            quick=quick,
            out_dir=out,
            only=tuple(s.strip() for s in only.split(",")) if only else None,
            threads=threads,
            gpu_id=gpu_id,
            validate=validate,
            seed=seed,
            append=append,
        )
    except (RuntimeError, ValueError) as e:
        raise UserError(str(e)) from e
    summary = {
        "measurements": str(result.measurements),
        "profile": str(result.profile),
        "device_spec": str(result.device_spec) if result.device_spec else None,
        "rows": result.rows,
        "failures": result.failures,
        "seconds": round(result.seconds, 1),
        "validation": result.validation,
    }
    if quick:
        summary["note"] = QUICK_NOTE
    if as_json:
        print_json(summary)
        return
    console.print(
        f"{result.rows} measurements → {result.measurements}\nprofile → {result.profile}"
        + (f"\ndevice spec → {result.device_spec}" if result.device_spec else "")
        + f"\n{result.seconds:.0f} s"
    )
    if result.failures:
        console.print(f"[red]{len(result.failures)} cases failed:[/]")
        for f in result.failures:
            console.print(f"  {f}", highlight=False)
    if result.validation:
        _print_validation(result.validation)
    if quick:
        console.print(f"[yellow]--quick is a smoke test:[/] {QUICK_NOTE}")


@calibrate_app.command("validate")
def validate_cmd(
    profile: Annotated[Path, typer.Argument(help="a profile JSON written by calibrate run")],
    measurements: Annotated[
        Path | None, typer.Option(help="default: <profile dir>/<device>/measurements.csv")
    ] = None,
    holdout: Annotated[float, typer.Option(help="fraction of each fitted class held out")] = 0.3,
    seed: Annotated[int, typer.Option(help="seed of the split")] = 0,
    report: Annotated[
        Path | None, typer.Option(help="HTML report path (default: beside the measurements)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the validation block")] = False,
) -> None:
    """Fit on part of the measurements, predict the rest through the simulator, and write the
    errors into PROFILE under 'validation' (plus predictions.csv and report.html)."""
    from moesim.file_io import input_problem

    problem = input_problem(profile)
    if problem is not None:
        raise UserError(f"PROFILE {problem}")
    if not 0 < holdout < 1:
        raise UserError("--holdout must lie strictly between 0 and 1")
    from moesim.calibrate.validate import CalibrationInputError, validate_profile

    try:
        validation = validate_profile(
            profile, measurements=measurements, holdout=holdout, seed=seed, report=report
        )
    except (FileNotFoundError, CalibrationInputError) as e:
        raise UserError(str(e)) from None
    if as_json:
        print_json(validation)
    else:
        _print_validation(validation)
