"""Element-wise (memory-bound) kernels of a transformer layer, counted from tensor shapes.

Each kernel is an ``OpWork`` of class ``memory_bound``: the bytes it reads and writes and the
launches it stands for; the cost model times it on the HBM curve plus ``launch_overhead_us``
per launch. Tensor shapes follow Korthikanti et al. 2022 ("Reducing Activation Recomputation",
§4: the (s, b, h) tensors of a block); what each kernel reads and writes follows the kernels
of the implementation modelled, Megatron-Core with Transformer Engine (TE):

- RMSNorm (TE ``rmsnorm_fwd``/``rmsnorm_bwd``): forward reads x, writes y and one fp32 rstd per
  row; backward reads dy, x and rstd and writes dx, then a second kernel reduces the per-block
  dgamma partials.
- residual adds (Megatron ``fused_bias_dropout.bias_dropout_add_fused_train``, one fused
  kernel: read the branch output and the residual, write the sum); in the backward the add
  passes the gradient through and autograd adds the two gradients of the block input (read
  two, write one). The catalog's models have no dropout, so no dropout mask is counted.
- RoPE (TE fused rotary embedding, one kernel for Q and one for K, forward and backward):
  reads and writes the rotated part of Q and K. Decoder-only models only (the encoder-decoder
  models of the catalog, T5/Switch, use relative position biases).
- qk-norm (Qwen3): an RMSNorm over each head of Q and of K.
- gated activation (Megatron ``fused_bias_swiglu``: one kernel each way): SwiGLU forward reads
  gate and up (2F) and writes F; its backward reads dOut (F) and the saved input (2F) and writes
  dInput (2F). Non-gated: F in, F out; backward 3F.
- router score/top-k (Megatron-Core ``router.py`` ``routing()`` with TE's fused
  ``fused_topk_with_score_function`` and ``fused_compute_score_for_moe_aux_loss``), fp32
  logits (T, E): forward reads the logits and writes dense probs and a bool routing map, and
  again for the aux-loss scores, plus two reductions; backward mirrors them and adds the two
  gradients of the logits.
- token permutation (TE ``transformer_engine/pytorch/triton/permutation.py``): the row-id map
  (three passes over the (T, E) routing map, int32 out), ``_permute_kernel`` (each token row
  read once and written k times, with its k probs), ``_unpermute_kernel`` (k rows read,
  accumulated in fp32, one row written); backward: the gradient rows permuted again (one read,
  k writes) and unpermuted (k reads, one write, the probs' gradient written (T, E)).
  Megatron's all-to-all dispatcher also sorts the received rows by local expert
  (``sort_chunks_by_idxs``, one read and one write of each row, forward and backward, before
  and after the experts) when a rank holds several experts and ep > 1.
- cross-entropy over the vocabulary (Megatron ``tensor_parallel/cross_entropy.py``, the
  unfused default): forward casts the bf16 logits to fp32 (read 2, write 4 bytes per logit),
  max (read 4), subtract the max in place (read 4, write 4), exp in place (4 + 4), sum (4),
  divide in place (4 + 4): 38 bytes per logit in 6 full passes plus 7 small kernels over
  (T,) tensors (target masks, the gathered target logit, log and subtract); backward
  subtracts 1 at the targets (2 small kernels), scales the softmax by the incoming gradient in
  place (4 + 4) and autograd casts the gradient back to bf16 (4 + 2): 14 bytes per logit.

Legend: ``T`` tokens of the microbatch on one attention rank, ``sp`` the sequence-parallel
split of norms and residuals (tp with sequence parallelism, else 1), ``a`` activation bytes,
``d`` d_model, ``F`` the FFN hidden width on this rank, ``E`` routed experts, ``k`` top-k.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.sim.costmodel import OpWork
from moesim.specs import Scenario

FP32_B = 4.0  # rstd, router logits/probs, fp32 logits
INDEX_B = 4.0  # int32 row-id map of the permutation
MASK_B = 1.0  # bool routing map

Ops = tuple[OpWork, ...]


def _mb(name: str, nbytes: float, kernels: int) -> OpWork:
    return OpWork(name, "memory_bound", 0.0, max(nbytes, 0.0), kernels=kernels)


# -- one kernel family each: bytes from shapes ------------------------------------------------
def rmsnorm(name: str, rows: float, width: float, a: float, backward: bool = False) -> OpWork:
    """RMSNorm over ``rows`` rows of ``width``: forward x in, y and fp32 rstd out (1 kernel);
    backward dy, x, rstd in, dx out, plus the dgamma reduction (2 kernels)."""
    if backward:
        return _mb(name + "_bwd", rows * (3 * width * a + FP32_B), 2)
    return _mb(name, rows * (2 * width * a + FP32_B), 1)


def residual_add(name: str, rows: float, width: float, a: float, backward: bool = False) -> OpWork:
    """Forward: branch + residual in, sum out; backward: the two gradients of the block input
    added by autograd. Three (rows, width) tensors, one kernel either way."""
    return _mb(name + ("_bwd" if backward else ""), 3 * rows * width * a, 1)


def rope(rows: float, q_width: float, k_width: float, a: float, backward: bool = False) -> OpWork:
    """Rotary embedding of the rotated widths of Q and K: read and write each, one kernel for
    Q and one for K, the same backward."""
    return _mb("rope" + ("_bwd" if backward else ""), 2 * rows * (q_width + k_width) * a, 2)


def activation(
    name: str, rows: float, hidden: float, gated: bool, a: float, backward: bool = False
) -> OpWork:
    """The FFN's activation over ``rows`` rows of ``hidden`` outputs (one fused kernel)."""
    nbytes = activation_bytes(rows, hidden, gated, a, backward)
    return _mb(name + "_bwd" if backward else name, nbytes, 1)


