"""Scenario: one model on one cluster with one parallel layout and workload (the public file).

Catalog ids in the file (``model: mixtral-8x7b``, ``cluster.gpu: h100-sxm``) are resolved by
``moesim.scenario_io`` before validation, so a Scenario always holds complete specs.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from moesim.specs.base import Spec
from moesim.specs.cost import Cost
from moesim.specs.faults import Fault, ReliabilitySpec, check_faults
from moesim.specs.hardware import ClusterSpec
from moesim.specs.model import ModelSpec
from moesim.specs.parallel import ParallelSpec
from moesim.specs.pipeline_layout import check_layout, parse_layout, split_of
from moesim.specs.precision import Precision
from moesim.specs.routing import Routing
from moesim.specs.simulation import SimulationSpec
from moesim.specs.workload import (
    CollectiveWorkload,
    DPOWorkload,
    GRPOWorkload,
    InferenceWorkload,
    MoELayerWorkload,
    Workload,
)


class Scenario(Spec):
    name: str
    description: str = ""
    model: ModelSpec
    cluster: ClusterSpec
    parallel: ParallelSpec = ParallelSpec()
    precision: Precision = Precision()
    routing: Routing = Routing()
    workload: Workload
    cost: Cost = Cost()
    simulation: SimulationSpec = SimulationSpec()
    faults: list[Fault] = Field(
        default_factory=list,
        description="stragglers in the simulated step: slow_gpu (a GPU computing factor× "
        "slower) and slow_link (a rank's or a node's link with bandwidth / factor); training "
        "and moe_layer stages (moesim.specs.faults)",
    )
    reliability: ReliabilitySpec | None = Field(
        None,
        description="failures over a long training run: GPU MTBF, checkpoint interval and "
        "write time, restart time -> goodput, effective throughput, GPU-hours and cost",
    )

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        _resolve_dp(self)
        _check_parallel_vs_model(self.parallel, self.model)
        _check_order(self.parallel)
        _check_offload(self.parallel, self.model)
        _check_batch(self)
        _check_precision(self)
        _check_dispatcher(self)
        _check_faults(self)
        _check_serving_options(self)
        return self

    @property
    def gpus(self) -> int:
        return self.cluster.gpus


def _resolve_dp(s: Scenario) -> None:
    p, gpus = s.parallel, s.cluster.gpus
    mp = p.tp * p.cp * p.pp
    if p.dp is None:
        if gpus % mp:
            raise ValueError(
                f"parallel: tp·cp·pp = {p.tp}·{p.cp}·{p.pp} = {mp} does not divide the "
                f"{gpus} GPUs of the cluster: change tp/cp/pp or cluster.nodes"
            )
        object.__setattr__(s, "parallel", p.model_copy(update={"dp": gpus // mp}))
    elif mp * p.dp != gpus:
        raise ValueError(
            f"parallel: tp·cp·pp·dp = {p.tp}·{p.cp}·{p.pp}·{p.dp} = {mp * p.dp} but the cluster "
            f"has {gpus} GPUs ({s.cluster.nodes} nodes × {s.cluster.gpus_per_node}): "
            f"set parallel.dp to {gpus // mp if gpus % mp == 0 else 'a fitting value'} or leave "
            "it out to derive it"
        )


def _check_order(p: ParallelSpec) -> None:
    """Attention ranks (order without ep) and expert ranks (order without cp, etp for tp, edp
    for dp) must agree on each rank's pipeline stage: the ranks placed before pp hold as many
    GPUs in both (Megatron-Core's RankGenerator builds both grids from one order)."""
    dims = p.order_dims
    before = dims[: dims.index("pp")]
    attn = {"tp": p.tp, "cp": p.cp, "dp": p.dp_size, "ep": 1}
    expert = {"tp": p.etp, "cp": 1, "dp": p.edp, "ep": p.ep}
    a = math.prod(attn[d] for d in before)
    e = math.prod(expert[d] for d in before)
    if a != e:
        raise ValueError(
            f"parallel.order {p.order!r}: the dimensions before pp hold {a} attention ranks "
            f"but {e} expert ranks, so a GPU would sit in two pipeline stages: put pp last "
            "(the default tp-cp-ep-dp-pp) or make the two products equal"
        )


def _check_parallel_vs_model(p: ParallelSpec, m: ModelSpec) -> None:
    if m.n_heads % p.tp:
        raise ValueError(
            f"parallel.tp ({p.tp}) must divide model.n_heads ({m.n_heads}): pick a divisor"
        )
    if m.attention != "mla" and m.kv_heads % p.tp:
        raise ValueError(
            f"parallel.tp ({p.tp}) must divide the key/value heads ({m.kv_heads}): "
            f"use tp ≤ {m.kv_heads} that divides it"
        )
    if m.ffn_hidden % p.tp:
        raise ValueError(f"parallel.tp ({p.tp}) must divide model.ffn_hidden ({m.ffn_hidden})")
    layers = m.n_layers + m.n_encoder_layers
    if _check_pipeline_split(p, m):
        pass  # checked there: chunks may hold no decoder layer
    elif p.pp > layers:
        raise ValueError(
            f"parallel.pp ({p.pp}) exceeds the model's {layers} layers: use pp ≤ {layers}"
        )
    elif p.pp * p.virtual_stages > layers:
        raise ValueError(
            f"parallel.pp·virtual_stages ({p.pp}·{p.virtual_stages}) exceeds the {layers} "
            "layers: lower virtual_stages (or count the embedding and loss as layers: "
            "account_for_embedding, account_for_loss)"
        )
    if m.moe is None:
        if p.ep > 1 or p.etp > 1:
            raise ValueError(
                f"parallel.ep/etp ({p.ep}/{p.etp}) > 1 but {m.name} is dense: set ep: 1, etp: 1"
            )
        return
    if m.moe.n_routed_experts % p.ep:
        raise ValueError(
            f"parallel.ep ({p.ep}) must divide moe.n_routed_experts "
            f"({m.moe.n_routed_experts}): pick a divisor"
        )
    attn_ranks = p.tp * p.cp * p.dp_size
    if attn_ranks % (p.ep * p.etp):
        raise ValueError(
            f"parallel: ep·etp = {p.ep}·{p.etp} = {p.ep * p.etp} must divide tp·cp·dp = "
            f"{p.tp}·{p.cp}·{p.dp_size} = {attn_ranks} (experts are folded out of the "
            "attention ranks of one pipeline stage): "
            + ("lower ep or etp (a divisor), or raise dp" if p.etp > 1 else "lower ep or raise dp")
        )
    if m.moe.expert_hidden % p.etp:
        raise ValueError(
            f"parallel.etp ({p.etp}) must divide moe.expert_hidden ({m.moe.expert_hidden})"
        )


def _check_offload(p: ParallelSpec, m: ModelSpec) -> None:
    """Offloading needs fewer layers than a model chunk holds (Transformer Engine); the
    exact check per chunk of an uneven layout runs with the layout (analytic.memory)."""
    chunk = -(-(m.n_layers + m.n_encoder_layers) // (p.pp * p.virtual_stages))
    if p.activation_offload_layers >= chunk:
        raise ValueError(
            f"parallel.activation_offload_layers ({p.activation_offload_layers}) must be below "
            f"the decoder layers of a model chunk ({chunk} with pp·virtual_stages = "
            f"{p.pp * p.virtual_stages}): lower it to at most {chunk - 1}"
        )


def _check_pipeline_split(p: ParallelSpec, m: ModelSpec) -> bool:
    """Layer counts of ``pipeline_layout`` / first/last stage layers / account_for_* against
    the model (errors name the field); True when one of them places the layers (they check
    the chunk counts themselves: the embedding and loss may take chunks of their own)."""
    if p.pipeline_layout is not None:
        if m.n_encoder_layers:
            raise ValueError(
                "parallel.pipeline_layout does not place encoder layers (nor does Megatron-Core): "
                "remove it for this encoder-decoder model"
            )
        stages = parse_layout(p.pipeline_layout)
        check_layout(stages, p.pp, m.n_layers, m.mtp_depth, p.virtual_stages)
        return True
    if p.first_stage_layers or p.last_stage_layers or p.account_for_embedding or p.account_for_loss:
        split_of(m, p)
        return True
    return False


def _check_batch(s: Scenario) -> None:
    w, p = s.workload, s.parallel
    if isinstance(w, InferenceWorkload | MoELayerWorkload | CollectiveWorkload):
        return
    sequences = w.global_batch * (w.group_size if isinstance(w, GRPOWorkload) else 1)
    unit = "pairs" if isinstance(w, DPOWorkload) else "sequences"
    per_step = p.dp_size * p.microbatch_size
    if sequences % per_step:
        raise ValueError(
            f"workload.global_batch: {sequences} {unit} per step do not split into dp "
            f"({p.dp_size}) × microbatch_size ({p.microbatch_size}) = {per_step}: make "
            "global_batch a multiple of it"
        )


def _check_precision(s: Scenario) -> None:
    if s.precision.compute == "fp8" and s.cluster.gpu.fp8_TFLOPS is None:
        raise ValueError(
            f"precision.compute is fp8 but {s.cluster.gpu.name} has no fp8 tensor cores: use bf16"
        )


# simulation.all_to_all values each explicit dispatcher agrees with ("auto" agrees with all)
_DISPATCHER_ALL_TO_ALL = {
    "alltoall": ("auto", "direct"),
    "deepep": ("auto", "hierarchical"),
    "deepep_low_latency": ("auto", "direct"),
    "allgather": ("auto",),
}


def _check_dispatcher(s: Scenario) -> None:
    p, mode = s.parallel, s.simulation.all_to_all
    if p.moe_dispatcher != "auto" and mode not in _DISPATCHER_ALL_TO_ALL[p.moe_dispatcher]:
        raise ValueError(
            f"parallel.moe_dispatcher {p.moe_dispatcher!r} contradicts simulation.all_to_all "
            f"{mode!r} (direct = per-(token, expert) copies, hierarchical = DeepEP's RDMA then "
            "NVLink forwarding): set simulation.all_to_all: auto, or drop moe_dispatcher"
        )
    sms = s.cluster.gpu.sms
    if p.moe_comm_sms is not None and sms is not None and p.moe_comm_sms >= sms:
        raise ValueError(
            f"parallel.moe_comm_sms ({p.moe_comm_sms}) leaves no SM of the {sms} of "
            f"{s.cluster.gpu.name} for compute: use fewer (DeepEP ships with 20)"
        )


def _check_faults(s: Scenario) -> None:
    check_faults(s.faults, s.cluster.gpus, s.cluster.nodes)
    stage = s.workload.stage
    if s.faults and stage in ("inference", "collective"):
        raise ValueError(
            f"faults: stragglers are simulated in training steps and moe_layer, not in "
            f"workload.stage {stage}: remove faults"
        )
    if s.reliability is not None and stage in ("inference", "collective", "moe_layer"):
        raise ValueError(
            f"reliability: goodput is for training runs, not workload.stage {stage}: remove "
            "reliability"
        )


# -- serving: speculative decoding and disaggregated pools ------------------------------------
def _sub_error(field: str, e: Exception) -> ValueError:
    """A nested scenario's validation error, named after the field that built it."""
    if isinstance(e, ValidationError):
        msgs = "; ".join(str(x["msg"]).removeprefix("Value error, ") for x in e.errors())
    else:
        msgs = str(e)
    return ValueError(f"{field}: {msgs}")


def _serving_parallel(s: Scenario, **fields) -> ParallelSpec:
    """A serving layout (no pipeline options, no recompute) keeping the scenario's dispatcher
    fields, with ``fields`` set."""
    p = s.parallel
    base = {
        "zero_stage": 0,
        "recompute": "none",
        "moe_dispatcher": p.moe_dispatcher,
        "moe_comm_sms": p.moe_comm_sms,
    }
    return ParallelSpec(**{**base, **{k: v for k, v in fields.items() if v is not None}})


def pool_scenario(s: Scenario, which: Literal["prefill", "decode"]) -> Scenario:
    """The scenario of one pool of ``workload.disaggregated``: its GPUs (whole nodes, or part
    of one node), its layout, the rest of ``s``; a plain (colocated) serving workload."""
    w = s.workload
    assert isinstance(w, InferenceWorkload) and w.disaggregated is not None
    pool = getattr(w.disaggregated, which)
    field = f"workload.disaggregated.{which}"
    gpn = s.cluster.gpus_per_node
    gpus = pool.gpus if pool.gpus is not None else pool.nodes * gpn
    if gpus < gpn:
        cluster = s.cluster.model_copy(update={"nodes": 1, "gpus_per_node": gpus})
    elif gpus % gpn:
        raise ValueError(
            f"{field}.gpus ({gpus}) spans nodes of {gpn} GPUs unevenly: use fewer than {gpn} "
            f"or a multiple of {gpn}"
        )
    else:
        cluster = s.cluster.model_copy(update={"nodes": gpus // gpn})
    try:
        parallel = _serving_parallel(
            s, tp=pool.tp, pp=pool.pp, ep=pool.ep, etp=pool.etp, moe_dispatcher=pool.moe_dispatcher
        )
        # the prefill pool drafts nothing; the decode pool runs the workload's scheduler, its
        # drafts (speculative) included (moesim.sim.decode_server)
        extra: dict = {"speculative": None} if which == "prefill" else {}
        workload = w.model_copy(
            update={
                "disaggregated": None,
                "max_batch_size": pool.max_batch_size or w.max_batch_size,
                **extra,
            }
        )
        return Scenario(
            name=f"{s.name} [{which}]",
            model=s.model,
            cluster=cluster,
            parallel=parallel,
            precision=s.precision,
            routing=s.routing,
            workload=workload,
            cost=s.cost,
            simulation=s.simulation,
        )
    except (ValueError, ValidationError) as e:
        raise _sub_error(field, e) from None


def draft_scenario(s: Scenario) -> Scenario:
    """The scenario the drafter of ``workload.speculative`` runs as: the draft model (method
    draft) or one layer of the model's own MTP module (method mtp: an MoE layer when the model
    has experts), on one replica's tensor-parallel GPUs without pipeline stages (a drafter is
    a few layers: engines run it on the target's TP group, the MTP module on the last stage)."""
    w = s.workload
    assert isinstance(w, InferenceWorkload) and w.speculative is not None
    spec, m, p = w.speculative, s.model, s.parallel
    if spec.method == "mtp":
        update: dict = {"n_layers": 1, "n_encoder_layers": 0, "mtp_depth": 0}
        if m.moe is not None:
            update["moe"] = m.moe.model_copy(update={"first_k_dense": 0, "moe_every": 1})
        draft = m.model_copy(update={**update, "name": f"{m.name} MTP layer"})
        layout = {"tp": p.tp, "cp": p.cp, "ep": p.ep, "etp": p.etp}
    else:
        assert spec.draft_model is not None
        draft = spec.draft_model
        dense = draft.moe is None
        layout = {"tp": p.tp, "ep": 1 if dense else p.ep, "etp": 1 if dense else p.etp}
    field = "workload.speculative" + (".draft_model" if spec.method == "draft" else "")
    try:
        return Scenario(
            name=f"{s.name} [draft]",
            model=draft,
            cluster=s.cluster,
            parallel=_serving_parallel(s, **layout),
            precision=s.precision,
            routing=s.routing,
            workload=w.model_copy(update={"speculative": None, "disaggregated": None}),
            cost=s.cost,
            simulation=s.simulation,
        )
    except (ValueError, ValidationError) as e:
        raise _sub_error(field, e) from None


def _check_serving_options(s: Scenario) -> None:
    w = s.workload
    if not isinstance(w, InferenceWorkload):
        return
    mode = s.simulation.all_to_all
    d = w.decode_moe_dispatcher
    if d is not None and d != "auto" and mode not in _DISPATCHER_ALL_TO_ALL[d]:
        raise ValueError(
            f"workload.decode_moe_dispatcher {d!r} contradicts simulation.all_to_all {mode!r}: "
            "set simulation.all_to_all: auto, or drop decode_moe_dispatcher"
        )
    if w.speculative is not None:
        if w.speculative.method == "mtp" and s.model.mtp_depth < 1:
            raise ValueError(
                f"workload.speculative.method is 'mtp' but {s.model.name} has no MTP module "
                "(model.mtp_depth is 0): use method: draft with a draft_model"
            )
        draft_scenario(s)
    if w.disaggregated is not None:
        pools = [pool_scenario(s, "prefill"), pool_scenario(s, "decode")]
        total = sum(x.gpus for x in pools)
        if total != s.gpus:
            raise ValueError(
                f"workload.disaggregated: the prefill ({pools[0].gpus}) and decode "
                f"({pools[1].gpus}) pools hold {total} GPUs but the cluster has {s.gpus}: "
                "make the pools add up to cluster.nodes × gpus_per_node"
            )
