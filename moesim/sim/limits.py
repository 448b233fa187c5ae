"""How large a run the simulator takes on, checked before it builds anything: a run past these
bounds would take hours or exhaust memory, so it is refused with the field to change.

- ``MAX_CLUSTER_GPUS``: the network builds links per GPU and the gradient groups have dp·cp
  members, so a symmetric run still grows with DP width (DeepSeek-V3 PP 16 on this 2-core
  machine, 2026-12-03: 0.9 s CPU at 2,048 GPUs, 1.3 s at 131,072, 6.2 s and 0.8 GB at
  1,048,576); ``cluster.nodes: 1e9`` was killed for memory at 24 GB.
- ``MAX_LAYER_PASSES``: the event loop costs about ``SECONDS_PER_LAYER_PASS`` per (rank, layer,
  microbatch, forward or backward) simulated (measured on this 2-core machine, 2026-12-03:
  1.2·10⁻⁴ s symmetric; 1.7·10⁻⁴ s full fidelity at 256 GPUs with one process set per rank,
  3.3·10⁻⁴ s at 2048 GPUs on a loaded machine), so the bound is about 17 minutes of CPU.
  Full fidelity on the vector engine (``moesim.sim.vector_engine``: pretraining without expert
  TP) costs ``SECONDS_PER_VECTOR_PASS`` per rank's pass (DeepSeek-V3 PP 16, 120 microbatches,
  zipf routing, 2026-12-04: 1.6·10⁻⁵ s at 256 GPUs, 6.8·10⁻⁶ s at 2048), and its passes are
  bounded by the same CPU time. DeepSeek-V3 on 2048 GPUs at full fidelity (PP 16,
  120 microbatches) is 2·10⁶ passes; 100,000 microbatches on 8,192 GPUs at full fidelity
  6.6·10⁹.
"""

from __future__ import annotations

import math

from moesim.analytic.microbatches import capped_microbatches, n_microbatches
from moesim.sim.vector_engine import vector_applies
from moesim.specs import MoELayerWorkload, Scenario

MAX_CLUSTER_GPUS = 1 << 20  # 1,048,576
MAX_LAYER_PASSES = 5_000_000
SECONDS_PER_LAYER_PASS = 2e-4
SECONDS_PER_VECTOR_PASS = 2e-5


class SimulationTooLarge(ValueError):
    """A run past the simulator's bounds; the message names the field and the fix."""


def layer_passes(s: Scenario, fidelity: str) -> int:
    """Layer forwards and backwards the event loop runs for one step: simulated ranks ×
    microbatches × layers per rank × 2 (× 1.5 when ``microbatches_simulated`` caps the step:
    the extrapolation runs twice)."""
    p = s.parallel
    ranks = s.gpus if fidelity == "full" else p.pp
    if s.workload.stage in ("inference", "collective"):  # their own loops, not layer passes
        return 0
    if isinstance(s.workload, MoELayerWorkload):
        return ranks * 2
    total = n_microbatches(s)
    mbs = total
    cap = s.simulation.microbatches_simulated
    if cap:
        mbs = capped_microbatches(p, total, cap) or total
        if mbs < total:
            mbs = math.ceil(1.5 * mbs)
    layers = math.ceil((s.model.n_layers + s.model.n_encoder_layers) / p.pp)
    return ranks * mbs * layers * 2


def seconds_per_pass(s: Scenario, fidelity: str, vector: bool | None = None) -> float:
    """CPU seconds of one layer pass: ``SECONDS_PER_VECTOR_PASS`` where full fidelity runs on
    the vector engine (``vector``: whether it does, once the context knows; None: where it
    applies), else ``SECONDS_PER_LAYER_PASS``."""
    if vector is None:
        vector = vector_applies(s)
    if fidelity == "full" and vector:
        return SECONDS_PER_VECTOR_PASS
    return SECONDS_PER_LAYER_PASS


def max_layer_passes(s: Scenario, fidelity: str, vector: bool | None = None) -> int:
    """``MAX_LAYER_PASSES``, or as many vector passes as take the same CPU time."""
    per_pass_s = seconds_per_pass(s, fidelity, vector)
    return round(MAX_LAYER_PASSES * SECONDS_PER_LAYER_PASS / per_pass_s)


def estimated_cpu_s(s: Scenario, fidelity: str | None = None) -> float:
    """Seconds of CPU the event loop is expected to take (``seconds_per_pass`` each)."""
    fidelity = fidelity or s.simulation.fidelity
    return layer_passes(s, fidelity) * seconds_per_pass(s, fidelity)


def check_simulation_size(
    s: Scenario, fidelity: str | None = None, vector: bool | None = None
) -> None:
    """Raise ``SimulationTooLarge`` for a cluster past ``MAX_CLUSTER_GPUS`` or a step past
    ``max_layer_passes``; ``vector=False``: full fidelity fell back to one process set per
    rank (``SimContext.vector``: the stage's groups differ), checked again at that cost."""
    fidelity = fidelity or s.simulation.fidelity
    if s.gpus > MAX_CLUSTER_GPUS:
        raise SimulationTooLarge(
            f"cluster: {s.gpus:,} GPUs ({s.cluster.nodes:,} nodes × {s.cluster.gpus_per_node}) "
            f"is past the {MAX_CLUSTER_GPUS:,} GPUs the simulator builds a network for: lower "
            "cluster.nodes (the step time of a data-parallel run barely changes with DP width "
            "past a few thousand GPUs; scale the throughput by the replicas)"
        )
    passes = layer_passes(s, fidelity)
    bound = max_layer_passes(s, fidelity, vector)
    if passes <= bound:
        return
    per_pass_s = seconds_per_pass(s, fidelity, vector)
    minutes = passes * per_pass_s / 60
    ranks = (
        f"{s.gpus:,} ranks (simulation.fidelity: full)"
        if fidelity == "full"
        else (f"{s.parallel.pp} ranks")
    )
    fixes = ["set simulation.microbatches_simulated (e.g. 64: the step is extrapolated)"]
    if fidelity == "full":
        fixes.insert(0, "use symmetric fidelity (simulation.fidelity or --fidelity)")
    raise SimulationTooLarge(
        f"simulation: {passes:,} layer passes ({ranks} × {n_microbatches(s):,} microbatches "
        f"× layers × forward/backward) is past the bound of {bound:,} (about "
        f"{minutes:,.0f} CPU minutes at {per_pass_s * 1e6:.0f} µs each): "
        f"{', or '.join(fixes)}; or fewer microbatches (workload.global_batch, "
        "parallel.microbatch_size)"
    )
