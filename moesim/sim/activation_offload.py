"""Activation offload to host memory (``parallel.activation_offload_layers``) in the simulated
step: the PCIe copies after a layer's forward and before its backward."""

from __future__ import annotations

import simpy

from moesim.analytic.activation_memory import activation_bytes_per_token, offloaded_layers
from moesim.sim.context import SimContext
from moesim.sim.engine import Rank


class ActivationOffload:
    """Activations of ``parallel.activation_offload_layers`` layers per chunk copied to host
    memory after their forward and back before their backward (Transformer Engine's CPU
    offload, which Megatron-Core's --cpu-offloading drives): each copy runs on its own stream
    (``d2h``, ``h2d``) over the GPU's PCIe link at ``pcie_GBps`` times the profile's PCIe
    fraction, overlapped with compute; a layer's copy back starts when the backward of the
    layer after it starts (one layer of prefetch), and its backward waits for it. What a copy
    does not hide shows as exposed ``offload`` time."""

    def __init__(self, ctx: SimContext):
        self.ctx = ctx
        p = ctx.parallel
        self.layers = {i for st in ctx.stages for i in offloaded_layers(p, st)}
        self._d2h: dict[tuple[int, int, int], simpy.Process] = {}
        self._h2d: dict[tuple[int, int, int], simpy.Process] = {}
        self.copy_s: dict[int, float] = {}
        if not self.layers:
            return
        m, prec = ctx.model, ctx.precision
        pcie_Bps = ctx.scenario.cluster.gpu.pcie_GBps * 1e9 * ctx.cm.link_fraction("pcie")
        moe = {i for st in ctx.stages for i in st.moe_layers}
        for i in self.layers:
            per_token = activation_bytes_per_token(
                m, i in moe, p, p.recompute, prec.activation_bytes, prec.cached_gemm_input_bytes
            )
            self.copy_s[i] = per_token * ctx.tokens / pcie_Bps

    def after_forward(self, rank: Rank, layer: int, mb: int) -> None:
        if layer in self.layers:
            copy = rank.comm("d2h", "offload_d2h", "offload", self.copy_s[layer], "pcie_d2h")
            self._d2h[(rank.gpu, layer, mb)] = rank.start(copy)

    def _copy_back(self, rank: Rank, layer: int, mb: int):
        yield self._d2h.pop((rank.gpu, layer, mb))  # on the host before it can come back
        yield from rank.comm("h2d", "offload_h2d", "offload", self.copy_s[layer], "pcie_h2d")

    def before_backward(self, rank: Rank, layer: int, mb: int):
        if not self.layers:
            return
        key = (rank.gpu, layer, mb)
        if layer - 1 in self.layers and (rank.gpu, layer - 1, mb) in self._d2h:
            prefetch = rank.start(self._copy_back(rank, layer - 1, mb))
            self._h2d[(rank.gpu, layer - 1, mb)] = prefetch
        if layer in self.layers:
            proc = self._h2d.pop(key, None) or rank.start(self._copy_back(rank, layer, mb))
            yield proc
