"""CUDA paths (skipped without a GPU): CUDA-event timing gives physically possible rates, the
MoE layer's grouped GEMM runs torch._grouped_mm on Hopper, and a quick CUDA calibration writes
a profile named by the catalog GPU id with its validation."""

import pytest

torch = pytest.importorskip("torch")

from moesim.calibrate.context import Context  # noqa: E402
from moesim.calibrate.device import detect  # noqa: E402
from moesim.calibrate.timing import Timer  # noqa: E402
from moesim.catalog import load_gpu  # noqa: E402

pytestmark = pytest.mark.gpu


def test_cuda_event_timing_is_below_the_datasheet_peak():
    info = detect("cuda")
    gpu = load_gpu(info.profile_id)
    n = 4096
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    t = Timer("cuda", min_repeats=10).time(lambda x: x[0] @ x[1], lambda: (a.clone(), b.clone()))
    rate_TFLOPS = 2 * n**3 / t.median_s / 1e12
    # an unsynchronised timer reports impossible rates; a broken one absurdly low ones
    assert 0.05 * gpu.bf16_TFLOPS < rate_TFLOPS <= 1.02 * gpu.bf16_TFLOPS


def test_grouped_gemm_uses_grouped_mm_on_hopper():
    from moesim.calibrate.bench_moe import measure_grouped

    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("torch._grouped_mm is used on sm90+ only")
    ctx = Context(detect("cuda"), Timer("cuda", min_repeats=3, budget_s=0.01))
    r = measure_grouped(ctx, 2048, 8, 2, 2048, 1408, "fwd_bwd")
    assert r["note"] == "path=grouped_mm"
    assert r["dtype"] == "bf16"


def test_quick_cuda_calibration(tmp_path):
    from moesim.calibrate.run import run_calibration
    from moesim.sim.profile import load_profile

    out = run_calibration("cuda", quick=True, out_dir=tmp_path)
    assert out.failures == []
    prof = load_profile(out.profile)
    info = detect("cuda")
    assert prof.device == info.profile_id and out.profile.name == f"{info.profile_id}.json"
    env = prof.measured["environment"]
    assert env["device_name"] == torch.cuda.get_device_name(0)
    assert env["cuda"] and env["torch"] and "driver" in env
    for cls in ("gemm", "grouped_gemm", "attention", "memory_bound"):
        assert prof.compute[cls].source.startswith("measured")
    for cls in ("gemm", "moe_layer", "attention", "step"):
        assert prof.validation[cls]["n"] >= 1
    # host copies are their own class: the HBM curve is d2d's, PCIe is links.pcie
    import pandas as pd

    df = pd.read_csv(out.measurements)
    assert set(df[df["op"].isin(["h2d", "d2h"])]["op_class"]) == {"host_copy"}
    assert set(df[df["op"] == "d2d"]["op_class"]) == {"copy"}
    assert prof.hbm(2**28) > 0.3  # a PCIe-dragged curve reads ~0.015
    assert prof.links.pcie is not None and 0.2 < prof.links.pcie.value <= 1