def activation_bytes(rows: float, hidden: float, gated: bool, a: float, backward: bool) -> float:
    """Bytes ``activation`` moves (the routed experts' per-draw times read it directly)."""
    if backward:
        widths = 5 if gated else 3  # dOut + saved input (2F gated) in, dInput (2F gated) out
        return rows * widths * hidden * a
    widths = 3 if gated else 2  # gate and up in (2F), F out
    return rows * widths * hidden * a


def router_ops(rows: float, experts: int, backward: bool = False) -> Ops:
    """Score function, top-k and the aux-loss scores of the router over fp32 (rows, E) logits."""
    e = float(experts)
    if backward:
        return (
            _mb("router_topk_bwd", rows * e * (FP32_B + FP32_B + MASK_B + FP32_B), 1),
            _mb("router_aux_loss_bwd", rows * e * 3 * FP32_B, 2),
            _mb("router_grad_add", rows * e * 3 * FP32_B, 1),
        )
    return (
        _mb("router_topk", rows * e * (2 * FP32_B + MASK_B), 1),
        _mb("router_aux_loss", rows * e * (2 * FP32_B + MASK_B + MASK_B + FP32_B), 3),
    )


def permute_ops(rows: float, d: int, k: int, experts: int, a: float, backward: bool = False) -> Ops:
    """Gather of a rank's ``rows`` tokens into ``k`` expert-sorted copies (forward), and its
    backward: the copies' gradients summed back into token rows, with the probs' gradient."""
    e = float(experts)
    row_map = rows * e * INDEX_B
    if backward:  # unpermute of the gradient rows; the probs' gradient (T, E) written
        nbytes = rows * (k * (d * a + FP32_B) + d * a) + row_map + rows * e * FP32_B
        return (_mb("moe_permute_bwd", nbytes, 1),)
    build = rows * e * (MASK_B + 2 * INDEX_B)  # three passes: map in, partial and final map out
    gather = rows * d * a + rows * k * (d * a + 2 * FP32_B) + row_map  # row once, k copies
    return (_mb("moe_row_id_map", build, 3), _mb("moe_permute", gather, 1))


def unpermute_ops(
    rows: float, d: int, k: int, experts: int, a: float, backward: bool = False
) -> Ops:
    """The experts' ``k`` output copies of each token summed back into its row (forward), and
    its backward: the token's gradient row copied to its ``k`` copies."""
    row_map = rows * float(experts) * INDEX_B
    name = "moe_unpermute" + ("_bwd" if backward else "")
    return (_mb(name, rows * (k + 1) * d * a + row_map, 1),)


def sort_chunks(copies: float, d: int, a: float, backward: bool = False) -> OpWork:
    """Megatron's ``sort_chunks_by_idxs`` of the received rows (with their probs): one read
    and one write of each row, before the experts and again after them (2 kernels)."""
    name = "moe_sort_chunks" + ("_bwd" if backward else "")
    return _mb(name, sort_chunks_bytes(copies, d, a), 2)


