"""The dense feed-forward block and the activations every FFN and expert shares.

Gated kinds (SwiGLU, GeGLU; Shazeer 2020, "GLU Variants Improve Transformer") have three
projections: ``down(act(gate(x)) * up(x))``; plain kinds have two: ``down(act(up(x)))``.
No biases, as ``moesim.analytic.params.ffn_params`` counts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

GATED = ("swiglu", "geglu")


def activation(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The non-linearity of an FFN kind (the gate's, for gated kinds)."""
    if kind == "swiglu":
        return F.silu
    if kind in ("geglu", "gelu"):
        return lambda x: F.gelu(x, approximate="tanh")
    if kind == "relu":
        return F.relu
    raise ValueError(f"unknown ffn_kind {kind!r}: use swiglu, geglu, gelu or relu")


class FeedForward(nn.Module):
    """A dense FFN of hidden size ``hidden`` (also a shared expert, or several fused)."""

    def __init__(self, d_model: int, hidden: int, kind: str = "swiglu"):
        super().__init__()
        self.kind = kind
        self.act = activation(kind)
        self.w_gate = nn.Linear(d_model, hidden, bias=False) if kind in GATED else None
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w_gate is not None:
            return self.w_down(self.act(self.w_gate(x)) * self.w_up(x))
        return self.w_down(self.act(self.w_up(x)))
