"""``moesim simulate``: a scenario's result; any other kind of file names the command to run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SCENARIOS = Path(__file__).parents[2] / "scenarios"


@pytest.mark.parametrize(
    ("path", "kind", "command"),
    [
        ("serving/decode-batch-sweep.yaml", "sweep", "sweep"),
        ("serving/mixtral-8x7b-1xh100-fp8-vs-offload.yaml", "sweep", "sweep"),
        ("compare-mixtral-vs-dense-serving.yaml", "comparison", "compare"),
        ("plans/mixtral-serving-slo.yaml", "plan", "plan"),
    ],
)
def test_a_file_that_is_not_a_scenario_names_the_command_to_run(moesim, path, kind, command):
    r = moesim("simulate", SCENARIOS / path)
    assert r.returncode == 2, r.output
    assert f"this is a {kind} file" in r.output
    assert f"run `moesim {command} {SCENARIOS / path}`" in r.output
    assert "Traceback" not in r.output and "unknown key" not in r.output


def test_a_serving_scenario_reports_one_forward_per_generated_token(moesim):
    r = moesim("simulate", SCENARIOS / "serving" / "llama-2-13b-decode-8xh100.yaml", "--json")
    assert r.returncode == 0, r.output
    d = json.loads(r.stdout)
    # 2 FLOPs per active weight plus attention at ~1.1k keys: about 2.05·N, not 4·N
    assert 1.95 * d["params_active"] < d["model_flops_per_token"] < 2.2 * d["params_active"]
    # 16 prompts of 1024 under an 8192-token budget (vllm_v1): 8 prompts, then the first 8
    # decodes take 8 tokens of the next step's budget, so the last 8 tokens need a third step
    assert d["max_prefill_tokens"] == 8192 and d["prefill_steps"] == 3 and d["mixed_steps"] == 2


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("mixtral-8x7b-decode-8xh100.yaml", "batch_size 16 is per replica (64 sequences in all)"),
        ("mixtral-8x7b-poisson-8xh100.yaml", "40 requests/s are split over the replicas (10 each)"),
    ],
)
def test_serving_output_says_what_a_replica_is(path, says):
    from tests.cli.conftest import run_main

    r = run_main("simulate", SCENARIOS / "serving" / path)
    assert r.returncode == 0, r.output
    text = " ".join(r.stdout.split())  # rich wraps at the terminal's width
    assert "replica: one copy of the model on 2 GPUs (tp 2 · pp 1 · ep 1 · etp 2)" in text
    assert "4 replicas on 8 GPUs" in text and says in text
