"""Rotary position embeddings (Su et al. 2021, RoFormer), the rotate-half convention of
Llama/GPT-NeoX.

Shape legend: B batch, S sequence, H heads, R rotary dim (even).

Positions are passed explicitly, (S,) or (B, S), so that packed sequences can restart
positions at each document and cached generation can continue from an offset.
"""

from __future__ import annotations

import torch

ROPE_BASE = 10_000.0  # θ of RoFormer; ModelSpec has no rope_theta, FLOPs do not depend on it


def rope_cos_sin(
    positions: torch.Tensor, dim_R: int, base: float = ROPE_BASE
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for ``positions`` (S,) or (B, S) -> (..., S, R), fp32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim_R, 2, device=positions.device).float() / dim_R))
    angles = positions.float()[..., None] * inv_freq  # (..., S, R/2)
    angles = torch.cat([angles, angles], dim=-1)  # (..., S, R)
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x_BHSR: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, H, S, R) by the tables (S, R) or (B, S, R); computed in fp32."""
    if cos.dim() == 3:  # per-sequence positions: broadcast over heads
        cos, sin = cos[:, None], sin[:, None]
    x32 = x_BHSR.float()
    return (x32 * cos + _rotate_half(x32) * sin).to(x_BHSR.dtype)
