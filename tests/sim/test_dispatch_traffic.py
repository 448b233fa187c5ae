"""MoE dispatchers in the simulator: bytes on the links, fp8 backward dispatch, the SMs their
kernels take, Megatron-Core's EP overlap, and symmetric against full fidelity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sim_scenarios import build

from moesim.scenario_io import load_scenario
from moesim.sim.engine import run_to_completion
from moesim.sim.run import _start_moe_layer, build_context, simulate
from moesim.sim.spans import exposed_length_s, union_length_s
from moesim.sim.training_step import pipeline_pass

# OLMoE (64 experts, top-8: fine-grained, 8 experts per GPU at EP 8) on two nodes of 4 GPUs:
# the EP group of each stage spans both nodes
OLMOE = {
    "name": "olmoe-8xh100-small",
    "model": "olmoe-1b-7b",
    "cluster": {"gpu": "h100-sxm", "nodes": 4, "gpus_per_node": 4},
    "parallel": {"tp": 1, "pp": 2, "ep": 8, "zero_stage": 1, "schedule": "1f1b"},
    "routing": {"distribution": "uniform", "seed": 0},
    "workload": {"stage": "pretrain", "seq_len": 1024, "global_batch": 32},
}


def _olmoe(**sections):
    return build(OLMOE, **sections)


def _ctx(**sections):
    return build_context(_olmoe(**sections))


def _bytes(ctx, group, copies, kind="dispatch"):
    """(all link bytes, bytes crossing nodes) of one dispatch of ``copies``."""
    c = ctx.a2a_collective(group, copies, 1000.0, kind)
    total = network = 0.0
    node = ctx.topo.node_of
    for p in c.phases:
        for s, d, b in p.flows:
            total += b * p.repeat
            network += b * p.repeat if node(s) != node(d) else 0.0
    return total, network


@pytest.mark.parametrize("gpus_per_node", [8, 4])
def test_deepep_moves_no_more_bytes_than_alltoall(gpus_per_node: int):
    """Inside a node DeepEP sends fewer bytes in all; across nodes fewer over RDMA (its NVLink
    forwarding adds NVLink bytes, which alltoall does not have) — for any copy matrix."""
    cluster = {"nodes": 4, "gpus_per_node": gpus_per_node}
    a2a = _ctx(cluster=cluster, parallel={"moe_dispatcher": "alltoall"})
    dee = _ctx(cluster=cluster, parallel={"moe_dispatcher": "deepep"})
    group = a2a.ep_group(0)
    rng = np.random.default_rng(7)
    for _ in range(20):
        copies = rng.integers(0, 5000, size=(8, 8)).astype(float) * rng.random((8, 8))
        np.fill_diagonal(copies, 0.0)
        total_a, net_a = _bytes(a2a, group, copies)
        total_d, net_d = _bytes(dee, group, copies)
        assert net_d <= net_a + 1e-6
        if gpus_per_node == 8:
            assert total_d <= total_a + 1e-6
            assert net_a == 0.0
        else:
            assert net_d < net_a


def _layer_op_s(precision: dict[str, str]) -> dict[str, float]:
    """Seconds of each all-to-all of one MoE layer's forward and backward (alone on the links:
    the moe_layer workload runs nothing beside them)."""
    work = {"stage": "moe_layer", "tokens_per_gpu": 16384, "passes": "forward_backward"}
    ctx = build_context(_olmoe(precision=precision, workload=work))
    run_to_completion(ctx.env, _start_moe_layer(ctx))
    out: dict[str, float] = {}
    for _, name, cat, a, b in ctx.ranks[0].intervals:
        if cat == "all_to_all":
            out[name] = out.get(name, 0.0) + b - a
    return out


def test_fp8_dispatch_halves_the_backward_dispatch_and_keeps_the_combine_in_bf16():
    """DeepSeek-V3 §3.3: the combine's backward (gradients to the experts) goes in fp8 with the
    forward dispatch; the forward combine and the dispatch's backward stay bf16."""
    bf16 = _layer_op_s({"dispatch": "bf16"})
    fp8 = _layer_op_s({"dispatch": "fp8"})
    both = _layer_op_s({"dispatch": "fp8", "combine": "fp8"})
    # bandwidth halves; the latencies (µs against ms here) do not
    for name, ratio in (("dispatch", 0.5), ("combine_bwd", 0.5), ("combine", 1.0)):
        assert fp8[name] / bf16[name] == pytest.approx(ratio, rel=0.03), name
    assert fp8["dispatch_bwd"] == pytest.approx(bf16["dispatch_bwd"], rel=1e-9)
    assert both["dispatch_bwd"] / fp8["dispatch_bwd"] == pytest.approx(0.5, rel=0.03)
    assert both["combine"] / fp8["combine"] == pytest.approx(0.5, rel=0.03)


def _exposed_a2a(s) -> tuple[float, float, float]:
    """(step s, exposed all-to-all s, compute s) of the first simulated rank."""
    ctx = build_context(s)
    procs = pipeline_pass(ctx)
    ctx.env.run()
    assert not any(p.is_alive for p in procs.values())
    r = ctx.ranks[min(ctx.ranks)]
    compute = [(a, b) for st, _, _, a, b in r.intervals if st == "compute"]
    a2a = [(a, b) for _, _, cat, a, b in r.intervals if cat == "all_to_all"]
    return ctx.env.now, exposed_length_s(a2a, compute), union_length_s(compute)


