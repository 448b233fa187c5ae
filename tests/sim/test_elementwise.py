"""Element-wise kernels: bytes from tensor shapes, hand-computed for a small model."""

from __future__ import annotations

import pytest
from sim_scenarios import SMALL_MOE, build

from moesim.sim import grad_sync, stage_extras
from moesim.sim import layer_costs as layer_costs_mod
from moesim.sim.costmodel import OpWork
from moesim.sim.elementwise import (
    LayerElementwise,
    cross_entropy,
    layer_elementwise,
    permute_ops,
    total_bytes,
    unpermute_ops,
)
from moesim.sim.layer_costs import ExpertElementwise
from moesim.sim.run import simulate

# tiny-moe: d 256, 8 heads of 32 (q 256), 4 KV heads (kv 128), 8 experts top-2, one shared
# expert of 256, SwiGLU; one microbatch of 256 tokens, tp 1, bf16 (2 bytes)
TINY_D = {
    **SMALL_MOE,
    "model": "tiny-moe",
    "cluster": {"gpu": "h100-sxm", "nodes": 1, "gpus_per_node": 8},
    "parallel": {"tp": 1, "pp": 1, "ep": 1, "zero_stage": 0},
    "workload": {"stage": "pretrain", "seq_len": 256, "global_batch": 8},
}
TINY = build(TINY_D)
T, D, A = 256, 256, 2


def _bytes(ops) -> dict[str, float]:
    return {op.name: op.bytes for op in ops}


def test_attention_block_bytes_by_hand():
    el = layer_elementwise(TINY, T, moe=True)
    assert _bytes(el.attention) == {
        "input_norm": T * (2 * D * A + 4),  # x in, y out, fp32 rstd per row
        "rope": 2 * T * (256 + 128) * A,  # Q and K read and written
        "attn_residual": 3 * T * D * A,  # branch + residual in, sum out
    }
    assert [op.kernels for op in el.attention] == [1, 2, 1]
    assert _bytes(el.attention_bwd) == {
        "input_norm_bwd": T * (3 * D * A + 4),  # dy, x, rstd in; dx out
        "rope_bwd": 2 * T * (256 + 128) * A,
        "attn_residual_bwd": 3 * T * D * A,  # the block input's two gradients added
    }


def test_ffn_block_and_router_and_permutation_bytes_by_hand():
    el = layer_elementwise(TINY, T, moe=True)
    assert _bytes(el.ffn) == {
        "pre_ffn_norm": T * (2 * D * A + 4),
        "shared_expert_act": T * 3 * 256 * A,  # gate and up (2F) in, F out
        "ffn_residual": 3 * T * D * A,
    }
    assert _bytes(el.ffn_bwd)["shared_expert_act_bwd"] == T * 5 * 256 * A
    assert _bytes(el.router) == {
        "router_topk": T * 8 * (4 + 4 + 1),  # fp32 logits in; fp32 probs, bool map out
        "router_aux_loss": T * 8 * (4 + 4 + 1 + 1 + 4),
    }
    assert _bytes(el.permute) == {
        "moe_row_id_map": T * 8 * (1 + 4 + 4),
        "moe_permute": T * D * A + T * 2 * (D * A + 8) + T * 8 * 4,
    }
    assert _bytes(el.unpermute) == {"moe_unpermute": T * 3 * D * A + T * 8 * 4}


def test_dense_layer_has_no_moe_kernels():
    el = layer_elementwise(TINY, T, moe=False)
    assert el.router == el.permute == el.unpermute == ()
    assert _bytes(el.ffn)["ffn_act"] == T * 3 * 768 * A


