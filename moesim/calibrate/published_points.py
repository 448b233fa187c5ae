"""The published point table (``calibration/published/kernels.csv``) as ``Point``s: each row's
throughput turned into the kernel's time and the work the cost model counts for it.

GEMMs: FLOPs = 2·m·n·k per group (``flop_convention`` 2mnk), time = FLOPs / throughput.
Attention (``flash-attn``): the FlashAttention benchmarks count a forward as
4·batch·seqlen²·heads·head_dim FLOPs (÷2 under a causal mask) and a backward as 2.5× that;
the simulator counts the same forward ((s+1)/2 keys under a causal mask) and a backward of 2×
the forward, so the time is what is kept (see ``moesim.calibrate.published``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from moesim.sim.costmodel import OpWork

# The curves are keyed on FLOPs alone, and the FlashAttention-3 figures show that at equal FLOPs
# head dim 64 runs at 0.73x (forward) and 0.84x (backward) the throughput of head dim 128: FLOPs
# is a poor key across head dims. Every model of the catalog's shipped scenarios attends with
# head dim >= 128 (MLA: 192/128), so the attention curves are fitted on head dim >= 128 and the
# head-dim-64 points are scored as held-out (their own validation class), not fitted.
FIT_MIN_HEAD_DIM = 128


@dataclass(frozen=True)
class Point:
    """One published kernel measurement, as the cost model sees it."""

    gpu: str
    curve: str  # gemm | grouped_gemm | attention | attention_bwd
    dtype: str  # bf16 | fp8
    op: OpWork  # FLOPs and bytes in the simulator's counting
    time_s: float  # the kernel's time implied by the published throughput
    source: str
    head_dim: int = 0  # attention only

    @property
    def x(self) -> float:
        return max(self.op.flops / max(self.op.groups, 1), 1.0)

    @property
    def held_out(self) -> bool:
        """Not fitted: attention below ``FIT_MIN_HEAD_DIM`` (see there)."""
        return 0 < self.head_dim < FIT_MIN_HEAD_DIM

    @property
    def validation_class(self) -> str:
        c = f"{self.curve}_{self.dtype}"
        return f"{c}_headdim{self.head_dim}_held_out" if self.held_out else c


def _int(v: str, default: int = 0) -> int:
    return int(float(v)) if v not in ("", None) else default


def read_points(path: str | Path) -> list[Point]:
    """The CSV's rows as ``Point``s; a row without a source, or of an unknown kind, is an
    error naming the row."""
    out: list[Point] = []
    with open(path, newline="") as f:
        for i, r in enumerate(csv.DictReader(f), start=2):
            if not (r.get("source") or "").strip():
                raise ValueError(f"{path} line {i}: every point needs a source")
            out.append(_point(r, f"{path} line {i}"))
    return out


def _point(r: dict[str, str], where: str) -> Point:
    tflops = float(r["measured_TFLOPS"])
    dtype = r["dtype"]
    if r["op_class"] in ("gemm", "grouped_gemm"):
        m, n, k, g = _int(r["m"]), _int(r["n"]), _int(r["k"]), _int(r["groups"], 1)
        flops = 2.0 * m * n * k * g
        in_b = 1 if dtype == "fp8" else 2
        nbytes = g * ((m * k + n * k) * in_b + m * n * 2)  # bf16 output
        op = OpWork(r["op_class"], r["op_class"], flops, nbytes, groups=g)  # type: ignore[arg-type]
        return Point(r["gpu"], r["op_class"], dtype, op, flops / (tflops * 1e12), r["source"])
    if r["op_class"] == "attention" and r["flop_convention"] == "flash-attn":
        b, s, h, d = (_int(r[c]) for c in ("batch", "seqlen", "heads", "head_dim"))
        causal = r["causal"] in ("1", "true", "True")
        paper_fwd = 4.0 * b * s * s * h * d / (2 if causal else 1)
        ctx = (s + 1) / 2.0 if causal else float(s)
        model_fwd = 4.0 * h * d * ctx * b * s  # analytic.flops.attention_core_flops per token
        io_bytes = 4 * b * s * h * d * 2  # q, k, v, o in bf16 (layer_costs' attn_core)
        if r["direction"] == "bwd":
            op = OpWork("attn_core_bwd", "attention", 2 * model_fwd, 2 * io_bytes, 2, backward=True)
            t = 2.5 * paper_fwd / (tflops * 1e12)
            return Point(r["gpu"], "attention_bwd", dtype, op, t, r["source"], d)
        op = OpWork("attn_core", "attention", model_fwd, io_bytes)
        return Point(r["gpu"], "attention", dtype, op, paper_fwd / (tflops * 1e12), r["source"], d)
    kind = f"{r['op_class']}/{r['flop_convention']}"
    raise ValueError(f"{where}: unknown op_class/flop_convention {kind}")
