"""Roofline op times with profile efficiencies."""

from __future__ import annotations

import pytest

from moesim.catalog import load_gpu
from moesim.sim.costmodel import CostModel, OpWork
from moesim.sim.profile import default_profile


@pytest.fixture
def cm() -> CostModel:
    return CostModel(load_gpu("h100-sxm"), default_profile(), "bf16")


def test_large_gemm_is_compute_bound_at_the_profile_efficiency(cm):
    flops = 1e13
    t = cm.time_s(OpWork("gemm", "gemm", flops, 1e6))
    eff = default_profile().compute["gemm"](flops)
    assert t == pytest.approx(flops / (989.4e12 * eff) + cm.launch_s)


def test_weight_heavy_small_op_is_memory_bound(cm):
    # decode-like: 1 GB of weights, few FLOPs
    t = cm.time_s(OpWork("gemv", "gemm", 1e9, 1e9))
    assert t == pytest.approx(1e9 / (3.35e12 * default_profile().hbm(1e9)) + cm.launch_s)


def test_grouped_gemm_of_many_small_groups_is_slower_than_one_big(cm):
    one = cm.time_s(OpWork("g", "grouped_gemm", 1e12, 0.0, groups=1))
    many = cm.time_s(OpWork("g", "grouped_gemm", 1e12, 0.0, groups=256))
    assert many > one


def test_empty_op_costs_nothing(cm):
    assert cm.time_s(OpWork("none", "gemm", 0.0, 0.0)) == 0.0


def test_fp8_speeds_up_linear_gemms_only():
    """DeepSeek-V3's FP8 recipe: attention, the output head and the gate stay in 16 bits."""
    gpu = load_gpu("h100-sxm")
    bf16 = CostModel(gpu, default_profile(), "bf16")
    fp8 = CostModel(gpu, default_profile(), "fp8")
    flops = 1e13
    gemm = OpWork("ffn", "gemm", flops, 1e6)
    eff = default_profile().compute["gemm"](flops)
    assert fp8.time_s(gemm) == pytest.approx(flops / (1978.9e12 * eff) + fp8.launch_s)
    assert fp8.time_s(gemm) < 0.6 * bf16.time_s(gemm)
    for op in (
        OpWork("attn_core", "attention", flops, 1e6),
        OpWork("lm_head", "gemm", flops, 1e6, fp8=False),
        OpWork("experts", "grouped_gemm", flops, 1e6, groups=8, fp8=False),
    ):
        assert fp8.time_s(op) == bf16.time_s(op)


def test_a_backward_attention_reads_the_profiles_backward_curve_and_fp8_gemms_the_fp8_curve():
    """Schema version 2: ``layer_costs._bwd`` marks the backward op, which reads
    ``compute.attention_bwd``; a GEMM at the fp8 peak reads ``compute_fp8``; the 16-bit ops
    and the forward are untouched."""
    from moesim.sim.layer_costs import _bwd
    from moesim.sim.profile import Profile

    raw = default_profile().model_dump()
    half = {"x": "flops", "points": [[1e6, 0.3]], "source": "test"}
    raw.update(schema_version=2, compute_fp8={"gemm": half})
    raw["compute"]["attention_bwd"] = half
    v2 = Profile.model_validate(raw)
    gpu = load_gpu("h100-sxm")
    flops = 1e12
    core = OpWork("attn_core", "attention", flops, 0.0)
    bwd = _bwd(core)
    assert bwd.backward and not core.backward
    for dtype in ("bf16", "fp8"):
        old, new = CostModel(gpu, default_profile(), dtype), CostModel(gpu, v2, dtype)
        assert new.time_s(core) == old.time_s(core)
        assert new.time_s(bwd) - new.launch_s * 2 == pytest.approx(2 * flops / (989.4e12 * 0.3))
    gemm = OpWork("ffn", "gemm", flops, 0.0)
    fp8 = CostModel(gpu, v2, "fp8")
    assert fp8.time_s(gemm) - fp8.launch_s == pytest.approx(flops / (1978.9e12 * 0.3))
    head = OpWork("lm_head", "gemm", flops, 0.0, fp8=False)  # 16-bit: the bf16 curve
    assert fp8.time_s(head) == CostModel(gpu, default_profile(), "fp8").time_s(head)
    bf16 = CostModel(gpu, v2, "bf16")  # no fp8 peak, no fp8 curve
    assert bf16.time_s(gemm) == CostModel(gpu, default_profile(), "bf16").time_s(gemm)


def test_sustained_clock_slows_compute_not_memory():
    gpu = load_gpu("h100-sxm")
    slow = gpu.model_copy(update={"sustained_clock_fraction": 0.8})
    full, held = CostModel(gpu, default_profile()), CostModel(slow, default_profile())
    gemm = OpWork("gemm", "gemm", 1e13, 1e6)
    assert held.time_s(gemm) - held.launch_s == pytest.approx(
        (full.time_s(gemm) - full.launch_s) / 0.8
    )
    copy = OpWork("copy", "memory_bound", 0.0, 1e9)
    assert held.time_s(copy) == full.time_s(copy)
