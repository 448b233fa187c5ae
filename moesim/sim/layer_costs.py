"""What one layer costs on one rank for one microbatch: op times from the analytic FLOPs and
parameter counts through the cost model, and the all-to-all traffic pattern of an MoE layer.

Legend: ``T`` tokens of one microbatch on one attention rank (mbs · seq / cp), ``T_moe`` the
tokens one rank routes (T / tp: with sequence parallelism each TP rank owns T/tp tokens),
``k`` top-k, ``E`` routed experts, ``d`` d_model.

Backward ops cost twice the forward FLOPs (grad w.r.t. inputs and w.r.t. weights; Kaplan et al.
2020) and twice the bytes (weights read again, weight gradients written).

Kernel launches (each pays ``launch_overhead_us``) are counted from Megatron-Core's TE layer
spec: the attention's linear GEMMs (fused QKV and the output projection; MLA's down, up and
output projections), one flash-attention forward kernel and three backward (FlashAttention-2's
``flash_bwd_dot_do_o``, ``flash_bwd_dq_dk_dv`` and ``flash_bwd_convert_dq``), fc1 (gate and up
fused) and fc2, each GEMM's backward a data-gradient and a weight-gradient GEMM. TE's
GroupedLinear runs one GEMM per local expert. The element-wise kernels of a layer (norms,
residual adds, RoPE, activations, router top-k, token permutation) are ``moesim.sim.elementwise``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from moesim.analytic.comm import EPPlacement, expected_distinct_bins, expected_nodes_per_token
from moesim.analytic.flops import LayerFlops
from moesim.analytic.params import LayerParams, ffn_params
from moesim.sim.costmodel import CostModel, OpWork
from moesim.sim.elementwise import Ops, activation, layer_elementwise, sort_chunks
from moesim.specs import Scenario

NamedTimes = tuple[tuple[str, float], ...]  # (op name, seconds) as the trace shows them


@dataclass(frozen=True)
class LayerCosts:
    """Seconds of each op of one layer, one microbatch, one rank (forward; ``_bwd`` backward)."""

    is_moe: bool
    attention_s: float
    attention_bwd_s: float
    attention_core_s: float  # QKᵀ and AV (the attention of a forward)
    ffn_s: float  # dense FFN, or the shared experts of an MoE layer
    ffn_bwd_s: float
    router_s: float
    router_bwd_s: float
    # element-wise forward outside the MoE block: attention_elementwise + ffn_elementwise +
    # ffn_act (the per-op lists below)
    norms_s: float
    non_expert_params: float  # on this rank (tp-sharded): gradient bytes for DP
    expert_params: float  # on this rank (ep·etp-sharded)
    # what ``recompute: selective`` repeats before the backward: the norms, the activation
    # functions and MLA's up-projections (what analytic.memory does not keep under it)
    selective_recompute_s: float = 0.0
    # element-wise kernels (moesim.sim.elementwise) by where they run, named for the trace:
    # the attention block's (input norm, qk-norm, RoPE, residual add) and the FFN block's
    # (pre-FFN norm, residual add), the dense FFN's or shared experts' activation, the router's
    # top-k, the token permutation before the dispatch and the unpermutation after the combine
    attention_elementwise: NamedTimes = ()
    attention_elementwise_bwd: NamedTimes = ()
    ffn_elementwise: NamedTimes = ()
    ffn_elementwise_bwd: NamedTimes = ()
    ffn_act: NamedTimes = ()
    ffn_act_bwd: NamedTimes = ()
    router_elementwise: NamedTimes = ()
    router_elementwise_bwd: NamedTimes = ()
    permute: NamedTimes = ()
    permute_bwd: NamedTimes = ()
    unpermute: NamedTimes = ()
    unpermute_bwd: NamedTimes = ()

    @property
    def norms_bwd_s(self) -> float:
        """Element-wise backward outside the MoE block (was 2 · norms_s)."""
        parts = (self.attention_elementwise_bwd, self.ffn_elementwise_bwd, self.ffn_act_bwd)
        return sum(t for ops in parts for _, t in ops)


def _w(x: float) -> float:
    return max(x, 0.0)


def timed(cm: CostModel, ops: Ops) -> NamedTimes:
    """Each op's name and time, zero-time ops left out."""
    out = tuple((op.name, cm.time_s(op)) for op in ops)
    return tuple(x for x in out if x[1] > 0)


