"""Dispatch: send each token to its experts, run them, combine the weighted outputs.

Shape legend: T tokens, D d_model, E experts, A assignments, N kept assignments.

``dispatch_grouped`` is the fast path, in the MegaBlocks order (Gale et al. 2022):
1. sort assignments by expert (within an expert by capacity priority, see below),
2. histogram of rows per expert, 3. cumsum -> where each expert's rows start,
4. drop rows past the capacity (if any), gather the kept rows, one grouped GEMM,
5. scale by the gate weights and scatter-add back to the tokens.

Capacity priority (GShard §2.2, Switch §2.2): an expert first takes the tokens that chose it as
their top-1, in token order, then those that chose it as their top-2, and so on; so no token
loses its first choice to another token's second. (Expert choice has no capacity cut.)

``dispatch_loop`` is the reference: for each expert, for each choice rank, its tokens in
order, the first C kept, a plain FFN, scatter-add. Tests require the two to agree to 1e-5 in
fp32, outputs and gradients. A dropped assignment contributes nothing; the block's residual
carries the token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moesim.nn.balance import tokens_per_expert
from moesim.nn.experts import RoutedExperts
from moesim.nn.router import RouterOutput


@dataclass
class DispatchResult:
    out_TD: torch.Tensor
    kept_per_expert_E: torch.Tensor  # int64, after capacity
    dropped: torch.Tensor  # int64 scalar: assignments dropped by capacity


def _sort_and_rank(
    r: RouterOutput, n_experts: int, capacity: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Steps 1–3: every assignment in expert order (A,), rows per expert (E,), and with a
    capacity each sorted assignment's place in its expert's queue (A,)."""
    A = r.expert_idx_A.numel()
    if capacity is not None and r.top_k is not None and r.top_k > 1:
        # 1. sort by (expert, choice rank, token): top-1 choices first within each expert
        choice_A = torch.arange(A, device=r.expert_idx_A.device) % r.top_k
        key_A = (r.expert_idx_A * r.top_k + choice_A) * r.n_tokens + r.token_idx_A
        order_A = torch.argsort(key_A)  # keys are distinct
    else:
        order_A = torch.argsort(r.expert_idx_A, stable=True)  # 1. sort (token order)
    counts_E = tokens_per_expert(r.expert_idx_A, n_experts)  # 2. histogram (no host sync)
    if capacity is None:
        return order_A, counts_E, None
    starts_E = torch.cumsum(counts_E, 0) - counts_E  # 3. first row of each expert
    expert_sorted_A = r.expert_idx_A[order_A]
    rank_A = torch.arange(A, device=order_A.device) - starts_E[expert_sorted_A]
    return order_A, counts_E, rank_A


def sort_by_expert(
    r: RouterOutput, n_experts: int, capacity: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1–3 and the capacity cut: indices of the kept assignments in expert order,
    kept rows per expert (E,), and the number dropped. With a capacity the cut is a boolean
    mask, whose size the host must read (one sync); ``_dispatch_padded`` avoids it."""
    order_A, counts_E, rank_A = _sort_and_rank(r, n_experts, capacity)
    if capacity is None:
        return order_A, counts_E, counts_E.new_zeros(())
    kept_E = counts_E.clamp(max=capacity)
    return order_A[rank_A < capacity], kept_E, (counts_E - kept_E).sum()


def dispatch_grouped(
    x_TD: torch.Tensor, r: RouterOutput, experts: RoutedExperts, capacity: int | None
) -> DispatchResult:
    if capacity is not None and experts.kernel(x_TD, bounded=True) == "padded":
        return _dispatch_padded(x_TD, r, experts, capacity)
    order_N, kept_E, dropped = sort_by_expert(r, experts.n_experts, capacity)
    token_N = r.token_idx_A[order_N]
    y_ND = experts.grouped_forward(x_TD[token_N], kept_E, capacity)  # 4. gather + GEMM
    y_ND = y_ND * r.weight_A[order_N, None].to(y_ND.dtype)  # 5. weight and combine
    out_TD = torch.zeros_like(x_TD).index_add(0, token_N, y_ND)
    return DispatchResult(out_TD, kept_E, dropped)


def _dispatch_padded(
    x_TD: torch.Tensor, r: RouterOutput, experts: RoutedExperts, capacity: int
) -> DispatchResult:
    """Capacity mode without a host sync (GShard's dispatch tensor, MegaBlocks' padded form):
    every assignment goes to slot expert·C + place in the padded batch, one batched GEMM
    (``RoutedExperts.padded_rows``, which gives the dropped ones an output of 0). Every shape
    is known from T, K, E and C, so nothing is read back."""
    E, C = experts.n_experts, capacity
    order_A, counts_E, rank_A = _sort_and_rank(r, E, capacity)
    token_A = r.token_idx_A[order_A]
    y_AD = experts.padded_rows(x_TD[token_A], r.expert_idx_A[order_A], rank_A, C)  # 4. GEMM
    y_AD = y_AD * r.weight_A[order_A, None].to(y_AD.dtype)  # 5. weight and combine
    out_TD = torch.zeros_like(x_TD).index_add(0, token_A, y_AD)
    kept_E = counts_E.clamp(max=C)
    return DispatchResult(out_TD, kept_E, (counts_E - kept_E).sum())


def dispatch_loop(
    x_TD: torch.Tensor, r: RouterOutput, experts: RoutedExperts, capacity: int | None
) -> DispatchResult:
    out_TD = torch.zeros_like(x_TD)
    kept = []
    dropped = 0
    weights = experts.expert_weights()
    K = r.top_k or 1
    rank_A = torch.arange(r.expert_idx_A.numel(), device=x_TD.device) % K
    for e in range(experts.n_experts):
        # the top-1 choices of expert e in token order, then its top-2 choices, ...
        sel = torch.cat([torch.nonzero((r.expert_idx_A == e) & (rank_A == k)).squeeze(1)
                         for k in range(K)])  # fmt: skip
        if capacity is not None and sel.numel() > capacity:
            dropped += sel.numel() - capacity
            sel = sel[:capacity]
        kept.append(sel.numel())
        tok = r.token_idx_A[sel]
        y = experts.expert_forward(weights[e], x_TD[tok]) * r.weight_A[sel, None].to(x_TD.dtype)
        out_TD = out_TD.index_add(0, tok, y)
    dev = x_TD.device
    return DispatchResult(out_TD, torch.tensor(kept, device=dev), torch.tensor(dropped, device=dev))
