"""How busy each phase of a post-training step keeps its GPUs: MFU and MBU per phase.

- ``mfu``: the phase's model FLOPs on one of its GPUs over its time × the GPU's dense bf16
  peak (the step's ``mfu`` convention, per phase: forward-only phases count the forward, a
  training phase 3× it, the rollout the forward of every generated sequence).
- ``mbu``: the HBM bytes the phase must move on one GPU over its time × the GPU's HBM
  bandwidth: the rollout's weight and KV reads (``rl_rollout``), the weight sync's conversion
  pass, GAE's scan, and for forward/backward passes the weight shard read per microbatch
  (``rl_phases.pass_work_per_gpu``). Activations are not counted, so for a pass it is a floor.
- Host copies (sleep/wake, optimizer offload) move no HBM bytes of their own worth a ratio
  here (they are PCIe-bound) and do no FLOPs: both are 0.

Each phase is measured over its own full time on its own GPUs, before any overlap
(``rl_schedule``: an off-policy rollout is measured over the whole generation).
"""

from __future__ import annotations

from moesim.sim.rl_phases import Phase
from moesim.specs import Scenario


def phase_utilization(s: Scenario, phases: list[Phase]) -> dict[str, dict[str, float]]:
    """``{phase: {mfu, mbu}}`` for the phases that take time."""
    gpu = s.cluster.gpu
    peak_flops = gpu.peak_TFLOPS("bf16") * 1e12
    peak_Bps = gpu.hbm_TBps * 1e12
    out: dict[str, dict[str, float]] = {}
    for ph in phases:
        if ph.time_s <= 0:
            continue
        out[ph.name] = {
            "mfu": ph.flops_per_gpu / (ph.time_s * peak_flops),
            "mbu": ph.hbm_bytes_per_gpu / (ph.time_s * peak_Bps),
        }
    return out
