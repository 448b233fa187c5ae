"""Speculative decoding: tokens per step against a draw of the acceptance process, the verify
and draft costs, and acceptance 0 never faster than plain decoding."""

from __future__ import annotations

import numpy as np
import pytest
from serving_scale_scenarios import serving

from moesim.sim.engine_step import build_engine_step
from moesim.sim.serving_step import ReplicaCost
from moesim.specs.scenario import draft_scenario
from moesim.specs.serving import SpeculativeSpec


def spec(a: float, k: int) -> SpeculativeSpec:
    return SpeculativeSpec(method="mtp", num_speculative_tokens=k, acceptance_rate=a)


@pytest.mark.parametrize(("a", "k"), [(0.0, 3), (0.5, 1), (0.7, 4), (0.9, 2), (1.0, 5)])
def test_tokens_per_step_is_the_mean_of_the_accept_until_first_reject_process(a, k):
    # each draft accepted with probability a until the first rejection; the target adds one
    rng = np.random.default_rng(0)
    u = rng.random((200_000, k)) < a
    accepted = np.where(u.all(axis=1), k, np.argmin(u, axis=1))
    assert spec(a, k).tokens_per_step == pytest.approx(accepted.mean() + 1, abs=0.01)


def test_tokens_per_step_limits():
    assert spec(0.0, 4).tokens_per_step == 1.0
    assert spec(1.0, 4).tokens_per_step == 5.0
    assert spec(0.8, 1).tokens_per_step == pytest.approx(1.8)


def _engines(
    a: float,
    k: int,
    model: str = "mixtral-8x7b",
    draft: str = "mistral-7b",
    parallel: dict | None = None,
):
    sp = {"method": "draft", "num_speculative_tokens": k, "acceptance_rate": a}
    sp["draft_model"] = draft
    layout = parallel or {"tp": 2, "etp": 2}
    s = serving(model, parallel=layout, speculative=sp, scheduler="prefill_first")
    plain = serving(model, parallel=layout)
    cost = ReplicaCost(s)
    return (
        build_engine_step(s, cost, ReplicaCost),
        build_engine_step(plain, ReplicaCost(plain), ReplicaCost),
        s,
    )


@pytest.mark.parametrize("batch", [1, 8, 64])
def test_acceptance_zero_is_never_faster_than_plain_decoding(batch):
    spec_engine, plain_engine, _ = _engines(0.0, 3)
    ctx = batch * 600.0
    per_token_spec = spec_engine.decode_s(batch, ctx) / spec_engine.tokens_per_step
    assert per_token_spec > plain_engine.decode_s(batch, ctx)


def test_high_acceptance_speeds_up_small_batch_decoding():
    # at batch 1 a decode step reads the weights for one token: 4 tokens verified in one read
    # of the 70B's weights, drafted by three reads of the 8B's
    spec_engine, plain_engine, _ = _engines(0.9, 3, "llama-3-70b", "llama-3-8b", {"tp": 4})
    per_token = spec_engine.decode_s(1, 600.0) / spec_engine.tokens_per_step
    assert per_token < plain_engine.decode_s(1, 600.0)


def test_a_draft_nearly_as_big_as_the_active_experts_does_not_pay():
    # Mixtral's 13B active against a 7B draft: 4 positions touch ~5 experts, 3 draft steps
    # read 7B each: slower per token even at acceptance 0.9 (as the cost model should say)
    spec_engine, plain_engine, _ = _engines(0.9, 3)
    per_token = spec_engine.decode_s(1, 600.0) / spec_engine.tokens_per_step
    assert per_token > plain_engine.decode_s(1, 600.0)


def test_verify_is_a_k_plus_one_token_forward():
    spec_engine, _, _ = _engines(0.5, 3)
    sp = spec_engine.speculator
    cost = spec_engine.cost
    v = sp.verify(8, 8 * 600.0)
    # 8 sequences × 4 positions; position j attends 600 + j keys; one KV read per sequence
    direct = cost.step(32, 4 * 8 * 600.0 + 8 * 6, 32, queries_per_kv_read=4)
    assert v.total_s == pytest.approx(direct.total_s)
    assert v.total_s > cost.decode(8, 8 * 600.0).total_s


def test_draft_model_costs_k_of_its_own_decode_steps():
    spec_engine, _, s = _engines(0.5, 3)
    draft = ReplicaCost(draft_scenario(s))
    assert draft.s.model.name == "mistral-7b"
    want = 3 * draft.decode(8, 4800.0).total_s
    assert spec_engine.speculator.draft_s(8, 4800.0) == pytest.approx(want)


def test_mtp_drafter_is_one_moe_layer_of_the_model():
    s = serving(
        "deepseek-v3",
        nodes=2,
        gpu="h200-sxm",
        parallel={"tp": 1, "ep": 16},
        speculative={"method": "mtp", "num_speculative_tokens": 1, "acceptance_rate": 0.8},
        scheduler="prefill_first",
    )
    d = draft_scenario(s)
    assert d.model.n_layers == 1 and d.model.n_moe_layers == 1
    assert d.parallel.ep == 16


def test_speculative_runs_under_vllm_v1_and_mtp_needs_the_module():
    from moesim.scenario_io import ScenarioError

    sp = {"method": "draft", "draft_model": "mistral-7b", "num_speculative_tokens": 2}
    s = serving(speculative={**sp, "acceptance_rate": 0.5}, scheduler="vllm_v1")
    assert s.workload.scheduler == "vllm_v1"
    mtp = {"method": "mtp", "num_speculative_tokens": 1, "acceptance_rate": 0.5}
    with pytest.raises(ScenarioError, match="no MTP module"):
        serving(speculative=mtp)
