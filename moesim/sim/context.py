"""Everything one simulation run shares: the scenario, the cost model, the network and its
collective timer, the rank grid, the SimPy environment and its ranks, and the routing draws
(the MoE all-to-alls and draw tables: ``moesim.sim.moe_draws``, a mixin of ``SimContext``).

Stage programs (``training_step``, ``moe_layer``) read op times from here, so the same pieces
(a layer's forward, its backward, the MoE block, a pipeline pass) serve every workload.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import simpy

from moesim.analytic.dispatch import comm_sm_slowdown, resolve_dispatcher
from moesim.analytic.flops import token_flops
from moesim.analytic.layout import StageLayout, stage_layouts
from moesim.analytic.params import count_params
from moesim.sim import vector_stage
from moesim.sim.collective_timing import CollectiveTimer
from moesim.sim.collectives import all_gather, all_to_all_direct, reduce_scatter
from moesim.sim.costmodel import CostModel
from moesim.sim.engine import Rank, Rendezvous
from moesim.sim.faults import fault_label, rank_faults
from moesim.sim.grid import Grid
from moesim.sim.layer_costs import ExpertCost, ExpertElementwise, LayerCosts, layer_costs
from moesim.sim.moe_draws import MoEDrawTables
from moesim.sim.nccl_tuning import ALGORITHMS, arch_of, has_nvls
from moesim.sim.network import Topology
from moesim.sim.placement import representative_q
from moesim.sim.profile import Profile
from moesim.sim.routing_load import RoutingSampler, expert_probabilities
from moesim.sim.vector_engine import VectorRank, vector_applies
from moesim.specs import Scenario


@dataclass
class SimContext(MoEDrawTables):
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
        self._init_moe_draws()
        self._expert_known: dict[bool, tuple] = {}  # the vector engine's timed copy counts
        self._links: dict[tuple[int, ...], str] = {}
        self._ep_groups: dict[int, tuple[int, ...]] = {}
        self._groups: dict[tuple[str, int], tuple[int, ...]] = {}
        self._shapes: dict[tuple[int, ...], tuple] = {}
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
        # GPUs not simulated, each with the simulated GPU that runs its program mirrored
        # (DualPipe under symmetric fidelity: ``moesim.sim.dualpipe_mirror``)
        self.mirrored: dict[int, int] = {}
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
