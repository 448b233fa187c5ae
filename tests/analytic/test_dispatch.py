"""Dispatcher choice and the distinct destinations of a token under group-limited routing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from moesim.analytic.dispatch import (
    comm_sm_slowdown,
    expected_bins_per_token,
    resolve_dispatcher,
)
from moesim.catalog import load_model
from moesim.scenario_io import scenario_from_dict
from moesim.specs import MoESpec


def _moe(experts: int, k: int, groups: int = 1, m: int | None = None) -> MoESpec:
    return MoESpec(
        n_routed_experts=experts,
        top_k=k,
        expert_hidden=64,
        n_groups=groups,
        topk_groups=m,
        router="sigmoid_topk",  # DeepSeek-V3's: groups scored by their two best experts
    )


def _router_draw_bins(moe: MoESpec, bins: int, tokens: int, seed: int) -> float:
    """Monte-Carlo of moesim.nn's router: i.i.d. scores (uniform routing in expectation), the
    group-limited mask of its top-M groups, then the top-k experts left; the mean number of
    distinct bins (contiguous blocks of E/bins experts) a token reaches."""
    torch = pytest.importorskip("torch")
    from moesim.nn.router import group_limited_mask

    g = torch.Generator().manual_seed(seed)
    scores_TE = torch.rand(tokens, moe.n_routed_experts, generator=g)
    if moe.topk_groups is not None and moe.n_groups > 1:
        score = "top2_sum" if moe.router == "sigmoid_topk" else "max"
        mask_TE = group_limited_mask(scores_TE, moe.n_groups, moe.topk_groups, score)
        scores_TE = scores_TE.masked_fill(~mask_TE, -1.0)
    experts_TK = scores_TE.topk(moe.top_k, dim=-1).indices.numpy()
    bins_TK = experts_TK // (moe.n_routed_experts // bins)
    return float(np.mean([len(set(row)) for row in bins_TK.tolist()]))


@pytest.mark.parametrize(
    ("moe", "bins"),
    [
        (_moe(256, 8, 8, 4), 64),  # DeepSeek-V3 on EP 64: groups span 8 GPUs each
        (_moe(256, 8, 8, 4), 8),  # … its 8 nodes: one group per node
        (_moe(256, 8, 8, 4), 4),  # two groups per bin
        (_moe(160, 6, 8, 3).model_copy(update={"router": "softmax_topk"}), 16),  # V2's 3 of 8
        (_moe(64, 8), 8),  # no group limit
    ],
)
def test_expected_bins_match_the_routers_own_draw(moe: MoESpec, bins: int):
    tokens = 20_000
    mc = _router_draw_bins(moe, bins, tokens, seed=1)
    exact = expected_bins_per_token(moe, bins)
    # two independent draws (20k and 8k tokens): standard errors below 0.01 each
    assert exact == pytest.approx(mc, abs=0.04)


def test_group_limit_never_increases_distinct_gpus_or_nodes():
    for experts, k, groups, bins in itertools.product((64, 256), (2, 8), (4, 8), (2, 8, 64)):
        free = expected_bins_per_token(_moe(experts, k, groups), bins)
        for m in sorted({1, groups // 2, groups - 1, groups}):
            limited = expected_bins_per_token(_moe(experts, k, groups, m), bins)
            assert limited <= free + 1e-9
            if groups >= bins:  # whole groups per bin: at most M bins
                assert limited <= m + 1e-9
            assert 1.0 - 1e-9 <= limited <= min(k, bins) + 1e-9


def _scenario(model: str, ep: int, nodes: int, **parallel) -> object:
    return scenario_from_dict(
        {
            "name": "t",
            "model": model,
            "cluster": {"gpu": "h100-sxm", "nodes": nodes, "gpus_per_node": 8},
            "parallel": {"ep": ep, **parallel},
            "workload": {"stage": "pretrain", "seq_len": 1024, "global_batch": 8 * nodes},
        }
    )


def test_auto_picks_deepep_only_where_it_sends_fewer_bytes():
    # Mixtral on EP 8: one expert per GPU, a token's 2 experts are always on 2 GPUs
    assert resolve_dispatcher(_scenario("mixtral-8x7b", 8, 1)) == "alltoall"
    # OLMoE: 8 experts per GPU at EP 8, top-8: a token reaches ~5.3 GPUs, not 8
    assert resolve_dispatcher(_scenario("olmoe-1b-7b", 8, 1)) == "deepep"
    # an EP group across nodes: one RDMA copy per node
    assert resolve_dispatcher(_scenario("mixtral-8x7b", 8, 2, pp=1, tp=1, dp=16)) == "alltoall"
    assert resolve_dispatcher(_scenario("olmoe-1b-7b", 16, 2)) == "deepep"
    # an explicit dispatcher wins; simulation.all_to_all still steers auto
    s = _scenario("olmoe-1b-7b", 8, 1, moe_dispatcher="allgather")
    assert resolve_dispatcher(s) == "allgather"
    d = s.model_dump()
    d["parallel"]["moe_dispatcher"] = "auto"
    d["simulation"]["all_to_all"] = "direct"
    assert resolve_dispatcher(type(s).model_validate(d)) == "alltoall"


def test_comm_sms_slow_compute_by_the_share_they_take():
    s = _scenario("olmoe-1b-7b", 8, 1)
    assert comm_sm_slowdown(s) == pytest.approx(132 / (132 - 20))  # DeepEP's default 20 SMs
    assert comm_sm_slowdown(_scenario("olmoe-1b-7b", 8, 1, moe_comm_sms=0)) == 1.0
    assert comm_sm_slowdown(_scenario("olmoe-1b-7b", 8, 1, moe_comm_sms=66)) == 2.0
    assert comm_sm_slowdown(_scenario("mixtral-8x7b", 8, 1)) == 1.0  # NCCL: not modelled


def test_deepseek_v3_nodes_per_token_stay_within_its_four_groups():
    moe = load_model("deepseek-v3").moe
    assert moe is not None
    assert expected_bins_per_token(moe, 8) <= 4.0
    assert expected_bins_per_token(moe, 8) < expected_bins_per_token(_moe(256, 8), 8)
