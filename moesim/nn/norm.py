"""RMSNorm (Zhang & Sennrich 2019): scale by the root mean square, no mean, no bias.

Computed in fp32 whatever the input dtype, as Llama and DeepSeek do: the mean of squares
of a bf16 activation loses too much precision. One weight per feature, no bias, which is
what ``moesim.analytic.params`` counts.
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)
