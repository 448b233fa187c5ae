"""ParallelSpec on its own: schedule rules and the folded expert sizes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moesim.specs import ParallelSpec


def test_dp_unresolved_outside_a_scenario() -> None:
    with pytest.raises(ValueError, match="build it through a Scenario"):
        _ = ParallelSpec().dp_size


def test_expert_data_parallel_folds_experts_out_of_attention_ranks() -> None:
    """ep · etp · edp = tp · cp · dp (Megatron-Core MoE parallel folding)."""
    p = ParallelSpec(tp=2, cp=2, dp=8, ep=8, etp=2)
    assert p.edp == 2 * 2 * 8 // (8 * 2)
    assert p.gpus == 2 * 2 * 1 * 8
    assert p.model_parallel == 4


def test_interleaved_needs_virtual_stages() -> None:
    with pytest.raises(ValidationError, match=r"set parallel\.virtual_stages"):
        ParallelSpec(schedule="interleaved_1f1b")


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValidationError, match="schedule"):
        ParallelSpec(schedule="zero_bubble")  # type: ignore[arg-type]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stages(stage: int) -> None:
    assert ParallelSpec(zero_stage=stage).zero_stage == stage  # type: ignore[arg-type]


def test_zero_stage_4_is_refused() -> None:
    with pytest.raises(ValidationError, match="zero_stage"):
        ParallelSpec(zero_stage=4)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pp": 2, "pipeline_layout": "Et|tL", "first_stage_layers": 1}, "remove first_stage"),
        ({"pp": 2, "pipeline_layout": "Et|tL", "pipeline_balance": "auto"}, "remove pipeline"),
        ({"pp": 2, "first_stage_layers": 3, "account_for_loss": True}, "keep one"),
        ({"pp": 2, "account_for_embedding": True, "pipeline_balance": "auto"}, "set it to even"),
        ({"account_for_loss": True}, "need pp ≥ 2"),
        (
            {"pp": 2, "virtual_stages": 2, "schedule": "interleaved_1f1b", "last_stage_layers": 3},
            "multiple of virtual_stages",
        ),
        ({"pp": 2, "pipeline_layout": "Et*3|(tt|L"}, r"virtual stage 1"),
    ],
)
def test_layout_options_exclude_each_other_as_in_megatron(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match="parallel") as e:
        ParallelSpec(**fields)
    assert message in str(e.value)


def test_order_must_be_a_permutation_of_the_known_dimensions() -> None:
    assert ParallelSpec(order="dp-tp-cp-ep-pp").order_dims == ("dp", "tp", "cp", "ep", "pp")
    for bad in ("tp-cp-dp-pp", "tp-cp-ep-dp-pp-tp", "tp-cp-ep-dp-xx", "tp,cp,ep,dp,pp"):
        with pytest.raises(ValidationError, match=r"parallel\.order .* permutation"):
            ParallelSpec(order=bad)


def test_order_whose_grids_disagree_on_the_stage_is_refused() -> None:
    # pp after tp only: attention ranks put tp=2 ranks before pp, expert ranks etp=1
    from sim_scenarios_specs import moe_scenario

    with pytest.raises(ValueError, match=r"parallel\.order .* put pp last"):
        moe_scenario(parallel={"tp": 2, "pp": 2, "ep": 4, "order": "tp-pp-cp-ep-dp"})
    ok = moe_scenario(parallel={"tp": 2, "pp": 2, "ep": 4, "order": "dp-tp-cp-ep-pp"})
    assert ok.parallel.order == "dp-tp-cp-ep-pp"
