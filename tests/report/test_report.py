"""Reports: every kind builds, is self-contained, and renders in a real browser without errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import check_in_browser, chromium  # tests/report/browser.py (pytest's rootdir)

from moesim.cli.report_cmd import load_comparison
from moesim.plan import plan_from_dict, run_plan
from moesim.report import figures
from moesim.report.build import (
    comparison_report,
    comparison_verdict,
    plan_report,
    scenario_report,
    sweep_report,
    traffic_matrix_MB,
    variant,
)
from moesim.report.html import Report, Section
from moesim.report.serving import decode_batch_curve, decode_batch_figures
from moesim.scenario_io import load_scenario
from moesim.sim.run import simulate

ROOT = Path(__file__).parents[2]
SCENARIOS = ROOT / "scenarios"
MIXTRAL = SCENARIOS / "mixtral-8x7b-pretrain-256xh100.yaml"
LLAMA = SCENARIOS / "pretrain" / "llama-2-13b-256xh100.yaml"
MIXTRAL_DECODE = SCENARIOS / "serving" / "mixtral-8x7b-decode-8xh100.yaml"
LLAMA_13B_DECODE = SCENARIOS / "serving" / "llama-2-13b-decode-8xh100.yaml"
POST_TRAINING = SCENARIOS / "post-training"

needs_browser = pytest.mark.skipif(
    chromium() is None and not os.environ.get("CI"),
    reason="chromium not installed (make test installs it; CI requires it)",
)


@pytest.fixture(scope="module")
def mixtral_report(tmp_path_factory) -> Path:
    rep = scenario_report(load_scenario(MIXTRAL))
    return rep.write(tmp_path_factory.mktemp("r") / "mixtral.html")


def test_scenario_report_is_self_contained(mixtral_report):
    html = mixtral_report.read_text()
    assert "<script src=" not in html  # plotly.js inlined, no CDN
    assert html.count("plotly-graph-div") >= 8
    for heading in ("Where the step time goes", "Memory per GPU", "Timeline",
                    "All-to-all traffic", "Sensitivity", "Cost", "Assumptions"):  # fmt: skip
        assert heading in html
    assert "MFU" in html and "GPU-hours" in html


@needs_browser
def test_reports_render_in_chromium_without_errors(mixtral_report, tmp_path):
    got = check_in_browser(mixtral_report)
    assert got["errors"] == []
    assert got["plots"] >= 8 and got["rendered"] == got["plots"]
    scenarios = [load_scenario(MIXTRAL), load_scenario(LLAMA)]
    results = [simulate(s) for s in scenarios]
    cmp = comparison_report(scenarios, results, "mixtral vs llama").write(tmp_path / "c.html")
    got = check_in_browser(cmp)
    assert got["errors"] == [] and got["rendered"] == got["plots"] >= 4


@needs_browser
def test_browser_probe_catches_javascript_errors(tmp_path):
    """The probe must be able to fail: a page that throws is reported."""
    rep = Report("broken", "a page whose script throws")
    rep.add(Section("x", "<script>this_function_does_not_exist();</script>"))
    got = check_in_browser(rep.write(tmp_path / "broken.html"))
    assert got["errors"] and "this_function_does_not_exist" in got["errors"][0]
    rep = Report("rejected", "a page whose promise is rejected")
    rep.add(Section("x", "<script>Promise.reject(new Error('nobody caught me'));</script>"))
    got = check_in_browser(rep.write(tmp_path / "rejected.html"))
    assert any("nobody caught me" in e for e in got["errors"])


def test_traffic_matrix_conserves_bytes_and_shows_hot_experts():
    s = load_scenario(MIXTRAL)
    uniform, labels = traffic_matrix_MB(s)
    assert len(labels) == 8
    tokens_MB = 4096 * 2 * 4096 * 2 / 1e6  # tokens · top-2 · d · bf16 per source GPU
    assert uniform.sum(axis=1) == pytest.approx([tokens_MB] * 8)
    skewed_s = variant(s, routing__distribution="zipf", routing__skew=1.5)
    skewed, _ = traffic_matrix_MB(skewed_s)
    assert skewed.sum(axis=1) == pytest.approx([tokens_MB] * 8)
    assert skewed.max() > 2 * uniform.max()


def test_variant_rejects_invalid_layouts():
    s = load_scenario(MIXTRAL)
    assert variant(s, parallel__ep=3) is None  # 3 does not divide 8 experts
    assert variant(s, parallel__ep=4).parallel.ep == 4


def test_sweep_report_builds_from_a_frame():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "param.parallel.ep": [1, 2, 1, 2],
            "param.routing.skew": [0.0, 0.0, 1.0, 1.0],
            "step_time_s": [1.0, 1.1, 2.0, 1.5],
            "mfu": [0.5, 0.45, 0.25, 0.3],
            "error": [None, None, None, None],
        }
    )
    html = sweep_report(frame, "t").render()
    assert "step_time_s vs parallel.ep" in html


# -- serving -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def serving_comparison(tmp_path_factory) -> tuple[str, Path]:
    name, desc, scenarios = load_comparison(SCENARIOS / "compare-mixtral-vs-dense-serving.yaml")
    results = [simulate(s) for s in scenarios]
    rep = comparison_report(scenarios, results, name, desc)
    return comparison_verdict(scenarios, results), rep.write(
        tmp_path_factory.mktemp("r") / "serving.html"
    )


def test_serving_comparison_shows_serving_metrics_not_training_ones(serving_comparison):
    verdict, path = serving_comparison
    assert "per million output tokens" in verdict and "Fastest decode" in verdict
    assert "GPU-time per output token" in verdict
    html = path.read_text()
    for heading in (
        "Serving: latency, throughput and cost",
        "TTFT p99",
        "TPOT p50",
        "$ per M output tokens",
        "Sensitivity: decode batch size",
        "Decode: time per output token vs batch size",
        "Decode: output tokens",  # "tokens/s" is "tokens\\/s" in plotly's JSON
    ):
        assert heading in html, heading
    assert "MFU" not in html  # the training-only cost table is left out of a serving comparison


def test_decode_batch_curves_put_moe_against_dense():
    """Mixtral reads 2 of 8 experts per layer at batch 1 (a dense 13B's bytes) and all of them
    by batch 16: its time per token rises with the batch, and so does its throughput. The 13B's
    KV cache of 256 sequences does not fit, so its curve stops."""
    batches = (1, 16, 256)
    moe = decode_batch_curve(load_scenario(MIXTRAL_DECODE), batches=batches)
    dense = decode_batch_curve(load_scenario(LLAMA_13B_DECODE), batches=batches)
    assert moe.batches == dense.batches == list(batches)
    assert moe.tpot_s[0] < moe.tpot_s[1] < moe.tpot_s[2]
    assert moe.tokens_per_s_per_gpu[0] < moe.tokens_per_s_per_gpu[1] < moe.tokens_per_s_per_gpu[2]
    assert moe.tpot_s[0] == pytest.approx(dense.tpot_s[0], rel=0.25)  # ~13 B read per token
    assert moe.fits == [True, True, True] and dense.fits == [True, True, False]
    assert dense.first_unfit_batch() == 256 and moe.cheapest()[0] == 256
    tpot_fig, rate_fig = decode_batch_figures([moe, dense])
    for fig in (tpot_fig, rate_fig):
        assert [tr.name for tr in fig.data] == [moe.name, dense.name]
        assert fig.layout.xaxis.type == "log"
        assert fig.data[1].y[-1] is None  # the batch that does not fit is left out
    assert tpot_fig.data[0].y[0] == pytest.approx(1e3 * moe.tpot_s[0])  # milliseconds


def test_scenario_report_of_a_static_batch_has_the_decode_batch_curves(tmp_path):
    html = scenario_report(load_scenario(MIXTRAL_DECODE)).render()
    assert "Decode: time per output token vs batch size" in html
    assert "per million" in html  # the verdict's cost per output token


# -- post-training ----------------------------------------------------------------------------
def test_phase_breakdown_shows_each_post_training_phase_and_sums_to_the_step():
    files = ["qwen3-30b-a3b-sft-64xh100", "qwen3-30b-a3b-dpo-64xh100",
             "qwen3-30b-a3b-grpo-64xh100", "llama-3-8b-ppo-32xh100"]  # fmt: skip
    results = [simulate(load_scenario(POST_TRAINING / f"{f}.yaml")) for f in files]
    fig = figures.phase_breakdown(results)
    names = [tr.name for tr in fig.data]
    for phase in ("weight sync", "rollout", "reference", "training", "old logprobs", "values",
                  "gae", "critic training"):  # fmt: skip
        assert phase in names, phase
    assert names.index("rollout") < names.index("reference") < names.index("training")
    for i, r in enumerate(results):
        stacked = sum(tr.x[i] for tr in fig.data)
        assert stacked == pytest.approx(r.step_time_s, rel=1e-6), r.name


def test_post_training_comparison_reads_as_a_pipeline(tmp_path):
    name, desc, scenarios = load_comparison(SCENARIOS / "compare-moe-post-training.yaml")
    assert [s.workload.stage for s in scenarios] == ["sft", "dpo", "grpo"]
    results = [simulate(s) for s in scenarios]
    verdict = comparison_verdict(scenarios, results)
    assert "Stage by stage" in verdict and "Cheapest" not in verdict  # stages, not alternatives
    assert "rollout" in verdict and "All stages: $" in verdict
    html = comparison_report(scenarios, results, name, desc).render()
    assert "Where the step time goes, phase by phase" in html and "Step time by phase" in html
    assert "The rollout engine of each replica" in html  # GRPO's engine, pool, preemptions


# -- a serving plan ---------------------------------------------------------------------------
SERVING_PLAN = {
    "name": "mixtral-serving",
    "model": "mixtral-8x7b",
    "gpu": "h100-sxm",
    "workload": {"stage": "inference", "prompt_len": 512, "output_len": 64,
                 "arrival_rate_per_s": 60, "duration_s": 10},
    "search": {"gpus": [2, 4], "tp": [2], "pp": [1], "ep": [2, 4]},
    "constraints": {"ttft_p99_s": 1.0, "tpot_p99_s": 0.02},
}  # fmt: skip


@pytest.fixture(scope="module")
def serving_plan_report(tmp_path_factory) -> Path:
    rep = plan_report(run_plan(plan_from_dict(SERVING_PLAN)))
    return rep.write(tmp_path_factory.mktemp("r") / "plan.html")


def test_serving_plan_report_explains_the_choice(serving_plan_report):
    html = serving_plan_report.read_text()
    assert "Serving 60 requests/s (Poisson) under p99 TTFT ≤ 1 s and p99 TPOT ≤ 20 ms" in html
    assert "The cheapest that meets the SLOs is <b>4 GPUs: tp 2 · ep 4</b>" in html
    assert "The closest cheaper layout, 2 GPUs: tp 2 · ep 2" in html
    for heading in ("Why the others were rejected", "p99 time per output token vs cost per hour",
                    "Time to first token vs request rate"):  # fmt: skip
        assert heading in html, heading


@needs_browser
def test_serving_reports_render_in_chromium_without_errors(serving_comparison, serving_plan_report):
    for path in (serving_comparison[1], serving_plan_report):
        got = check_in_browser(path)
        assert got["errors"] == [], path
        assert got["plots"] >= 5 and got["rendered"] == got["plots"], (path, got)


def test_comparison_report_details_each_training_scenario(tmp_path):
    scenarios = [load_scenario(MIXTRAL), load_scenario(LLAMA)]
    results = [simulate(s) for s in scenarios]
    html = comparison_report(scenarios, results, "m vs l", sensitivity=False)
    text = html.write(tmp_path / "c.html").read_text()
    for s in scenarios:
        assert f"Timeline of one simulated step: {s.name}" in text
    assert f"All-to-all traffic of one MoE layer: {scenarios[0].name}" in text
    assert f"All-to-all traffic of one MoE layer: {scenarios[1].name}" not in text  # dense
    verdict = comparison_verdict(scenarios, results)
    assert "MFU" in verdict and "exposed communication" in verdict


def test_a_plan_with_reliability_reports_goodput_beside_throughput():
    """The plan report's lead says the goodput, the interval and the interruptions, and its
    table has goodput and effective throughput columns (a stand-in simulator keeps it fast)."""
    from moesim.analytic.goodput import reliability_fields
    from moesim.plan import step_time_lower_bound_s
    from moesim.report.build import plan_report
    from moesim.specs import Result

    def fake(s):
        step = 1.5 * step_time_lower_bound_s(s)
        tokens = s.workload.global_batch * s.workload.seq_len
        r = Result(name=s.name, stage="pretrain", gpus=s.gpus, params_total=1, params_active=1,
                   model_flops_per_token=1, step_time_s=step, tokens_per_s=tokens / step,
                   fits_in_memory=True)  # fmt: skip
        for k, v in reliability_fields(s, r.tokens_per_s, s.workload.total_tokens).items():
            setattr(r, k, v)
        return r

    plan = plan_from_dict({
        "name": "dense-goodput", "model": "llama-3-8b", "gpu": "h100-sxm",
        "workload": {"stage": "pretrain", "seq_len": 2048, "global_batch": 256,
                     "total_tokens": 1e11},
        "reliability": {"gpu_mtbf_hours": 1000, "checkpoint_write_s": 30, "restart_s": 600},
        "search": {"nodes": [4, 8], "tp": [1, 2], "pp": [1], "zero_stage": [1],
                   "microbatch_size": [1], "recompute": ["selective"]},
    })  # fmt: skip
    rep = plan_report(run_plan(plan, simulate=fake))
    assert "goodput is" in rep.lead and "interruptions" in rep.lead
    html = rep.render()
    assert "effective_tokens_per_s" in html and "goodput" in html


def test_phase_table_gives_each_rl_phase_its_mfu_and_mbu_and_counts_rollout_gpus():
    from moesim.cli.report_cmd import compare_rows
    from moesim.scenario_io import scenario_from_dict

    wl = {"stage": "grpo", "global_batch": 8, "group_size": 4, "prompt_len": 256,
          "response_len": 256, "rollout": "disaggregated", "rollout_gpus": 8,
          "off_policy_steps": 1}  # fmt: skip
    s = scenario_from_dict({"name": "async", "model": "llama-3-8b",
                            "cluster": {"gpu": "h100-sxm", "nodes": 1},
                            "parallel": {"tp": 1, "zero_stage": 1}, "workload": wl})  # fmt: skip
    r = simulate(s)
    fig = figures.phase_utilization_table([r])
    phases = list(fig.data[0].cells.values[1])
    assert phases == ["weight sync", "rollout", "reference", "training"]
    seconds = [float(x) for x in fig.data[0].cells.values[2]]
    assert seconds[1] == pytest.approx(r.rollout_time_s, abs=1e-3)  # the whole generation
    assert compare_rows([s], [r])["GPUs"] == ["16"]  # 8 training + 8 rollout
    assert figures.phase_utilization_table([simulate(load_scenario(MIXTRAL))]) is None


def test_disaggregation_table_shows_both_pools_and_the_ttft_parts():
    from types import SimpleNamespace

    from moesim.report.serving import disaggregation_table

    pool = {
        "gpus": 16, "replicas": 16, "layout": {"tp": 1, "pp": 1, "ep": 16, "etp": 1, "dp": 16},
        "dispatcher": "deepep", "utilization": 0.5, "capacity_requests_per_s": 95.0,
        "memory_per_gpu_GB": {"total": 120.0},
    }  # fmt: skip
    d = {
        "prefill": pool, "decode": {**pool, "gpus": 32, "dispatcher": "deepep_low_latency"},
        "bottleneck": "prefill", "kv_link": "network", "kv_transfer_s": 0.003,
        "ttft_parts_s_mean": {"prefill": 0.2, "kv_transfer": 0.003},
    }  # fmt: skip
    fig = disaggregation_table(SimpleNamespace(disaggregated=d))
    cells = fig.data[0].cells.values
    assert list(cells[0]) == ["prefill", "decode"]
    assert "deepep_low_latency" in list(cells[4])
    assert "bottleneck: prefill" in fig.layout.title.text
    assert "kv transfer" in fig.layout.title.text
    assert disaggregation_table(SimpleNamespace()) is None


def test_rollout_engine_table_shows_the_engine_its_pool_and_preemptions():
    from moesim.scenario_io import scenario_from_dict

    def grpo(engine):
        wl = {"stage": "grpo", "global_batch": 16, "group_size": 16, "prompt_len": 512,
              "response_len": 1024, "rollout": "disaggregated", "rollout_gpus": 8,
              "rollout_engine": engine}  # fmt: skip
        return simulate(scenario_from_dict({"name": engine.get("scheduler", "v1"),
                                            "model": "llama-2-13b",
                                            "cluster": {"gpu": "h100-sxm", "nodes": 1},
                                            "parallel": {"tp": 2, "zero_stage": 1},
                                            "workload": wl}))  # fmt: skip

    v1 = grpo({"gpu_memory_utilization": 0.4})
    first = grpo({"scheduler": "prefill_first", "gpu_memory_utilization": 0.4})
    cells = figures.rollout_engine_table([v1, first]).data[0].cells.values
    assert list(cells[1]) == ["vllm_v1", "prefill_first"]
    assert cells[2][0] == cells[2][1] == f"{v1.rollout_kv_pool_tokens:,}"  # the same pool
    assert cells[6][0] == v1.rollout_preemptions > 0 and cells[6][1] == 0
    assert figures.rollout_engine_table([simulate(load_scenario(MIXTRAL))]) is None
