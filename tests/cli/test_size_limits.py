"""Runs past the simulator's bounds (``moesim.sim.limits``) through the real entry point: a
message naming the field and exit code 2, at once, never a traceback or the OOM killer."""

from __future__ import annotations

from pathlib import Path

BILLION_NODES = """\
name: billion
model: deepseek-v3
cluster: {gpu: h800-sxm, nodes: 1000000000, gpus_per_node: 8}
parallel: {pp: 16, ep: 64, zero_stage: 1}
workload: {stage: pretrain, seq_len: 4096, global_batch: 500000000}
"""


def test_a_billion_nodes(moesim, tmp_path: Path) -> None:
    path = tmp_path / "billion.yaml"
    path.write_text(BILLION_NODES)
    r = moesim("simulate", path)
    assert r.returncode == 2, r.output
    assert "Traceback" not in r.output
    assert "cluster.nodes" in r.stderr and "1,048,576" in r.stderr


def test_validate_refuses_what_simulate_refuses(moesim, tmp_path: Path) -> None:
    path = tmp_path / "billion.yaml"
    path.write_text(BILLION_NODES)
    r = moesim("validate", path)
    assert r.returncode == 2 and "Traceback" not in r.output
    assert "cluster.nodes" in r.stderr and "ok" not in r.stdout


def test_full_fidelity_with_100k_microbatches_on_8192_gpus(moesim) -> None:
    scenario = Path(__file__).resolve().parents[2] / "scenarios"
    r = moesim(
        "simulate",
        scenario / "deepseek-v3-pretrain-2048xh800.yaml",
        "--fidelity",
        "full",
        "--set",
        "cluster.nodes=1024",
        "--set",
        "parallel.dp=512",
        "--set",
        "workload.global_batch=51200000",
    )
    assert r.returncode == 2, r.output
    assert "Traceback" not in r.output
    assert "symmetric fidelity" in r.stderr and "microbatches_simulated" in r.stderr
