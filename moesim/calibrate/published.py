"""Published kernel measurements → one calibration profile per GPU (``kind: published``).

``calibration/published/kernels.csv`` holds kernel throughputs read from published tables and
figures (one row a point, each with its ``source``: document, table or figure, row). This module
turns each point into the time the kernel took, fits the cost model's efficiency curves from
those times exactly as ``moesim.calibrate.fit`` fits measured ones, and scores the fitted
profile on its own points (in-sample error, in the profile's ``validation`` block)::

    python -m moesim.calibrate.published        # rewrites calibration/published/<gpu>.json

A point → a time. GEMMs: FLOPs = 2·m·n·k per group (``flop_convention`` 2mnk), time = FLOPs /
throughput. Attention (``flash-attn``): the FlashAttention benchmarks count a forward as
4·batch·seqlen²·heads·head_dim FLOPs (÷2 under a causal mask) and a backward as 2.5× that
(``flops()`` in flash-attention's benchmarks/benchmark_flash_attention.py); time = those FLOPs
/ throughput. The cost model counts the same forward (``analytic.flops``: 4·h·d per query and
key, (s+1)/2 keys under a causal mask, s without) and a backward of 2× the forward, so the
backward efficiency is 2/2.5 of the paper's fraction of peak: the time is what is kept.

Efficiency = FLOPs (the simulator's count) / (peak · (time − launch)), x = the FLOPs the cost
model reads the curve at (per group; the backward op's own FLOPs), binned and made
non-decreasing by ``fit.bin_curve``. Curves by dtype: bf16 points give ``compute``; fp8 GEMM
points give ``compute_fp8`` (read against the fp8 peak).

GPUs and what they inherit (never a number without a point behind it): points are pooled over
a GPU's ``COMPUTE_FAMILY`` (H100, H800 and H200 share the Hopper SM and its clocks' datasheet
peaks: H800 differs in NVLink, H200 in HBM, and the memory term of the roofline uses each GPU's
own HBM bandwidth). A class no pooled point covers is taken from ``INHERIT`` (the nearest
architecture that has points, reason stated in the curve's ``source``), else from the shipped
default profile (``memory_bound``, ``hbm``, launch overhead and links: no published point was
read for them). A class a GPU has points for, but only large ones, takes the ``INHERIT``
curve below its smallest point (``_extend_below``). Today:

- A100 (a100-sxm-80gb): own ``gemm`` (two best-shape bf16 GEMMs of the MAMF table, ~1e11 FLOPs;
  below them Hopper's fall-off, capped) and own ``attention`` (FlashAttention-2 forward on A100,
  paper figure and an SM80 measurement); ``attention_bwd`` inherited from Hopper (no A100
  backward figure was found with its numbers in an opened source).
- B200: own ``gemm``/fp8 ``gemm``; ``attention``, ``attention_bwd`` and fp8 ``grouped_gemm``
  inherited from Hopper (the FlashAttention-4 figures opened gave only a headline peak, no
  sequence length or head dim).
- every GPU: ``memory_bound``, ``hbm`` and launch overhead from the default profile (no
  published bandwidth sweep by message size, nor a launch-overhead measurement with its method,
  was found in an opened source).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from moesim.calibrate.fit import bin_curve, display_path, work_time_s
from moesim.calibrate.published_points import Point, read_points
from moesim.file_io import write_atomic
from moesim.sim.costmodel import CostModel
from moesim.sim.profile import Curve, Profile, default_profile, repo_calibration_dir
from moesim.specs import GPUSpec

GPUS = ("h100-sxm", "h800-sxm", "h200-sxm", "a100-sxm-80gb", "b200")
HOPPER = ("h100-sxm", "h800-sxm", "h200-sxm")
COMPUTE_FAMILY: dict[str, tuple[str, ...]] = {
    "h100-sxm": HOPPER,
    "h800-sxm": HOPPER,
    "h200-sxm": HOPPER,
    "a100-sxm-80gb": ("a100-sxm-80gb",),
    "b200": ("b200",),
}
FAMILY_REASON = (
    "points of h100-sxm, h800-sxm and h200-sxm pooled: the same Hopper SM at the same datasheet "
    "peaks (H800 differs in NVLink, H200 in HBM; the roofline's memory term uses each GPU's own "
    "HBM bandwidth)"
)
# curve -> GPU it is inherited from when a GPU has no point of it, and why
INHERIT: dict[str, tuple[str, str]] = {
    "a100-sxm-80gb": (
        "h100-sxm",
        "no A100 point of this class (or size) was read from an opened source; the nearest "
        "architecture with points is Hopper (an assumption: Ampere kernels may reach another "
        "fraction of peak)",
    ),
    "b200": (
        "h100-sxm",
        "no B200 point of this class was read from an opened source; the nearest architecture "
        "with points is Hopper (an assumption)",
    ),
}
CURVES = ("gemm", "grouped_gemm", "attention", "attention_bwd")
FP8_CURVES = ("gemm", "grouped_gemm")
PUBLISHED_DIR_NAME = "published"
POINTS_PER_DECADE = 2
# a GEMM point whose memory term explains this fraction of its time is not fitted (see
# memory_explained); 0.9 leaves a point measured 10% above its bytes' time in the fit
MEMORY_EXPLAINED = 0.9


def _peak_flops_per_s(gpu: GPUSpec, dtype: str) -> float:
    return gpu.peak_TFLOPS(dtype) * 1e12  # type: ignore[arg-type]


def memory_explained(p: Point, gpu: GPUSpec, hbm: Curve, launch_s: float) -> bool:
    """A GEMM point whose time the roofline's memory term already explains (bytes over the HBM
    bandwidth at the profile's HBM efficiency, plus the launch overhead, reaching
    ``MEMORY_EXPLAINED`` of its time) measures the HBM, not the tensor cores: it is scored but
    not fitted into a compute curve. Without this the decode-sized GEMMs of DeepGEMM's table
    (M = 64, 128) make the FLOPs-keyed fp8 curve read a mid-size square GEMM at a skinny one's
    efficiency (fp8 / bf16 time 0.95 at 1024 x 4096 x 7168 on H100, where the nearest
    compute-bound points of both tables give ~0.75). Latency-bound small GEMMs (XLA's 256-wide
    ones, ~6 us whatever their FLOPs) are not explained by bytes and stay in the fit."""
    if p.curve not in ("gemm", "grouped_gemm"):
        return False
    memory_s = p.op.bytes / (gpu.hbm_TBps * 1e12 * hbm(max(p.op.bytes, 1.0)))
    return memory_s + launch_s >= MEMORY_EXPLAINED * p.time_s


def _fit_curve(pts: list[Point], gpu: GPUSpec, launch_s: float, what: str) -> dict[str, Any]:
    scored = len(pts)
    hbm = default_profile().hbm
    pts = [p for p in pts if not memory_explained(p, gpu, hbm, launch_s)] or pts
    xs = [p.x for p in pts]
    effs = [
        p.op.flops / (_peak_flops_per_s(gpu, p.dtype) * work_time_s(p.time_s, launch_s))
        for p in pts
    ]
    devices = sorted({p.gpu for p in pts})
    return {
        "x": "flops",
        "points": bin_curve(xs, effs, points_per_decade=POINTS_PER_DECADE, monotone=True),
        "source": f"published: {len(pts)} {what} points of {', '.join(devices)} "
        + (
            f"({scored - len(pts)} more, memory-bound by the roofline, scored but not fitted) "
            if scored > len(pts)
            else ""
        )
        + f"(calibration/published/kernels.csv, each row's source there); efficiency = FLOPs "
        f"(simulator's count) / ({gpu.name} {pts[0].dtype} peak · (time − launch)), median per "
        f"1/{POINTS_PER_DECADE} decade of FLOPs per group, made non-decreasing (PAV)",
    }


def build_profile(
    device: str, points: list[Point], gpus: dict[str, GPUSpec], csv_path: str | Path
) -> dict[str, Any]:
    """The published profile dict of ``device`` from ``points`` (all GPUs' points; the
    device's family is chosen here), with its in-sample ``validation``."""
    gpu = gpus[device]
    base = default_profile()
    launch_s = base.launch_overhead_us.value * 1e-6
    family = COMPUTE_FAMILY[device]
    own = [p for p in points if p.gpu in family and not p.held_out]
    held_out = [p for p in points if p.gpu in family and p.held_out]
    compute: dict[str, Any] = {}
    compute_fp8: dict[str, Any] = {}
    used: list[Point] = []
    inherited: dict[str, str] = {}
    extended: dict[str, str] = {}
    for target, dtype, names in (
        (compute, "bf16", CURVES),
        (compute_fp8, "fp8", FP8_CURVES if gpu.fp8_TFLOPS else ()),  # A100: no fp8 cores
    ):
        for name in names:
            pts = [p for p in own if p.curve == name and p.dtype == dtype]
            if pts:
                c = _fit_curve(pts, gpu, launch_s, f"{name} {dtype}")
                if device in INHERIT:
                    c = _extend_below(c, INHERIT[device][0], name, dtype, points, gpus, launch_s)
                    if c.pop("_extended", False):
                        extended[f"{name}_{dtype}"] = INHERIT[device][0]
                target[name] = c
                used += pts
            elif device in INHERIT:
                src, why = INHERIT[device]
                pts = [p for p in points if p.gpu in COMPUTE_FAMILY[src] and not p.held_out]
                pts = [p for p in pts if p.curve == name and p.dtype == dtype]
                if pts:
                    c = _fit_curve(pts, gpus[src], launch_s, f"{name} {dtype}")
                    c["source"] = f"inherited from {src}: {why}. {c['source']}"
                    target[name] = c
                    inherited[f"{name}_{dtype}"] = src
    if "grouped_gemm" not in compute and "gemm" in compute:
        compute["grouped_gemm"] = _grouped_from_dense(compute["gemm"], compute_fp8)
    for name in ("gemm", "grouped_gemm", "attention"):
        if name not in compute:
            c = base.compute[name]  # type: ignore[index]
            compute[name] = {
                "x": c.x,
                "points": [list(q) for q in c.points],
                "source": f"no published point: the default profile's ({c.source})",
            }
    for name in ("memory_bound",):
        c = base.compute[name]  # type: ignore[index]
        compute[name] = {
            "x": c.x,
            "points": [list(q) for q in c.points],
            "source": f"no published point read: the default profile's ({c.source})",
        }
    profile: dict[str, Any] = {
        "schema_version": 2,
        "device": device,
        "kind": "published",
        "source": f"published kernel tables: fitted from {display_path(csv_path)} by "
        "moesim.calibrate.published" + (f"; {FAMILY_REASON}" if len(family) > 1 else ""),
        "compute": compute,
        "compute_fp8": compute_fp8 or None,
        "hbm": {
            **base.hbm.model_dump(),
            "source": f"no published point read: the default profile's ({base.hbm.source})",
        },
        "launch_overhead_us": {
            "value": base.launch_overhead_us.value,
            "source": "no published point read: the default profile's "
            f"({base.launch_overhead_us.source})",
        },
        "links": {
            k: {**v.model_dump(), "source": f"the default profile's ({v.source})"}
            for k, v in base.links
            if v is not None
        },
        "collective_overhead_us": base.collective_overhead_us.model_dump(),
        "measured": {
            "points_by_class": _counts(used + held_out),
            "points_from": sorted({p.gpu for p in used}),
            "inherited": inherited,
            "extended_below_from": extended,
        },
    }
    if profile["compute_fp8"] is None:
        del profile["compute_fp8"]
    fitted = Profile.model_validate(profile)
    profile["validation"] = in_sample_errors(fitted, gpu, used + held_out)
    return profile


def _extend_below(
    curve: dict[str, Any],
    src: str,
    name: str,
    dtype: str,
    points: list[Point],
    gpus: dict[str, GPUSpec],
    launch_s: float,
) -> dict[str, Any]:
    """``curve`` (fitted on a GPU's own points) below its smallest point: the curve of ``src``
    (the ``INHERIT`` architecture), capped at the own curve's first efficiency so it stays
    non-decreasing. ``Curve`` holds its first value below its first point, so without this a
    GPU whose only points are large (A100: two best-shape GEMMs of ~1e11 FLOPs) would read a
    64x64 GEMM at the best shape's 87% of peak; the nearest architecture's small-size fall-off
    is the better guess there (stated in the source). Sets ``_extended`` when it adds points."""
    src_pts = [
        p
        for p in points
        if p.gpu in COMPUTE_FAMILY[src] and not p.held_out and p.curve == name and p.dtype == dtype
    ]
    if not src_pts:
        return curve
    inherited = _fit_curve(src_pts, gpus[src], launch_s, f"{name} {dtype}")
    x0, y0 = curve["points"][0]
    below = [[x, min(y, y0)] for x, y in inherited["points"] if x < x0]
    if not below:
        return curve
    return {
        **curve,
        "points": below + curve["points"],
        "source": f"{curve['source']}. Below {x0:.3g} FLOPs per group (the smallest own point) "
        f"the curve is {src}'s, capped at the first own efficiency ({y0:.3f}): no own point "
        f"there, and {src}'s small-size fall-off is the nearest published one",
        "_extended": True,
    }


def _grouped_from_dense(gemm: dict[str, Any], compute_fp8: dict[str, Any]) -> dict[str, Any]:
    """No 16-bit grouped GEMM point was published: the 16-bit dense curve, because the fp8
    points show a grouped GEMM running at a dense GEMM's efficiency of the same per-group size
    (the ratio is stated in the source when both fp8 curves exist)."""
    note = ""
    if "gemm" in compute_fp8 and "grouped_gemm" in compute_fp8:
        dense = Curve.model_validate(compute_fp8["gemm"])
        grouped = Curve.model_validate(compute_fp8["grouped_gemm"])
        xs = [q[0] for q in grouped.points]
        ratios = [grouped(x) / dense(x) for x in xs]
        note = (
            f" (fp8 grouped / fp8 dense efficiency at the grouped points' sizes: "
            f"{min(ratios):.2f}-{max(ratios):.2f})"
        )
    return {
        "x": "flops",
        "points": gemm["points"],
        "source": "no published 16-bit grouped GEMM point: the 16-bit dense GEMM curve, as the "
        f"published fp8 grouped GEMMs run near their dense counterparts{note}. Dense: "
        + gemm["source"],
    }


def _counts(points: list[Point]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in points:
        out[p.validation_class] = out.get(p.validation_class, 0) + 1
    return dict(sorted(out.items()))


def predicted_time_s(profile: Profile, gpu: GPUSpec, p: Point) -> float:
    """The cost model's time of point ``p`` with ``profile``: fp8 points at the fp8 compute
    dtype (the GEMM at the fp8 peak), the others at bf16."""
    return CostModel(gpu, profile, p.dtype).time_s(p.op)


def in_sample_errors(profile: Profile, gpu: GPUSpec, points: list[Point]) -> dict[str, Any]:
    """|predicted − published| / published per class (curve_dtype), over the fitting points
    (and, as their own ``..._held_out`` classes, the points not fitted)."""
    by: dict[str, list[float]] = {}
    for p in points:
        err = abs(predicted_time_s(profile, gpu, p) - p.time_s) / p.time_s
        by.setdefault(p.validation_class, []).append(err)
    return {
        k: {
            "median_abs_rel_error": statistics.median(v),
            "max_abs_rel_error": max(v),
            "n": len(v),
            "scope": "held out: not fitted (FIT_MIN_HEAD_DIM), predicted by the cost model"
            if k.endswith("_held_out")
            else "in-sample: the published points of the class (memory-bound GEMMs scored, "
            "not fitted: memory_explained), predicted by the cost model",
        }
        for k, v in sorted(by.items())
    }


def published_dir() -> Path:
    d = repo_calibration_dir()
    return (d if d is not None else Path.cwd() / "calibration") / PUBLISHED_DIR_NAME


def write_all(csv_path: Path | None = None, out_dir: Path | None = None) -> list[Path]:
    """Fit and write ``<out_dir>/<gpu>.json`` for every GPU in ``GPUS``."""
    from moesim.catalog import load_gpu

    out_dir = out_dir or published_dir()
    csv_path = csv_path or out_dir / "kernels.csv"
    points = read_points(csv_path)
    gpus = {g: load_gpu(g) for g in GPUS}
    written = []
    for g in GPUS:
        prof = build_profile(g, points, gpus, csv_path)
        path = out_dir / f"{g}.json"
        write_atomic(path, json.dumps(prof, indent=2) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=None, help="the point table (kernels.csv)")
    ap.add_argument("--out", type=Path, default=None, help="output folder")
    a = ap.parse_args(argv)
    for p in write_all(a.csv, a.out):
        v = json.loads(p.read_text())["validation"]
        errs = ", ".join(
            f"{k} {e['median_abs_rel_error']:.1%}/{e['max_abs_rel_error']:.1%} (n={e['n']})"
            for k, e in v.items()
        )
        print(f"{display_path(p)}: in-sample median/max |error|: {errs}")


if __name__ == "__main__":
    main()
