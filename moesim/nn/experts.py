"""The routed experts of one MoE layer, stored as stacked weights, and the grouped GEMM.

Shape legend: E experts, D d_model, F expert hidden, N rows (token copies) sorted by expert.

Weights are stacked per expert (``w_gate_EDF``, ``w_up_EDF``, ``w_down_EFD``; torchtitan's
layout) so that one grouped GEMM runs every expert on its contiguous slice of sorted rows.
``torch._grouped_mm`` is private and fast only on Hopper-class GPUs in bf16 (STYLE.md §10), so
it is used only there; everywhere else a per-expert loop over the contiguous slices computes the
same thing (and is what ``FlopCounterMode`` can count).
"""

from __future__ import annotations

import torch
from torch import nn

from moesim.nn.ffn import GATED, activation


def grouped_mm_supported(x: torch.Tensor, *dims: int) -> bool:
    """Whether ``torch._grouped_mm`` should run: CUDA, bf16, sm90+, 16-byte-aligned rows."""
    return (
        hasattr(torch, "_grouped_mm")
        and x.is_cuda
        and x.dtype == torch.bfloat16
        and torch.cuda.get_device_capability(x.device) >= (9, 0)
        and all(d % 8 == 0 for d in dims)
    )


class RoutedExperts(nn.Module):
    """E independent FFNs of hidden size F (fine-grained experts are simply small F)."""

    def __init__(self, n_experts: int, d_model: int, hidden: int, kind: str = "swiglu"):
        super().__init__()
        self.n_experts, self.d_model, self.hidden, self.kind = n_experts, d_model, hidden, kind
        self.act = activation(kind)
        # None: torch._grouped_mm only where it is fast (CUDA, bf16, sm90+); True/False: force
        self.use_grouped_mm: bool | None = None
        E, D, F = n_experts, d_model, hidden
        self.w_gate_EDF = nn.Parameter(torch.empty(E, D, F)) if kind in GATED else None
        self.w_up_EDF = nn.Parameter(torch.empty(E, D, F))
        self.w_down_EFD = nn.Parameter(torch.empty(E, F, D))
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        for w in (self.w_gate_EDF, self.w_up_EDF, self.w_down_EFD):
            if w is not None:
                nn.init.normal_(w, std=std)

    def expert_forward(self, e: int, x_ND: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on its rows: the plain FFN (the loop reference uses this)."""
        up_NF = x_ND @ self.w_up_EDF[e]
        if self.w_gate_EDF is not None:
            h_NF = self.act(x_ND @ self.w_gate_EDF[e]) * up_NF
        else:
            h_NF = self.act(up_NF)
        return h_NF @ self.w_down_EFD[e]

    def grouped_forward(self, x_ND: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """All experts on rows sorted by expert, ``counts_E[e]`` rows for expert e."""
        use = self.use_grouped_mm
        if use is None:
            use = grouped_mm_supported(x_ND, self.d_model, self.hidden)
        if use:
            return self._grouped_mm(x_ND, counts_E)
        # fallback: a loop over the contiguous slices (one host sync for the split sizes)
        slices = torch.split(x_ND, counts_E.tolist())
        outs = [self.expert_forward(e, s) for e, s in enumerate(slices)]
        return torch.cat(outs) if outs else x_ND.new_zeros(0, self.d_model)

    def _grouped_mm(self, x_ND: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        offs_E = torch.cumsum(counts_E, 0).to(torch.int32)  # end offset of each expert's rows
        dt = x_ND.dtype
        up_NF = torch._grouped_mm(x_ND, self.w_up_EDF.to(dt), offs=offs_E)
        if self.w_gate_EDF is not None:
            h_NF = self.act(torch._grouped_mm(x_ND, self.w_gate_EDF.to(dt), offs=offs_E)) * up_NF
        else:
            h_NF = self.act(up_NF)
        return torch._grouped_mm(h_NF, self.w_down_EFD.to(dt), offs=offs_E)
