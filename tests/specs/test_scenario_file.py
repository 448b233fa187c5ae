"""Scenario files as users write them: unknown keys, bad sizes, missing keys, bad YAML, and the
per-section rules (schedule, inference, routing), each error with its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from scenario_files import BASE, ScenarioFiles

from moesim.scenario_io import ScenarioError, load_scenario, scenario_from_dict

HAND_WRITTEN = """\
name: typo
model: mixtral-8x7b
cluster:
  gpu: h100-sxm
  nodes: 1
parallel:
  tp: 1
  ep: 8
  microbatch_sise: 2
workload:
  stage: pretrain
  global_batch: 64
"""


# -- unknown keys (extra="forbid") -----------------------------------------------------------------
def test_unknown_nested_key_names_its_line(files: ScenarioFiles) -> None:
    path = files.write(HAND_WRITTEN)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value) == (
        f"{path}:9: parallel.microbatch_sise: unknown key 'microbatch_sise': remove it or "
        "check its spelling"
    )


def test_unknown_top_level_key_names_its_line(files: ScenarioFiles) -> None:
    path = files.write(HAND_WRITTEN.replace("  microbatch_sise: 2\n", "") + "costs: {}\n")
    with pytest.raises(ScenarioError, match=rf"{path}:12: costs: unknown key 'costs'"):
        load_scenario(path)


def test_unknown_key_in_workload_stage(files: ScenarioFiles) -> None:
    """The stage tag pydantic puts in the location is dropped: the field reads as in the file."""
    files.error({"workload": {"seq_length": 2048}}, "workload.seq_length", "unknown key")


def test_unknown_key_in_inline_model(files: ScenarioFiles) -> None:
    from moesim.catalog import raw_entry

    model = raw_entry("models", "tiny-moe") | {"n_layer": 4}
    files.error({"model": model}, "model.n_layer", "unknown key 'n_layer'")


def test_every_problem_is_reported_not_only_the_first(files: ScenarioFiles) -> None:
    message = files.error(
        {"parallel": {"tpp": 2}, "workload": {"seq_lenght": 1}}, "parallel.tpp", "unknown key"
    )
    assert "workload.seq_lenght: unknown key" in message
    assert len(message.splitlines()) == 2


# -- sizes must be positive ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"parallel": {"tp": 0}}, "parallel.tp"),
        ({"parallel": {"pp": -1}}, "parallel.pp"),
        ({"parallel": {"microbatch_size": 0}}, "parallel.microbatch_size"),
        ({"cluster": {"nodes": 0}}, "cluster.nodes"),
        ({"cluster": {"gpus_per_node": -8}}, "cluster.gpus_per_node"),
        ({"workload": {"seq_len": 0}}, "workload.seq_len"),
        ({"workload": {"global_batch": -64}}, "workload.global_batch"),
        ({"workload": {"total_tokens": 0}}, "workload.total_tokens"),
    ],
)
def test_zero_or_negative_size_is_refused(files: ScenarioFiles, update: dict, field: str) -> None:
    files.error(update, field, "greater than 0")


def test_negative_price_is_refused(files: ScenarioFiles) -> None:
    files.error({"cost": {"usd_per_gpu_hour": -1.0}}, "cost.usd_per_gpu_hour", "greater than")


@pytest.mark.parametrize("key", ["d_model", "n_layers", "vocab_size", "n_heads", "ffn_hidden"])
def test_zero_model_size_is_refused(files: ScenarioFiles, key: str) -> None:
    from moesim.catalog import raw_entry

    model = raw_entry("models", "tiny-dense") | {key: 0}
    files.error({"model": model, "parallel": {"ep": 1}}, f"model.{key}", "greater than 0")


def test_zero_experts_is_refused(files: ScenarioFiles) -> None:
    from moesim.catalog import raw_entry

    model = raw_entry("models", "tiny-moe")
    model["moe"] = model["moe"] | {"n_routed_experts": 0}
    files.error({"model": model}, "model.moe.n_routed_experts", "greater than 0")


# -- missing and mistyped --------------------------------------------------------------------------
def test_missing_workload_is_named(files: ScenarioFiles) -> None:
    path = files.write({k: v for k, v in BASE.items() if k != "workload"})
    with pytest.raises(ScenarioError, match=r"workload: required and missing: add it"):
        load_scenario(path)


def test_missing_global_batch_is_named(files: ScenarioFiles) -> None:
    files.error(
        {"workload": {"global_batch": None}}, "workload.global_batch", "required and missing"
    )


def test_unknown_stage_lists_the_stages(files: ScenarioFiles) -> None:
    files.error({"workload": {"stage": "pretrian"}}, "workload", "'pretrian'", "'pretrain'")


def test_wrong_type_is_named(files: ScenarioFiles) -> None:
    files.error({"parallel": {"tp": "two"}}, "parallel.tp", "integer")


# -- YAML itself -----------------------------------------------------------------------------------
def test_invalid_yaml_names_the_line(files: ScenarioFiles) -> None:
    path = files.write("name: x\nmodel: mixtral-8x7b\ncluster:\n  gpu: [h100\n  nodes: 1\n")
    with pytest.raises(ScenarioError, match=rf"{path}:\d+: not valid YAML"):
        load_scenario(path)


def test_yaml_that_is_not_a_mapping(files: ScenarioFiles) -> None:
    path = files.write("- just\n- a list\n")
    with pytest.raises(ScenarioError, match="expected a mapping of keys at the top, got list"):
        load_scenario(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario(tmp_path / "absent.yaml")


# -- pipeline schedule -----------------------------------------------------------------------------
def test_interleaved_schedule_without_virtual_stages(files: ScenarioFiles) -> None:
    files.error(
        {"parallel": {"schedule": "interleaved_1f1b"}},
        "parallel",
        "needs virtual_stages ≥ 2: set parallel.virtual_stages",
    )


def test_virtual_stages_without_interleaved_schedule(files: ScenarioFiles) -> None:
    files.error(
        {"parallel": {"virtual_stages": 2}},
        "parallel",
        "virtual_stages = 2 needs schedule: interleaved_1f1b",
    )


def test_interleaved_schedule_with_virtual_stages_is_valid(files: ScenarioFiles) -> None:
    s = files.load(
        {
            "parallel": {"pp": 2, "ep": 4, "virtual_stages": 2, "schedule": "interleaved_1f1b"},
        }
    )
    assert (s.parallel.pp, s.parallel.virtual_stages, s.parallel.dp) == (2, 2, 4)


# -- inference -------------------------------------------------------------------------------------
INFERENCE = {"stage": "inference", "prompt_len": 512, "output_len": 128, "global_batch": None}


def test_inference_needs_batch_size_or_arrival_rate(files: ScenarioFiles) -> None:
    files.error(
        {"workload": INFERENCE | {"seq_len": None}},
        "workload",
        "exactly one of workload.batch_size",
        "workload.arrival_rate_per_s",
    )


def test_inference_refuses_both_batch_size_and_arrival_rate(files: ScenarioFiles) -> None:
    files.error(
        {"workload": INFERENCE | {"seq_len": None, "batch_size": 8, "arrival_rate_per_s": 2.0}},
        "workload",
        "exactly one of",
    )


@pytest.mark.parametrize("key", ["batch_size", "arrival_rate_per_s"])
def test_inference_with_exactly_one_is_valid(files: ScenarioFiles, key: str) -> None:
    s = files.load({"workload": INFERENCE | {"seq_len": None, key: 4}})
    assert s.workload.stage == "inference"
    assert s.workload.seq_len == 640


# -- routing ---------------------------------------------------------------------------------------
def test_routing_histogram_needs_data(files: ScenarioFiles) -> None:
    files.error(
        {"routing": {"distribution": "histogram"}},
        "routing",
        "give routing.histogram or routing.histogram_file",
    )


def test_routing_histogram_needs_non_negative_counts(files: ScenarioFiles) -> None:
    files.error(
        {"routing": {"distribution": "histogram", "histogram": [1, -1, 0, 0, 0, 0, 0, 0]}},
        "routing",
        "non-negative counts with a positive sum",
    )


def test_routing_histogram_with_data_is_valid(files: ScenarioFiles) -> None:
    s = files.load(
        {"routing": {"distribution": "histogram", "histogram": [4, 3, 2, 1, 1, 1, 1, 1]}}
    )
    assert s.routing.histogram == [4, 3, 2, 1, 1, 1, 1, 1]


def test_routing_zipf_skew_must_be_non_negative(files: ScenarioFiles) -> None:
    files.error({"routing": {"distribution": "zipf", "skew": -0.5}}, "routing.skew", "greater")


# -- GRPO reward model -----------------------------------------------------------------------------
def test_grpo_model_reward_needs_a_reward_model(files: ScenarioFiles) -> None:
    files.error(
        {"workload": {"stage": "grpo", "seq_len": None, "reward": "model"}},
        "workload",
        "name workload.reward_model",
    )


def test_grpo_reward_model_resolves_a_catalog_id(files: ScenarioFiles) -> None:
    s = files.load(
        {
            "workload": {
                "stage": "grpo",
                "seq_len": None,
                "reward": "model",
                "reward_model": "tiny-dense",
            }
        }
    )
    assert s.workload.reward_model is not None
    assert s.workload.reward_model.name == "tiny-dense"


# -- the dict entry point --------------------------------------------------------------------------
def test_scenario_from_dict_without_lines_still_names_the_field() -> None:
    data = dict(BASE) | {"parallel": {"tp": 1, "ep": 8, "dp": 2}}
    with pytest.raises(ScenarioError, match=r"^parallel: tp·cp·pp·dp = 1·1·1·2 = 2"):
        scenario_from_dict(data)


def test_cluster_links_default_to_the_gpu_fabrics(files: ScenarioFiles) -> None:
    s = files.load()
    assert s.cluster.intra == s.cluster.gpu.intra_node
    assert s.cluster.inter == s.cluster.gpu.inter_node
    s = files.load({"cluster": {"intra_node": {"bandwidth_GBps": 100}}})
    assert s.cluster.intra.bandwidth_GBps == 100


def test_specs_are_frozen(files: ScenarioFiles) -> None:
    s = files.load()
    with pytest.raises(Exception, match="frozen"):
        s.parallel.tp = 2  # type: ignore[misc]
