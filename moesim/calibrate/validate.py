"""``moesim calibrate validate PROFILE``: how wrong are the simulator's predictions?

1. Split the measurements: for each fitted class (gemm, grouped_gemm, attention,
   memory_bound, copy, host_copy) a seeded random ``holdout`` fraction is held out (at least
   one row of a class stays in the fit); launch and collective rows always go to the fit;
   ``moe_layer`` and ``step`` rows are never fitted, so all of them are held out.
2. Fit a profile on the rest (``fit.fit_profile``, same dtype). Everything a prediction
   depends on comes from the fitting rows: on the CPU the device spec too (its peak is the
   best GEMM rate measured and its "HBM" the best d2d copy, so a spec from all rows would let a
   held-out GEMM or copy set the scale of its own prediction); a GPU's spec is its datasheet.
3. Predict each held-out measurement with that profile (``moesim.calibrate.predict``):
   - op classes through the cost model (``moesim.sim.costmodel.CostModel``): forward + a
     backward of twice the FLOPs and bytes (the simulator's convention) for ``fwd_bwd`` rows;
     copies as bytes over the fitted HBM bandwidth plus the launch overhead, host copies as
     bytes over the nominal PCIe bandwidth × the fitted ``links.pcie`` (1 where none was
     fitted: ``CostModel.link_fraction``) plus the launch;
   - ``moe_layer`` through ``moesim.sim.run.simulate`` of a one-GPU ``moe_layer`` scenario of
     the same layer, tokens, passes and measured routing histogram;
   - ``step`` through ``simulate`` of a one-GPU scenario of the same model, stage, batch and
     sequence length (stages the simulator does not run yet are listed, not scored).
4. Errors |predicted − measured| / measured per class → ``validation`` in the profile (which
   itself stays the fit on all measurements), ``<id>/predictions.csv`` and the HTML report.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from moesim.calibrate.fit import COMPUTE_CLASSES, display_path, fit_profile, read_measurements
from moesim.calibrate.predict import FITTED_CLASSES, predict_all
from moesim.calibrate.records import COLUMNS
from moesim.file_io import input_problem, output_problem, write_atomic
from moesim.sim.profile import Profile
from moesim.specs import GPUSpec

ALWAYS_FIT = ("launch", "collective")
REQUIRED_CLASSES = ("gemm", "moe_layer", "attention", "step")


class CalibrationInputError(ValueError):
    """A profile or measurements file ``calibrate validate`` cannot use; the message names the
    file, what is wrong with it and the fix."""


def write_profile(path: str | Path, profile: dict[str, Any]) -> Path:
    """The profile JSON, all or nothing (moesim.file_io.write_atomic)."""
    Profile.model_validate(profile)
    return write_atomic(path, json.dumps(profile, indent=2) + "\n")


def read_profile_dict(path: Path) -> dict[str, Any]:
    """The profile's JSON, checked to be a calibration profile before any work: ``{}``,
    truncated JSON, a YAML or a binary file is a CalibrationInputError saying which."""
    problem = input_problem(path)
    if problem is not None:
        raise CalibrationInputError(problem)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise CalibrationInputError(
            f"{path}: not UTF-8 text: give a profile JSON that `moesim calibrate run` wrote"
        ) from None
    except json.JSONDecodeError as e:
        text = e.doc.strip()
        end = (
            "it looks like YAML; profiles are JSON"
            if text[:1] not in ("{", "[", "")
            else f"{e.msg}; the file ends early: truncated?"
            if not text.endswith(("}", "]"))
            else e.msg
        )
        raise CalibrationInputError(
            f"{path}:{e.lineno}: not valid JSON ({end}): give a profile JSON that "
            "`moesim calibrate run` wrote"
        ) from None
    except (ValueError, RecursionError):  # 4,300-digit integers, thousands of levels
        raise CalibrationInputError(
            f"{path}: not a calibration profile (a number too long or nesting too deep)"
        ) from None
    if not isinstance(data, dict):
        raise CalibrationInputError(
            f"{path}: a JSON {type(data).__name__}, not a calibration profile (a JSON object "
            "with device, source, compute, ...)"
        )
    try:
        Profile.model_validate(data)
    except ValidationError as e:
        missing = [str(err["loc"][0]) for err in e.errors() if err["type"] == "missing"]
        what = f"missing {', '.join(missing)}" if missing else f"{e.error_count()} bad fields"
        raise CalibrationInputError(
            f"{path}: not a moesim calibration profile ({what}): give a file that "
            "`moesim calibrate run` wrote"
        ) from None
    return data


def read_measurements_checked(path: Path) -> pd.DataFrame:
    """The measurements CSV, with the columns validation reads; a missing, binary or
    column-less file is a CalibrationInputError naming the file and what it lacks."""
    problem = input_problem(path)
    if problem is not None:
        raise CalibrationInputError(
            f"measurements {problem}" + (" (pass --measurements)" if "no such" in problem else "")
        )
    try:
        df = read_measurements(path)
    except UnicodeDecodeError:
        raise CalibrationInputError(
            f"{path}: not UTF-8 text: give the measurements.csv `moesim calibrate run` wrote"
        ) from None
    except (KeyError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        missing = [c for c in ("op_class", "op", "dtype") if c not in _header(path)]
        why = f"no column {', '.join(missing)}" if missing else f"not a CSV ({e})"
        raise CalibrationInputError(
            f"{path}: {why}: give the measurements.csv `moesim calibrate run` wrote"
        ) from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CalibrationInputError(
            f"{path}: no column {', '.join(missing)}: give the measurements.csv "
            "`moesim calibrate run` wrote (columns: " + ", ".join(COLUMNS) + ")"
        )
    return df


def _header(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [c.strip() for c in f.readline().split(",")]
    except OSError:
        return []


def device_spec_for(
    profile_path: Path,
    device_id: str,
    fit_rows: pd.DataFrame,
    environment: dict[str, Any] | None = None,
) -> GPUSpec:
    """The spec the held-out rows are predicted on: the catalog GPU of that id (a datasheet),
    or, where ``<dir>/<id>.device.yaml`` lies beside the profile (the CPU's spec, measured),
    that spec derived again from ``fit_rows`` alone (``run.measured_cpu_spec``; the file's
    name and memory size kept), so that no held-out GEMM or copy sets its own scale. Fitting
    rows without the fp32 GEMMs and d2d copies it is derived from are an error."""
    import yaml

    from moesim.calibrate.run import measured_cpu_spec
    from moesim.catalog import load_gpu

    local = profile_path.parent / f"{device_id}.device.yaml"
    if not local.is_file():
        return load_gpu(device_id)
    spec = GPUSpec.model_validate(yaml.safe_load(local.read_text()))
    env = environment or {}
    try:
        derived = measured_cpu_spec(
            fit_rows, env.get("device_name", spec.name), env.get("date", "undated"), spec.hbm_GB
        )
    except RuntimeError as e:
        raise RuntimeError(
            f"{display_path(local)} is a measured device spec, which validation derives again "
            f"from the fitting rows alone; they cannot give it: {e}"
        ) from e
    return GPUSpec.model_validate(derived)


def split(
    df: pd.DataFrame, holdout: float = 0.3, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit rows, held-out rows): a seeded ``holdout`` fraction of each fitted class (at least
    one row when the class has two or more), all moe_layer/step rows held out."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(df), dtype=bool)
    classes = df["op_class"].to_numpy()
    for c in FITTED_CLASSES:
        idx = np.flatnonzero(classes == c)
        if len(idx) < 2:
            continue
        n = min(len(idx) - 1, max(1, round(holdout * len(idx))))
        test[rng.choice(idx, size=n, replace=False)] = True
    test |= ~np.isin(classes, (*FITTED_CLASSES, *ALWAYS_FIT))
    return df[~test].reset_index(drop=True), df[test].reset_index(drop=True)


def scored_rows(df: pd.DataFrame, dtype: str) -> pd.DataFrame:
    """The rows a profile of ``dtype`` speaks for: compute-class rows of other dtypes (GEMMs
    measured in fp16/fp32 for reference) are neither fitted nor scored."""
    other = df["op_class"].isin(COMPUTE_CLASSES) & (df["dtype"] != dtype)
    return df[~other].reset_index(drop=True)


def error_stats(measured: list[float], predicted: list[float]) -> dict[str, Any]:
    """Median and maximum of |predicted − measured| / measured, and n."""
    errs = [abs(p - m) / m for m, p in zip(measured, predicted, strict=True) if m > 0]
    if not errs:
        return {"median_abs_rel_error": None, "max_abs_rel_error": None, "n": 0}
    return {
        "median_abs_rel_error": float(np.median(errs)),
        "max_abs_rel_error": float(np.max(errs)),
        "n": len(errs),
    }


def summarize(pred: pd.DataFrame) -> dict[str, dict[str, Any]]:
    val: dict[str, dict[str, Any]] = {}
    for cls, g in pred.groupby("op_class", sort=False):
        scored = g[g["skipped"] == ""]
        stats = error_stats(
            scored["time_s_median"].astype(float).tolist(),
            scored["predicted_s"].astype(float).tolist(),
        )
        stats["method"] = str(g["method"].iloc[0])
        if cls == "step":
            stats["by_stage"] = {
                str(op): error_stats(
                    s["time_s_median"].astype(float).tolist(),
                    s["predicted_s"].astype(float).tolist(),
                )
                for op, s in scored.groupby("op")
            }
            not_sim = sorted(set(g[g["skipped"] != ""]["op"]))
            if not_sim:
                stats["not_simulated"] = not_sim
        val[str(cls)] = stats
    return val


def validate_profile(
    profile_path: str | Path,
    *,
    measurements: str | Path | None = None,
    holdout: float = 0.3,
    seed: int = 0,
    report: str | Path | None = None,
) -> dict[str, Any]:
    """Score the simulator on held-out measurements; write the errors into the profile, the
    predictions CSV and the HTML report. Returns the ``validation`` block."""
    profile_path = Path(profile_path)
    profile = read_profile_dict(profile_path)
    device_id = profile["device"]
    meas_path = (
        Path(measurements) if measurements else profile_path.parent / device_id / "measurements.csv"
    )
    measured = profile.get("measured") or {}
    dtype = measured.get("dtype", "bf16")
    report_path = Path(report) if report else meas_path.parent / "report.html"
    pred_path = meas_path.parent / "predictions.csv"
    for out in (report_path, pred_path):  # refused before any work, and before any write
        problem = output_problem(out)
        if problem is not None:
            raise CalibrationInputError(f"--report {problem}" if out == report_path else problem)
    df = scored_rows(read_measurements_checked(meas_path), dtype)
    cuda = device_id != "cpu"
    train, test = split(df, holdout, seed)
    env = measured.get("environment")
    gpu = device_spec_for(profile_path, device_id, train, env)
    part = fit_profile(
        train, gpu, dtype=dtype, device_id=device_id, environment=env, measurements=meas_path
    )
    with tempfile.TemporaryDirectory(prefix="moesim-validate-") as tmp:
        part_path = write_profile(Path(tmp) / f"{device_id}.json", part)
        pred = predict_all(test, gpu, part_path, dtype, cuda)
    validation = summarize(pred)
    missing = [c for c in REQUIRED_CLASSES if c not in validation]
    validation["_split"] = {
        "holdout_fraction": holdout,
        "seed": seed,
        "fit_rows": len(train),
        "held_out_rows": len(test),
        "date": dt.date.today().isoformat(),
        "measurements": display_path(meas_path),
        "note": "errors of a profile (and, for a measured device spec, of peaks) fitted "
        "without the held-out rows; the profile's curves are fitted on all rows",
        "missing_classes": missing,
    }
    profile["validation"] = validation
    from moesim.calibrate.report import render_report

    page = render_report(  # rendered before anything is written: all three files or none
        pred,
        validation,
        title=f"moesim calibration: {device_id} "
        f"({(measured.get('environment') or {}).get('device_name', '')})",
    )
    write_atomic(report_path, page, make_parents=True)
    write_atomic(pred_path, pred.to_csv(index=False))
    write_profile(profile_path, profile)
    return validation
