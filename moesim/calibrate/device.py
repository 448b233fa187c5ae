"""What is being calibrated: the device's name, its catalog GPU id, software versions, and for
the CPU a measured device spec (the CPU has no datasheet peak that its kernels are held to).

A CUDA GPU is mapped from ``torch.cuda.get_device_name()`` to a catalog id (``h100-sxm`` …)
whose datasheet dense peak and HBM bandwidth are the denominators of the efficiencies. The CPU
gets ``calibration/cpu.device.yaml``: a GPUSpec-shaped file whose peak is the best GEMM rate
measured and whose "HBM" bandwidth is the best copy bandwidth measured, on this host on this
date, so that efficiencies on the CPU are fractions of what this host was seen to reach.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# (pattern in torch.cuda.get_device_name(), catalog id); the first match wins. PCIe and NVL
# variants of H100 have other peaks and no catalog entry, so they are not mapped to SXM.
_GPU_IDS = (
    (r"H100.*(PCIe|NVL)", None),
    (r"H100", "h100-sxm"),
    (r"H200", "h200-sxm"),
    (r"H800", "h800-sxm"),
    (r"A100.*80GB", "a100-sxm-80gb"),
    (r"B200", "b200"),
    (r"MI300X", "mi300x"),
)


def catalog_gpu_id(device_name: str) -> str | None:
    """The catalog id of a CUDA device name, or None when the catalog has no match."""
    for pattern, gpu_id in _GPU_IDS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return gpu_id
    return None


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _nccl_version() -> str | None:
    import torch

    try:
        v = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(map(str, v)) if isinstance(v, tuple | list) else str(v)


@dataclass
class DeviceInfo:
    """The device a calibration ran on; ``profile_id`` names its files in calibration/."""

    kind: str  # "cpu" | "cuda"
    name: str  # "NVIDIA H100 80GB HBM3", or the CPU model
    profile_id: str  # catalog GPU id for CUDA, "cpu" for the CPU
    count: int  # GPUs present (CUDA), CPU cores (CPU)
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def torch_device(self) -> str:
        return "cuda" if self.kind == "cuda" else "cpu"

    @property
    def dtype(self) -> str:
        """The dtype whose efficiencies the profile holds: bf16 on GPUs, fp32 on the CPU
        (what training on each runs its GEMMs in)."""
        return "bf16" if self.kind == "cuda" else "fp32"


def detect(kind: str, gpu_id: str | None = None) -> DeviceInfo:
    """Describe the device of ``kind`` ('cpu' or 'cuda'); ``gpu_id`` overrides the mapping."""
    import torch

    env: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host_cpu": cpu_model_name(),
        "cpu_threads": torch.get_num_threads(),
        "os": f"{platform.system()} {platform.release()}",
    }
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: torch sees no CUDA GPU (torch.cuda.is_available())")
        name = torch.cuda.get_device_name(0)
        pid = gpu_id or catalog_gpu_id(name)
        if pid is None:
            raise RuntimeError(
                f"no catalog GPU matches {name!r}: pass --gpu-id with a catalog id "
                "(moesim/catalog/gpus) so efficiencies have a datasheet peak"
            )
        cap = torch.cuda.get_device_capability(0)
        env.update(
            device_name=name,
            cuda=torch.version.cuda,
            driver=_driver_version(),
            compute_capability=f"{cap[0]}.{cap[1]}",
            cudnn=torch.backends.cudnn.version(),
            nccl=_nccl_version(),
        )
        return DeviceInfo("cuda", name, pid, torch.cuda.device_count(), env)
    if kind != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {kind!r}")
    name = cpu_model_name()
    env.update(device_name=name, cores=os.cpu_count())
    return DeviceInfo("cpu", name, gpu_id or "cpu", os.cpu_count() or 1, env)


def cpu_device_spec(
    name: str,
    fp32_flops_per_s: float,
    bf16_flops_per_s: float | None,
    copy_bytes_per_s: float,
    link_bytes_per_s: float | None,
    memory_GB: float,
    date: str,
) -> dict[str, Any]:
    """A GPUSpec-shaped dict for the CPU: peaks and bandwidths as measured on this host."""
    intra = (link_bytes_per_s or copy_bytes_per_s) / 1e9
    return {
        "name": "cpu",
        "source": (
            f"measured on this host ({name}) on {date} by moesim calibrate: fp32/bf16 peak = the "
            "best GEMM rate measured, hbm_TBps = the best copy bandwidth (read + write) "
            "measured, intra_node bandwidth = the best gloo all-reduce bus bandwidth measured "
            "between processes; not a datasheet"
        ),
        "bf16_TFLOPS": (bf16_flops_per_s or fp32_flops_per_s) / 1e12,
        "fp32_TFLOPS": fp32_flops_per_s / 1e12,
        "hbm_GB": memory_GB,
        "hbm_TBps": copy_bytes_per_s / 1e12,
        "pcie_GBps": copy_bytes_per_s / 1e9,
        "intra_node": {"bandwidth_GBps": intra, "latency_us": 0.0, "kind": "gloo"},
        "gpus_per_node": 1,
    }


def total_memory_GB() -> float:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return round(pages / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        return 16.0


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "tf32": "float32"}


def torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def bytes_per_element(name: str) -> int:
    return {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}[name]
