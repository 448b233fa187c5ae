"""Serving engine options in the scenario: speculative decoding and disaggregated pools. Each
bad input is an error naming the field and the fix; the JSON Schema documents the fields."""

from __future__ import annotations

import pytest

from moesim.scenario_io import ScenarioError, scenario_from_dict
from moesim.scenario_schema import file_schema
from moesim.specs.scenario import draft_scenario, pool_scenario


def scenario(model: str = "mixtral-8x7b", nodes: int = 2, **wl):
    base = {"stage": "inference", "prompt_len": 256, "output_len": 16}
    if "speculative" in wl:
        base["scheduler"] = "prefill_first"
    if "batch_size" not in wl:
        base["arrival_rate_per_s"] = 1.0
    return scenario_from_dict(
        {
            "name": "t",
            "model": model,
            "cluster": {"gpu": "h100-sxm", "nodes": nodes, "gpus_per_node": 8},
            "workload": {**base, **wl},
        }
    )


POOLS = {"prefill": {"nodes": 1, "tp": 2, "ep": 4}, "decode": {"gpus": 8, "tp": 1, "ep": 8}}


def test_pools_get_their_own_layouts_and_clusters():
    s = scenario(disaggregated=POOLS)
    pre, dec = pool_scenario(s, "prefill"), pool_scenario(s, "decode")
    assert (pre.parallel.tp, pre.parallel.ep, pre.parallel.dp, pre.gpus) == (2, 4, 4, 8)
    assert (dec.parallel.tp, dec.parallel.ep, dec.parallel.dp, dec.gpus) == (1, 8, 8, 8)
    assert pre.workload.disaggregated is None
    small = scenario(nodes=1, disaggregated={"prefill": {"gpus": 2}, "decode": {"gpus": 6}})
    assert pool_scenario(small, "decode").cluster.gpus_per_node == 6


@pytest.mark.parametrize(
    ("wl", "needles"),
    [
        (
            {"disaggregated": {"prefill": {"nodes": 1}, "decode": {"gpus": 4}}},
            ["workload.disaggregated", "12 GPUs", "16", "add up"],
        ),
        (
            {"disaggregated": {"prefill": {"nodes": 1, "gpus": 8}, "decode": {"nodes": 1}}},
            ["exactly one of gpus or nodes"],
        ),
        (
            {"disaggregated": {"prefill": {"gpus": 12}, "decode": {"gpus": 4}}},
            ["workload.disaggregated.prefill.gpus", "unevenly"],
        ),
        (
            {"disaggregated": {"prefill": {"nodes": 1, "ep": 3}, "decode": {"nodes": 1}}},
            ["workload.disaggregated.prefill", "ep (3)", "n_routed_experts"],
        ),
        (
            {"batch_size": 4, "disaggregated": POOLS},
            ["workload.disaggregated", "arrival_rate_per_s"],
        ),
        (
            {"speculative": {"method": "mtp", "num_speculative_tokens": 1, "acceptance_rate": 0.8}},
            ["workload.speculative.method", "no MTP module", "method: draft"],
        ),
        (
            {"speculative": {"method": "draft", "num_speculative_tokens": 2, "acceptance_rate": 1}},
            ["draft_model"],
        ),
        (
            {
                "speculative": {
                    "method": "draft",
                    "draft_model": "mistral-7b",
                    "num_speculative_tokens": 2,
                    "acceptance_rate": 1.5,
                }
            },
            ["acceptance_rate"],
        ),
    ],
)
def test_bad_serving_options_name_the_field(wl, needles):
    with pytest.raises(ScenarioError) as e:
        scenario(**wl)
    for n in needles:
        assert n in str(e.value), str(e.value)


def test_draft_model_layout_errors_name_the_draft_model():
    # tiny-dense has 4 KV heads: the target's tp 8 cannot split them
    with pytest.raises(ScenarioError, match=r"workload\.speculative\.draft_model"):
        scenario_from_dict(
            {
                "name": "t",
                "model": "llama-3-70b",
                "cluster": {"gpu": "h100-sxm", "nodes": 1, "gpus_per_node": 8},
                "parallel": {"tp": 8},
                "workload": {
                    "stage": "inference",
                    "batch_size": 1,
                    "scheduler": "prefill_first",
                    "speculative": {
                        "method": "draft",
                        "draft_model": "tiny-dense",
                        "num_speculative_tokens": 3,
                        "acceptance_rate": 0.7,
                    },
                },
            }
        )


def test_draft_model_takes_a_catalog_id():
    s = scenario(
        batch_size=1,
        speculative={
            "method": "draft",
            "draft_model": "mistral-7b",
            "num_speculative_tokens": 3,
            "acceptance_rate": 0.7,
        },
    )
    assert s.workload.speculative.draft_model.name == "mistral-7b"
    assert draft_scenario(s).parallel.ep == 1


def test_schema_documents_the_new_fields():
    schema = file_schema()
    defs = schema["$defs"]
    wl = defs["InferenceWorkload"]["properties"]
    for key in ("two_batch_overlap", "speculative", "disaggregated"):
        assert wl[key].get("description"), key
    for name in ("SpeculativeSpec", "ServingPoolSpec", "DisaggregatedSpec"):
        for field, prop in defs[name]["properties"].items():
            assert prop.get("description"), f"{name}.{field}"
    draft = defs["SpeculativeSpec"]["properties"]["draft_model"]
    assert "ModelId" in str(draft)


def test_decode_dispatcher_must_agree_with_the_all_to_all_mode():
    d = {
        "name": "t",
        "model": "mixtral-8x7b",
        "cluster": {"gpu": "h100-sxm", "nodes": 1, "gpus_per_node": 8},
        "parallel": {"ep": 8},
        "simulation": {"all_to_all": "hierarchical"},
        "workload": {"stage": "inference", "batch_size": 1, "decode_moe_dispatcher": "alltoall"},
    }
    with pytest.raises(ScenarioError, match="decode_moe_dispatcher"):
        scenario_from_dict(d)
    d["workload"]["decode_moe_dispatcher"] = "deepep"
    assert scenario_from_dict(d).workload.decode_moe_dispatcher == "deepep"
