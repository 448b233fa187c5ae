"""Routers: which experts each token goes to, and with what weight.

Shape legend: T tokens, D d_model, E routed experts, K top-k, A assignments (token, expert
pairs; T·K for token choice), G expert groups, C expert capacity.

Every router returns a flat list of assignments (``token_idx_A``, ``expert_idx_A``,
``weight_A``) so that one dispatcher serves token choice and expert choice alike. Router math
runs in fp32 (a bf16 softmax over many experts flips top-k choices; torchtitan and
DeepSeek-V3 do the same).

Kinds (``MoESpec.router``):

- ``softmax_topk``: softmax over experts, keep the top-k, optionally renormalised
  (Switch, Fedus et al. 2021; Mixtral).
- ``noisy_topk``: top-k of ``x·W_g + ε·softplus(x·W_noise)``, ε ~ N(0, 1) in training only,
  gates = softmax over the kept logits (Shazeer et al. 2017, eq. 3–5). ``W_noise`` is a second
  D×E weight, which the analytic parameter count includes.
- ``sigmoid_topk``: sigmoid affinities, top-k, gates renormalised over the chosen
  (DeepSeek-V3, arXiv:2412.19437 §2.1.2).
- ``expert_choice``: each expert picks its top-C tokens, C = cf·T·K/E (Zhou et al. 2022).
  A token may get any number of experts. Note: it looks at every token of the batch, so it is
  not causal; it is here to be measured, as the paper did.
- ``hash``: a fixed balanced random hash of the token id (Roller et al. 2021, "Hash Layers");
  no learned router at all, gates 1/K.

Group-limited routing (DeepSeek-V2 device-limited, V3 node-limited): experts are split in
``n_groups`` groups; a token first picks the ``topk_groups`` groups with the highest group
score and then its top-k inside them. The group score depends on the router, as in the two
papers: softmax routers take the group's highest affinity (DeepSeek-V2 §2.2.4: the M devices
holding the highest-affinity experts; HF ``group_limited_greedy``), sigmoid routers the sum of
the group's two highest (bias-added) affinities (DeepSeek-V3 §2.1.2; HF ``noaux_tc``).

Token-choice routers list a token's K assignments in choice order (slot 0 = its top-1), which
``RouterOutput.top_k`` records: capacity gives every top-1 choice priority over any top-2
choice (GShard §2.2, Switch §2.2), see ``moesim.nn.dispatch``.

Auxiliary-loss-free balancing (Wang et al. 2024, arXiv:2408.15664; DeepSeek-V3): a per-expert
bias is added to the affinities for *selection only*; gates use the unbiased affinities. After
each step the bias moves by ±γ towards balance (``update_bias``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from moesim.specs import MoESpec

TOKEN_CHOICE = ("softmax_topk", "noisy_topk", "sigmoid_topk")


@dataclass
class RouterOutput:
    """The routing of T tokens. ``probs_TE`` is each token's distribution over experts (the
    softmax, or the sigmoid affinities normalised to sum 1), used by the balance losses and
    the entropy statistic; ``logits_TE`` the router's logits x·W_g, which the z-loss penalises:
    for noisy top-k without the exploration noise, which selection and gates do use (the noise
    is not the router's to shrink). None for hash routing.

    ``top_k``: token-choice routing lists assignments token by token, K per token in choice
    order (assignment a is token a // K's (a % K + 1)-th choice); None for expert choice."""

    token_idx_A: torch.Tensor  # int64
    expert_idx_A: torch.Tensor  # int64
    weight_A: torch.Tensor  # fp32, differentiable
    logits_TE: torch.Tensor | None
    probs_TE: torch.Tensor | None
    n_tokens: int
    top_k: int | None = None


def expert_choice_capacity(n_tokens: int, n_experts: int, top_k: int, cf: float | None) -> int:
    """Tokens each expert takes under expert choice: C = cf·T·K/E (Zhou 2022 §3.1)."""
    return max(1, min(n_tokens, math.ceil((cf or 1.0) * n_tokens * top_k / n_experts)))


def uniform_assignment(n_tokens: int, n_experts: int, top_k: int, device) -> torch.Tensor:
    """Round-robin expert ids (T, K): every expert gets the same load ±1. For calibration,
    which must separate kernel cost from imbalance."""
    flat = torch.arange(n_tokens * top_k, device=device)
    return (flat % n_experts).view(n_tokens, top_k)


GroupScore = Literal["max", "top2_sum"]


def group_limited_mask(
    scores_TE: torch.Tensor, n_groups: int, topk_groups: int, group_score: GroupScore = "max"
) -> torch.Tensor:
    """Boolean (T, E): True for the experts inside each token's top-M groups.

    Group score ``"max"``: the group's highest score (DeepSeek-V2 device-limited routing);
    ``"top2_sum"``: the sum of its two highest (DeepSeek-V3 node-limited routing; the maximum
    when a group holds one expert).
    """
    T, E = scores_TE.shape
    grouped_TGe = scores_TE.view(T, n_groups, E // n_groups)
    if group_score == "top2_sum" and grouped_TGe.shape[-1] >= 2:
        group_score_TG = grouped_TGe.topk(2, dim=-1).values.sum(-1)
    elif group_score in ("max", "top2_sum"):
        group_score_TG = grouped_TGe.max(-1).values
    else:
        raise ValueError(f"group_score must be 'max' or 'top2_sum', got {group_score!r}")
    top_groups_TM = group_score_TG.topk(topk_groups, dim=-1).indices
    keep_TG = torch.zeros_like(group_score_TG, dtype=torch.bool).scatter_(1, top_groups_TM, True)
    return keep_TG.repeat_interleave(E // n_groups, dim=1)


class Router(nn.Module):
    """The gate of one MoE layer. ``bias_update_rate`` γ > 0 turns on aux-loss-free balancing."""

    def __init__(
        self,
        d_model: int,
        moe: MoESpec,
        vocab_size: int | None = None,
        *,
        bias_update_rate: float = 0.0,
        force_uniform: bool = False,
        init_std: float = 0.02,
    ):
        super().__init__()
        self.kind = moe.router
        self.n_experts = moe.n_routed_experts
        self.top_k = moe.top_k
        self.n_groups = moe.n_groups
        self.topk_groups = moe.topk_groups
        self.norm_topk_prob = moe.norm_topk_prob
        self.routed_scaling_factor = moe.routed_scaling_factor
        self.capacity_factor = moe.capacity_factor
        self.bias_update_rate = bias_update_rate
        self.force_uniform = force_uniform
        # V3's sum of the top-2 is meant for sigmoid affinities; V2's max for a softmax
        self.group_score: GroupScore = "top2_sum" if self.kind == "sigmoid_topk" else "max"
        # noisy top-k's exploration noise, in training only; stages that score the policy
        # against itself or a reference (DPO, GRPO) turn it off (``set_exploration_noise``)
        self.exploration_noise = True
        E = self.n_experts
        self.weight_ED: nn.Parameter | None = None
        self.noise_weight_ED: nn.Parameter | None = None
        if self.kind != "hash":
            self.weight_ED = nn.Parameter(torch.randn(E, d_model) * init_std)
        if self.kind == "noisy_topk":
            # Shazeer 2017 initialise W_noise at zero: noise starts at softplus(0) ≈ 0.69
            self.noise_weight_ED = nn.Parameter(torch.zeros(E, d_model))
        if self.kind == "hash":
            if vocab_size is None:
                raise ValueError("hash routing needs the vocabulary size")
            self.register_buffer("hash_table_VK", self._hash_table(vocab_size), persistent=True)
        # selection-only bias (aux-loss-free balancing); a buffer, not a parameter
        self.register_buffer("expert_bias_E", torch.zeros(E, dtype=torch.float32))

    def _hash_table(self, vocab_size: int) -> torch.Tensor:
        """Balanced random hash (Roller 2021 §3: 'Balanced assignment' works best): a random
        permutation of the vocabulary dealt round-robin to experts; slot j adds j so the K
        experts of a token are distinct."""
        g = torch.Generator().manual_seed(0)
        base_V = torch.randperm(vocab_size, generator=g) % self.n_experts
        return torch.stack([(base_V + j) % self.n_experts for j in range(self.top_k)], dim=1)

    # -- the forward ---------------------------------------------------------------------
    def forward(self, x_TD: torch.Tensor, token_ids_T: torch.Tensor | None = None) -> RouterOutput:
        T = x_TD.shape[0]
        if self.kind == "hash":
            return self._hash(x_TD, token_ids_T)
        with torch.autocast(device_type=x_TD.device.type, enabled=False):
            logits_TE = F.linear(x_TD.float(), self.weight_ED.float())
            if self.kind == "expert_choice":
                return self._expert_choice(logits_TE)
            noisy_TE = logits_TE
            if self.kind == "noisy_topk" and self.training and self.exploration_noise:
                noise_std_TE = F.softplus(F.linear(x_TD.float(), self.noise_weight_ED.float()))
                noisy_TE = logits_TE + torch.randn_like(logits_TE) * noise_std_TE
            if self.kind == "sigmoid_topk":
                scores_TE = torch.sigmoid(noisy_TE)
                probs_TE = scores_TE / scores_TE.sum(-1, keepdim=True)
            else:
                scores_TE = probs_TE = torch.softmax(noisy_TE, dim=-1)
            expert_idx_TK = self._select(scores_TE)
            weight_TK = scores_TE.gather(1, expert_idx_TK)
            if self.kind == "noisy_topk" or self.norm_topk_prob:
                # noisy top-k: softmax over the kept logits == renormalised softmax probs
                weight_TK = weight_TK / weight_TK.sum(-1, keepdim=True)
            # DeepSeek's routed_scaling_factor (HF DeepseekV3TopkRouter: after normalising)
            weight_TK = weight_TK * self.routed_scaling_factor
        token_idx_A = torch.arange(T, device=x_TD.device).repeat_interleave(self.top_k)
        return RouterOutput(
            token_idx_A,
            expert_idx_TK.reshape(-1),
            weight_TK.reshape(-1),
            logits_TE,
            probs_TE,
            T,
            top_k=self.top_k,
        )

    def _select(self, scores_TE: torch.Tensor) -> torch.Tensor:
        """Top-k expert ids (T, K), best first: biased for selection, limited to top-M
        groups."""
        T = scores_TE.shape[0]
        if self.force_uniform:
            return uniform_assignment(T, self.n_experts, self.top_k, scores_TE.device)
        sel_TE = scores_TE.detach() + self.expert_bias_E
        if self.topk_groups is not None and self.n_groups > 1:
            mask_TE = group_limited_mask(sel_TE, self.n_groups, self.topk_groups, self.group_score)
            sel_TE = sel_TE.masked_fill(~mask_TE, float("-inf"))
        return sel_TE.topk(self.top_k, dim=-1, sorted=True).indices

    def _expert_choice(self, logits_TE: torch.Tensor) -> RouterOutput:
        T, E = logits_TE.shape
        probs_TE = torch.softmax(logits_TE, dim=-1)
        C = expert_choice_capacity(T, E, self.top_k, self.capacity_factor)
        if self.force_uniform:
            token_idx_EC = (torch.arange(E * C, device=logits_TE.device) % T).view(E, C)
            weight_EC = probs_TE.T.gather(1, token_idx_EC)
        else:
            weight_EC, token_idx_EC = probs_TE.T.topk(C, dim=-1)  # each expert's top-C tokens
        expert_idx_EC = torch.arange(E, device=logits_TE.device)[:, None].expand(E, C)
        return RouterOutput(
            token_idx_EC.reshape(-1),
            expert_idx_EC.reshape(-1),
            weight_EC.reshape(-1),
            logits_TE,
            probs_TE,
            T,
        )

    def _hash(self, x_TD: torch.Tensor, token_ids_T: torch.Tensor | None) -> RouterOutput:
        T = x_TD.shape[0]
        if self.force_uniform:
            expert_idx_TK = uniform_assignment(T, self.n_experts, self.top_k, x_TD.device)
        else:
            if token_ids_T is None:
                raise ValueError("hash routing needs the token ids: pass token_ids_T")
            expert_idx_TK = self.hash_table_VK[token_ids_T.reshape(-1)]
        weight_A = torch.full((T * self.top_k,), 1.0 / self.top_k, device=x_TD.device)
        token_idx_A = torch.arange(T, device=x_TD.device).repeat_interleave(self.top_k)
        return RouterOutput(
            token_idx_A, expert_idx_TK.reshape(-1), weight_A, None, None, T, top_k=self.top_k
        )

    # -- aux-loss-free balancing ---------------------------------------------------------
    @torch.no_grad()
    def update_bias(self, tokens_per_expert_E: torch.Tensor) -> None:
        """b_i += γ·sign(mean load − load_i) (Wang et al. 2024, Alg. 1): overloaded experts
        become less attractive for selection, underloaded ones more."""
        if self.bias_update_rate <= 0:
            return
        load_E = tokens_per_expert_E.float().to(self.expert_bias_E.device)
        self.expert_bias_E += self.bias_update_rate * torch.sign(load_E.mean() - load_E)
