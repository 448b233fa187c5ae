"""Training losses as pure functions, with shapes in their names and docstrings.

Shape legend: B sequences, S positions, V vocabulary, G completions per prompt.
Labels are aligned with logits (``labels_BS[b, t]`` is the token position t predicts);
IGNORE (−100) marks positions without loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moesim.training.data import IGNORE


def next_token_loss(logits_BSV: torch.Tensor, labels_BS: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled positions (pretraining; SFT with prompts masked)."""
    return F.cross_entropy(
        logits_BSV.float().flatten(0, 1), labels_BS.flatten(), ignore_index=IGNORE
    )


def token_logprobs(logits_BSV: torch.Tensor, labels_BS: torch.Tensor) -> torch.Tensor:
    """log π(label | prefix) at every position (B, S); 0 where the label is IGNORE."""
    mask_BS = labels_BS != IGNORE
    safe_BS = labels_BS.clamp_min(0)
    logp_BS = torch.log_softmax(logits_BSV.float(), -1).gather(-1, safe_BS[..., None])[..., 0]
    return logp_BS * mask_BS


def sequence_logprobs(logits_BSV: torch.Tensor, labels_BS: torch.Tensor) -> torch.Tensor:
    """Σ_t log π over the completion tokens of each sequence (B,) (DPO's log π(y|x))."""
    return token_logprobs(logits_BSV, labels_BS).sum(-1)


def dpo_loss(
    policy_chosen_B: torch.Tensor,
    policy_rejected_B: torch.Tensor,
    ref_chosen_B: torch.Tensor,
    ref_rejected_B: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sigmoid DPO loss (Rafailov et al. 2023, eq. 7):
    −log σ(β[(log π_c − log π_ref,c) − (log π_r − log π_ref,r)]), mean over pairs.

    Metrics: the implicit rewards r = β(log π − log π_ref) of chosen and rejected, their
    margin (chosen − rejected) and the fraction of pairs ranked right. log 2 when π = π_ref.
    """
    reward_chosen_B = beta * (policy_chosen_B - ref_chosen_B)
    reward_rejected_B = beta * (policy_rejected_B - ref_rejected_B)
    margin_B = reward_chosen_B - reward_rejected_B
    loss = -F.logsigmoid(margin_B).mean()
    metrics = {
        "reward_chosen": reward_chosen_B.mean().item(),
        "reward_rejected": reward_rejected_B.mean().item(),
        "margin": margin_B.mean().item(),
        "accuracy": (margin_B > 0).float().mean().item(),
    }
    return loss, metrics


def group_advantages(rewards_PG: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages (Shao et al. 2024, DeepSeekMath §4.1.2): each completion's reward
    normalised within its prompt's group, (r − mean)/(std + ε). (P, G) -> (P, G)."""
    mean = rewards_PG.mean(-1, keepdim=True)
    std = rewards_PG.std(-1, keepdim=True)
    return (rewards_PG - mean) / (std + eps)


def k3_kl(logp_BS: torch.Tensor, ref_logp_BS: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimator k3 = exp(Δ) − Δ − 1, Δ = log π_ref − log π
    (Schulman 2020, "Approximating KL divergence"; used by GRPO): unbiased and ≥ 0."""
    delta = ref_logp_BS - logp_BS
    return torch.exp(delta) - delta - 1.0


def grpo_loss(
    logp_BS: torch.Tensor,
    old_logp_BS: torch.Tensor,
    ref_logp_BS: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_BS: torch.Tensor,
    clip_eps: float = 0.2,
    kl_beta: float = 0.04,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO objective (DeepSeekMath eq. 3), negated for minimisation:
    per token, −[min(ρ·A, clip(ρ, 1±ε)·A) − β·KL_k3], ρ = π/π_old; mean over each
    completion's tokens, then over completions."""
    mask = mask_BS.float()
    ratio_BS = torch.exp(logp_BS - old_logp_BS)
    adv_B1 = advantages_B[:, None]
    unclipped = ratio_BS * adv_B1
    clipped = ratio_BS.clamp(1 - clip_eps, 1 + clip_eps) * adv_B1
    kl_BS = k3_kl(logp_BS, ref_logp_BS)
    per_token = -(torch.minimum(unclipped, clipped) - kl_beta * kl_BS)
    lengths_B = mask.sum(-1).clamp_min(1.0)
    loss = ((per_token * mask).sum(-1) / lengths_B).mean()
    n = mask.sum().clamp_min(1.0)
    metrics = {
        "kl": ((kl_BS * mask).sum() / n).item(),
        "clip_fraction": ((((ratio_BS - 1).abs() > clip_eps).float() * mask).sum() / n).item(),
    }
    return loss, metrics
