"""Every cross-field rule of a Scenario, through a YAML file: the error names the file, the
line, the field and (where there is one) the fix."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scenario_files import ScenarioFiles

from moesim.catalog import load_model, raw_entry
from moesim.scenario_io import ScenarioError, load_scenario, scenario_from_dict


# -- the GPU count and dp --------------------------------------------------------------------------
def test_base_scenario_is_valid_and_derives_dp(files: ScenarioFiles) -> None:
    s = files.load()
    assert s.parallel.dp == 8
    assert s.gpus == 8
    assert s.parallel.edp == 1


def test_dp_is_derived_as_gpus_over_tp_cp_pp(files: ScenarioFiles) -> None:
    s = files.load({"cluster": {"nodes": 2}, "parallel": {"tp": 2, "pp": 2, "ep": 2}})
    assert s.parallel.dp == 16 // (2 * 2)
    assert s.parallel.gpus == 16


def test_gpus_not_equal_to_tp_cp_pp_dp(files: ScenarioFiles) -> None:
    files.error(
        {"parallel": {"dp": 4}},
        "parallel",
        "tp·cp·pp·dp = 1·1·1·4 = 4",
        "8 GPUs",
        "set parallel.dp to 8 or leave it out",
    )


def test_tp_cp_pp_not_dividing_gpus_when_dp_left_out(files: ScenarioFiles) -> None:
    files.error(
        {"model": "llama-3-8b", "parallel": {"pp": 3, "ep": 1}},
        "parallel",
        "= 3 does not divide the 8 GPUs",
        "change tp/cp/pp or cluster.nodes",
    )


# -- tensor parallel against the model -------------------------------------------------------------
def test_tp_not_dividing_heads(files: ScenarioFiles) -> None:
    files.error(
        {"model": "llama-3-8b", "cluster": {"nodes": 3}, "parallel": {"tp": 3, "ep": 1}},
        "parallel.tp",
        "parallel.tp (3) must divide model.n_heads (32)",
        "pick a divisor",
    )


def test_tp_not_dividing_kv_heads(files: ScenarioFiles) -> None:
    files.error(
        {"model": "llama-3-8b", "cluster": {"nodes": 2}, "parallel": {"tp": 16, "ep": 1}},
        "parallel.tp",
        "key/value heads (8)",
        "use tp ≤ 8",
    )


def test_tp_above_kv_heads_is_allowed_for_mla(files: ScenarioFiles) -> None:
    """MLA has no separate key/value heads to split: only n_heads must be divisible."""
    s = files.load(
        {
            "model": "deepseek-v2",
            "cluster": {"nodes": 2},
            "parallel": {"tp": 16, "pp": 1, "ep": 16},
        }
    )
    assert s.parallel.tp == 16


def test_tp_not_dividing_ffn_hidden(files: ScenarioFiles) -> None:
    model = raw_entry("models", "llama-3-8b") | {"ffn_hidden": 14340}  # 14340 = 4·3585
    files.error(
        {"model": model, "parallel": {"tp": 8, "ep": 1}},
        "parallel.tp",
        "must divide model.ffn_hidden (14340)",
    )


# -- expert parallel -------------------------------------------------------------------------------
def test_ep_not_dividing_routed_experts(files: ScenarioFiles) -> None:
    files.error(
        {"cluster": {"nodes": 2}, "parallel": {"ep": 16}},
        "parallel.ep",
        "parallel.ep (16) must divide moe.n_routed_experts (8)",
        "pick a divisor",
    )


def test_ep_etp_not_dividing_tp_cp_dp(files: ScenarioFiles) -> None:
    files.error(
        {"model": "deepseek-v3", "parallel": {"pp": 2, "ep": 8}},
        "parallel",
        "ep·etp = 8·1 = 8 must divide tp·cp·dp = 1·1·4 = 4",
        "lower ep or raise dp",
    )


def test_etp_counts_in_the_expert_fold(files: ScenarioFiles) -> None:
    files.error(
        {"model": "qwen3-30b-a3b", "parallel": {"ep": 8, "etp": 2}},
        "parallel",
        "ep·etp = 8·2 = 16 must divide tp·cp·dp = 1·1·8 = 8",
        "lower ep or etp (a divisor), or raise dp",  # etp: 3 was told only of ep and dp
    )


def test_ep_above_dp_is_allowed_when_it_divides_tp_cp_dp(files: ScenarioFiles) -> None:
    """MoE parallel folding (DESIGN.md): tp 2, dp 16, ep 32 on 32 GPUs, edp = 2·16/32 = 1."""
    s = files.load(
        {
            "model": "qwen3-30b-a3b",
            "cluster": {"nodes": 4},
            "parallel": {"tp": 2, "ep": 32},
        }
    )
    assert (s.parallel.tp, s.parallel.dp, s.parallel.ep) == (2, 16, 32)
    assert s.parallel.ep > s.parallel.dp
    assert s.parallel.edp == 1


def test_etp_not_dividing_expert_hidden(files: ScenarioFiles) -> None:
    model = raw_entry("models", "mixtral-8x7b")
    model["moe"] = model["moe"] | {"expert_hidden": 14337}
    files.error(
        {"model": model, "parallel": {"ep": 1, "etp": 8}},
        "parallel.etp",
        "parallel.etp (8) must divide moe.expert_hidden (14337)",
    )


def test_ep_above_one_on_a_dense_model(files: ScenarioFiles) -> None:
    files.error(
        {"model": "llama-3-8b", "parallel": {"ep": 8}},
        "parallel.ep",
        "llama-3-8b is dense",
        "set ep: 1, etp: 1",
    )


# -- pipeline --------------------------------------------------------------------------------------
def test_pp_more_than_layers(files: ScenarioFiles) -> None:
    files.error(
        {"model": "tiny-dense", "parallel": {"pp": 8, "ep": 1}},
        "parallel.pp",
        "parallel.pp (8) exceeds the model's 4 layers: use pp ≤ 4",
    )


def test_pp_times_virtual_stages_more_than_layers(files: ScenarioFiles) -> None:
    files.error(
        {
            "model": "tiny-dense",
            "parallel": {"pp": 2, "ep": 1, "virtual_stages": 4, "schedule": "interleaved_1f1b"},
            "workload": {"global_batch": 4},
        },
        "parallel.pp",
        "pp·virtual_stages (2·4) exceeds the 4 layers",
        "lower virtual_stages",
    )


def test_pp_counts_encoder_layers_too(files: ScenarioFiles) -> None:
    """Switch-Base-128 has 12 + 12 layers: pp 16 fits, pp 32 does not."""
    update = {"model": "switch-base-128", "cluster": {"nodes": 2}, "parallel": {"ep": 1}}
    assert files.load(merge_parallel(update, pp=16)).parallel.pp == 16
    files.error(
        merge_parallel(update, pp=32) | {"cluster": {"nodes": 4}},
        "parallel.pp",
        "the model's 24 layers",
    )


def merge_parallel(update: dict, **parallel: int) -> dict:
    return update | {"parallel": update["parallel"] | parallel}


# -- batch -----------------------------------------------------------------------------------------
def test_global_batch_not_divisible_by_dp(files: ScenarioFiles) -> None:
    files.error(
        {"workload": {"global_batch": 63}},
        "workload.global_batch",
        "63 sequences per step do not split into dp (8) × microbatch_size (1) = 8",
        "make global_batch a multiple of it",
    )


def test_global_batch_not_divisible_by_dp_times_microbatch(files: ScenarioFiles) -> None:
    files.error(
        {"parallel": {"microbatch_size": 16}, "workload": {"global_batch": 64}},
        "workload.global_batch",
        "dp (8) × microbatch_size (16) = 128",
    )


def test_dpo_batch_counts_pairs(files: ScenarioFiles) -> None:
    files.error(
        {"workload": {"stage": "dpo", "global_batch": 12}},
        "workload.global_batch",
        "12 pairs per step",
    )


def test_grpo_batch_counts_prompts_times_group(files: ScenarioFiles) -> None:
    """4 prompts × 2 responses = 8 sequences split over dp 8; 3 × 2 = 6 do not."""
    grpo = {"stage": "grpo", "global_batch": 4, "group_size": 2, "seq_len": None}
    assert files.load({"workload": grpo}).workload.global_batch == 4
    files.error(
        {"workload": grpo | {"global_batch": 3}},
        "workload.global_batch",
        "6 sequences per step",
    )


# -- precision -------------------------------------------------------------------------------------
def test_fp8_on_a100_is_refused(files: ScenarioFiles) -> None:
    files.error(
        {"cluster": {"gpu": "a100-sxm-80gb"}, "precision": {"compute": "fp8"}},
        "precision.compute",
        "precision.compute is fp8 but a100-sxm-80gb has no fp8 tensor cores: use bf16",
    )


def test_fp8_on_h100_is_allowed(files: ScenarioFiles) -> None:
    assert files.load({"precision": {"compute": "fp8"}}).precision.compute == "fp8"


# -- unknown catalog ids ---------------------------------------------------------------------------
def test_unknown_model_id_suggests_close_matches(files: ScenarioFiles) -> None:
    path = files.write({"name": "x", "model": "mixtrl-8x7b", "cluster": {"gpu": "h100-sxm"}})

    with pytest.raises(ScenarioError, match=r"model: unknown model id 'mixtrl-8x7b'.*mixtral-8x7b"):
        load_scenario(path)


def test_unknown_gpu_id_suggests_close_matches(files: ScenarioFiles) -> None:
    path = files.write({"name": "x", "model": "mixtral-8x7b", "cluster": {"gpu": "h100"}})

    with pytest.raises(ScenarioError, match=r"cluster\.gpu: unknown gpu id 'h100'.*h100-sxm"):
        load_scenario(path)


# -- the layout rules as a whole -------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    model_id=st.sampled_from(["mixtral-8x7b", "qwen3-30b-a3b", "llama-3-8b", "deepseek-v2"]),
    nodes=st.sampled_from([1, 2, 3, 4, 8]),
    tp=st.sampled_from([1, 2, 3, 4, 8, 16]),
    pp=st.sampled_from([1, 2, 3, 4]),
    ep=st.sampled_from([1, 2, 4, 8, 16, 32, 64]),
    etp=st.sampled_from([1, 2]),
)
def test_layout_is_accepted_exactly_when_the_documented_rules_hold(
    model_id: str, nodes: int, tp: int, pp: int, ep: int, etp: int
) -> None:
    """DESIGN.md: dp = gpus / (tp·cp·pp); tp divides the heads, kv heads and FFN; ep divides the
    routed experts; ep·etp divides tp·cp·dp; etp divides the expert FFN; dense means ep = etp = 1.
    The global batch is a multiple of every dp here, so only the layout decides."""
    m = load_model(model_id)
    gpus = nodes * 8
    data = {
        "name": "h",
        "model": model_id,
        "cluster": {"gpu": "h100-sxm", "nodes": nodes},
        "parallel": {"tp": tp, "pp": pp, "ep": ep, "etp": etp},
        "workload": {"stage": "pretrain", "global_batch": 3 * 2**10},
    }
    dp = gpus // (tp * pp)
    ok = gpus % (tp * pp) == 0 and m.n_heads % tp == 0 and m.ffn_hidden % tp == 0
    ok = ok and (m.attention == "mla" or m.kv_heads % tp == 0)
    if m.moe is None:
        ok = ok and ep == 1 and etp == 1
    else:
        ok = ok and m.moe.n_routed_experts % ep == 0 and m.moe.expert_hidden % etp == 0
        ok = ok and dp > 0 and (tp * dp) % (ep * etp) == 0
    if ok:
        s = scenario_from_dict(data)
        assert s.parallel.dp == dp
        assert s.parallel.gpus == gpus
        if m.moe is not None:
            assert s.parallel.ep * s.parallel.etp * s.parallel.edp == tp * dp
    else:
        with pytest.raises(ScenarioError, match=r"parallel"):
            scenario_from_dict(data)


@pytest.mark.parametrize(
    ("parallel", "message"),
    [
        ({"pipeline_layout": "Et*10|t*10L"}, "place 32"),  # llama-3-8b has 32 layers
        ({"first_stage_layers": 5, "last_stage_layers": 8}, "divides the rest"),
        ({"account_for_embedding": True}, "do not split evenly"),  # 33 over 4
    ],
)
def test_layout_options_are_checked_against_the_model(parallel: dict, message: str) -> None:
    d = {
        "name": "layout",
        "model": "llama-3-8b",
        "cluster": {"gpu": "h100-sxm", "nodes": 1, "gpus_per_node": 8},
        "parallel": {"pp": 4 if "pipeline_layout" not in parallel else 2, **parallel},
        "workload": {"stage": "pretrain", "seq_len": 1024, "global_batch": 8},
    }
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(d)
    assert message in str(e.value) and "parallel" in str(e.value)
