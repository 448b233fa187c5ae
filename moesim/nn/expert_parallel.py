"""Expert parallelism: experts split over the ranks of a process group, tokens exchanged with
``all_to_all_single`` (GShard, Lepikhin et al. 2020; the Megatron/DeepSpeed dispatcher).

Shape legend: W ranks in the EP group, E global experts, L = E/W local experts,
N rows sent (kept assignments, sorted by global expert), M rows received.

Rank w holds experts [w·L, (w+1)·L). The router is replicated; every rank routes its own
tokens. Steps:
1. sort local assignments by global expert; rows per expert (E,) -> rows per destination rank,
2. all-to-all the per-expert counts, so each rank knows what it will receive,
3. all-to-all the rows (uneven splits),
4. the received rows come ordered (source rank, local expert): regroup by local expert,
   grouped GEMM, undo the regrouping,
5. all-to-all the results back (the splits swapped), weight and scatter-add to the tokens.

Capacity, when set, is applied on the sending rank (GShard's per-group capacity).
Gradients flow through ``_AllToAll``: the backward of an all-to-all is the all-to-all with the
send and receive splits swapped.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from moesim.nn.dispatch import DispatchResult, sort_by_expert
from moesim.nn.experts import RoutedExperts
from moesim.nn.router import RouterOutput


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, recv_splits: list[int], send_splits: list[int], group):
        ctx.splits, ctx.group = (recv_splits, send_splits), group
        out = x.new_empty((sum(recv_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), recv_splits, send_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        recv_splits, send_splits = ctx.splits
        grad_in = grad_out.new_empty((sum(send_splits), *grad_out.shape[1:]))
        dist.all_to_all_single(
            grad_in, grad_out.contiguous(), send_splits, recv_splits, group=ctx.group
        )
        return grad_in, None, None, None


def all_to_all(x: torch.Tensor, recv_splits: list[int], send_splits: list[int], group=None):
    """Differentiable ``all_to_all_single`` with uneven splits along dim 0."""
    return _AllToAll.apply(x, recv_splits, send_splits, group)


def ep_dispatch(
    x_TD: torch.Tensor,
    r: RouterOutput,
    local_experts: RoutedExperts,
    n_experts: int,
    capacity: int | None,
    group=None,
) -> DispatchResult:
    W = dist.get_world_size(group)
    L = local_experts.n_experts
    assert n_experts == L * W, f"{n_experts} experts do not split into {W} ranks of {L}"
    # 1. sort by global expert, count rows per expert and per destination rank
    order_N, kept_E, dropped = sort_by_expert(r, n_experts, capacity)
    token_N = r.token_idx_A[order_N]
    send_W = kept_E.view(W, L).sum(1)
    # 2. exchange counts: recv_WL[w, l] = rows rank w sends to my local expert l
    recv_WL = torch.empty_like(kept_E)
    dist.all_to_all_single(recv_WL, kept_E.contiguous(), group=group)
    recv_WL = recv_WL.view(W, L)
    send_splits, recv_splits = send_W.tolist(), recv_WL.sum(1).tolist()
    # 3. exchange rows
    x_MD = all_to_all(x_TD[token_N], recv_splits, send_splits, group)
    # 4. regroup (source rank, local expert) -> (local expert, source rank); grouped GEMM
    local_M = torch.arange(L, device=x_TD.device).repeat(W).repeat_interleave(recv_WL.flatten())
    regroup_M = torch.argsort(local_M, stable=True)
    # each of the W senders cut at the capacity: a local expert receives at most W·C rows
    max_rows = None if capacity is None else W * capacity
    y_MD = local_experts.grouped_forward(x_MD[regroup_M], recv_WL.sum(0), max_rows)
    y_MD = y_MD[torch.argsort(regroup_M)]
    # 5. send results back, weight, combine
    y_ND = all_to_all(y_MD, send_splits, recv_splits, group)
    y_ND = y_ND * r.weight_A[order_N, None].to(y_ND.dtype)
    out_TD = torch.zeros_like(x_TD).index_add(0, token_N, y_ND)
    return DispatchResult(out_TD, kept_E, dropped)
