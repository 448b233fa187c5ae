"""DualPipe: the bidirectional chunk order, its bubble with free communication, and how much
all-to-all the overlapped pairs hide compared with 1F1B."""

from __future__ import annotations

import pytest
from sim_scenarios import SMALL_MOE, build

from moesim.sim import dualpipe
from moesim.sim.dualpipe import ChunkTask, dualpipe_slots
from moesim.sim.dualpipe_mirror import result_ranks
from moesim.sim.run import build_context, simulate
from moesim.sim.spans import exposed_length_s, union_length_s
from moesim.sim.training_step import Pipeline, pipeline_pass

FREE_LINKS = {
    "gpu": "h100-sxm",
    "nodes": 1,
    "gpus_per_node": 8,
    "intra_node": {"bandwidth_GBps": 1e12, "latency_us": 0},
    "inter_node": {"nic_Gbps": 1e13, "latency_us": 0},
}


@pytest.mark.parametrize(("pp", "m"), [(2, 4), (4, 8), (8, 16), (8, 20), (16, 120)])
def test_every_chunk_runs_once_forward_before_backward(pp, m):
    for rank in range(pp):
        slots = dualpipe_slots(pp, m, rank)
        flat = [t for s in slots for t in s]
        expected = {ChunkTask(k, i, ph) for k in "FB" for i in range(m // 2) for ph in (0, 1)}
        assert set(flat) == expected and len(flat) == len(expected)
        where = {t: n for n, s in enumerate(slots) for t in s}
        for i in range(m // 2):
            for ph in (0, 1):
                assert where[ChunkTask("F", i, ph)] < where[ChunkTask("B", i, ph)]
        for s in slots:  # a pair is a forward and a backward of different phases
            assert len(s) == 1 or ([t.kind for t in s] == ["F", "B"] and s[0].phase != s[1].phase)
        assert sum(len(s) == 2 for s in slots) > 0


def test_unsupported_shapes_are_refused_and_fall_back():
    with pytest.raises(ValueError, match="even pp"):
        dualpipe_slots(3, 12, 0)
    with pytest.raises(ValueError, match="2·pp"):
        dualpipe_slots(4, 6, 0)
    # pp 2 with 2 microbatches: the 1F1B order with overlapped pairs still simulates
    r = simulate(build(parallel={"schedule": "dualpipe"}, workload=_pretrain(16)))
    assert r.step_time_s > 0


def _pretrain(batch: int, seq: int = 1024) -> dict:
    return {"stage": "pretrain", "seq_len": seq, "global_batch": batch}


def _idle_and_parts(schedule: str, pp: int, m: int) -> tuple[list[float], float, float]:
    """Per-rank idle time of a dense model with free communication and no LM head, and the
    forward (F) and backward (B) time of one stage for one microbatch."""
    s = build(
        SMALL_MOE,
        model="llama-3-8b",
        cluster=FREE_LINKS,
        parallel={"tp": 1, "pp": pp, "ep": 1, "dp": 8 // pp, "schedule": schedule},
        workload=_pretrain(m * 8 // pp),
    )
    ctx = build_context(s)
    pipe = Pipeline(ctx)
    pipe.extras.head_s = pipe.extras.embedding_s = (0.0, 0.0)  # equal stages, as assumed
    pipeline_pass(ctx, optimizer=False, pipeline=pipe)
    ctx.env.run()
    ranks = result_ranks(ctx)  # DualPipe's mirrored ranks too (moesim.sim.dualpipe_mirror)
    step = max(iv[4] for r in ranks for iv in r.intervals)
    idle = [step - sum(iv[4] - iv[3] for iv in r.intervals if iv[0] == "compute") for r in ranks]
    lc, layers = ctx.layers[0], len(ctx.stages[0].chunks[0])
    f = layers * (lc.attention_s + lc.norms_s + lc.ffn_s)
    recompute = lc.selective_recompute_s if ctx.parallel.recompute == "selective" else 0.0
    b = layers * (recompute + lc.attention_bwd_s + lc.norms_bwd_s + lc.ffn_bwd_s)
    return idle, f, b


def test_two_stage_dualpipe_has_no_bubble():
    idle, f, b = _idle_and_parts("dualpipe", 2, 4)
    assert dualpipe.bubble_s(2, f, b, f + b) == 0.0
    assert max(idle) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(("pp", "m"), [(4, 8), (4, 12), (8, 16)])
def test_bubble_is_within_table_2_and_below_1f1b(pp, m):
    """Free communication: an overlapped pair takes F + B (one compute stream, no SMs lost to
    communication), so Table 2's (PP/2−1)(F&B + B − 3W) with W fused into B (W = 0) is
    (PP/2−1)(F + 2B); 1F1B idles (PP−1)(F + B)."""
    idle, f, b = _idle_and_parts("dualpipe", pp, m)
    idle_1f1b, _, _ = _idle_and_parts("1f1b", pp, m)
    table_2 = dualpipe.bubble_s(pp, f, b, f + b)
    assert min(idle_1f1b) == pytest.approx((pp - 1) * (f + b), rel=1e-6)
    assert 0 < max(idle) <= table_2 * (1 + 1e-9)
    assert max(idle) < 0.8 * min(idle_1f1b)


def _exposed_all_to_all(schedule: str, nic_Gbps: float) -> list[tuple[float, float, float]]:
    """(exposed all-to-all, all-to-all, compute) per simulated rank; 4-GPU nodes, so each EP
    group of 8 crosses the network; 16 microbatches on 2 stages."""
    s = build(
        cluster={
            "nodes": 4,
            "gpus_per_node": 4,
            "inter_node": {"nics_per_node": 4, "nic_Gbps": nic_Gbps, "latency_us": 5},
        },
        parallel={"schedule": schedule},
        workload=_pretrain(128, 4096),
    )
    ctx = build_context(s)
    pipeline_pass(ctx)
    ctx.env.run()
    out = []
    for r in result_ranks(ctx):
        compute = [(a, b) for st, _, _, a, b in r.intervals if st == "compute"]
        a2a = [(a, b) for _, _, cat, a, b in r.intervals if cat == "all_to_all"]
        out.append((exposed_length_s(a2a, compute), union_length_s(a2a), union_length_s(compute)))
    return out


def test_dualpipe_hides_all_to_all_that_1f1b_exposes():
    dual, plain = _exposed_all_to_all("dualpipe", 400), _exposed_all_to_all("1f1b", 400)
    for (exp_d, a2a_d, comp_d), (exp_p, a2a_p, _) in zip(dual, plain, strict=True):
        assert a2a_d < comp_d  # the regime DualPipe is for
        assert exp_p > 0.8 * a2a_p  # 1F1B hides only what the shared experts cover
        # DualPipe hides more than half of what 1F1B exposes (39% left here; 0.35 held only
        # while Mixtral ran phantom shared-expert ops, which hid all-to-all under them)
        assert exp_d < 0.5 * exp_p


def test_overlapped_compute_pays_for_the_communication_sms():
    dual = _exposed_all_to_all("dualpipe", 400)
    plain = _exposed_all_to_all("1f1b", 400)
    slow = 132 / 112  # DeepEP's 20 SMs of an H100's 132 (the EP group spans nodes: deepep)
    for (_, _, comp_d), (_, _, comp_p) in zip(dual, plain, strict=True):
        assert comp_p < comp_d < comp_p * slow


def test_full_and_symmetric_fidelity_agree():
    """Every rank of both EP groups simulated (routing loads differ per rank, so the pairs'
    all-to-alls reach the shared ep stream in different orders) against one per stage."""
    s = build(parallel={"pp": 2, "schedule": "dualpipe"})
    sym, full = simulate(s, fidelity="symmetric"), simulate(s, fidelity="full")
    assert full.step_time_s == pytest.approx(sym.step_time_s, rel=0.02)
