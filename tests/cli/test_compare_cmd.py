"""``moesim compare``: training metrics for training scenarios, serving metrics for serving ones."""

from __future__ import annotations

from pathlib import Path

from moesim.cli.report_cmd import compare_rows
from moesim.scenario_io import load_scenario
from moesim.specs import Result

SCENARIOS = Path(__file__).parents[2] / "scenarios"


def _result(stage: str, **kw) -> Result:
    return Result(name=stage, stage=stage, gpus=8, params_total=1, params_active=1,
                  model_flops_per_token=1, fits_in_memory=True, **kw)  # fmt: skip


def test_serving_comparison_shows_latency_throughput_and_cost_per_token(moesim) -> None:
    r = moesim("compare", SCENARIOS / "compare-mixtral-vs-dense-serving.yaml")
    assert r.returncode == 0, r.output
    for row in ("TTFT p50 / p99 ms", "TPOT p50 / p99 ms", "out tokens/s/GPU",
                "$ per M out tokens"):  # fmt: skip
        assert row in r.stdout, row
    for row in ("MFU", "GPU-hours", "step time s"):  # training-only rows are left out
        assert row not in r.stdout, row


def test_mixed_comparison_shows_both_and_dashes_what_does_not_apply() -> None:
    scenarios = [
        load_scenario(SCENARIOS / "mixtral-8x7b-pretrain-256xh100.yaml"),
        load_scenario(SCENARIOS / "serving" / "mixtral-8x7b-decode-8xh100.yaml"),
    ]
    results = [
        _result("pretrain", step_time_s=2.5, tokens_per_s=1e6, mfu=0.5, gpu_hours=10.0,
                cost_usd=20.0),
        _result("inference", step_time_s=0.0175, tokens_per_s=3286.0, tokens_per_s_per_gpu=411.0,
                output_tokens_per_s=3286.0, ttft_s_p50=0.514, ttft_s_p99=0.6, tpot_s_p50=0.0175,
                tpot_s_p99=0.018, cost_per_million_tokens_usd=1.35),
    ]  # fmt: skip
    rows = compare_rows(scenarios, results)
    assert rows["step time s"] == ["2.500", "–"]
    assert rows["MFU"] == ["50.0%", "–"]
    assert rows["TTFT p50 / p99 ms"] == ["– / –", "514.0 / 600.0"]
    assert rows["out tokens/s/GPU"] == ["–", "411"]
    assert rows["$ per M out tokens"] == ["–", "1.35"]
    assert rows["cost $"] == ["20", "–"]


def test_compare_shows_where_each_step_goes() -> None:
    scenarios = [
        load_scenario(SCENARIOS / "mixtral-8x7b-pretrain-256xh100.yaml"),
        load_scenario(SCENARIOS / "serving" / "mixtral-8x7b-decode-8xh100.yaml"),
    ]
    results = [
        _result("pretrain", step_time_s=2.5, time_breakdown_s={"compute": 1.9, "exposed_comm": 0.2,
                "bubble": 0.4, "imbalance": 0.0}),
        _result("inference", step_time_s=0.02, time_breakdown_s={"compute": 0.015,
                "exposed_comm": 0.005}),
    ]  # fmt: skip
    rows = compare_rows(scenarios, results)
    assert rows["  compute s"] == ["1.900", "0.015"]
    assert rows["  exposed comm s"] == ["0.200", "0.005"]
    assert rows["  bubble s"] == ["0.400", "–"]
    assert "  imbalance s" not in rows  # no scenario has any
