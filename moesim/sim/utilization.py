"""How busy a step keeps the GPUs' tensor cores: MFU against two peaks, and HFU.

- ``mfu``: model FLOPs per step (forward + backward = 3x the forward, recomputation not
  counted, attention included) over step time x GPUs x the GPU's dense **bf16** peak: the
  PaLM / Megatron convention (Chowdhery et al. 2022, App. B), comparable across recipes.
- ``mfu_compute_dtype``: the same FLOPs over the peak of the scenario's compute dtype (an fp8
  recipe against the fp8 peak, twice bf16's on Hopper); equal to ``mfu`` for bf16.
- ``hfu``: hardware FLOPs (model FLOPs plus what recomputation repeats in the backward) over
  the bf16 peak (Korthikanti et al. 2022 §6: "hardware FLOPs utilization"), so ``hfu >= mfu``.
"""

from __future__ import annotations

from moesim.specs import Scenario


def utilization(
    s: Scenario,
    model_flops_per_token: float,
    recompute_flops_per_token: float,
    tokens_per_s_per_gpu: float,
) -> dict[str, float]:
    """``model_tflops_per_gpu``, ``mfu``, ``mfu_compute_dtype`` and ``hfu`` of a step."""
    gpu = s.cluster.gpu
    achieved = model_flops_per_token * tokens_per_s_per_gpu  # model FLOP/s per GPU
    hardware = (model_flops_per_token + recompute_flops_per_token) * tokens_per_s_per_gpu
    bf16_peak = gpu.peak_TFLOPS("bf16") * 1e12
    compute_peak = gpu.peak_TFLOPS(s.precision.compute) * 1e12
    return {
        "model_tflops_per_gpu": achieved / 1e12,
        "mfu": achieved / bf16_peak,
        "mfu_compute_dtype": achieved / compute_peak,
        "hfu": hardware / bf16_peak,
    }
