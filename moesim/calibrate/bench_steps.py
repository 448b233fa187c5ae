"""Whole optimizer steps of moesim's own training stages (``moesim.training``: pretrain, SFT,
DPO, GRPO) on small and medium models, for the step-time validation of the simulator.

A step is what ``trainer.step(i)`` does in ``moesim train``: batch preparation, forward,
losses, backward, gradient clipping, AdamW, routing statistics (GRPO: rollouts with KV-cached
generation, reference and old-policy log-probs, then its inner policy updates). Each call gets
the next step index, so every timed step runs on a new batch of the stage's own random data.
On CUDA the stages autocast to bf16 (fp32 master weights); on the CPU they run in fp32.

``flops`` is the analytic model FLOPs (forward + backward, ``moesim.analytic.flops``) per
token × the tokens a step trains on (DPO: both completions of each pair; GRPO: not counted,
the step is dominated by generation). Specs are plain data here so that validation can
rebuild the scenario without torch.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

from moesim.calibrate.context import Case, Context, Row
from moesim.calibrate.records import row

STAGES = ("pretrain", "sft", "dpo", "grpo")

_MEDIUM_CPU = {
    "vocab_size": 256,
    "n_layers": 6,
    "d_model": 512,
    "n_heads": 8,
    "n_kv_heads": 4,
    "attention": "gqa",
    "ffn_kind": "swiglu",
    "ffn_hidden": 1536,
    "max_seq_len": 512,
}
_MEDIUM_GPU = _MEDIUM_CPU | {"n_layers": 12, "d_model": 1024, "n_heads": 16, "ffn_hidden": 4096}
_MEDIUM_GPU["max_seq_len"] = 2048


def step_models(cuda: bool) -> dict[str, dict[str, Any]]:
    """Model specs by name: the catalog's tiny models and a medium dense/MoE pair."""
    from moesim.catalog import raw_entry

    medium = _MEDIUM_GPU if cuda else _MEDIUM_CPU
    d = medium["d_model"]
    experts = 16 if cuda else 8
    moe = {
        "n_routed_experts": experts,
        "top_k": 2,
        "expert_hidden": d,
        "n_shared_experts": 1,
        "first_k_dense": 1,
        "router": "softmax_topk",
    }
    src = "moesim calibrate: medium model for step timing (no published counterpart)"
    return {
        "tiny-dense": raw_entry("models", "tiny-dense"),
        "tiny-moe": raw_entry("models", "tiny-moe"),
        "medium-dense": {"name": "medium-dense", "source": src, **medium},
        "medium-moe": {"name": "medium-moe", "source": src, **medium, "moe": moe},
    }


def step_configs(cuda: bool, quick: bool) -> list[tuple[str, str, int, int]]:
    """(model, stage, batch, seq_len): batch counts sequences (DPO: pairs; GRPO: prompts)."""
    if quick:
        small = (8, 256) if cuda else (4, 64)
        return [
            ("tiny-dense", "pretrain", *small),
            ("tiny-moe", "pretrain", *small),
            ("tiny-moe", "sft", *small),
            ("tiny-dense", "dpo", *small),
            ("tiny-moe", "grpo", 4, 48),
        ]
    small = (16, 256) if cuda else (8, 128)
    medium = (8, 2048) if cuda else (4, 256)
    out = []
    for model in ("tiny-dense", "tiny-moe"):
        out += [(model, s, *small) for s in STAGES]
    for model in ("medium-dense", "medium-moe"):
        out += [(model, s, *medium) for s in STAGES]
    return out


def step_tokens(stage: str, batch: int, seq_len: int) -> int:
    """Tokens one step trains on (the simulator's accounting: DPO pairs are 2 sequences)."""
    return batch * seq_len * (2 if stage == "dpo" else 1)


def measure(ctx: Context, model_name: str, stage: str, batch: int, seq_len: int) -> Row:
    import torch

    from moesim.analytic.flops import token_flops
    from moesim.specs import ModelSpec
    from moesim.training.runner import STAGES as TRAINERS
    from moesim.training.runner import build_model
    from moesim.training.step import TrainConfig

    spec = ModelSpec.model_validate(step_models(ctx.cuda)[model_name])
    cfg = TrainConfig(
        batch_size=batch, seq_len=seq_len, device=ctx.torch_device, bf16=ctx.cuda, seed=ctx.seed
    )
    model = build_model(spec, cfg)
    if stage == "grpo":
        from moesim.training.grpo import GRPOConfig

        group = 4
        grpo = GRPOConfig(group_size=group, prompts_per_step=batch, warmup_sft_steps=1)
        trainer = TRAINERS[stage](model, cfg, grpo)
    else:
        trainer = TRAINERS[stage](model, cfg)
    timing = time_steps(ctx.timer, trainer.step)
    tokens = step_tokens(stage, batch, seq_len)
    flops = 0.0 if stage == "grpo" else token_flops(spec, seq_len).model_flops * tokens
    note = {"model": model_name, "stage": stage, "tokens": tokens}
    if stage == "grpo":
        note["group_size"] = group
    del model, trainer
    if ctx.cuda:
        torch.cuda.empty_cache()
    return row(
        ctx.device.profile_id,
        f"step_{stage}",
        "step",
        "bf16" if ctx.cuda else "fp32",
        timing,
        pass_="fwd_bwd",
        flops=flops,
        note=json.dumps(note, separators=(",", ":")),
        batch=batch,
        seq_len=seq_len,
        hidden=spec.d_model,
        experts=spec.moe.n_routed_experts if spec.moe else None,
        top_k=spec.moe.top_k if spec.moe else None,
    )


def time_steps(timer, step: Callable[[int], Any]):
    """Time ``step(i)`` with a new step index on every call (warm-up and sizing calls too): a
    step's batch comes from its index, so each timed step runs on a batch none before it used.
    (Indices from the timer's input pool would repeat: with a pool of n, every n-th call.)"""
    counter = itertools.count()
    return timer.time(lambda _: step(next(counter)), lambda: None)


def available() -> str | None:
    """None when moesim.training can run steps, else why not."""
    try:
        from moesim.training.runner import STAGES as TRAINERS  # noqa: F401
        from moesim.training.runner import build_model  # noqa: F401
        from moesim.training.step import TrainConfig  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the tree
        return f"moesim.training is not importable: {e}"
    return None


def cases(ctx: Context) -> list[Case]:
    if available() is not None:
        return []
    return [
        Case(
            f"step {stage} {model} B{b} S{s}",
            lambda m=model, st=stage, b=b, s=s: [measure(ctx, m, st, b, s)],
        )
        for model, stage, b, s in step_configs(ctx.cuda, ctx.quick)
    ]
