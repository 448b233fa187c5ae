"""Device names map to catalog GPUs (whose datasheet peaks are the efficiencies' denominators);
measured rows carry the declared columns."""

import pytest

from moesim.calibrate.device import catalog_gpu_id, cpu_device_spec
from moesim.calibrate.records import COLUMNS, row
from moesim.calibrate.timing import Timing
from moesim.catalog import gpu_ids
from moesim.specs import GPUSpec


@pytest.mark.parametrize(
    ("name", "gpu_id"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", None),  # other peaks, no catalog entry: not mapped to SXM
        ("NVIDIA H100 NVL", None),
        ("NVIDIA H200", "h200-sxm"),
        ("NVIDIA H800", "h800-sxm"),
        ("NVIDIA A100-SXM4-80GB", "a100-sxm-80gb"),
        ("NVIDIA A100-SXM4-40GB", None),
        ("NVIDIA B200", "b200"),
        ("AMD Instinct MI300X", "mi300x"),
        ("Tesla T4", None),
    ],
)
def test_catalog_gpu_id(name, gpu_id):
    assert catalog_gpu_id(name) == gpu_id
    if gpu_id:
        assert gpu_id in gpu_ids()


def test_cpu_device_spec_is_a_gpuspec_of_the_measured_rates():
    spec = GPUSpec.model_validate(
        cpu_device_spec("Xeon", 3e11, 6e11, 5e10, 2e9, 16.0, "2026-01-01")
    )
    assert spec.peak_TFLOPS("fp32") == pytest.approx(0.3)
    assert spec.peak_TFLOPS("bf16") == pytest.approx(0.6)
    assert spec.hbm_TBps == pytest.approx(0.05)
    assert spec.intra_node.bandwidth_GBps == pytest.approx(2.0)
    assert "measured" in spec.source


def test_row_has_every_column_and_rejects_unknown_shapes():
    r = row("cpu", "gemm", "gemm", "fp32", Timing(1.0, 0.5, 2.0, 7), flops=8.0, m=2, n=2, k=2)
    assert list(r) == list(COLUMNS)
    assert r["pass"] == "fwd" and r["repeats"] == 7 and r["m"] == 2
    with pytest.raises(ValueError):
        row("cpu", "gemm", "gemm", "fp32", Timing(1, 1, 1, 1), q=3)
