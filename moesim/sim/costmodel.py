"""The time of one op on one device: a roofline with measured efficiencies.

    time_s = max(FLOPs / (peak · eff_class(size)), bytes / (HBM · eff_hbm(bytes))) + launch

``peak`` is the GPU's dense peak for the compute dtype at its sustained clock
(``GPUSpec.sustained_peak_TFLOPS``: the datasheet peak × ``sustained_clock_fraction``), ``HBM`` its
memory bandwidth, and the efficiencies come from the calibration profile (``profile.py``).
With fp8 compute, only the linear layers' GEMMs run at the fp8 peak: attention (op class
``attention``) and the ops marked ``fp8=False`` (the output head, the MoE gate) keep the 16-bit
peak, as in DeepSeek-V3's FP8 recipe (report §3.3.1: "the embedding module, the output head, MoE
gating modules, normalization operators, and attention operators" stay in BF16/FP32) and
Transformer Engine, whose FP8 covers its Linear layers and not the attention core.
For a grouped GEMM (the experts of one rank) the efficiency is read at the FLOPs of one group,
because a grouped GEMM of many small experts runs like many small GEMMs.

Which curve (a profile of schema version 2 may hold more than one per class):

- a GEMM at the fp8 peak reads ``profile.compute_fp8[class]`` when the profile has it: fp8
  kernels do not reach the fraction of their doubled peak that bf16 kernels reach of theirs
  (DeepGEMM's H800 FP8 GEMMs top out near 0.69 of the fp8 peak where XLA's H100 GEMM table
  reaches ~0.79 of the bf16 peak; ``calibration/published/``). Without it, the 16-bit curve is read
  against the fp8 peak (schema version 1).
- a backward attention op (``OpWork.backward``, set by ``layer_costs._bwd``) reads
  ``profile.compute["attention_bwd"]`` when present: FlashAttention's backward runs at a lower
  fraction of peak than its forward (FlashAttention-3 paper, H100 figures). Else the forward's.

This module knows nothing about SimPy or the schedule: calibration code and analytic tools can
use it alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.sim.profile import Curve, OpClass, Profile
from moesim.specs import GPUSpec


@dataclass(frozen=True)
class OpWork:
    """The work of one kernel (or one fused group of kernels) on one GPU."""

    name: str
    op_class: OpClass
    flops: float
    bytes: float
    groups: int = 1  # experts in a grouped GEMM
    kernels: int = 1  # launches the op stands for
    fp8: bool = True  # a GEMM that runs in fp8 when the compute dtype is fp8
    backward: bool = False  # a backward op: attention reads the profile's attention_bwd curve


class CostModel:
    """Roofline time of an op on ``gpu`` at ``compute_dtype``, with ``profile`` efficiencies."""

    def __init__(self, gpu: GPUSpec, profile: Profile, compute_dtype: str = "bf16"):
        self.gpu = gpu
        self.profile = profile
        # peaks at the clock held under load (GPUSpec.sustained_clock_fraction; 1.0 by default)
        self.peak_flops_per_s = gpu.sustained_peak_TFLOPS(compute_dtype) * 1e12  # type: ignore[arg-type]
        high = "bf16" if compute_dtype == "fp8" else compute_dtype
        self.high_precision_peak_flops_per_s = gpu.sustained_peak_TFLOPS(high) * 1e12  # type: ignore[arg-type]
        self.hbm_bytes_per_s = gpu.hbm_TBps * 1e12
        self.launch_s = profile.launch_overhead_us.value * 1e-6
        self.runs_fp8 = compute_dtype == "fp8"
        self._cache: dict[tuple, float] = {}

    def curve(self, op: OpWork, at_fp8_peak: bool) -> Curve:
        """The efficiency curve ``op`` is read on (the module docstring says which)."""
        return self._curve(op.op_class, op.backward, at_fp8_peak)

    def _curve(self, op_class: OpClass, backward: bool, at_fp8_peak: bool) -> Curve:
        p = self.profile
        if at_fp8_peak and p.compute_fp8 is not None and op_class in p.compute_fp8:
            return p.compute_fp8[op_class]  # type: ignore[index]
        if backward and op_class == "attention" and "attention_bwd" in p.compute:
            return p.compute["attention_bwd"]
        return p.compute[op_class]

    def time_s(self, op: OpWork) -> float:
        key = (op.op_class, op.flops, op.bytes, op.groups, op.kernels, op.fp8, op.backward)
        t = self._cache.get(key)
        if t is None:
            t = self._time_s(op)
            self._cache[key] = t
        return t

    def _time_s(self, op: OpWork) -> float:
        return self.time_of(
            op.op_class, op.flops, op.bytes, op.groups, op.kernels, op.fp8, op.backward
        )

    def time_of(
        self,
        op_class: OpClass,
        flops: float,
        bytes_: float,
        groups: int = 1,
        kernels: int = 1,
        fp8: bool = True,
        backward: bool = False,
    ) -> float:
        """``time_s`` of the op these fields describe, uncached and without building an
        ``OpWork``: the routed experts' time is asked for every distinct load an MoE layer
        draws (10⁴ per DeepSeek-V3 step), where the dataclass was a tenth of the run."""
        if flops <= 0 and bytes_ <= 0:
            return 0.0
        launch_s = self.launch_s * kernels
        if op_class == "memory_bound":
            eff = self.profile.compute["memory_bound"](max(bytes_, 1.0))
            return bytes_ / (self.hbm_bytes_per_s * eff) + launch_s
        hbm_eff = self.profile.hbm(max(bytes_, 1.0))
        per_group = max(flops / max(groups, 1), 1.0)
        low = fp8 and op_class != "attention"
        peak = self.peak_flops_per_s if low else self.high_precision_peak_flops_per_s
        eff = self._curve(op_class, backward, at_fp8_peak=low and self.runs_fp8)(per_group)
        compute_s = flops / (peak * eff)
        memory_s = bytes_ / (self.hbm_bytes_per_s * hbm_eff)
        return max(compute_s, memory_s) + launch_s

    def link_fraction(self, kind: str) -> float:
        """Achieved fraction of a link's nominal bandwidth: ``nvlink``, ``network`` or
        ``pcie``. An optional link the profile does not hold (``pcie``, fitted only where host
        copies were measured) runs at its nominal bandwidth: 1.0."""
        link = getattr(self.profile.links, kind)
        return 1.0 if link is None else link.value

    @property
    def collective_overhead_s(self) -> float:
        return self.profile.collective_overhead_us.value * 1e-6
