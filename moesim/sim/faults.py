"""Stragglers in the simulated step: which rank runs slow, and how much (``faults`` in the
scenario, ``moesim.specs.faults``).

A fault becomes two numbers on a simulated ``Rank`` (``moesim.sim.engine``):

- ``compute_factor``: every kernel of the rank's compute stream takes this many times as long
  (a slow GPU: throttled clocks, a degraded HBM stack; GEMMs and memory-bound kernels alike).
- ``link_factor[link]``: every collective the rank runs on that link class takes this many
  times as long alone on the link (bandwidth / factor; latency scaled with it, a small
  overstatement for the latency-bound sizes).

Who takes the fault:

- **full fidelity**: the faulty rank itself. Its delay reaches its peers through the
  rendezvous: a collective starts when its last member arrives, so a slow GPU holds up every
  group it is in. A collective runs at the pace of its slowest member's link: each member
  brings its link factor to the rendezvous and all take the largest (a ring or an all-to-all
  moves at the speed of its slowest link). Point-to-point pipeline sends, which have no
  rendezvous, see the sender's link only.
- **symmetric fidelity**: one rank stands for its whole pipeline stage, so it takes the
  largest factor of any GPU of its stage. That is the step of a synchronous stage whose ranks
  meet at every TP / EP / DP collective: each one waits for the slowest before going on, so the
  slowest sets the pace. Ranks that meet the straggler only at the gradient reduce hide part
  of its delay under full fidelity, so symmetric can be slightly slower; tests/sim check the
  two agree within 3% on a dense and an MoE step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moesim.sim.grid import Grid
from moesim.specs import Scenario


@dataclass(frozen=True)
class RankFaults:
    compute_factor: float = 1.0
    link_factor: dict[str, float] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.compute_factor == 1.0 and not self.link_factor


HEALTHY = RankFaults()


def _gpu_faults(s: Scenario, gpu: int) -> RankFaults:
    """The faults on one GPU: the largest factor of each kind that names it (or its node)."""
    gpn = s.cluster.gpus_per_node or 1
    compute = 1.0
    links: dict[str, float] = {}
    for f in s.faults:
        if f.kind == "slow_gpu":
            if f.rank == gpu:
                compute = max(compute, f.factor)
        elif f.rank == gpu or (f.node is not None and f.node == gpu // gpn):
            links[f.link] = max(links.get(f.link, 1.0), f.factor)
    return RankFaults(compute, {k: v for k, v in links.items() if v > 1.0})


def rank_faults(s: Scenario, grid: Grid, gpu: int, fidelity: str) -> RankFaults:
    """What simulated rank ``gpu`` carries: its own faults (full fidelity), or the largest of
    its pipeline stage's (symmetric: it stands for the stage)."""
    if not s.faults:
        return HEALTHY
    if fidelity == "full":
        return _gpu_faults(s, gpu)
    stage, _ = grid.coords(gpu)
    compute = 1.0
    links: dict[str, float] = {}
    for q in range(grid.stage_size):
        rf = _gpu_faults(s, grid.gpu(stage, q))
        compute = max(compute, rf.compute_factor)
        for k, v in rf.link_factor.items():
            links[k] = max(links.get(k, 1.0), v)
    return RankFaults(compute, links)


def fault_label(rf: RankFaults) -> str:
    """A suffix for the rank's name in the trace: ' [slow gpu ×1.5, slow network ×2]'."""
    if rf.healthy:
        return ""
    parts = [f"slow gpu ×{rf.compute_factor:g}"] if rf.compute_factor > 1.0 else []
    parts += [f"slow {k} ×{v:g}" for k, v in sorted(rf.link_factor.items())]
    return " [" + ", ".join(parts) + "]"
