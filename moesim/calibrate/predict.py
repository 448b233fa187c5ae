"""Predictions of held-out calibration measurements (``moesim calibrate validate``): an op of
a fitted class through the cost model, a measured MoE layer or training step through
``simulate`` of a one-GPU scenario of the same shape (``moe_layer_scenario``, ``step_scenario``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.calibrate.fit import COMPUTE_CLASSES
from moesim.sim.costmodel import CostModel, OpWork
from moesim.sim.profile import load_profile
from moesim.specs import GPUSpec

FITTED_CLASSES = (*COMPUTE_CLASSES, "memory_bound", "copy", "host_copy")


def _f(v: Any, default: float = 0.0) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(x) else x


def predict_op(r: dict[str, Any], cm: CostModel) -> float:
    """Cost-model time of one op measurement (a fitted class)."""
    cls = r["op_class"]
    if cls == "copy":
        b = _f(r["bytes"])
        return b / (cm.hbm_bytes_per_s * cm.profile.hbm(max(b, 1.0))) + cm.launch_s
    if cls == "host_copy":
        return _f(r["bytes"]) / (cm.gpu.pcie_GBps * 1e9 * cm.link_fraction("pcie")) + cm.launch_s
    groups = int(_f(r.get("groups"), 1.0)) or 1
    bwd = r["pass"] == "fwd_bwd"
    flops, n_bytes = _f(r["flops"]), _f(r["bytes"])
    if bwd:  # the row holds fwd + bwd = 3× the forward
        flops, n_bytes = flops / 3, n_bytes / 3
    fwd = OpWork(r["op"], cls, flops, n_bytes, groups=groups)
    t = cm.time_s(fwd)
    if bwd:
        t += cm.time_s(OpWork(r["op"] + "_bwd", cls, 2 * flops, 2 * n_bytes, groups, 2))
    return t


def _precision(dtype: str) -> dict[str, Any]:
    # CPU stages train in fp32; CUDA stages autocast to bf16 over fp32 weights
    return {"compute": dtype, "params": "fp32", "grads": "fp32", "master_weights": False}


def _cluster(gpu: GPUSpec) -> dict[str, Any]:
    return {"gpu": gpu.model_dump(), "nodes": 1, "gpus_per_node": 1}


def moe_layer_scenario(r: dict[str, Any], gpu: GPUSpec, profile_path: Path, dtype: str):
    from moesim.calibrate.bench_moe import model_spec
    from moesim.specs import Scenario

    t, e, k = int(r["tokens"]), int(r["experts"]), int(r["top_k"])
    d, f = int(r["hidden"]), int(r["ffn_hidden"])
    note = json.loads(r["note"]) if isinstance(r["note"], str) and r["note"] else {}
    hist = note.get("tokens_per_expert")
    routing = {"distribution": "histogram", "histogram": hist} if hist else {}
    precision = _precision(dtype) | {"params": dtype if dtype != "fp32" else "fp32"}
    return Scenario.model_validate(
        {
            "name": f"calib-{r['op']}-T{t}E{e}K{k}D{d}F{f}-{r['pass']}",
            "model": model_spec(t, e, k, d, f).model_dump(),
            "cluster": _cluster(gpu),
            "parallel": {"tp": 1, "pp": 1, "dp": 1, "ep": 1},
            "precision": precision,
            "routing": routing,
            "workload": {
                "stage": "moe_layer",
                "tokens_per_gpu": t,
                "passes": "forward_backward" if r["pass"] == "fwd_bwd" else "forward",
            },
            "simulation": {"profile": str(profile_path)},
        }
    )


def step_scenario(r: dict[str, Any], gpu: GPUSpec, profile_path: Path, dtype: str, cuda: bool):
    from moesim.calibrate.bench_steps import step_models
    from moesim.specs import Scenario

    note = json.loads(r["note"])
    stage, b, s = note["stage"], int(r["batch"]), int(r["seq_len"])
    if stage == "grpo":
        g = int(note.get("group_size", 4))
        workload = {"stage": "grpo", "global_batch": b, "group_size": g, "prompt_len": 4,
                    "response_len": 3, "ppo_epochs": 2}  # fmt: skip
        mbs = b * g
    else:
        workload = {"stage": stage, "global_batch": b, "seq_len": s}
        mbs = b
    return Scenario.model_validate(
        {
            "name": f"calib-step-{stage}-{note['model']}-B{b}S{s}",
            "model": step_models(cuda)[note["model"]],
            "cluster": _cluster(gpu),
            "parallel": {
                "tp": 1,
                "pp": 1,
                "dp": 1,
                "ep": 1,
                "microbatch_size": mbs,
                "recompute": "none",
                "zero_stage": 0,
            },
            "precision": _precision(dtype),
            "workload": workload,
            "simulation": {"profile": str(profile_path)},
        }
    )


def predict_all(
    test: pd.DataFrame, gpu: GPUSpec, profile_path: Path, dtype: str, cuda: bool
) -> pd.DataFrame:
    """The held-out rows with ``predicted_s``, ``method`` and (when not scored) ``skipped``."""
    from moesim.sim.run import UnsupportedStage, simulate

    cm = CostModel(gpu, load_profile(profile_path), dtype)
    out = []
    for r in test.to_dict("records"):
        r = dict(r)
        r["skipped"] = ""
        cls = r["op_class"]
        try:
            if cls in FITTED_CLASSES:
                r["predicted_s"], r["method"] = predict_op(r, cm), "costmodel"
            elif cls == "moe_layer":
                res = simulate(moe_layer_scenario(r, gpu, profile_path, dtype))
                r["predicted_s"], r["method"] = res.step_time_s, "simulate"
            elif cls == "step":
                res = simulate(step_scenario(r, gpu, profile_path, dtype, cuda))
                r["predicted_s"], r["method"] = res.step_time_s, "simulate"
            else:
                continue
        except UnsupportedStage as e:
            r["predicted_s"], r["method"], r["skipped"] = float("nan"), "simulate", str(e)
        out.append(r)
    return pd.DataFrame(out)