def test_sequence_parallel_splits_norms_and_tensor_parallel_the_heads():
    tp2 = build(TINY_D, parallel={"tp": 2})
    one, two = layer_elementwise(TINY, T, True), layer_elementwise(tp2, T, True)
    for a, b in zip(one.attention + one.ffn, two.attention + two.ffn, strict=True):
        assert b.bytes == pytest.approx(a.bytes / 2)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_permutation_bytes_grow_with_top_k(k):
    rows, e = 4096.0, 256

    def copies(ops, kk):
        return total_bytes(ops(rows, 7168, kk, e, 2.0)) - total_bytes(ops(rows, 7168, 0, e, 2.0))

    for ops in (permute_ops, unpermute_ops):
        assert copies(ops, k) == pytest.approx(k * copies(ops, 1))  # linear in k
        assert copies(ops, 1) >= rows * 7168 * 2.0  # at least one row of d per copy


def test_cross_entropy_counts_the_fp32_passes_over_the_logits():
    assert cross_entropy(1000.0).bytes == 38_000.0
    assert cross_entropy(1000.0, backward=True).bytes == 14_000.0


def test_expert_elementwise_scales_with_copies_and_sorts_only_behind_an_all_to_all():
    from moesim.sim.run import build_context

    ctx = build_context(TINY)  # ep 1: no sort
    names = [n for n, _ in ctx.expert_elementwise.ops(512)]
    assert names == ["expert_act"]
    ep8 = build(SMALL_MOE)  # mixtral, ep 8: one local expert, no sort either
    assert not ExpertElementwise(ep8, build_context(ep8).cm).sorts
    ep4 = build(SMALL_MOE, parallel={"ep": 4})  # two local experts
    ex = ExpertElementwise(ep4, build_context(ep4).cm)
    assert ex.sorts
    small, big = dict(ex.ops(1000)), dict(ex.ops(8000))
    assert big["expert_act"] > small["expert_act"]
    assert set(big) == {"expert_act", "moe_sort_chunks"}


def _without_new_costs(monkeypatch):
    monkeypatch.setattr(
        layer_costs_mod, "layer_elementwise", lambda s, t, moe: LayerElementwise((), (), (), ())
    )
    monkeypatch.setattr(ExpertElementwise, "ops", lambda self, copies, backward=False: ())
    monkeypatch.setattr(
        stage_extras, "cross_entropy", lambda n, backward=False: OpWork("x", "memory_bound", 0, 0)
    )
    monkeypatch.setattr(grad_sync, "optimizer_ops", lambda *a: [])


@pytest.mark.parametrize(
    "scenario",
    [
        build(SMALL_MOE),
        build(SMALL_MOE, model="llama-3-8b", parallel={"ep": 1}),
        build(SMALL_MOE, parallel={"tp": 2, "ep": 4, "zero_stage": 1}),
    ],
)
def test_the_new_costs_only_add_time(scenario, monkeypatch):
    with_costs = simulate(scenario)
    _without_new_costs(monkeypatch)
    without = simulate(scenario)
    assert with_costs.step_time_s > without.step_time_s
    assert with_costs.time_breakdown_s["compute"] > without.time_breakdown_s["compute"]
    assert without.time_breakdown_s["optimizer"] == 0.0


def test_breakdown_sums_to_the_step_and_books_the_optimizer_in_compute():
    r = simulate(build(SMALL_MOE))
    tb = r.time_breakdown_s
    parts = tb["compute"] + tb["exposed_comm"] + tb["bubble"] + tb["imbalance"]
    assert parts == pytest.approx(r.step_time_s)
    assert 0.0 < tb["optimizer"] < tb["compute"]


def test_trace_names_the_element_wise_kernels(tmp_path):
    import json

    path = tmp_path / "t.json"
    simulate(build(SMALL_MOE), trace_path=path)
    names = {e["name"] for e in json.loads(path.read_text())["traceEvents"] if e["ph"] == "X"}
    expected = {"input_norm", "rope", "attn_residual", "pre_ffn_norm", "router_topk"}
    expected |= {"moe_permute", "moe_unpermute", "expert_act", "input_norm_bwd", "adam"}
    assert expected <= names