def sort_chunks_bytes(copies: float, d: int, a: float) -> float:
    """Bytes ``sort_chunks`` moves, either direction (2 kernels)."""
    return 2 * 2 * copies * (d * a + FP32_B)


def cross_entropy(logits: float, backward: bool = False) -> OpWork:
    """Megatron's vocab-parallel cross-entropy over ``logits`` logits on this rank."""
    if backward:
        return _mb("cross_entropy_bwd", 14.0 * logits, 4)
    return _mb("cross_entropy", 38.0 * logits, 13)


# -- a whole layer ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerElementwise:
    """The element-wise kernels of one layer on one rank for one microbatch, by where they run.

    ``attention``: input norm, qk-norm, RoPE, the attention's residual add; ``ffn``: the
    pre-FFN norm, the activation of the dense FFN or of the shared experts, the FFN's residual
    add; ``router`` and ``permute``/``unpermute`` only in MoE layers (the routed experts'
    activation and chunk sort depend on the copies received: ``ExpertCost``)."""

    attention: Ops
    attention_bwd: Ops
    ffn: Ops
    ffn_bwd: Ops
    router: Ops = ()
    router_bwd: Ops = ()
    permute: Ops = ()
    permute_bwd: Ops = ()
    unpermute: Ops = ()
    unpermute_bwd: Ops = ()


def layer_elementwise(s: Scenario, tokens: float, moe: bool) -> LayerElementwise:
    """Element-wise kernels of one layer for ``tokens`` tokens per attention rank."""
    m, p = s.model, s.parallel
    a = s.precision.activation_bytes
    tp = p.tp
    sp = tp if p.sequence_parallel else 1
    d = m.d_model
    rows_sp = tokens / sp  # norms and residual adds: the sequence-parallel shard

    def attention_ops(bwd: bool) -> Ops:
        ops = [rmsnorm("input_norm", rows_sp, d, a, bwd)]
        if m.qk_norm:
            q = rmsnorm("q_norm", tokens, m.q_dim / tp, a, bwd)
            k = rmsnorm("k_norm", tokens, m.kv_dim / tp, a, bwd)
            ops += [q, k]
        if m.n_encoder_layers == 0:  # RoPE: the decoder-only models
            if m.mla is not None:  # decoupled RoPE: per-head query part, one shared key part
                q_w, k_w = m.n_heads * m.mla.qk_rope_head_dim / tp, m.mla.qk_rope_head_dim
            else:
                q_w, k_w = m.q_dim / tp, m.kv_dim / tp
            ops.append(rope(tokens, q_w, k_w, a, bwd))
        ops.append(residual_add("attn_residual", rows_sp, d, a, bwd))
        return tuple(ops)

    if moe and m.moe is not None:
        hidden = m.moe.n_shared_experts * m.moe.shared_hidden
        act_name = "shared_expert_act"
    else:
        hidden, act_name = m.ffn_hidden, "ffn_act"

    def ffn_ops(bwd: bool) -> Ops:
        ops = [rmsnorm("pre_ffn_norm", rows_sp, d, a, bwd)]
        if hidden:
            ops.append(activation(act_name, tokens, hidden / tp, m.ffn_gated, a, bwd))
        ops.append(residual_add("ffn_residual", rows_sp, d, a, bwd))
        return tuple(ops)

    out = LayerElementwise(
        attention=attention_ops(False),
        attention_bwd=attention_ops(True),
        ffn=ffn_ops(False),
        ffn_bwd=ffn_ops(True),
    )
    if not moe or m.moe is None:
        return out
    e = m.moe
    t_moe = tokens / tp  # each TP rank routes its sequence shard
    return LayerElementwise(
        attention=out.attention,
        attention_bwd=out.attention_bwd,
        ffn=out.ffn,
        ffn_bwd=out.ffn_bwd,
        router=router_ops(t_moe, e.n_routed_experts),
        router_bwd=router_ops(t_moe, e.n_routed_experts, True),
        permute=permute_ops(t_moe, d, e.top_k, e.n_routed_experts, a),
        permute_bwd=permute_ops(t_moe, d, e.top_k, e.n_routed_experts, a, True),
        unpermute=unpermute_ops(t_moe, d, e.top_k, e.n_routed_experts, a),
        unpermute_bwd=unpermute_ops(t_moe, d, e.top_k, e.n_routed_experts, a, True),
    )


def total_bytes(ops: Ops) -> float:
    return sum(op.bytes for op in ops)
