"""Measurements → a calibration profile (the schema of ``moesim.sim.profile``).

For each compute op class (gemm, grouped_gemm, attention) every measurement gives one point:

    x   = FLOPs of one kernel-sized piece: flops / (groups · passes)
          (passes = 3 for forward+backward: the forward GEMM and its two backward GEMMs,
          each of the forward's size; groups = experts of a grouped GEMM)
    eff = flops / (peak · (t − launch))

which is exactly what the cost model inverts (time = flops / (peak · eff(x)) + launch), so a
profile fitted on a measurement predicts it back. ``memory_bound`` and ``hbm`` points are
bandwidths: eff = bytes / (HBM · (t − launch)), x = bytes. ``hbm`` is fitted from device-memory
copies (``copy``: d2d) only: host↔device copies (``host_copy``: h2d, d2h) run at the PCIe
link's speed, ~50 GB/s against an H100's 3.35 TB/s, and would drag the HBM curve to ~0.015.
They give ``links.pcie`` instead: the best achieved h2d bandwidth (d2h when h2d was not
measured) over the GPU's nominal ``pcie_GBps``, the figure a host link is used at by the
expert-offload path.

Points are binned by log10(x) (``points_per_decade`` bins a decade), each bin gives its median
x and median efficiency, and compute curves are made non-decreasing in size by
pool-adjacent-violators (a larger problem does not fill the device worse; a dip is averaged
with its neighbours, not dropped).
Memory curves are left as measured: on a CPU, caches make small copies faster than DRAM.
Efficiencies are clipped into (0, 1].

The launch overhead is the median time of the smallest kernels measured (op class ``launch``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moesim.sim.profile import OP_CLASSES, Profile, default_profile
from moesim.specs import GPUSpec

COMPUTE_CLASSES = ("gemm", "grouped_gemm", "attention")
HOST_COPY_OPS = ("h2d", "d2h")
MIN_EFF = 1e-4
# a measurement is never credited with less than this fraction of its own time as work
MIN_WORK_FRACTION = 0.02


def passes(pass_: str) -> int:
    return 3 if pass_ == "fwd_bwd" else 1


def _num(v: Any, default: float = 0.0) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(f) else f


def read_measurements(path: str | Path) -> pd.DataFrame:
    """A measurements CSV, with the op classes of today: CSVs written before ``host_copy``
    existed labelled h2d/d2h rows ``copy`` like d2d (fitting them into HBM is wrong), so they
    are relabelled here, where every CSV is read (validation, ``calibrate run --append``,
    which then writes the new labels back)."""
    return with_host_copy_class(pd.read_csv(path, keep_default_na=True))


def with_host_copy_class(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with h2d/d2h rows under op class ``host_copy`` (``read_measurements``)."""
    host = (df["op_class"] == "copy") & df["op"].isin(HOST_COPY_OPS)
    if not host.any():
        return df
    out = df.copy()
    out.loc[host, "op_class"] = "host_copy"
    return out


def display_path(path: str | Path) -> str:
    """``path`` relative to the repository root when it lies inside the checkout moesim runs
    from, else absolute: what a profile's ``source`` names so that a reader can find it."""
    from moesim.sim.profile import repo_root

    p = Path(path).resolve()
    root = repo_root()
    if root is not None and p.is_relative_to(root):
        return p.relative_to(root).as_posix()
    return str(p)


def work_time_s(t: float, launch_s: float) -> float:
    """The part of a measured time the efficiency is credited with (launch taken off)."""
    return max(t - launch_s, MIN_WORK_FRACTION * t)


def point_x(r: dict[str, Any]) -> float:
    """The curve's x for a measurement: FLOPs of one piece, or bytes for memory classes."""
    if r["op_class"] in COMPUTE_CLASSES:
        groups = max(_num(r.get("groups"), 1.0), 1.0)
        return _num(r["flops"]) / (groups * passes(r["pass"]))
    return _num(r["bytes"])


