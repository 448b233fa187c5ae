"""Everything one simulation run shares: the scenario, the cost model, the network and its
collective timer, the rank grid, the SimPy environment and its ranks, and the routing draws.

Stage programs (``training_step``, ``moe_layer``) read op times from here, so the same pieces
(a layer's forward, its backward, the MoE block, a pipeline pass) serve every workload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import simpy

from moesim.analytic.dispatch import comm_sm_slowdown, resolve_dispatcher
from moesim.analytic.flops import token_flops
from moesim.analytic.layout import StageLayout, stage_layouts
from moesim.analytic.params import count_params
from moesim.sim import vector_stage
from moesim.sim.collective_timing import CollectiveTimer
from moesim.sim.collectives import (
    Collective,
    all_gather,
    all_to_all_direct,
    all_to_all_hierarchical,
    all_to_all_unit_link_loads,
    reduce_scatter,
    reversed_collective,
)
from moesim.sim.costmodel import CostModel
from moesim.sim.dispatch_traffic import DispatchPattern, allgather_bytes_per_token, dispatch_pattern
from moesim.sim.engine import Rank, Rendezvous
from moesim.sim.faults import fault_label, rank_faults
from moesim.sim.full_draws import group_draws
from moesim.sim.grid import Grid
from moesim.sim.layer_costs import ExpertCost, ExpertElementwise, LayerCosts, layer_costs
from moesim.sim.nccl_tuning import ALGORITHMS, arch_of, has_nvls
from moesim.sim.network import Topology
from moesim.sim.placement import representative_q
from moesim.sim.profile import Profile
from moesim.sim.routing_load import RoutingSampler, expert_probabilities
from moesim.sim.vector_engine import VectorRank, vector_applies
from moesim.specs import Scenario


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


@dataclass
class SimContext:
    scenario: Scenario
    profile: Profile
    fidelity: str
    tokens: float  # tokens of one microbatch on one attention rank
    microbatches: int
    base_dir: Path | None = None
    env: simpy.Environment = field(default_factory=simpy.Environment)
    ranks: dict[int, Rank] = field(default_factory=dict)
    dropped_copies: float = 0.0
    offered_copies: float = 0.0
    # full fidelity: one vector rank per pipeline stage (``moesim.sim.vector_engine``) where it
    # applies (None: decide; False: one SimPy process set per rank)
    vector: bool | None = None

    def __post_init__(self) -> None:
        s = self.scenario
        self.model, self.parallel, self.precision = s.model, s.parallel, s.precision
        self.cm = CostModel(s.cluster.gpu, self.profile, s.precision.compute)
        self.topo = Topology.from_cluster(
            s.cluster, self.cm.link_fraction("nvlink"), self.cm.link_fraction("network")
        )
        gpu = s.cluster.gpu
        self.timer = CollectiveTimer(
            self.topo,
            s.simulation.network,
            self.cm.collective_overhead_s,
            arch=arch_of(gpu.name),
            nvls=has_nvls(gpu.name, s.cluster.intra.kind),
        )
        self.grid = Grid.of(s.parallel)
        self.stages: list[StageLayout] = stage_layouts(s.model, s.parallel)
        self.counts = count_params(s.model)
        seq = getattr(s.workload, "seq_len", s.model.max_seq_len)
        self.flops = token_flops(s.model, seq)
        self.layers: dict[int, LayerCosts] = {}
        all_layer_params = self.counts.encoder_layers + self.counts.decoder_layers
        n_enc = s.model.n_encoder_layers
        for i in range(s.model.n_layers + n_enc):
            fl = (
                self.flops.layers[i - n_enc]
                if i >= n_enc
                else self.flops.layers[s.model.n_layers + i]
            )
            prm = all_layer_params[i]
            self.layers[i] = layer_costs(s, self.cm, fl, prm, self.tokens)
        self.moe = s.model.moe
        self.dispatcher = resolve_dispatcher(s)
        # compute that starts while an EP dispatch/combine holds its SMs is this much slower
        self.comm_sm_slowdown = comm_sm_slowdown(s)
        self._draws: dict[object, object] = {}  # stage (symmetric) or ("full", group)
        self._expert_known: dict[bool, tuple] = {}  # the vector engine's timed copy counts
        self._links: dict[tuple[int, ...], str] = {}
        self._ep_groups: dict[int, tuple[int, ...]] = {}
        self._groups: dict[tuple[str, int], tuple[int, ...]] = {}
        self._shapes: dict[tuple[int, ...], tuple] = {}
        self._patterns: dict[tuple[int, ...], DispatchPattern] = {}
        self._load_matrices: dict[tuple, np.ndarray] = {}
        if self.moe is not None:
            self.expert_cost = ExpertCost(s, self.cm)
            self.expert_elementwise = ExpertElementwise(s, self.cm)
            probs = expert_probabilities(s.routing, self.moe.n_routed_experts, self.base_dir)
            self.sampler = RoutingSampler(
                probs, self.moe.top_k, s.parallel.ep, self.moe.capacity_factor, s.routing.seed
            )
        self.vector = (
            self.fidelity == "full"
            and self.vector is not False
            and vector_applies(s)
            and vector_stage.stages_alike(self)
        )
        full_ranks = self.fidelity == "full" and not self.vector
        self.rendezvous = Rendezvous(self.env) if full_ranks else None

    # -- ranks ----------------------------------------------------------------------------
    def rank(self, gpu: int) -> Rank:
        if self.vector:
            return self._vector_rank(gpu)  # type: ignore[return-value]
        r = self.ranks.get(gpu)
        if r is None:
            stage, q = self.grid.coords(gpu)
            rf = rank_faults(self.scenario, self.grid, gpu, self.fidelity)
            label = f"gpu{gpu} (stage {stage}, rank {q}){fault_label(rf)}"
            r = Rank(self.env, gpu, label, self.rendezvous)
            r.comm_sm_slowdown = self.comm_sm_slowdown
            r.compute_factor, r.link_factor = rf.compute_factor, dict(rf.link_factor)
            self.ranks[gpu] = r
        return r

    def _vector_rank(self, gpu: int) -> VectorRank:
        """The vector rank of ``gpu``'s stage (``moesim.sim.vector_stage``)."""
        return vector_stage.stage_rank(self, gpu)

    def simulated_gpus(self) -> list[int]:
        """Symmetric: one rank of each pipeline stage (the first, or on NVLink domains and
        fabrics whose boundaries split some groups, the one in the worst-placed groups:
        ``placement.representative_q``); full: every GPU (the vector engine: each stage's
        first, which stands for its vector rank)."""
        if self.vector:
            return [self.grid.gpu(stage, 0) for stage in range(self.grid.pp)]
        if self.fidelity == "full":
            return list(range(self.grid.pp * self.grid.stage_size))
        q = representative_q(self.grid, self.topo)
        return [self.grid.gpu(stage, q) for stage in range(self.grid.pp)]

    def group_key(self, group: tuple[int, ...], *what) -> tuple | None:
        full = self.rendezvous is not None or self.vector
        return (group[0], len(group), *what) if full else None

    def link_of(self, group: tuple[int, ...]) -> str:
        link = self._links.get(group)
        if link is None:
            link = self._links[group] = "network" if self.timer.spans_nodes(group) else "nvlink"
        return link

    def ep_group(self, gpu: int) -> tuple[int, ...]:
        g = self._ep_groups.get(gpu)
        if g is None:
            g = self._ep_groups[gpu] = self.grid.ep_group(gpu)
        return g

    def dp_group(self, gpu: int) -> tuple[int, ...]:
        """``grid.dp_group``, built once per rank: it has dp·cp members, and every gradient
        bucket asks for it (at 131,072 GPUs, 8,192 members built ~120 times a step)."""
        key = ("dp", gpu)
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = self.grid.dp_group(gpu)
        return g

    def edp_group(self, gpu: int) -> tuple[int, ...]:
        """``grid.edp_group``, built once per rank (see ``dp_group``)."""
        key = ("edp", gpu)
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = self.grid.edp_group(gpu)
        return g

    # -- collective times (alone on the links) ----------------------------------------------
    def shape(self, group: tuple[int, ...]) -> tuple:
        """A group's place on the cluster up to a shift by whole periods (a node; with larger
        NVLink domains or a tiered fabric, whole domains or pods: ``Topology.period_gpus``):
        shifted groups are alike, so collectives of groups with the same shape take the same
        time (one flow simulation for the EP groups of all pipeline stages). Cached: every
        collective asks."""
        hit = self._shapes.get(group)
        if hit is None:
            period = self.topo.period_gpus
            base = group[0] // period
            hit = tuple((g // period - base, g % period) for g in group)
            self._shapes[group] = hit
        return hit

    def all_reduce_s(self, group: tuple[int, ...], nbytes: float) -> float:
        """All-reduce of ``nbytes`` per rank as NCCL runs it: ``simulation.all_reduce`` auto
        (NCCL's pick of algorithm and protocol), or ring / tree forced as ``NCCL_ALGO`` does
        (the protocol still NCCL's pick)."""
        algo = self.scenario.simulation.all_reduce
        algos = ALGORITHMS if algo == "auto" else (algo,)
        key = ("ar", algo, self.shape(group), nbytes)
        return self.timer.nccl_s(key, "all_reduce", group, nbytes, algos)

    def reduce_scatter_s(self, group: tuple[int, ...], nbytes: float) -> float:
        """Reduce-scatter of an ``nbytes`` input per rank (NCCL's pick)."""
        key = ("rs", self.shape(group), nbytes)
        return self.timer.nccl_s(key, "reduce_scatter", group, nbytes)

    def all_gather_s(self, group: tuple[int, ...], nbytes: float) -> float:
        """All-gather of an ``nbytes`` output per rank (NCCL's pick)."""
        key = ("ag", self.shape(group), nbytes)
        return self.timer.nccl_s(key, "all_gather", group, nbytes)

    def ring_exchange_s(
        self, group: tuple[int, ...], nbytes: float, kind: str = "all_gather"
    ) -> float:
        """A ring of point-to-point sends with the traffic of an all-gather (or reduce-scatter)
        of ``nbytes`` per rank: ring attention's K/V exchange (context parallelism), which is
        send/recv between ring neighbours, not an NCCL collective; timed by the network mode,
        each of the n−1 steps paying its route's latency."""
        build = reduce_scatter if kind == "reduce_scatter" else all_gather
        return self.timer.time_s(
            ("ring", kind, self.shape(group), nbytes), lambda: build(self.topo, group, nbytes)
        )

    def p2p_s(self, src: int, dst: int, nbytes: float) -> float:
        return self.timer.time_s(
            ("p2p", self.shape((src, dst)), nbytes),
            lambda: all_to_all_direct((src, dst), [[0.0, nbytes], [0.0, 0.0]], "p2p"),
        )

    # -- MoE ---------------------------------------------------------------------------------
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
        alike); cached per group shape."""
        key = ("a2a-load", kind, self.shape(group), bytes_per_copy)
        hit = self._load_matrices.get(key)
        if hit is None:
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
            hit = self._load_matrices[key] = np.array(rows).reshape(len(group), -1) * inv_cap
        return hit

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
        idx = moe_index * self.microbatches + mb
        if self.fidelity != "full":
            table = self._draws.get(stage)
            if table is None:
                table = self._draws[stage] = self._symmetric_table(
                    self.ep_group(gpu),
                    n_moe_on_stage * self.microbatches,
                    stage,
                    self.model.d_model * self.precision.dispatch_bytes,
                    self.model.d_model * self.precision.combine_bytes,
                )
            return table[idx]
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
