"""One measurement: a row of ``calibration/<device>/measurements.csv``.

Columns (units in the names where they have one): the device, the op and the op class it
calibrates, dtype, the pass (``fwd`` or ``fwd_bwd``), the shape parameters that apply to the op
(left empty otherwise), the FLOPs and bytes the op does (by moesim's conventions: a
multiply-accumulate is 2 FLOPs, backward is 2× forward; bytes are the logical bytes read plus
written), and the time: median, 10th and 90th percentile over ``repeats`` timed calls.
"""

from __future__ import annotations

from typing import Any

from moesim.calibrate.timing import Timing

SHAPE_COLUMNS = (
    "m",
    "n",
    "k",
    "tokens",
    "experts",
    "top_k",
    "hidden",
    "ffn_hidden",
    "seq_len",
    "batch",
    "heads",
    "head_dim",
    "world_size",
    "groups",
)
COLUMNS = (
    "device",
    "op",
    "op_class",
    "dtype",
    "pass",
    *SHAPE_COLUMNS,
    "flops",
    "bytes",
    "time_s_median",
    "time_s_p10",
    "time_s_p90",
    "repeats",
    "note",
)
# op classes beyond the profile's compute classes: validated or summarised, not fitted as curves
EXTRA_CLASSES = ("copy", "host_copy", "launch", "collective", "moe_layer", "step")


def row(
    device: str,
    op: str,
    op_class: str,
    dtype: str,
    timing: Timing,
    *,
    pass_: str = "fwd",
    flops: float = 0.0,
    bytes_: float = 0.0,
    note: str = "",
    **shape: Any,
) -> dict[str, Any]:
    """A measurement row; ``shape`` takes any of ``SHAPE_COLUMNS``."""
    unknown = set(shape) - set(SHAPE_COLUMNS)
    if unknown:
        raise ValueError(f"unknown shape columns {sorted(unknown)}")
    r: dict[str, Any] = dict.fromkeys(COLUMNS)
    r.update(
        device=device,
        op=op,
        op_class=op_class,
        dtype=dtype,
        flops=float(flops),
        bytes=float(bytes_),
        time_s_median=timing.median_s,
        time_s_p10=timing.p10_s,
        time_s_p90=timing.p90_s,
        repeats=timing.repeats,
        note=note,
        **shape,
    )
    r["pass"] = pass_
    return r
