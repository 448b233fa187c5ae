"""Load-balancing losses and statistics of a router, as pure functions.

Shape legend: T tokens, E experts, A assignments (token, expert pairs).

The MoE layer returns these *unweighted*; the trainer weighs them (``BalanceConfig``) and may
ramp the load-balance weight (``aux_weight_schedule``). Nothing is collected in globals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BalanceConfig:
    """How a model balances its experts.

    ``aux_loss_weight`` α of the Switch loss (Fedus 2021 use 1e-2); ``z_loss_weight`` of the
    router z-loss (ST-MoE, Zoph 2022, use 1e-3); ``importance_weight`` of Shazeer's CV²;
    ``bias_update_rate`` γ of aux-loss-free balancing (DeepSeek-V3 use 1e-3; 0 = off);
    ``aux_warmup_steps`` / ``aux_warmup_start``: the load-balance weight starts at
    ``aux_warmup_start``·α and reaches α after that many steps (router warm-up).
    """

    aux_loss_weight: float = 1e-2
    z_loss_weight: float = 1e-3
    importance_weight: float = 0.0
    bias_update_rate: float = 0.0
    aux_warmup_steps: int = 0
    aux_warmup_start: float = 1.0

    def weights(self, step: int) -> dict[str, float]:
        """The weight of each aux-loss term at optimizer step ``step``."""
        return {
            "load_balance": self.aux_loss_weight
            * aux_weight_schedule(step, self.aux_warmup_steps, self.aux_warmup_start),
            "z_loss": self.z_loss_weight,
            "importance_cv2": self.importance_weight,
        }


NO_BALANCING = BalanceConfig(aux_loss_weight=0.0, z_loss_weight=0.0)

# γ of aux-loss-free balancing for the small models ``moesim train`` runs. DeepSeek-V3 used
# 1e-3 over ~10⁵ steps; the bias moves by at most γ per step, so over tens of steps 1e-3
# hardly moves it. Measured on tiny-moe, pretrain, CLI defaults otherwise (median over seeds
# 0–4 of the final expert-load CV): 60 steps, no balancing 0.68, γ = 1e-3 0.57, 3e-3 0.20,
# 1e-2 0.17, 3e-2 0.37 (it overshoots and oscillates), the Switch loss at α = 1e-2 0.24; with
# a sigmoid router, none 0.63, γ = 1e-3 0.79, 1e-2 0.14, 3e-2 0.28; 200 steps (seeds 0–2),
# none 0.63, γ = 3e-3 0.17, 1e-2 0.14. The LM loss moved by less than 0.02.
AUX_FREE_BIAS_RATE = 1e-2

BALANCE_PRESETS: dict[str, BalanceConfig] = {
    "aux": BalanceConfig(),  # Switch load-balance loss α = 1e-2, z-loss 1e-3
    "bias": BalanceConfig(aux_loss_weight=0.0, bias_update_rate=AUX_FREE_BIAS_RATE),
    "none": NO_BALANCING,
}
"""What ``moesim train --balance`` names: the Switch loss, aux-loss-free bias balancing
(DeepSeek-V3: no load-balance loss, a selection bias moved by ±γ), or nothing."""


def aux_weight_schedule(step: int, warmup_steps: int, start: float) -> float:
    """Multiplier of the load-balance weight: linear from ``start`` to 1 over ``warmup_steps``.

    A large early weight (start > 1) spreads tokens while the router is random and experts are
    still alike, before specialisation makes imbalance self-reinforcing; a small one (start < 1)
    lets the router find preferences first. Both appear in practice; 1 = constant.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return start + (1.0 - start) * step / warmup_steps


def tokens_per_expert(expert_idx_A: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Histogram (E,) of assignments per expert (int64).

    A scatter-add, not ``torch.bincount``: on CUDA bincount reads the input's min and max back
    to the host to size its output (two host synchronisations per call); here E is known."""
    counts_E = torch.zeros(n_experts, dtype=torch.int64, device=expert_idx_A.device)
    return counts_E.scatter_add_(0, expert_idx_A, torch.ones_like(expert_idx_A))


def load_balance_loss(
    probs_TE: torch.Tensor, expert_idx_A: torch.Tensor, n_experts: int
) -> torch.Tensor:
    """Switch Transformer loss without α: N·Σ_i f_i·P_i (Fedus et al. 2021, eq. 4–6).

    f_i: fraction of the T·K assignments sent to expert i (a count, no gradient); P_i: mean
    router probability of expert i (the gradient path). Equals 1 when both are uniform, for
    any K: the normalisation of Switch (K = 1) and of Megatron-Core's
    ``switch_load_balancing_loss_func`` (counts over T·K). HF Transformers' Mixtral/Qwen-MoE
    ``load_balancing_loss_func`` divides the counts by T only, so its value is K times this
    one (K at uniform): an α taken from a config that uses HF's loss is K times too large
    here.
    """
    f_E = tokens_per_expert(expert_idx_A, n_experts).float() / max(expert_idx_A.numel(), 1)
    P_E = probs_TE.float().mean(0)
    return n_experts * (f_E * P_E).sum()


def importance_cv2_loss(
    weight_A: torch.Tensor, expert_idx_A: torch.Tensor, n_experts: int
) -> torch.Tensor:
    """CV(Importance)² (Shazeer et al. 2017, eq. 6 without w): Importance_i = Σ_t gate_ti.

    CV uses the population standard deviation over experts.
    """
    importance_E = torch.zeros(n_experts, device=weight_A.device, dtype=torch.float32)
    importance_E = importance_E.index_add(0, expert_idx_A, weight_A.float())
    mean = importance_E.mean()
    return importance_E.var(unbiased=False) / (mean * mean + 1e-10)


def router_z_loss(logits_TE: torch.Tensor) -> torch.Tensor:
    """Mean squared log-partition (ST-MoE, Zoph et al. 2022, eq. 5): keeps logits small so
    that the fp32 softmax stays well-conditioned. Give it the router's clean logits (without
    noisy top-k's exploration noise, which is not a parameter it could shrink)."""
    return torch.logsumexp(logits_TE.float(), dim=-1).pow(2).mean()


def router_entropy(probs_TE: torch.Tensor) -> torch.Tensor:
    """Mean per-token entropy of the router distribution, in nats (log E when uniform)."""
    p = probs_TE.float().clamp_min(1e-20)
    return -(p * p.log()).sum(-1).mean()


def load_cv(tokens_per_expert_E: torch.Tensor) -> float:
    """Coefficient of variation std/mean of tokens per expert (population std): 0 when
    perfectly balanced, √(E−1) when one expert takes everything."""
    load = tokens_per_expert_E.double()
    mean = load.mean().item()
    if mean == 0:
        return 0.0
    return math.sqrt(load.var(unbiased=False).item()) / mean