def pav(y: list[float], w: list[float]) -> list[float]:
    """Pool-adjacent-violators: the weighted least-squares non-decreasing fit of ``y``."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for yi, wi in zip(y, w, strict=True):
        blocks.append([yi, wi, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    out: list[float] = []
    for m, _, c in blocks:
        out += [m] * int(c)
    return out


def bin_curve(
    xs: Iterable[float], effs: Iterable[float], *, points_per_decade: int = 2, monotone: bool
) -> list[list[float]]:
    """Binned medians in log10(x), optionally made non-decreasing, clipped into (0, 1]."""
    pts = [(x, e) for x, e in zip(xs, effs, strict=True) if x > 0 and e > 0]
    if not pts:
        raise ValueError("no positive points to fit")
    lx = np.log10([p[0] for p in pts])
    ef = np.array([p[1] for p in pts])
    idx = np.floor(lx * points_per_decade).astype(int)
    bx, by, bw = [], [], []
    for b in sorted(set(idx.tolist())):
        sel = idx == b
        bx.append(float(10 ** np.median(lx[sel])))
        by.append(float(np.median(ef[sel])))
        bw.append(float(sel.sum()))
    if monotone:
        by = pav(by, bw)
    return [[x, float(min(1.0, max(MIN_EFF, y)))] for x, y in zip(bx, by, strict=True)]


def efficiency_points(
    df: pd.DataFrame,
    op_class: str,
    peak_flops_per_s: float,
    hbm_bytes_per_s: float,
    launch_s: float,
) -> tuple[list[float], list[float]]:
    """(x, efficiency) of every measurement of ``op_class`` in ``df``."""
    xs, effs = [], []
    for r in df[df["op_class"] == op_class].to_dict("records"):
        t = work_time_s(_num(r["time_s_median"]), launch_s)
        if op_class in COMPUTE_CLASSES:
            eff = _num(r["flops"]) / (peak_flops_per_s * t)
        else:
            eff = _num(r["bytes"]) / (hbm_bytes_per_s * t)
        xs.append(point_x(r))
        effs.append(eff)
    return xs, effs


def fit_launch_s(df: pd.DataFrame) -> float | None:
    launch = df[df["op_class"] == "launch"]["time_s_median"].astype(float)
    return float(launch.median()) if len(launch) else None


def fit_collectives(df: pd.DataFrame) -> dict[str, Any]:
    """Bus bandwidth (nccl-tests convention) and small-message latency of the collectives."""
    c = df[df["op_class"] == "collective"]
    if c.empty:
        return {}
    out: dict[str, Any] = {}
    for op, g in c.groupby("op"):
        n = g["world_size"].astype(float)
        factor = {"all_reduce": 2 * (n - 1) / n}.get(str(op), (n - 1) / n)
        busbw = g["bytes"].astype(float) * factor / g["time_s_median"].astype(float)
        smallest = g.loc[g["bytes"].astype(float).idxmin()]
        out[str(op)] = {
            "busbw_GBps_max": float(busbw.max() / 1e9),
            "latency_us_smallest": float(smallest["time_s_median"]) * 1e6,
            "world_size": int(n.max()),
        }
    return out


def fit_profile(
    df: pd.DataFrame,
    gpu: GPUSpec,
    *,
    dtype: str,
    device_id: str,
    environment: dict[str, Any] | None = None,
    base: Profile | None = None,
    points_per_decade: int = 2,
    measurements: str | Path | None = None,
) -> dict[str, Any]:
    """The profile dict fitted from ``df`` (rows of ``dtype`` only, for the compute classes).

    Classes without measurements keep ``base``'s curve (the shipped default) and say so in
    their ``source``; ``measurements`` is the CSV ``df`` was read from, named in ``source``."""
    base = base or default_profile()
    env = environment or {}
    where = f"{env.get('device_name', device_id)}, {env.get('date', 'undated')}"
    # the peak the cost model divides by (GPUSpec.sustained_clock_fraction applied), so a
    # fitted profile predicts its own measurements back
    peak = gpu.sustained_peak_TFLOPS(dtype) * 1e12  # type: ignore[arg-type]
    hbm = gpu.hbm_TBps * 1e12
    launch = fit_launch_s(df)
    launch_s = launch if launch is not None else base.launch_overhead_us.value * 1e-6
    compute_df = df[(df["dtype"] == dtype) | ~df["op_class"].isin(COMPUTE_CLASSES)]

    def curve(op_class: str, x_kind: str, monotone: bool, denominator: str) -> dict[str, Any]:
        xs, effs = efficiency_points(compute_df, op_class, peak, hbm, launch_s)
        if not xs:
            c = base.hbm if op_class == "copy" else base.compute[op_class]
            return {
                "x": c.x,
                "points": [list(p) for p in c.points],
                "source": f"not measured on {device_id}: copied from the {base.device} profile "
                f"({c.source})",
            }
        return {
            "x": x_kind,
            "points": bin_curve(xs, effs, points_per_decade=points_per_decade, monotone=monotone),
            "source": f"measured: {len(xs)} {op_class} measurements in {dtype} on {where}; "
            f"efficiency = achieved / {denominator}, median per 1/{points_per_decade} decade"
            + (", made non-decreasing (PAV)" if monotone else ""),
        }

    peak_txt = f"{gpu.name} {dtype} peak {gpu.peak_TFLOPS(dtype):.4g} TFLOPS"  # type: ignore[arg-type]
    hbm_txt = f"{gpu.name} memory bandwidth {gpu.hbm_TBps:.4g} TB/s"
    compute = {c: curve(c, "flops", True, peak_txt) for c in COMPUTE_CLASSES}
    compute["memory_bound"] = curve("memory_bound", "bytes", False, hbm_txt)
    assert set(compute) == set(OP_CLASSES)
    colls = fit_collectives(df)
    links = _links(colls, gpu, base, where)
    bandwidths = _bandwidths(df)
    pcie = fit_pcie(bandwidths, gpu, where)
    if pcie is not None:
        links["pcie"] = pcie
    overhead = base.collective_overhead_us.model_dump()
    if "all_reduce" in colls:
        ar = colls["all_reduce"]
        overhead = {
            "value": ar["latency_us_smallest"],
            "source": f"measured: smallest all_reduce over {ar['world_size']} ranks on {where}",
        }
    origin = display_path(measurements) if measurements is not None else "measurements in memory"
    profile = {
        "schema_version": 1,
        "device": device_id,
        "source": f"moesim calibrate run on {where}: fitted from {origin} by moesim.calibrate.fit",
        "compute": compute,
        "hbm": curve("copy", "bytes", False, hbm_txt),
        "launch_overhead_us": {
            "value": launch_s * 1e6,
            "source": f"measured: median time of the smallest kernels on {where}"
            if launch is not None
            else f"not measured: the {base.device} profile's",
        },
        "links": links,
        "collective_overhead_us": overhead,
        "measured": {
            "environment": env,
            "dtype": dtype,
            "peak_TFLOPS": gpu.peak_TFLOPS(dtype),  # type: ignore[arg-type]
            "hbm_TBps": gpu.hbm_TBps,
            "bandwidths_GBps": bandwidths,
            "collectives": colls,
            "counts": {str(k): int(v) for k, v in df["op_class"].value_counts().items()},
        },
    }
    Profile.model_validate(profile)  # fail here, not in the simulator
    return profile


def _bandwidths(df: pd.DataFrame) -> dict[str, float]:
    """Best achieved bandwidth of each copy op, device and host (GB/s)."""
    c = df[df["op_class"].isin(("copy", "host_copy"))]
    return {
        str(op): float((g["bytes"].astype(float) / g["time_s_median"].astype(float)).max() / 1e9)
        for op, g in c.groupby("op")
    }


def fit_pcie(bandwidths: dict[str, float], gpu: GPUSpec, where: str) -> dict[str, Any] | None:
    """``links.pcie`` from the host copies' best bandwidths (``_bandwidths``, GB/s by copy op):
    the best achieved h2d bandwidth (the direction expert offloading copies in; d2h when only
    that was measured) ÷ the GPU's nominal ``pcie_GBps``, at most 1. None when no host copy
    was measured (a CPU has no host link)."""
    bw = {op: v for op, v in bandwidths.items() if op in HOST_COPY_OPS}
    op = "h2d" if "h2d" in bw else "d2h" if "d2h" in bw else None
    if op is None:
        return None
    nominal = gpu.pcie_GBps
    both = ", ".join(f"{k} {v:.4g} GB/s" for k, v in sorted(bw.items()))
    return {
        "value": min(1.0, bw[op] / nominal),
        "source": f"measured: best {op} bandwidth through pinned host memory ({both}) ÷ "
        f"nominal {nominal:.4g} GB/s per direction on {where}",
    }


def _links(colls: dict[str, Any], gpu: GPUSpec, base: Profile, where: str) -> dict[str, Any]:
    links = {k: v.model_dump() for k, v in base.links if v is not None}
    for k in links:
        links[k]["source"] = (
            f"not measured here: the {base.device} profile's ({links[k]['source']})"
        )
    if "all_reduce" in colls:
        ar = colls["all_reduce"]
        nominal = gpu.intra_node.bandwidth_GBps
        frac = min(1.0, ar["busbw_GBps_max"] / nominal)
        links["nvlink"] = {
            "value": frac,
            "source": f"measured: best all_reduce bus bandwidth {ar['busbw_GBps_max']:.4g} GB/s "
            f"over {ar['world_size']} ranks ÷ nominal {nominal:.4g} GB/s on {where}",
        }
    return links
