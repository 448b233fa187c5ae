"""Scenarios shared by the tests of the scale-out serving modules (speculative decoding, two-batch
overlap, pipelined decode, prefill/decode disaggregation)."""

from __future__ import annotations

from moesim.scenario_io import scenario_from_dict
from moesim.specs import Scenario


def serving(
    model: str = "mixtral-8x7b",
    parallel: dict | None = None,
    nodes: int = 1,
    gpu: str = "h100-sxm",
    cluster: dict | None = None,
    **workload,
) -> Scenario:
    wl = {"stage": "inference", "prompt_len": 512, "output_len": 64, **workload}
    if "arrival_rate_per_s" not in wl and "batch_size" not in wl:
        wl["batch_size"] = 1
    return scenario_from_dict(
        {
            "name": f"{model}-serving",
            "model": model,
            "cluster": {"gpu": gpu, "nodes": nodes, "gpus_per_node": 8, **(cluster or {})},
            "parallel": {"zero_stage": 0, "recompute": "none", **(parallel or {"tp": 1})},
            "workload": wl,
        }
    )
