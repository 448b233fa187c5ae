"""What every stage's optimizer step shares: the config, AdamW, MoE aux losses with their
weights, gradient clipping, the aux-loss-free bias update, and the metrics of MoE routing."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from moesim.nn import BalanceConfig, ModelOutput, Transformer
from moesim.nn.balance import load_cv


@dataclass
class TrainConfig:
    """Knobs shared by the stages (each stage adds its own). Defaults suit the tiny catalog
    models on a CPU."""

    batch_size: int = 16
    seq_len: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False  # autocast to bf16 (CUDA)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    mtp_weight: float = 0.3  # λ of the MTP loss (DeepSeek-V3 §2.2 use 0.3, then 0.1)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))


def autocast(cfg: TrainConfig):
    return torch.autocast(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16,
                          enabled=cfg.bf16)  # fmt: skip


def aux_loss(out: ModelOutput, balance: BalanceConfig, step: int) -> torch.Tensor | float:
    """Σ weight·term over the MoE aux losses (already summed over layers)."""
    weights = balance.weights(step)
    return sum(weights[k] * v for k, v in out.aux_losses.items() if weights.get(k, 0.0))


def optimizer_step(
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    cfg: TrainConfig,
    out: ModelOutput | None = None,
) -> float:
    """Backward, clip, step; then move the balancing biases with this step's loads.
    Returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    if out is not None and out.moe_stats:
        model.update_router_biases(out.moe_stats)
    return float(norm)


def moe_metrics(out: ModelOutput) -> dict[str, float]:
    """Expert load CV (mean over MoE layers), drop fraction, router entropy, and the routing
    histogram (``tokens_per_expert``, summed over layers)."""
    if not out.moe_stats:
        return {}
    n = len(out.moe_stats)
    entropies = [s.entropy for s in out.moe_stats if s.entropy is not None]
    metrics = {
        "expert_load_cv": sum(load_cv(s.tokens_per_expert_E) for s in out.moe_stats) / n,
        "drop_fraction": sum(s.drop_fraction for s in out.moe_stats) / n,
        "tokens_per_expert": tokens_per_expert(out),
    }
    if entropies:
        metrics["router_entropy"] = sum(entropies) / len(entropies)
    return metrics


def tokens_per_expert(out: ModelOutput) -> list[int] | None:
    """Assignments per expert summed over the MoE layers (the routing histogram)."""
    if not out.moe_stats:
        return None
    return torch.stack([s.tokens_per_expert_E for s in out.moe_stats]).sum(0).tolist()
