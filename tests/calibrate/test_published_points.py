"""The point table's rows as the cost model sees them (``moesim.calibrate.published_points``):
hand-computed FLOPs and times for a GEMM and a causal and a full FlashAttention row."""

from __future__ import annotations

import csv

import pytest

from moesim.calibrate.published_points import read_points

HEADER = [
    "gpu",
    "op_class",
    "direction",
    "dtype",
    "m",
    "n",
    "k",
    "groups",
    "batch",
    "seqlen",
    "heads",
    "head_dim",
    "causal",
    "measured_TFLOPS",
    "flop_convention",
    "source",
]


def _write(tmp_path, rows):
    path = tmp_path / "k.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HEADER)
        w.writeheader()
        for r in rows:
            w.writerow({**dict.fromkeys(HEADER, ""), **r})
    return path


def test_a_gemm_row_is_2mnk_flops_over_its_throughput(tmp_path):
    row = {"gpu": "a100-sxm-80gb", "op_class": "gemm", "direction": "fwd", "dtype": "bf16"}
    row |= {"m": "1024", "n": "10240", "k": "5120", "groups": "1"}
    row |= {"measured_TFLOPS": "271.2", "flop_convention": "2mnk", "source": "MAMF table"}
    (p,) = read_points(_write(tmp_path, [row]))
    flops = 2.0 * 1024 * 10240 * 5120
    assert p.op.flops == flops
    assert p.time_s == pytest.approx(flops / 271.2e12)
    assert p.op.bytes == (1024 * 5120 + 10240 * 5120) * 2 + 1024 * 10240 * 2


@pytest.mark.parametrize("causal", ["1", "0"])
def test_an_attention_row_keeps_the_papers_time_and_counts_the_simulators_flops(tmp_path, causal):
    row = {"gpu": "a100-sxm-80gb", "op_class": "attention", "direction": "fwd", "dtype": "bf16"}
    row |= {"batch": "2", "seqlen": "8", "heads": "3", "head_dim": "4", "causal": causal}
    row |= {"measured_TFLOPS": "100", "flop_convention": "flash-attn", "source": "a figure"}
    (p,) = read_points(_write(tmp_path, [row]))
    # FlashAttention: 4·b·s²·h·d, halved under a causal mask; the simulator: (s+1)/2 keys
    paper = 4 * 2 * 8 * 8 * 3 * 4 / (2 if causal == "1" else 1)
    keys = (8 + 1) / 2 if causal == "1" else 8
    assert p.time_s == pytest.approx(paper / 100e12)
    assert p.op.flops == pytest.approx(4 * 3 * 4 * keys * 2 * 8)
    assert (p.curve, p.head_dim, p.held_out) == ("attention", 4, True)  # head dim < 128
