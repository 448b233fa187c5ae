"""The optimizer step of one rank: memory-bound passes over its parameter shard.

Modelled on Megatron-Core's distributed optimizer (``optimizer/distrib_optimizer.py`` and
``optimizer/clip_grads.py``), run after the gradient reduce:

1. ``grad_to_fp32``: ``_copy_model_grads_to_main_grads`` sets each shard's main gradient to
   ``shard_model_grad.float()``: read the reduced gradient, write it in fp32 (nothing when the
   gradients already are fp32). One kernel per parameter tensor of the shard.
2. ``grad_norm``: ``get_grad_norm_fp32`` reads every main gradient once
   (``multi_tensor_l2norm``). The clipping scale (``multi_tensor_scale``) runs only when the
   norm exceeds ``max_norm`` and is not counted; the norm's all-reduce is one scalar.
3. ``adam``: read the fp32 master weight, the gradient and both moments; write the master
   weight and the moments (ZeRO paper §3 state sizes; moments in ``precision.optimizer_states``).
4. ``param_copy``: ``_copy_main_params_to_model_params`` writes the master weights back into
   the 16-bit model parameters (read 4, write ``param_bytes``), one kernel per tensor.

Multi-tensor kernels (2, 3) launch once per 320 chunks of 2048·32 elements or per full table
of tensors (Apex/TE ``multi_tensor_apply``: ``depth_to_max_blocks`` 320 for every depth,
``depth_to_max_tensors`` 110 for one list, 36 for four; Megatron's chunk size 2048·32 in
``core/utils.py``).

Under ZeRO ≥ 1 a rank updates 1/(dp·cp) of its non-expert parameters and 1/edp of its experts.
"""

from __future__ import annotations

import math

from moesim.sim.costmodel import OpWork
from moesim.specs import ModelSpec, ParallelSpec, Precision

FP32_B = 4.0
CHUNK_ELEMENTS = 2048 * 32  # Megatron's multi_tensor_applier chunk size
MAX_BLOCKS = 320  # chunks per launch (depth_to_max_blocks)
MAX_TENSORS = {1: 110, 4: 36}  # tensors per launch by lists (depth_to_max_tensors)


def multi_tensor_launches(elements: float, tensors: float, depth: int) -> int:
    """Launches of one multi-tensor-apply pass over ``elements`` in ``tensors`` tensors."""
    if elements <= 0:
        return 0
    by_chunks = math.ceil(elements / (CHUNK_ELEMENTS * MAX_BLOCKS))
    by_tensors = math.ceil(tensors / MAX_TENSORS[depth])
    return max(1, by_chunks, by_tensors)


def layer_param_tensors(m: ModelSpec, moe: bool, local_experts: int) -> int:
    """Parameter tensors of one layer in Megatron-Core's TE layer spec: fused QKV (or MLA's
    down/up projections and latent norms) and output projection, two norms' weights, the
    FFN's fc1/fc2 (TE GroupedLinear keeps one weight per local expert), router weight."""
    if m.mla is not None:
        attn = 8 if m.mla.q_lora_rank else 6  # q_down, q_norm, q_up | q; kv_down, kv_norm, ...
    else:
        attn = 2 + (1 if m.attention_bias else 0) + (2 if m.qk_norm else 0)
    norms = 2
    if moe and m.moe is not None:
        e = m.moe
        shared = 2 if e.n_shared_experts else 0
        gate = 1 if e.shared_expert_gate and e.n_shared_experts else 0
        return attn + norms + 1 + 2 * local_experts + shared + gate
    return attn + norms + 2


def optimizer_ops(
    prec: Precision, p: ParallelSpec, dense: float, expert: float, tensors: float
) -> list[OpWork]:
    """The optimizer's passes over a rank holding ``dense`` non-expert and ``expert`` expert
    parameters in ``tensors`` tensors (before ZeRO sharding)."""
    if p.zero_stage >= 1:
        dense /= p.dp_size * p.cp
        expert /= p.edp
        shard = max(p.dp_size * p.cp, 1)
        tensors = math.ceil(tensors / shard) + 1  # tensors a shard's range touches
    n = dense + expert
    if n <= 0:
        return []
    master = prec.master_weights and prec.params != "fp32"
    weight_b = FP32_B if master else prec.param_bytes
    grad_b = FP32_B if master else prec.grad_bytes
    ops: list[OpWork] = []
    per_tensor = max(1, int(tensors))
    if master and prec.grads != "fp32":
        ops.append(OpWork("grad_to_fp32", "memory_bound", 0.0, n * (prec.grad_bytes + FP32_B),
                          kernels=per_tensor))  # fmt: skip
    ops.append(OpWork("grad_norm", "memory_bound", 0.0, n * grad_b,
                      kernels=multi_tensor_launches(n, tensors, 1)))  # fmt: skip
    moments = prec.optimizer_bytes_per_param - (FP32_B if master else 0.0)  # m and v
    adam_b = n * (2 * weight_b + grad_b + 2 * moments)
    ops.append(OpWork("adam", "memory_bound", 0.0, adam_b,
                      kernels=multi_tensor_launches(n, tensors, 4)))  # fmt: skip
    if master:
        ops.append(OpWork("param_copy", "memory_bound", 0.0, n * (FP32_B + prec.param_bytes),
                          kernels=per_tensor))  # fmt: skip
    return ops
