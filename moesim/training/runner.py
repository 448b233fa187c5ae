"""Run a stage for N steps and report what a user watches (the ``moesim train`` contract of
DESIGN.md): loss_first, loss_last, tokens_per_s, device; reward_first/last (grpo),
margin_first/last (dpo), expert_load_cv (MoE models, at the last step)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from moesim.nn import Transformer
from moesim.specs import ModelSpec
from moesim.training.dpo import DPO
from moesim.training.grpo import GRPO
from moesim.training.pretrain import Pretrain
from moesim.training.sft import SFT
from moesim.training.step import TrainConfig

STAGES: dict[str, type] = {"pretrain": Pretrain, "sft": SFT, "dpo": DPO, "grpo": GRPO}


def build_model(spec: ModelSpec, cfg: TrainConfig) -> Transformer:
    torch.manual_seed(cfg.seed)
    model = Transformer(spec, bias_update_rate=cfg.balance.bias_update_rate)
    return model.to(cfg.device)


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_stage(
    stage: str,
    spec: ModelSpec,
    steps: int,
    cfg: TrainConfig | None = None,
    *,
    stage_config: Any = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train ``spec`` from scratch for ``steps`` steps of ``stage``; the metrics dict."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
    if steps < 1:
        raise ValueError("steps must be at least 1")
    cfg = cfg or TrainConfig()
    model = build_model(spec, cfg)
    args = (model, cfg) if stage_config is None else (model, cfg, stage_config)
    trainer = STAGES[stage](*args)
    history: list[dict[str, float]] = []
    seconds = 0.0
    for i in range(steps):
        _sync(cfg.device)
        t0 = time.perf_counter()
        metrics = trainer.step(i)
        _sync(cfg.device)
        seconds += time.perf_counter() - t0
        history.append(metrics)
        if on_step is not None:
            on_step(i, metrics)
    first, last = history[0], history[-1]
    result: dict[str, Any] = {
        "stage": stage,
        "model": spec.name,
        "steps": steps,
        "params": sum(p.numel() for p in model.parameters()),
        "loss_first": first["loss"],
        "loss_last": last["loss"],
        "tokens_per_s": sum(h["tokens"] for h in history) / seconds,
        "device": str(cfg.device),
    }
    if stage == "grpo":
        result["reward_first"], result["reward_last"] = first["reward"], last["reward"]
    if stage == "dpo":
        result["margin_first"], result["margin_last"] = first["margin"], last["margin"]
    if "expert_load_cv" in last:
        result["expert_load_cv"] = last["expert_load_cv"]
        # the run's routing histogram: summed over steps and MoE layers
        counts = [h.pop("tokens_per_expert") for h in history]
        result["tokens_per_expert"] = [sum(c) for c in zip(*counts, strict=True)]
    result["history"] = history
    return result
