"""ZeRO-3 parameter gathering (Rajbhandari et al. 2020, §5.3 and §7): every rank keeps 1/N of
the parameters and gathers a layer's parameters before its forward and again before its
backward, so a step moves 3Ψ per rank instead of ZeRO-1/2's 2Ψ (all-gather Ψ for the forward,
Ψ for the backward, reduce-scatter Ψ of the gradients).

- Non-expert parameters gather over the dp·cp group, expert parameters over the
  expert-data-parallel group, in parameter precision (bf16), on the ``dp`` stream.
- Prefetch one layer ahead: when a layer's gather has arrived, the next layer's (the following
  layer in the forward, the preceding one in the backward) is issued, so it runs under the
  current layer's compute. The first layer of a chunk waits for its own gather.
- Per microbatch: with several microbatches each one gathers again (FSDP's reshard after
  forward), so the gathers grow with the microbatch count while the gradient reduce-scatter
  (``GradBuckets``, per bucket as the last backward goes) does not.
- The parameters outside the layers (embedding, LM head, final norm, MTP) gather with the first
  layer of their chunk in each direction, so nothing is gathered at the step's start or end.
- A full recomputation's forward runs on the parameters gathered for the backward.
"""

from __future__ import annotations

from itertools import pairwise

import simpy

from moesim.sim.context import SimContext
from moesim.sim.engine import Rank
from moesim.sim.grad_sync import param_all_gather, stage_params_on_rank


class Zero3Gather:
    """Per-layer parameter all-gathers of every simulated rank, with one-layer prefetch."""

    def __init__(self, ctx: SimContext):
        self.ctx = ctx
        self.inflight: dict[tuple, simpy.Process] = {}
        self.after: dict[tuple[int, str], int] = {}  # (layer, "f"|"b") -> layer gathered next
        self.extra: dict[tuple[int, str], float] = {}  # non-layer params gathered with a layer
        for st in ctx.stages:
            for c, layers in enumerate(st.chunks):
                if not layers:
                    continue
                for a, b in pairwise(layers):
                    self.after[(a, "f")], self.after[(b, "b")] = b, a
                dense, _ = stage_params_on_rank(ctx, st.rank, c)
                outside = dense - sum(ctx.layers[i].non_expert_params for i in layers)
                self.extra[(layers[0], "f")] = outside
                self.extra[(layers[-1], "b")] = outside

    def before(self, rank: Rank, layer: int, mb: int, phase: str):
        """Wait for ``layer``'s parameters (``phase`` "f" forward, "b" backward), then prefetch
        the next layer's."""
        proc = self.inflight.pop((rank.gpu, layer, mb, phase), None)
        if proc is None:
            proc = self._start(rank, layer, mb, phase)
        yield proc
        nxt = self.after.get((layer, phase))
        if nxt is not None:
            self.inflight[(rank.gpu, nxt, mb, phase)] = self._start(rank, nxt, mb, phase)

    def _start(self, rank: Rank, layer: int, mb: int, phase: str) -> simpy.Process:
        lc = self.ctx.layers[layer]
        dense = lc.non_expert_params + self.extra.get((layer, phase), 0.0)
        return rank.start(
            param_all_gather(self.ctx, rank, dense, lc.expert_params, ("z3", layer, mb, phase))
        )