def layer_costs(
    s: Scenario, cm: CostModel, fl: LayerFlops, params: LayerParams, tokens: float
) -> LayerCosts:
    """Op times of one layer for ``tokens`` tokens per attention rank."""
    p, m, prec = s.parallel, s.model, s.precision
    act_b, w_b = prec.activation_bytes, prec.param_bytes
    tp = p.tp
    t_moe = tokens / tp
    io = tokens * m.d_model * act_b  # one activation tensor of the microbatch (full width)
    attn_w = params.attention * w_b / tp
    proj_gemms = (5 if m.mla.q_lora_rank else 4) if m.mla is not None else 2
    proj = OpWork(
        "attn_proj", "gemm", tokens * fl.attention_proj / tp, attn_w + 4 * io / tp, proj_gemms
    )
    core = OpWork("attn_core", "attention", tokens * fl.attention_core / tp, 4 * io / tp)
    attention_s = cm.time_s(proj) + cm.time_s(core)
    core_bwd = replace(_bwd(core), kernels=3)  # FlashAttention-2: dot(dO, O), dQ/dK/dV, dQ cast
    attention_bwd_s = cm.time_s(_bwd(proj)) + cm.time_s(core_bwd)
    ffn_flops = fl.dense_ffn + fl.shared_experts
    ffn_params_n = params.dense_ffn + params.shared_experts
    # fc1 and fc2 (Megatron's SharedExpertMLP is one MLP of all shared experts' width)
    ffn = OpWork("ffn", "gemm", tokens * ffn_flops / tp, ffn_params_n * w_b / tp + 3 * io / tp, 2)
    router = OpWork(
        "router", "gemm", t_moe * fl.router, params.router * w_b + t_moe * 4, 1, fp8=False
    )
    el = layer_elementwise(s, tokens, fl.routed_experts > 0)
    act_names = ("ffn_act", "shared_expert_act")
    attention_el = timed(cm, el.attention)
    ffn_el = timed(cm, tuple(op for op in el.ffn if op.name not in act_names))
    ffn_act = timed(cm, tuple(op for op in el.ffn if op.name in act_names))
    norms_s = sum(t for part in (attention_el, ffn_el, ffn_act) for _, t in part)
    bwd_names = tuple(n + "_bwd" for n in act_names)
    return LayerCosts(
        is_moe=fl.routed_experts > 0,
        attention_s=attention_s,
        attention_bwd_s=attention_bwd_s,
        attention_core_s=cm.time_s(core),
        ffn_s=cm.time_s(ffn),
        ffn_bwd_s=cm.time_s(_bwd(ffn)),
        router_s=cm.time_s(router) if fl.router else 0.0,
        router_bwd_s=cm.time_s(_bwd(router)) if fl.router else 0.0,
        norms_s=norms_s,
        non_expert_params=params.non_expert / tp,
        expert_params=params.routed_experts / (p.ep * p.etp),
        selective_recompute_s=_selective_recompute_s(s, cm, fl, tokens),
        attention_elementwise=attention_el,
        attention_elementwise_bwd=timed(cm, el.attention_bwd),
        ffn_elementwise=ffn_el,
        ffn_elementwise_bwd=timed(cm, tuple(op for op in el.ffn_bwd if op.name not in bwd_names)),
        ffn_act=ffn_act,
        ffn_act_bwd=timed(cm, tuple(op for op in el.ffn_bwd if op.name in bwd_names)),
        router_elementwise=timed(cm, el.router),
        router_elementwise_bwd=timed(cm, el.router_bwd),
        permute=timed(cm, el.permute),
        permute_bwd=timed(cm, el.permute_bwd),
        unpermute=timed(cm, el.unpermute),
        unpermute_bwd=timed(cm, el.unpermute_bwd),
    )


def _selective_recompute_s(s: Scenario, cm: CostModel, fl: LayerFlops, tokens: float) -> float:
    """Selective recomputation of one layer on one rank, before its backward
    (``analytic.flops.TokenFlops.recompute``): MLA's up-projection GEMMs from the cached latents,
    and one memory-bound pass that rereads the two norms' inputs and the activation functions'
    inputs (gate and up for a gated FFN) and writes their outputs again. Routed experts count
    their mean load (tokens · top_k over the EP group): imbalance is left to the experts' GEMMs.
    """
    m, p, prec = s.model, s.parallel, s.precision
    act_b, tp = prec.activation_bytes, p.tp
    sp = tp if p.sequence_parallel else 1
    t = 0.0
    if fl.mla_up_proj:
        a = m.mla
        assert a is not None
        up_weights = fl.mla_up_proj / 2.0
        latent = (a.q_lora_rank or m.d_model) + a.kv_lora_rank
        out = m.q_dim + m.n_heads * (a.qk_nope_head_dim + a.v_head_dim)
        io = tokens * (latent + out) * act_b / tp
        t += cm.time_s(
            OpWork(
                "recompute_mla_up",
                "gemm",
                tokens * fl.mla_up_proj / tp,
                up_weights * prec.param_bytes / tp + io,
                3,
            )
        )
    inputs = 2 if m.ffn_gated else 1
    elements = fl.activation / (2.0 if m.ffn_gated else 1.0)  # hidden outputs per token
    norm_b = 2 * 2 * tokens * m.d_model * act_b / sp  # two norms: read input, write output
    act_bytes = (inputs + 1) * tokens * elements * act_b / tp
    t += cm.time_s(OpWork("recompute_elementwise", "memory_bound", 0.0, norm_b + act_bytes, 2))
    return t


