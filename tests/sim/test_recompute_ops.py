"""Selective recomputation by module in the simulated step (moesim.sim.layer_costs,
training_step): each module's op runs before the backward; ``moe`` reruns the MoE block."""

from __future__ import annotations

import pytest
from sim_scenarios import build

from moesim.sim.run import build_context, simulate
from moesim.sim.training_step import pipeline_pass


def _names(parallel: dict) -> tuple[float, dict[str, int]]:
    s = build(parallel=parallel)
    ctx = build_context(s)
    pipeline_pass(ctx)
    ctx.env.run()
    counts: dict[str, int] = {}
    for rank in ctx.ranks.values():
        for iv in rank.intervals:
            counts[iv[1]] = counts.get(iv[1], 0) + 1
    return max(iv[4] for r in ctx.ranks.values() for iv in r.intervals), counts


def test_moe_module_reruns_the_dispatch_and_is_slower() -> None:
    base_s, base = _names({"recompute": "selective"})
    moe_s, moe = _names({"recompute": "selective", "recompute_modules": ["moe"]})
    # the forward's dispatch and combine run once more per MoE layer and microbatch
    assert moe["dispatch"] == 2 * base["dispatch"]
    assert moe["combine"] == 2 * base["combine"]
    assert moe["experts"] == 2 * base["experts"]
    assert moe_s > base_s


@pytest.mark.parametrize(
    ("module", "op"),
    [("core_attn", "recompute_core_attn"), ("layernorm", "recompute_layernorm")],
)
def test_named_module_runs_its_op(module: str, op: str) -> None:
    _, counts = _names({"recompute": "selective", "recompute_modules": [module]})
    assert counts.get(op, 0) > 0
    assert "recompute_act" not in counts  # only what is named


def test_more_recompute_is_never_faster() -> None:
    none = simulate(build(parallel={"recompute": "none"})).step_time_s
    sel = simulate(build(parallel={"recompute": "selective"})).step_time_s
    more = simulate(
        build(parallel={"recompute": "selective", "recompute_modules": ["core_attn", "moe"]})
    ).step_time_s
    full = simulate(build(parallel={"recompute": "full"})).step_time_s
    assert none <= sel <= more
    assert sel <= full


def test_symmetric_and_full_fidelity_agree_with_the_moe_block_recomputed() -> None:
    s = build(parallel={"recompute": "selective", "recompute_modules": ["moe", "core_attn"]})
    sym, full = simulate(s, fidelity="symmetric"), simulate(s, fidelity="full")
    assert full.step_time_s == pytest.approx(sym.step_time_s, rel=0.02)
