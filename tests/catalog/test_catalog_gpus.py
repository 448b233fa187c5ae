"""Every catalog GPU: loads, cites a source, and holds self-consistent datasheet figures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moesim import catalog
from moesim.catalog import CatalogError, gpu_ids, load_gpu
from moesim.specs import GPUSpec

GPUS = gpu_ids()


def test_the_catalog_has_the_common_gpus() -> None:
    for required in ("a100-sxm-80gb", "h100-sxm", "h200-sxm", "b200"):
        assert required in GPUS


@pytest.mark.parametrize("gpu_id", GPUS)
def test_gpu_loads_with_its_id_as_name_and_a_source(gpu_id: str) -> None:
    g = load_gpu(gpu_id)
    assert isinstance(g, GPUSpec)
    assert g.name == gpu_id
    assert g.source.strip(), f"{gpu_id} cites no source"


@pytest.mark.parametrize("gpu_id", GPUS)
def test_gpu_peaks_are_ordered(gpu_id: str) -> None:
    """Dense peaks: fp32 < bf16 ≤ fp8 (where the GPU has fp8 tensor cores)."""
    g = load_gpu(gpu_id)
    assert g.fp32_TFLOPS < g.bf16_TFLOPS
    if g.fp8_TFLOPS is not None:
        assert g.bf16_TFLOPS <= g.fp8_TFLOPS
    assert g.peak_TFLOPS("bf16") == g.bf16_TFLOPS


@pytest.mark.parametrize("gpu_id", GPUS)
def test_gpu_memory_and_links_are_positive(gpu_id: str) -> None:
    g = load_gpu(gpu_id)
    assert g.hbm_GB > 0 and g.hbm_TBps > 0
    assert g.intra_node.bandwidth_GBps > 0
    assert g.inter_node.node_bandwidth_GBps > 0


def test_h100_dense_bf16_peak_is_half_the_sparse_datasheet_figure() -> None:
    assert load_gpu("h100-sxm").bf16_TFLOPS == pytest.approx(1979 / 2, rel=1e-3)


def test_a100_has_no_fp8_and_falls_back_to_bf16() -> None:
    g = load_gpu("a100-sxm-80gb")
    assert g.fp8_TFLOPS is None
    assert g.peak_TFLOPS("fp8") == g.bf16_TFLOPS


def test_unknown_gpu_id_lists_close_matches() -> None:
    with pytest.raises(CatalogError, match=r"unknown gpu id 'h100-sxn'\. Did you mean: h100-sxm"):
        load_gpu("h100-sxn")


@pytest.mark.parametrize("gpu_id", GPUS)
def test_hbm_is_the_figure_the_device_reports_in_1e9_bytes(gpu_id: str) -> None:
    """hbm_GB is the memory.total its comment quotes (MiB from nvidia-smi, bytes from
    rocm-smi) in 1e9 bytes, a little above the datasheet's GiB-counted "GB" figure."""
    text = (Path(catalog.__file__).parent / "gpus" / f"{gpu_id}.yaml").read_text()
    mib = re.search(r"memory\.total of an [^,]+, (\d+) MiB", text)
    raw = re.search(r"VRAM Total Memory (\d+) B", text)
    assert mib or raw, f"{gpu_id}: no device-reported memory quoted beside hbm_GB"
    reported_B = int(mib.group(1)) * 2**20 if mib else int(raw.group(1))
    assert load_gpu(gpu_id).hbm_GB == pytest.approx(reported_B / 1e9, abs=0.005)
    datasheet_GB = float(re.search(r'the datasheet\'s "(\d+) GB"', text).group(1))
    assert datasheet_GB < load_gpu(gpu_id).hbm_GB <= datasheet_GB * 2**30 / 1e9 * 1.001
