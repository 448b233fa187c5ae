"""The MoE layer: router, routed experts, shared experts, capacity, balance losses, stats.

Shape legend: T tokens, D d_model, E routed experts, K top-k, A assignments.

``MoELayer(model_spec)`` builds the MoE FFN that ``model_spec.moe`` describes and returns
``MoEOutput(out, aux_losses, stats)``: the output, the *unweighted* aux losses (the trainer
weighs them, see ``moesim.nn.balance.BalanceConfig``), and detached routing statistics.

Knobs that are not part of the architecture are constructor arguments:
``dispatch="grouped"|"loop"`` (fast path or reference), ``force_uniform_routing`` (calibration:
round-robin load, router still computed), ``bias_update_rate`` (aux-loss-free balancing),
``ep_group`` (expert parallelism over a ``torch.distributed`` group).

Capacity (``moe.capacity_factor``, GShard/Switch): C = ⌈cf·T·K/E⌉ rows per expert; later
assignments past C are dropped and the token keeps only its residual (and shared experts).
None = dropless.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from moesim.nn import balance
from moesim.nn.dispatch import dispatch_grouped, dispatch_loop
from moesim.nn.experts import RoutedExperts
from moesim.nn.ffn import FeedForward
from moesim.nn.router import Router
from moesim.specs import ModelSpec

Dispatch = Literal["grouped", "loop"]


@dataclass
class RoutingStats:
    """What the router did to T tokens (all detached). ``tokens_per_expert_E`` counts
    assignments before capacity (the demand the simulator's histogram wants);
    ``kept_per_expert_E`` after it.

    The scalars stay device tensors until read (``dropped``, ``entropy``), so that the forward
    never waits for the GPU to hand a number back to the host."""

    tokens_per_expert_E: torch.Tensor
    kept_per_expert_E: torch.Tensor
    dropped_t: torch.Tensor  # int64 scalar
    n_tokens: int
    entropy_t: torch.Tensor | None  # mean per-token router entropy, nats; None for hash routing

    @property
    def dropped(self) -> int:
        return int(self.dropped_t)

    @property
    def entropy(self) -> float | None:
        return None if self.entropy_t is None else float(self.entropy_t)

    @property
    def load_cv(self) -> float:
        return balance.load_cv(self.tokens_per_expert_E)

    @property
    def drop_fraction(self) -> float:
        total = int(self.tokens_per_expert_E.sum())
        return self.dropped / total if total else 0.0

    def to_dict(self) -> dict:
        return {
            "tokens_per_expert": self.tokens_per_expert_E.tolist(),
            "kept_per_expert": self.kept_per_expert_E.tolist(),
            "dropped": self.dropped,
            "drop_fraction": self.drop_fraction,
            "n_tokens": self.n_tokens,
            "entropy": self.entropy,
            "load_cv": self.load_cv,
        }


@dataclass
class MoEOutput:
    out: torch.Tensor
    aux_losses: dict[str, torch.Tensor]
    stats: RoutingStats


def write_routing_histogram(path: str | Path, tokens_per_expert_E) -> Path:
    """Write ``{"tokens_per_expert": [...]}``: what the scenario key
    ``routing: {distribution: histogram, histogram_file: ...}`` reads."""
    counts = [int(c) for c in torch.as_tensor(tokens_per_expert_E).tolist()]
    from moesim.file_io import write_atomic  # all or nothing, through links and devices

    return write_atomic(path, json.dumps({"tokens_per_expert": counts}) + "\n")


class MoELayer(nn.Module):
    def __init__(
        self,
        model_spec: ModelSpec,
        *,
        dispatch: Dispatch = "grouped",
        force_uniform_routing: bool = False,
        bias_update_rate: float = 0.0,
        ep_group=None,
    ):
        super().__init__()
        if model_spec.moe is None:
            raise ValueError(f"model {model_spec.name!r} has no moe block")
        if dispatch not in ("grouped", "loop"):
            raise ValueError(f"dispatch must be 'grouped' or 'loop', got {dispatch!r}")
        moe = model_spec.moe
        self.moe_spec = moe
        self.n_experts, self.top_k = moe.n_routed_experts, moe.top_k
        self.dispatch = dispatch
        self.ep_group = ep_group
        self.router = Router(
            model_spec.d_model,
            moe,
            model_spec.vocab_size,
            bias_update_rate=bias_update_rate,
            force_uniform=force_uniform_routing,
        )
        n_local = self.n_experts
        if ep_group is not None:
            import torch.distributed as dist

            ep = dist.get_world_size(ep_group)
            if self.n_experts % ep:
                raise ValueError(f"ep ({ep}) must divide n_routed_experts ({self.n_experts})")
            n_local = self.n_experts // ep
        self.experts = RoutedExperts(
            n_local, model_spec.d_model, moe.expert_hidden, model_spec.ffn_kind
        )
        self.shared = None
        self.shared_gate = None
        if moe.n_shared_experts:
            # n shared experts of hidden h are one FFN of hidden n·h (their outputs add up)
            hidden = moe.n_shared_experts * moe.shared_hidden
            self.shared = FeedForward(model_spec.d_model, hidden, model_spec.ffn_kind)
            if moe.shared_expert_gate:
                self.shared_gate = nn.Linear(model_spec.d_model, 1, bias=False)

    @property
    def force_uniform_routing(self) -> bool:
        return self.router.force_uniform

    @force_uniform_routing.setter
    def force_uniform_routing(self, value: bool) -> None:
        self.router.force_uniform = value

    def capacity(self, n_tokens: int) -> int | None:
        cf = self.moe_spec.capacity_factor
        if cf is None or self.moe_spec.router == "expert_choice":
            return None  # expert choice is capped by construction
        return math.ceil(cf * n_tokens * self.top_k / self.n_experts)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> MoEOutput:
        """x (..., D) -> MoEOutput with out (..., D)."""
        shape = x.shape
        x_TD = x.reshape(-1, shape[-1])
        ids_T = token_ids.reshape(-1) if token_ids is not None else None
        r = self.router(x_TD, ids_T)
        cap = self.capacity(x_TD.shape[0])
        if self.ep_group is not None:
            from moesim.nn.expert_parallel import ep_dispatch

            d = ep_dispatch(x_TD, r, self.experts, self.n_experts, cap, self.ep_group)
        elif self.dispatch == "grouped":
            d = dispatch_grouped(x_TD, r, self.experts, cap)
        else:
            d = dispatch_loop(x_TD, r, self.experts, cap)
        out_TD = d.out_TD
        if self.shared is not None:
            shared_TD = self.shared(x_TD)
            if self.shared_gate is not None:
                shared_TD = torch.sigmoid(self.shared_gate(x_TD)) * shared_TD
            out_TD = out_TD + shared_TD
        aux = self._aux_losses(r)
        with torch.no_grad():
            stats = RoutingStats(
                tokens_per_expert_E=balance.tokens_per_expert(r.expert_idx_A, self.n_experts),
                kept_per_expert_E=d.kept_per_expert_E.detach(),
                dropped_t=d.dropped.detach(),
                n_tokens=x_TD.shape[0],
                entropy_t=None if r.probs_TE is None else balance.router_entropy(r.probs_TE),
            )
        return MoEOutput(out_TD.view(shape), aux, stats)

    def _aux_losses(self, r) -> dict[str, torch.Tensor]:
        if r.probs_TE is None:  # hash routing: nothing to learn, nothing to balance
            return {}
        return {
            "load_balance": balance.load_balance_loss(r.probs_TE, r.expert_idx_A, self.n_experts),
            "z_loss": balance.router_z_loss(r.logits_TE),
            "importance_cv2": balance.importance_cv2_loss(
                r.weight_A, r.expert_idx_A, self.n_experts
            ),
        }

    def update_bias(self, stats: RoutingStats) -> None:
        """Aux-loss-free balancing: call once per optimizer step with the step's stats."""
        self.router.update_bias(stats.tokens_per_expert_E)
