"""The vector engine (moesim/sim/vector_engine.py): full fidelity with one process set per
pipeline stage against one per rank (the same routing draws), its fallback where the stage's
groups differ, its determinism, its per-rank trace, and its numpy pieces against the scalar
ones they replace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sim_scenarios import build

from moesim.catalog import raw_entry
from moesim.scenario_io import load_scenario, scenario_from_dict
from moesim.sim.run import build_context, simulate
from moesim.sim.spans import union_length_s
from moesim.sim.vector_engine import VectorRank, _union_length
from moesim.sim.vector_groups import Partition

ROOT = Path(__file__).resolve().parents[2]


def _dsv3(gpus: int, microbatches: int, routing: dict) -> object:
    """DeepSeek-V3's shipped 2048-GPU scenario cut to ``gpus`` (PP 16, DualPipe, EP = DP)."""
    d = load_scenario(ROOT / "scenarios" / "deepseek-v3-pretrain-2048xh800.yaml").model_dump(
        mode="json"
    )
    dp = gpus // 16
    d["cluster"]["nodes"] = gpus // 8
    d["parallel"].update(dp=dp, ep=dp)
    d["workload"]["global_batch"] = microbatches * dp
    d["routing"] = routing
    return scenario_from_dict(d)


ZIPF = {"distribution": "zipf", "skew": 1.0, "seed": 0}
UNIFORM = {"distribution": "uniform", "seed": 0}


def _both(s):
    vec = simulate(s, fidelity="full")
    per_rank = simulate(s, fidelity="full", vector=False)
    return vec, per_rank


@pytest.mark.parametrize("routing", [UNIFORM, ZIPF])
def test_dualpipe_matches_the_per_rank_engine(routing):
    """DeepSeek-V3 on 32 GPUs (PP 16, DP 2, EP 2, DualPipe): the step and its parts as the
    per-rank engine has them; under uniform routing only the link sharing of the members'
    sends is approximated."""
    vec, per_rank = _both(_dsv3(32, 32, routing))
    assert vec.simulated_ranks == per_rank.simulated_ranks == 32
    if routing is UNIFORM:
        assert vec.step_time_s == pytest.approx(per_rank.step_time_s, rel=1e-9)
        for k, v in per_rank.time_breakdown_s.items():
            assert vec.time_breakdown_s[k] == pytest.approx(v, rel=1e-3, abs=1e-6), k
    else:
        assert vec.step_time_s == pytest.approx(per_rank.step_time_s, rel=0.005)
        for k in ("compute", "all_to_all", "exposed_comm"):
            v = per_rank.time_breakdown_s[k]
            assert vec.time_breakdown_s[k] == pytest.approx(v, rel=0.03), k