@pytest.mark.parametrize(
    "parallel",
    [
        {"schedule": "interleaved_1f1b", "virtual_stages": 2, "moe_dispatcher": "deepep"},
        {"schedule": "interleaved_1f1b", "virtual_stages": 2, "moe_dispatcher": "alltoall"},
        {"pp": 1, "moe_dispatcher": "deepep"},
    ],
)
def test_ep_overlap_hides_all_to_all_and_never_slows_the_step(parallel):
    work = {**OLMOE["workload"], "global_batch": 64}  # 8 microbatches: a steady state
    off = _exposed_a2a(
        _olmoe(parallel={**parallel, "overlap_moe_expert_parallel_comm": False}, workload=work)
    )
    on = _exposed_a2a(
        _olmoe(parallel={**parallel, "overlap_moe_expert_parallel_comm": True}, workload=work)
    )
    assert on[0] <= off[0] * (1 + 1e-9)
    assert on[1] < 0.9 * off[1]


def test_ep_overlap_hides_deepseek_v3_all_to_all_on_1024_h100():
    """The shipped interleaved layout: part of the exposed all-to-all is hidden."""
    path = Path(__file__).parents[2] / "scenarios/pretrain/deepseek-v3-1024xh100-interleaved.yaml"
    on = load_scenario(path)
    assert on.parallel.overlap_moe_expert_parallel_comm
    d = on.model_dump()
    d["parallel"]["overlap_moe_expert_parallel_comm"] = False
    off = type(on).model_validate(d)
    r_on, r_off = simulate(on), simulate(off)
    assert r_on.step_time_s < r_off.step_time_s
    exposed_on = r_on.time_breakdown_s["exposed_comm"]
    assert exposed_on < 0.8 * r_off.time_breakdown_s["exposed_comm"]


def test_comm_sms_slow_the_compute_that_overlaps_an_all_to_all():
    par = {"schedule": "interleaved_1f1b", "virtual_stages": 2, "moe_dispatcher": "deepep"}
    par["overlap_moe_expert_parallel_comm"] = True
    free = _exposed_a2a(_olmoe(parallel={**par, "moe_comm_sms": 0}))
    taken = _exposed_a2a(_olmoe(parallel={**par, "moe_comm_sms": 40}))
    assert taken[2] > free[2] * 1.01  # overlapped kernels ran on 92 of 132 SMs
    assert taken[2] < free[2] * 132 / 92  # … but not all of them overlapped
    assert taken[0] >= free[0]
    # without overlap nothing runs beside an all-to-all on this model (no shared experts)
    par["overlap_moe_expert_parallel_comm"] = False
    alone = [_exposed_a2a(_olmoe(parallel={**par, "moe_comm_sms": n}))[2] for n in (0, 40)]
    assert alone[0] == pytest.approx(alone[1], rel=1e-9)


@pytest.mark.parametrize("dispatcher", ["alltoall", "allgather", "deepep", "deepep_low_latency"])
def test_symmetric_and_full_fidelity_agree_on_uniform_routing(dispatcher: str):
    s = _olmoe(parallel={"moe_dispatcher": dispatcher}, workload={**OLMOE["workload"]})
    sym, full = simulate(s, fidelity="symmetric"), simulate(s, fidelity="full")
    assert full.step_time_s == pytest.approx(sym.step_time_s, rel=0.03)
    a2a_sym, a2a_full = sym.time_breakdown_s["all_to_all"], full.time_breakdown_s["all_to_all"]
    assert a2a_full == pytest.approx(a2a_sym, rel=0.05)


def test_dispatchers_order_the_all_to_all_time_as_their_bytes():
    """alltoall sends 8 copies per token, deepep ~5 GPUs' worth (~2 nodes over RDMA)."""
    t = {
        d: simulate(_olmoe(parallel={"moe_dispatcher": d})).time_breakdown_s["all_to_all"]
        for d in ("alltoall", "deepep")
    }
    assert t["deepep"] < t["alltoall"]


@pytest.mark.parametrize(
    ("sections", "fields"),
    [
        ({"parallel": {"moe_dispatcher": "nccl"}}, ["moe_dispatcher"]),
        (
            {"parallel": {"moe_dispatcher": "deepep"}, "simulation": {"all_to_all": "direct"}},
            ["parallel.moe_dispatcher", "simulation.all_to_all"],
        ),
        ({"parallel": {"moe_comm_sms": 132}}, ["parallel.moe_comm_sms"]),
        ({"parallel": {"moe_comm_sms": -1}}, ["moe_comm_sms"]),
        (
            {"parallel": {"overlap_moe_expert_parallel_comm": True}},
            ["overlap_moe_expert_parallel_comm", "interleaved_1f1b"],
        ),
        (
            {
                "parallel": {
                    "schedule": "interleaved_1f1b",
                    "virtual_stages": 2,
                    "moe_dispatcher": "allgather",
                    "overlap_moe_expert_parallel_comm": True,
                }
            },
            ["overlap_moe_expert_parallel_comm", "moe_dispatcher"],
        ),
        ({"precision": {"combine": "fp4"}}, ["combine"]),
    ],
)
def test_bad_values_name_the_field(sections, fields):
    with pytest.raises(ValueError) as err:
        _olmoe(**sections)
    for f in fields:
        assert f in str(err.value)


def test_ep_overlap_symmetric_and_full_fidelity_agree():
    """Every rank of the EP groups paired (their all-to-alls reach the shared ep stream in
    orders set by their own loads) against one rank per stage."""
    par = {"schedule": "interleaved_1f1b", "virtual_stages": 2, "moe_dispatcher": "deepep"}
    s = _olmoe(parallel={**par, "overlap_moe_expert_parallel_comm": True})
    sym, full = simulate(s, fidelity="symmetric"), simulate(s, fidelity="full")
    assert full.step_time_s == pytest.approx(sym.step_time_s, rel=0.03)
