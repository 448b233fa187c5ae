"""The MoE side of a simulation context: the expert-parallel dispatch and combine timed alone on
the links, and the routing-draw tables each MoE layer reads per microbatch.

Timing: a copy matrix's all-to-all (direct, or hierarchical over NVLink domains:
``dispatch_traffic.dispatch_pattern``), the all-gather dispatcher's all-gather and
reduce-scatter, and a batch of skewed destination loads from the balanced pattern plus the
change in the bottleneck link's load (``skewed_a2a_s``). Draws: the symmetric fidelity draws
each stage's EP group once per (MoE layer, microbatch) and keeps the busiest rank's load; full
fidelity reads each group's table (``moesim.sim.full_draws``), the vector engine its stage's
(``moesim.sim.vector_stage``).

``MoEDrawTables`` is a mixin of ``SimContext`` (``moesim.sim.context``): callers keep asking
the context (``ctx.moe_draw(...)``, ``ctx.a2a_s(...)``). It lives apart because it is the one
part of the context that knows about routing; it reads the context's network (``topo``,
``timer``, ``shape``, ``all_gather_s``, ``reduce_scatter_s``), grid (``ep_group``) and routing
sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from moesim.sim import vector_stage
from moesim.sim.collectives import (
    Collective,
    all_to_all_direct,
    all_to_all_hierarchical,
    all_to_all_unit_link_loads,
    reversed_collective,
)
from moesim.sim.dispatch_traffic import DispatchPattern, allgather_bytes_per_token, dispatch_pattern
from moesim.sim.full_draws import group_draws

if TYPE_CHECKING:
    from moesim.sim.collective_timing import CollectiveTimer
    from moesim.sim.grid import Grid
    from moesim.sim.network import Topology
    from moesim.sim.routing_load import RoutingSampler
    from moesim.specs import ModelSpec, MoESpec, ParallelSpec, Precision, Scenario


@dataclass
class MoEDraw:
    """Load of one MoE layer for one microbatch as one rank sees it."""

    expert_copies: float  # copies this rank's experts process (symmetric: the group's max)
    # alone-on-the-link times. The dispatch's (``precision.dispatch``) is also the combine's
    # backward (gradients to the experts: same direction and, per DeepSeek-V3 §3.3, the same
    # fp8), the combine's (``precision.combine``) also the dispatch's backward
    dispatch_s: float
    combine_s: float
    dropped: float = 0.0
    offered: float = 0.0


class MoEDrawTables:
    """The MoE all-to-all timing and routing draws of a ``SimContext`` (a mixin: the context
    sets what is declared here, and calls ``_init_moe_draws`` before any draw)."""

    scenario: Scenario
    model: ModelSpec
    parallel: ParallelSpec
    precision: Precision
    moe: MoESpec | None
    topo: Topology
    timer: CollectiveTimer
    grid: Grid
    dispatcher: str
    sampler: RoutingSampler
    fidelity: str
    tokens: float
    microbatches: int
    vector: bool | None
    dropped_copies: float
    offered_copies: float

    def _init_moe_draws(self) -> None:
        """The draw tables and per-group caches (``full_draws`` and ``vector_stage`` keep their
        tables in ``_draws`` and ``_load_matrices`` too, under keys of their own)."""
        self._draws: dict[object, object] = {}  # stage (symmetric) or ("full", group)
        self._patterns: dict[tuple[int, ...], DispatchPattern] = {}
        self._load_matrices: dict[tuple, np.ndarray] = {}
        # rows per MoE layer of a symmetric table: microbatch mb reads row mb mod this
        # (DualPipe's mirror halves it: both directions' i-th microbatch read row i)
        self.draw_microbatches = self.microbatches

    @property
    def tokens_moe(self) -> int:
        """Tokens one rank routes per microbatch (sequence-parallel shard of T)."""
        return max(1, round(self.tokens / self.parallel.tp))

    def pattern(self, group: tuple[int, ...]) -> DispatchPattern:
        pat = self._patterns.get(group)
        if pat is None:
            pat = self._patterns[group] = self._pattern(group)
        return pat

    def _pattern(self, group: tuple[int, ...]) -> DispatchPattern:
        domains = len({self.topo.domain_of(g) for g in group})
        return dispatch_pattern(self.scenario, domains, self.dispatcher)

    def allgather_s(
        self, group: tuple[int, ...], tokens_per_member: float, payload_bytes: float, kind: str
    ) -> float:
        """The all-gather dispatcher: a dispatch (``kind`` "dispatch...") is an all-gather of
        every member's tokens (hidden state of ``payload_bytes`` per element, routing map,
        probabilities), a combine the reduce-scatter of the outputs; independent of where the
        tokens go."""
        dispatch = kind.startswith("dispatch")
        row_b = allgather_bytes_per_token(self.scenario, payload_bytes, dispatch)
        buffer_b = len(group) * tokens_per_member * row_b
        if dispatch:
            return self.all_gather_s(group, buffer_b)
        return self.reduce_scatter_s(group, buffer_b)

    def a2a_collective(
        self, group: tuple[int, ...], copies_RR: np.ndarray, bytes_per_copy: float, kind: str
    ) -> Collective:
        """The dispatch (``kind`` "dispatch...") or combine of a copy matrix: ``copies_RR[i, j]``
        (token, expert) copies member i routes to experts on member j."""
        pat = self.pattern(group)
        mat = (copies_RR * bytes_per_copy * pat.gpu_dedup).tolist()
        if not pat.hierarchical:
            c = all_to_all_direct(group, mat, kind)
        else:
            node_of = [self.topo.domain_of(g) for g in group]  # NVLink domains
            rdma = []
            for i in range(len(group)):
                per_node: dict[int, float] = {}
                for j, nd in enumerate(node_of):
                    per_node[nd] = per_node.get(nd, 0.0) + copies_RR[i, j] * bytes_per_copy
                rdma.append({nd: b * pat.node_dedup for nd, b in per_node.items()})
            c = all_to_all_hierarchical(self.topo, group, mat, rdma, kind)
        return reversed_collective(c, kind) if kind.startswith("combine") else c

    def a2a_s(
        self, group: tuple[int, ...], copies_RR: np.ndarray, bytes_per_copy: float, kind: str
    ) -> float:
        """Alone time of a dispatch (``kind`` "dispatch") or combine of a copy matrix."""
        key = ("a2a", kind, self.shape(group), bytes_per_copy, copies_RR.tobytes())
        return self.timer.time_s(
            key, lambda: self.a2a_collective(group, copies_RR, bytes_per_copy, kind)
        )

    def _a2a_load_matrix(
        self, group: tuple[int, ...], bytes_per_copy: float, kind: str
    ) -> np.ndarray:
        """``A[j, l]``: seconds of link l's capacity taken per copy routed to member j (sources
        alike); cached per group shape. Links that load alike (the same column: every
        member's NVLink port into a node, say) are kept once, as only the busiest link is read
        (DeepSeek-V3's EP 64 over 8 nodes: 144 of 256 columns, 1.5 → 0.9 ms per einsum of a
        stage's draws)."""
        key = ("a2a-load", kind, self.shape(group), bytes_per_copy)
        hit = self._load_matrices.get(key)
        if hit is None:
            a = self.a2a_link_loads(group, bytes_per_copy, kind)
            _, first = np.unique(a, axis=1, return_index=True)
            hit = self._load_matrices[key] = np.ascontiguousarray(a[:, np.sort(first)])
        return hit

    def a2a_link_loads(
        self, group: tuple[int, ...], bytes_per_copy: float, kind: str
    ) -> np.ndarray:
        """``A[j, l]`` over every link ``l`` the group's dispatch (or combine) crosses."""
        pat = self.pattern(group)
        links, rows = all_to_all_unit_link_loads(
            self.topo,
            group,
            pat.hierarchical,
            bytes_per_copy * pat.gpu_dedup,
            bytes_per_copy * pat.node_dedup,
            reverse=kind.startswith("combine"),
        )
        inv_cap = np.array([1.0 / self.topo.capacity_Bps[link] for link in links])
        return np.array(rows).reshape(len(group), -1) * inv_cap

    def skewed_a2a_s(
        self,
        group: tuple[int, ...],
        dest_copies_NR: np.ndarray,
        balanced_copies: float,
        bytes_per_copy: float,
        kind: str,
    ) -> np.ndarray:
        """Alone times of dispatches (or combines) whose destinations receive
        ``dest_copies_NR[n]`` copies, sources alike. The balanced pattern (``balanced_copies``
        per member) is timed once by the network mode; each draw adds the change in its
        bottleneck link's load over capacity (the alpha–beta bandwidth term, which equals the
        flow time of these rank-one patterns: tests/sim check both against full fidelity)."""
        ep = len(group)
        pat = self.pattern(group)
        if pat.allgather:
            width_b = bytes_per_copy / self.model.d_model
            t = self.allgather_s(group, balanced_copies / self.moe.top_k, width_b, kind)
            return np.full(len(dest_copies_NR), t)
        bal = np.full((ep, ep), balanced_copies / ep)
        np.fill_diagonal(bal, 0.0)
        base_s = self.a2a_s(group, bal, bytes_per_copy, kind)
        a = self._a2a_load_matrix(group, bytes_per_copy, kind)
        if a.size == 0:
            return np.full(len(dest_copies_NR), base_s)
        beta_bal_s = float((np.full(ep, balanced_copies) @ a).max())
        # single-threaded einsum on floats: the draws are integer counts, and on a (960, 64)
        # × (64, 256) product einsum took 10.8 ms on ints, 3.1 ms on floats; BLAS's matmul 0.45
        # ms of wall time but more CPU time in its threads (this 2-core machine, 2026-12-01)
        loads = np.asarray(dest_copies_NR, dtype=float)
        beta_N_s = np.einsum("nr,rl->nl", loads, a).max(axis=1)
        return np.maximum(base_s + beta_N_s - beta_bal_s, 0.0)

    def _symmetric_table(
        self, group: tuple[int, ...], n: int, stage: int, disp_b: float, comb_b: float
    ) -> list[MoEDraw]:
        """One draw of the stage's EP group per (MoE layer, microbatch): the most loaded rank
        sets the expert time, and the load on the busiest link sets the all-to-all's."""
        ep = len(group)
        draws = self.sampler.draw_group(n, self.tokens_moe, stage)
        self.dropped_copies += float(draws.dropped_N.sum())
        self.offered_copies += float(draws.offered_N.sum())
        load = draws.rank_load_NR if ep > 1 else draws.copies_NE.sum(axis=1, keepdims=True)
        max_load = load.max(axis=1)
        offered = self.tokens_moe * self.moe.top_k
        dispatch_N = self.skewed_a2a_s(group, load, offered, disp_b, "dispatch")
        combine_N = self.skewed_a2a_s(group, load, offered, comb_b, "combine")
        return [
            MoEDraw(float(mx), float(d), float(c))
            for mx, d, c in zip(max_load.tolist(), dispatch_N, combine_N, strict=True)
        ]

    def moe_draw(self, gpu: int, moe_index: int, mb: int, n_moe_on_stage: int) -> MoEDraw:
        """Expert load and all-to-all times of one MoE layer (``moe_index``-th on the stage)
        for microbatch ``mb``, as rank ``gpu`` sees them."""
        stage, _ = self.grid.coords(gpu)
        if self.fidelity != "full":
            rows = self.draw_microbatches
            table = self._draws.get(stage)
            if table is None:
                table = self._draws[stage] = self._symmetric_table(
                    self.ep_group(gpu),
                    n_moe_on_stage * rows,
                    stage,
                    self.model.d_model * self.precision.dispatch_bytes,
                    self.model.d_model * self.precision.combine_bytes,
                )
            return table[moe_index * rows + mb % rows]
        idx = moe_index * self.microbatches + mb
        group = self.ep_group(gpu)
        n = n_moe_on_stage * self.microbatches
        disp_b = self.model.d_model * self.precision.dispatch_bytes
        comb_b = self.model.d_model * self.precision.combine_bytes
        if self.vector:
            return vector_stage.stage_draw(self, stage, idx, n, disp_b, comb_b)
        table = self._draws.get(("full", group))
        if table is None:
            table = self._draws[("full", group)] = group_draws(
                self, group, n, stage, disp_b, comb_b
            )
        return MoEDraw(
            expert_copies=float(table.received_NR[idx, self.grid.ep_rank(gpu)]),
            dispatch_s=float(table.dispatch_N[idx]),
            combine_s=float(table.combine_N[idx]),
        )
