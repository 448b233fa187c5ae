"""`moesim simulate`: JSON contract, trace file, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIXTRAL = ROOT / "scenarios" / "mixtral-8x7b-pretrain-256xh100.yaml"


def run(*args: str) -> subprocess.CompletedProcess:
    code = "from moesim.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT
    )


def test_simulate_json_has_the_contract_keys(tmp_path):
    trace = tmp_path / "trace.json"
    p = run("simulate", str(MIXTRAL), "--json", "--trace", str(trace))
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    for key in (
        "name",
        "stage",
        "gpus",
        "params_total",
        "params_active",
        "model_flops_per_token",
        "step_time_s",
        "tokens_per_s",
        "tokens_per_s_per_gpu",
        "model_tflops_per_gpu",
        "mfu",
        "memory_per_gpu_GB",
        "fits_in_memory",
        "time_breakdown_s",
        "gpu_hours",
        "cost_usd",
    ):
        assert key in d, key
    assert set(d["time_breakdown_s"]) >= {
        "compute",
        "all_to_all",
        "tp_comm",
        "dp_comm",
        "pp_comm",
        "bubble",
        "imbalance",
        "exposed_comm",
    }
    assert [st["stage"] for st in d["stages"]] == [0, 1, 2, 3]  # pp 4
    assert set(d["stages"][0]) >= {"stage", "layers", "compute_s", "memory_GB", "idle_s"}
    assert d["stages"][0]["layers"].startswith("E t") and d["stages"][3]["layers"].endswith("L")
    assert d["pipeline_layout"] == "Et*8|(t*8|)*2t*8L"
    assert 0 < d["mfu"] < 1
    assert json.loads(trace.read_text())["traceEvents"]


def test_table_output_and_bad_fidelity_exit_2():
    p = run("simulate", str(MIXTRAL))
    assert p.returncode == 0 and "step time" in p.stdout
    assert "pipeline stages: layout Et*8|(t*8|)*2t*8L" in p.stdout and "E t×8" in p.stdout
    assert "imbalance (stage wait)" in p.stdout
    p = run("simulate", str(MIXTRAL), "--fidelity", "exact")
    assert p.returncode == 2 and "fidelity" in p.stderr


def test_missing_file_is_exit_2():
    p = run("simulate", "no/such.yaml")
    assert p.returncode == 2 and "no such file" in p.stderr


def test_profile_option_takes_a_measured_profile(tmp_path):
    """--profile overrides simulation.profile: a profile whose GEMMs reach half the default
    efficiency makes the step slower; an unknown id is a user error."""
    default = json.loads((ROOT / "moesim" / "sim" / "profiles" / "default.json").read_text())
    for cls in ("gemm", "grouped_gemm"):
        default["compute"][cls]["points"] = [
            [x, eff / 2] for x, eff in default["compute"][cls]["points"]
        ]
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(default))
    base = json.loads(run("simulate", str(MIXTRAL), "--json").stdout)
    p = run("simulate", str(MIXTRAL), "--json", "--profile", str(slow))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["step_time_s"] > 1.3 * base["step_time_s"]
    p = run("simulate", str(MIXTRAL), "--profile", "no-such-device")
    assert p.returncode == 2 and "calibration/no-such-device.json" in p.stderr


def test_post_training_table_shows_the_phases():
    grpo = ROOT / "scenarios" / "post-training" / "qwen3-30b-a3b-grpo-64xh100.yaml"
    p = run("simulate", str(grpo))
    assert p.returncode == 0, p.stderr
    assert "time per step by phase" in p.stdout
    for phase in ("rollout", "reference", "training", "weight_sync"):
        assert phase in p.stdout
    assert "rollout engine: vllm_v1, KV pool" in p.stdout and "0 preemptions" in p.stdout
    p = run("simulate", str(MIXTRAL))
    assert "by phase" not in p.stdout  # pretraining has no phases


def test_collective_stage_table_and_json(tmp_path):
    f = tmp_path / "ar.yaml"
    f.write_text(
        "name: ar\nmodel: tiny-dense\ncluster: {gpu: h100-sxm, nodes: 1}\n"
        "workload: {stage: collective, collective: all_reduce, size_bytes: 318000}\n"
    )
    p = run("simulate", str(f))
    assert p.returncode == 0, p.stderr
    assert "bus bandwidth" in p.stdout and "ring / LL" in p.stdout
    d = json.loads(run("simulate", str(f), "--json").stdout)
    assert d["collective_time_s"] == d["step_time_s"] > 0
    f.write_text(f.read_text().replace("318000", "0"))
    p = run("simulate", str(f))
    assert p.returncode == 2 and "size_bytes" in p.stderr


def test_simulate_prints_goodput_beside_throughput_with_reliability():
    straggler = ROOT / "scenarios" / "pretrain" / "mixtral-8x7b-16xh100-straggler.yaml"
    rel = "reliability={gpu_mtbf_hours: 2000, checkpoint_write_s: 20, restart_s: 600}"
    p = run("simulate", str(straggler), "--set", "simulation.fidelity=symmetric", "--set", rel)
    assert p.returncode == 0, p.stderr
    assert "goodput (failures, checkpoints)" in p.stdout
    assert "tokens/s over the run" in p.stdout and "checkpoint interval" in p.stdout