SKEWED = {"distribution": "zipf", "skew": 1.2, "seed": 3}
LAYOUTS = {
    "tp 2, sequence parallel": {"parallel": {"tp": 2}},
    "cp 2": {
        "parallel": {"cp": 2},
        "workload": {"stage": "pretrain", "seq_len": 2048, "global_batch": 32},
    },
    "zero 3": {"parallel": {"zero_stage": 3}},
    "full recompute": {"parallel": {"recompute": "full"}},
    "interleaved, EP overlap": {
        "parallel": {
            "virtual_stages": 2,
            "schedule": "interleaved_1f1b",
            "overlap_moe_expert_parallel_comm": True,
        }
    },
    "dualpipe": {"parallel": {"schedule": "dualpipe"}},
    "slow nvlink": {"faults": [{"kind": "slow_link", "rank": 9, "link": "nvlink", "factor": 3}]},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_matches_the_per_rank_engine(layout):
    """Mixtral on 16 GPUs (one EP group of 8 per stage, skewed routing): TP, CP, ZeRO-3,
    recomputation, EP overlap, DualPipe and a slow link run the same programs on vectors; the
    step is the per-rank engine's and so is every part (2026-12-04: equal to 10⁻⁴ s)."""
    s = build(routing=SKEWED, **LAYOUTS[layout])
    assert build_context(s, "full").vector
    vec, per_rank = _both(s)
    assert vec.step_time_s == pytest.approx(per_rank.step_time_s, rel=1e-6)
    for k, v in per_rank.time_breakdown_s.items():
        assert vec.time_breakdown_s[k] == pytest.approx(v, rel=0.01, abs=1e-3), k


def test_1f1b_with_skewed_routing_matches_the_per_rank_engine():
    s = build(routing={"distribution": "zipf", "skew": 1.2, "seed": 3})
    vec, per_rank = _both(s)
    assert vec.step_time_s == pytest.approx(per_rank.step_time_s, rel=0.01)
    assert vec.time_breakdown_s["imbalance"] == pytest.approx(
        per_rank.time_breakdown_s["imbalance"], rel=0.1, abs=1e-3
    )


def test_a_slow_gpu_reaches_its_stage_in_both_engines():
    fault = [{"kind": "slow_gpu", "rank": 3, "factor": 1.5}]
    healthy = simulate(build(), fidelity="full")
    vec, per_rank = _both(build(faults=fault))
    assert vec.step_time_s > healthy.step_time_s
    assert vec.step_time_s == pytest.approx(per_rank.step_time_s, rel=0.01)


def test_one_process_set_per_stage_where_groups_are_alike():
    ctx = build_context(build(), "full")
    assert ctx.vector and ctx.rendezvous is None
    assert ctx.simulated_gpus() == [0, 8]
    r = ctx.rank(5)
    assert isinstance(r, VectorRank) and r.size == 8 and r is ctx.rank(0)
    assert not build_context(build(), "full", vector=False).vector
    assert not build_context(build(), "symmetric").vector


def test_groups_of_different_shapes_fall_back_to_one_process_per_rank():
    # 24 GPUs in NVLink domains of 12: the EP group at 8..15 straddles two, the others do not
    straddle = build(
        parallel={"tp": 1, "pp": 1, "ep": 8},
        cluster={"nodes": 6, "gpus_per_node": 4, "nvlink_domain_gpus": 12},
        workload={"stage": "pretrain", "seq_len": 1024, "global_batch": 24},
    )
    assert not build_context(straddle, "full").vector


def test_full_fidelity_is_deterministic():
    s = _dsv3(32, 32, ZIPF)
    a, b = simulate(s, fidelity="full"), simulate(s, fidelity="full")
    assert json.dumps(a.to_json_dict(), sort_keys=True) == json.dumps(
        b.to_json_dict(), sort_keys=True
    )


def test_the_trace_has_every_rank(tmp_path: Path):
    trace = tmp_path / "t.json"
    s = build(faults=[{"kind": "slow_gpu", "rank": 3, "factor": 2.0}])
    simulate(s, fidelity="full", trace_path=trace)
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert sorted(names) == list(range(16))
    assert "slow gpu ×2" in names[3] and "slow" not in names[2]

    def busy_us(pid: int) -> float:
        return sum(e["dur"] for e in events if e.get("cat") == "compute" and e["pid"] == pid)

    assert busy_us(3) == pytest.approx(2 * busy_us(2), rel=0.05)  # twice the compute


def test_union_length_matches_the_scalar_one():
    rng = np.random.default_rng(0)
    start = rng.uniform(0, 10, size=(40, 6))
    end = start + rng.exponential(1.0, size=start.shape)
    got = _union_length(start, end)
    for j in range(start.shape[1]):
        spans = list(zip(start[:, j].tolist(), end[:, j].tolist(), strict=True))
        assert got[j] == pytest.approx(union_length_s(spans), rel=1e-12)


def test_partition_max_is_each_groups_max():
    part = Partition(np.array([7, 3, 7, 3, 9, 9]))
    x = np.array([1.0, 5.0, 2.0, 4.0, 0.5, 0.25])
    assert part.max(x).tolist() == [2.0, 5.0, 2.0, 5.0, 0.5, 0.5]
    assert Partition(np.zeros(3)).max(np.array([1.0, 3.0, 2.0])).tolist() == [3.0] * 3


def test_moe_without_expert_parallelism_runs_as_on_the_per_rank_engine():
    """ep = 1 with shared experts: the dispatch issued beside them has nothing to move (its
    issue ends at once, ``VectorRank.issue``)."""
    model = {**raw_entry("models", "deepseek-v2"), "n_layers": 3}
    model.pop("published_params_total", None)
    model.pop("published_params_active", None)
    s = build(model=model, parallel={"ep": 1}, simulation={"fidelity": "full"})
    vec, per_rank = simulate(s, vector=True), simulate(s, vector=False)
    assert vec.simulated_ranks == per_rank.simulated_ranks
    assert vec.step_time_s == pytest.approx(per_rank.step_time_s, rel=1e-12)
