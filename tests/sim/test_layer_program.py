"""Plain layers' fixed programs (moesim/sim/layer_program.py) against LayerRunner's general
path: each scenario is simulated twice, once as it runs and once with the programs turned off
(``plain_layers`` answering False, so ``LayerRunner.programs`` stays empty), and the two
steps must agree bit for bit: the whole result and every rank's log of ops (stream, name,
category, start, end). Layouts outside the plain case build no programs at all."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sim_scenarios import build

from moesim.analytic.microbatches import effective_schedule, n_microbatches
from moesim.catalog import raw_entry
from moesim.sim import layer_program
from moesim.sim.layer_runner import LayerRunner
from moesim.sim.run import build_context, expand_ranks, simulate
from moesim.specs import Scenario


def _cut(name: str, n_layers: int) -> dict[str, Any]:
    """Catalog model ``name`` with its first ``n_layers`` layers (its published parameter
    counts dropped: they describe the whole model)."""
    d = dict(raw_entry("models", name))
    d.pop("published_params_total", None)
    d.pop("published_params_active", None)
    return {**d, "n_layers": n_layers}


# DeepSeek-V2 cut to 4 layers: one dense layer, then three MoE layers with 2 shared experts
DSV2 = _cut("deepseek-v2", 4)
# 16 GPUs as 4 nodes of 4: at pp 2 and ep 8 an EP group spans two nodes
FOUR_BY_FOUR = {"gpu": "h100-sxm", "nodes": 4, "gpus_per_node": 4}
ZIPF = {"distribution": "zipf", "skew": 1.2, "seed": 3}
# an fp8 dispatch and a bf16 combine: the two directions' all-to-alls take different times
FP8_DISPATCH = {"dispatch": "fp8"}


def _pretrain(global_batch: int) -> dict[str, Any]:
    return {"stage": "pretrain", "seq_len": 1024, "global_batch": global_batch}


DUALPIPE = {
    "schedule": "dualpipe",
    "moe_dispatcher": "deepep",
    "moe_comm_sms": 24,
}

# symmetric fidelity; parallel.recompute is selective unless a scenario says otherwise
SCENARIOS: dict[str, dict[str, Any]] = {
    "dense 1f1b": dict(model="llama-3-8b", parallel={"ep": 1}, workload=_pretrain(16)),
    "dense 1f1b, no recompute": dict(
        model="llama-3-8b", parallel={"ep": 1, "recompute": "none"}, workload=_pretrain(16)
    ),
    "moe 1f1b, ep across nodes": dict(cluster=FOUR_BY_FOUR),
    "moe 1f1b, ep across nodes, zipf, fp8 dispatch": dict(
        cluster=FOUR_BY_FOUR, routing=ZIPF, precision=FP8_DISPATCH
    ),
    "dsv2 1f1b, shared experts overlapped": dict(
        model=DSV2, cluster=FOUR_BY_FOUR, simulation={"overlap_shared_experts": True}
    ),
    "dsv2 1f1b, shared experts after": dict(
        model=DSV2, cluster=FOUR_BY_FOUR, simulation={"overlap_shared_experts": False}
    ),
    "dsv2 dualpipe deepep, shared experts overlapped": dict(
        model=DSV2,
        cluster=FOUR_BY_FOUR,
        parallel=DUALPIPE,
        precision=FP8_DISPATCH,
        simulation={"overlap_shared_experts": True},
        workload=_pretrain(32),
    ),
    "dsv2 dualpipe deepep, shared experts after": dict(
        model=DSV2,
        cluster=FOUR_BY_FOUR,
        parallel=DUALPIPE,
        precision=FP8_DISPATCH,
        simulation={"overlap_shared_experts": False},
        workload=_pretrain(32),
    ),
    "dsv2 no recompute, shared experts overlapped": dict(
        model=DSV2, cluster=FOUR_BY_FOUR, parallel={"recompute": "none"}
    ),
    "dsv2 no recompute, shared experts after": dict(
        model=DSV2,
        cluster=FOUR_BY_FOUR,
        parallel={"recompute": "none"},
        simulation={"overlap_shared_experts": False},
    ),
    "dsv2 selective recompute of named modules": dict(
        model=DSV2,
        cluster=FOUR_BY_FOUR,
        parallel={"recompute_modules": ["core_attn", "mlp", "shared_experts", "moe_act"]},
        simulation={"overlap_shared_experts": False},
    ),
    "dsv2 selective recompute of the moe block (mixed)": dict(
        model=DSV2,
        cluster=FOUR_BY_FOUR,
        parallel={"recompute_modules": ["moe", "layernorm"]},
    ),
    "dsv2 dualpipe, moe block recomputed (mixed)": dict(
        model=DSV2,
        cluster=FOUR_BY_FOUR,
        parallel={**DUALPIPE, "recompute_modules": ["moe", "mla_up_proj"]},
        workload=_pretrain(32),
    ),
    "moe interleaved": dict(
        parallel={"virtual_stages": 2, "schedule": "interleaved_1f1b"}, workload=_pretrain(32)
    ),
    "dsv2 interleaved, EP overlap": dict(
        model=DSV2,
        cluster=FOUR_BY_FOUR,
        parallel={
            "virtual_stages": 2,
            "schedule": "interleaved_1f1b",
            "overlap_moe_expert_parallel_comm": True,
        },
        workload=_pretrain(32),
    ),
    "dsv2 dpo (forward-only reference pass)": dict(
        model=DSV2,
        cluster=FOUR_BY_FOUR,
        workload={"stage": "dpo", "seq_len": 1024, "global_batch": 16},
    ),
}

# full fidelity: one process set per pipeline stage (vector engine) and one per rank
FULL: dict[str, dict[str, Any]] = {
    "moe uniform": dict(cluster=FOUR_BY_FOUR),
    "moe zipf": dict(cluster=FOUR_BY_FOUR, routing=ZIPF),
    "dsv2 dualpipe deepep zipf": dict(
        model=DSV2,
        cluster=FOUR_BY_FOUR,
        parallel=DUALPIPE,
        precision=FP8_DISPATCH,
        routing=ZIPF,
        workload=_pretrain(32),
    ),
    "dsv2 zipf, moe block recomputed (mixed)": dict(
        model=DSV2,
        cluster=FOUR_BY_FOUR,
        parallel={"recompute_modules": ["moe"]},
        routing=ZIPF,
    ),
    "moe zipf, slow gpu": dict(
        cluster=FOUR_BY_FOUR,
        routing=ZIPF,
        faults=[{"kind": "slow_gpu", "rank": 5, "factor": 1.5}],
    ),
    "dense, slow gpu": dict(
        model="llama-3-8b",
        parallel={"ep": 1},
        workload=_pretrain(16),
        faults=[{"kind": "slow_gpu", "rank": 3, "factor": 1.3}],
    ),
}


def _run(
    monkeypatch: pytest.MonkeyPatch, s: Scenario, programs: bool, **kw: Any
) -> tuple[dict, list, list[LayerRunner]]:
    """``simulate(s, **kw)`` with or without the programs: its result, every rank's ops as
    ``(gpu, label, intervals)`` and the layer runners it built."""
    runners: list[LayerRunner] = []
    init = LayerRunner.__init__

    def recording_init(self: LayerRunner, ctx) -> None:
        init(self, ctx)
        runners.append(self)

    with monkeypatch.context() as m:
        m.setattr(LayerRunner, "__init__", recording_init)
        if not programs:
            m.setattr(layer_program, "plain_layers", lambda ctx: False)
        result = simulate(s, **kw).to_json_dict()
    logs = []
    for runner in runners:
        ranks = expand_ranks([runner.ctx.ranks[g] for g in sorted(runner.ctx.ranks)])
        logs.append([(r.gpu, r.label, r.intervals) for r in ranks])
    return result, logs, runners


def _same_step(monkeypatch: pytest.MonkeyPatch, s: Scenario, **kw: Any) -> list[LayerRunner]:
    fast, fast_logs, runners = _run(monkeypatch, s, True, **kw)
    general, general_logs, general_runners = _run(monkeypatch, s, False, **kw)
    # the first run took the programs for every layer, the second none
    assert runners and all(len(r.programs) == len(r.ctx.layers) for r in runners)
    assert general_runners and all(not r.programs for r in general_runners)
    assert fast == general
    assert len(fast_logs) == len(general_logs)
    for a, b in zip(fast_logs, general_logs, strict=True):
        assert sum(len(iv) for _, _, iv in a) > 0
        assert a == b
    return runners


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_programs_match_the_general_path(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    s = build(**SCENARIOS[name])
    runners = _same_step(monkeypatch, s)
    ctx = runners[0].ctx
    if s.parallel.schedule == "dualpipe":  # DualPipe itself runs, with the SMs' slowdown
        assert effective_schedule(s.parallel, n_microbatches(s)) == "dualpipe"
        assert ctx.comm_sm_slowdown > 1.0
    if s.cluster.gpus_per_node == 4 and ctx.model.moe is not None:  # EP spans two nodes
        assert len({g // 4 for g in ctx.ep_group(0)}) == 2
    if "mixed" in name:  # MoE layers' backward takes the general path, the dense layer not
        kinds = {r._recomputes_moe_block(i) for r in runners for i in r.programs}
        assert kinds == {True, False}


@pytest.mark.parametrize("vector", [True, False], ids=["vector", "per rank"])
@pytest.mark.parametrize("name", list(FULL))
def test_programs_match_under_full_fidelity(
    monkeypatch: pytest.MonkeyPatch, name: str, vector: bool
) -> None:
    s = build(**FULL[name])
    runners = _same_step(monkeypatch, s, fidelity="full", vector=vector)
    assert runners[0].ctx.vector is vector
    if s.faults:
        assert any(np.max(r.compute_factor) > 1.0 for r in runners[0].ctx.ranks.values())


PLAIN = dict(model=DSV2, cluster=FOUR_BY_FOUR)


@pytest.mark.parametrize(
    "sections",
    [
        {"parallel": {"tp": 2}},
        {
            "parallel": {"cp": 2},
            "workload": {"stage": "pretrain", "seq_len": 2048, "global_batch": 32},
        },
        {"parallel": {"ep": 4, "etp": 2}},
        {"parallel": {"zero_stage": 3}},
        {"parallel": {"recompute": "full"}},
        {"parallel": {"activation_offload_layers": 1}},
    ],
    ids=["tp 2", "cp 2", "etp 2", "zero 3", "full recompute", "activation offload"],
)
def test_layouts_outside_the_plain_case_build_no_programs(sections: dict[str, Any]) -> None:
    s = build(**{**PLAIN, **sections})
    assert not layer_program.plain_layers(build_context(s))
    assert LayerRunner(build_context(s)).programs == {}
    assert len(LayerRunner(build_context(build(**PLAIN))).programs) == 4  # the control
