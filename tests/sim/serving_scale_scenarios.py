"""Scenarios shared by the serving tests (the engine, its step costs and queue, and the scale-out
modules: speculative decoding, two-batch overlap, pipelined decode, prefill/decode
disaggregation)."""

from __future__ import annotations

import json

from moesim.scenario_io import scenario_from_dict
from moesim.specs import Scenario


def serving(
    model: str = "mixtral-8x7b",
    parallel: dict | None = None,
    nodes: int = 1,
    gpu: str = "h100-sxm",
    gpus_per_node: int = 8,
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
            "cluster": {
                "gpu": gpu,
                "nodes": nodes,
                "gpus_per_node": gpus_per_node,
                **(cluster or {}),
            },
            "parallel": {"zero_stage": 0, "recompute": "none", **(parallel or {"tp": 1})},
            "workload": wl,
        }
    )


def as_dict(s: Scenario) -> dict:
    """A scenario as the plain dict of its file (to change a field and build it again)."""
    return json.loads(s.model_dump_json())
