"""What one layer costs on one rank for one microbatch: op times from the analytic FLOPs and
parameter counts through the cost model (an MoE layer's all-to-all: sim/dispatch_traffic.py).

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

from moesim.analytic.flops import LayerFlops
from moesim.analytic.params import LayerParams, ffn_params
from moesim.sim.costmodel import CostModel, OpWork
from moesim.sim.elementwise import (
    Ops,
    activation_bytes,
    layer_elementwise,
    sort_chunks_bytes,
)
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
    # what ``recompute: selective`` repeats before the backward, op by op: the
    # ``parallel.recompute_modules`` that analytic.memory does not keep (``recompute_ops``);
    # ``recompute_moe_block``: the whole MoE block (router, all-to-alls, experts) runs again
    recompute_ops: tuple[tuple[str, float], ...] = ()
    recompute_moe_block: bool = False
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

    @property
    def selective_recompute_s(self) -> float:
        """Compute time of the selective recomputation's ops (the MoE block rerun apart)."""
        return sum(t for _, t in self.recompute_ops)


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
    is_moe = fl.routed_experts > 0
    # no shared experts (Mixtral) or no dense FFN: no op, not a launch moving zero FLOPs
    has_ffn = ffn_flops > 0
    ffn_s = cm.time_s(ffn) if has_ffn else 0.0
    modules = p.recomputed_modules
    el = layer_elementwise(s, tokens, is_moe)
    act_names = ("ffn_act", "shared_expert_act")
    attention_el = timed(cm, el.attention)
    ffn_el = timed(cm, tuple(op for op in el.ffn if op.name not in act_names))
    ffn_act = timed(cm, tuple(op for op in el.ffn if op.name in act_names))
    norms_s = sum(t for part in (attention_el, ffn_el, ffn_act) for _, t in part)
    bwd_names = tuple(n + "_bwd" for n in act_names)
    return LayerCosts(
        is_moe=is_moe,
        attention_s=attention_s,
        attention_bwd_s=attention_bwd_s,
        attention_core_s=cm.time_s(core),
        ffn_s=ffn_s,
        ffn_bwd_s=cm.time_s(_bwd(ffn)) if has_ffn else 0.0,
        router_s=cm.time_s(router) if fl.router else 0.0,
        router_bwd_s=cm.time_s(_bwd(router)) if fl.router else 0.0,
        norms_s=norms_s,
        non_expert_params=params.non_expert / tp,
        expert_params=params.routed_experts / (p.ep * p.etp),
        recompute_ops=_recompute_ops(s, cm, fl, tokens, cm.time_s(core), ffn_s, modules),
        recompute_moe_block=is_moe and "moe" in modules,
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


def _recompute_ops(
    s: Scenario,
    cm: CostModel,
    fl: LayerFlops,
    tokens: float,
    core_s: float,
    ffn_s: float,
    modules: frozenset[str],
) -> tuple[tuple[str, float], ...]:
    """The selective recomputation of one layer on one rank, before its backward, one op per
    module of ``parallel.recompute_modules`` (``analytic.flops.LayerFlops.recompute_flops``):
    ``mla_up_proj`` MLA's up-projection GEMMs from the cached latents; ``layernorm`` one
    memory-bound pass rereading the two norms' inputs and writing their outputs; ``moe_act``
    one rereading the activation functions' inputs (gate and up for a gated FFN) and writing
    their outputs; ``core_attn`` the attention core's forward; ``mlp`` a dense layer's FFN
    forward, ``shared_experts`` an MoE layer's shared experts' forward (``moe``, the whole MoE
    block, is rerun by the step itself: its all-to-alls too). Routed experts count their mean
    load (tokens · top_k over the EP group): imbalance is left to the experts' GEMMs."""
    m, p, prec = s.model, s.parallel, s.precision
    act_bytes, tp = prec.activation_bytes, p.tp
    sp = tp if p.sequence_parallel else 1
    is_moe = fl.routed_experts > 0
    ops: list[tuple[str, float]] = []
    if fl.mla_up_proj and "mla_up_proj" in modules:
        a = m.mla
        assert a is not None
        up_weights = fl.mla_up_proj / 2.0
        latent = (a.q_lora_rank or m.d_model) + a.kv_lora_rank
        out = m.q_dim + m.n_heads * (a.qk_nope_head_dim + a.v_head_dim)
        io = tokens * (latent + out) * act_bytes / tp
        up = OpWork(
            "recompute_mla_up",
            "gemm",
            tokens * fl.mla_up_proj / tp,
            up_weights * prec.param_bytes / tp + io,
            3,
        )
        ops.append(("recompute_mla_up_proj", cm.time_s(up)))
    if "layernorm" in modules:
        norm_b = 2 * 2 * tokens * m.d_model * act_bytes / sp  # two norms: read in, write out
        ops.append(("recompute_layernorm", cm.time_s(_elementwise("norms", norm_b, 2))))
    whole_ffn = "moe" in modules if is_moe else "mlp" in modules
    if "moe_act" in modules and not whole_ffn:
        inputs = 2 if m.ffn_gated else 1
        elements = fl.activation / (2.0 if m.ffn_gated else 1.0)  # hidden outputs per token
        act_b = (inputs + 1) * tokens * elements * act_bytes / tp
        ops.append(("recompute_act", cm.time_s(_elementwise("act", act_b, 1))))
    if "core_attn" in modules:
        ops.append(("recompute_core_attn", core_s))
    if not is_moe and "mlp" in modules:
        ops.append(("recompute_mlp", ffn_s))
    if is_moe and "shared_experts" in modules and "moe" not in modules and ffn_s > 0:
        ops.append(("recompute_shared_experts", ffn_s))
    return tuple(ops)


def _elementwise(name: str, bytes_: float, kernels: int) -> OpWork:
    return OpWork("recompute_" + name, "memory_bound", 0.0, bytes_, kernels)


def _bwd(op: OpWork) -> OpWork:
    return replace(
        op,
        name=op.name + "_bwd",
        flops=2 * op.flops,
        bytes=2 * op.bytes,
        kernels=2 * op.kernels,
        backward=True,
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
            # the OpWork ("experts", grouped_gemm, n·flops, weights + n·bytes, groups = local
            # experts, kernels = 2 per expert: TE GroupedLinear's fc1 and fc2), through
            # ``_bwd`` for the backward, read without building it (CostModel.time_of)
            n = float(key[0])
            flops = n * self.flops_per_copy
            nbytes = self.weight_bytes + n * self.bytes_per_copy
            kernels = 2 * self.local_experts
            if backward:
                flops, nbytes, kernels = 2 * flops, 2 * nbytes, 2 * kernels
            t = self.cm.time_of(
                "grouped_gemm", flops, nbytes, self.local_experts, kernels, True, backward
            )
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
            # ``activation`` and ``sort_chunks`` (memory-bound kernels), timed from their bytes
            # without building their OpWorks (10⁴ distinct loads per DeepSeek-V3 step)
            n, m, a, cm = float(key[0]), self.model, self.act_b, self.cm
            act_B = max(activation_bytes(n, self.hidden, m.ffn_gated, a, backward), 0.0)
            times = [
                (
                    "expert_act_bwd" if backward else "expert_act",
                    cm.time_of("memory_bound", 0.0, act_B, 1, 1),
                )
            ]
            if self.sorts:
                sort_B = max(sort_chunks_bytes(n, m.d_model, a), 0.0)
                name = "moe_sort_chunks_bwd" if backward else "moe_sort_chunks"
                times.append((name, cm.time_of("memory_bound", 0.0, sort_B, 1, 2)))
            hit = self._cache[key] = tuple(x for x in times if x[1] > 0)  # as ``timed``
        return hit