def _bwd(op: OpWork) -> OpWork:
    return replace(
        op, name=op.name + "_bwd", flops=2 * op.flops, bytes=2 * op.bytes, kernels=2 * op.kernels
    )


class ExpertCost:
    """Grouped-GEMM time of one rank's local experts as a function of the copies it received."""

    def __init__(self, s: Scenario, cm: CostModel):
        m, p, prec = s.model, s.parallel, s.precision
        assert m.moe is not None
        self.cm = cm
        self.local_experts = m.moe.n_routed_experts // p.ep
        self.flops_per_copy = 2.0 * ffn_params(m, m.moe.expert_hidden) / p.etp
        self.weight_bytes = self.local_experts * ffn_params(m, m.moe.expert_hidden) / p.etp
        self.weight_bytes *= prec.param_bytes
        # input + output row, and the hidden activations written and read (gated: 3 widths)
        widths = 2 * m.d_model + 3 * m.moe.expert_hidden / p.etp
        self.bytes_per_copy = widths * prec.activation_bytes
        self._cache: dict[tuple[int, bool], float] = {}

    def time_s(self, copies: float, backward: bool = False) -> float:
        key = (round(copies), backward)
        t = self._cache.get(key)
        if t is None:
            n = float(key[0])
            op = OpWork(
                "experts",
                "grouped_gemm",
                n * self.flops_per_copy,
                self.weight_bytes + n * self.bytes_per_copy,
                groups=self.local_experts,
                kernels=2 * self.local_experts,  # TE GroupedLinear: fc1 and fc2 per expert
            )
            t = self.cm.time_s(_bwd(op) if backward else op)
            self._cache[key] = t
        return t


class ExpertElementwise:
    """Element-wise kernels around one rank's local experts, per copies received: the routed
    experts' activation (Megatron's weighted SwiGLU, ``moesim.sim.elementwise.activation``) and,
    with several local experts behind an all-to-all (ep > 1), Megatron's sort of the received
    rows by local expert and its inverse (``sort_chunks``)."""

    def __init__(self, s: Scenario, cm: CostModel):
        m, p, prec = s.model, s.parallel, s.precision
        assert m.moe is not None
        self.cm, self.model, self.act_b = cm, m, prec.activation_bytes
        self.hidden = m.moe.expert_hidden / p.etp
        self.sorts = p.ep > 1 and m.moe.n_routed_experts // p.ep > 1
        self._cache: dict[tuple[int, bool], NamedTimes] = {}

    def ops(self, copies: float, backward: bool = False) -> NamedTimes:
        key = (round(copies), backward)
        hit = self._cache.get(key)
        if hit is None:
            n = float(key[0])
            m, a = self.model, self.act_b
            ops = [activation("expert_act", n, self.hidden, m.ffn_gated, a, backward)]
            if self.sorts:
                ops.append(sort_chunks(n, m.d_model, a, backward))
            hit = self._cache[key] = timed(self.cm, tuple(ops))
        return hit


@dataclass(frozen=True)
class DispatchPattern:
    """How one rank's routed copies spread over the EP group, as byte multipliers.

    ``gpu_dedup``: bytes per copy that reach a GPU once deduplicated per GPU (DeepEP sends a
    token once per destination GPU); ``node_dedup``: the same per destination node (RDMA leg).
    Direct (Megatron's all-to-all dispatcher) sends every (token, expert) copy: both 1.
    """

    hierarchical: bool
    gpu_dedup: float
    node_dedup: float


def dispatch_pattern(s: Scenario, group_nodes: int, hierarchical: bool) -> DispatchPattern:
    m, p = s.model, s.parallel
    assert m.moe is not None
    if not hierarchical:
        return DispatchPattern(False, 1.0, 1.0)
    e = m.moe
    k = e.top_k
    gpus_hit = expected_distinct_bins(e.n_routed_experts, p.ep, e.n_routed_experts / p.ep, k)
    place = EPPlacement(p.ep, group_nodes, max(1, p.ep // group_nodes))
    nodes_hit = expected_nodes_per_token(m, place)
    return DispatchPattern(True, gpus_hit / k, nodes_hit / k)
