"""Sparse upcycling (Komatsuzaki et al. 2022, arXiv:2212.05055): initialise an MoE layer's
experts from a trained dense FFN, so training resumes from the dense model's function.

Every expert gets a copy of the dense FFN (same hidden size), or, for fine-grained experts
whose hidden size divides the dense one, a slice of its hidden units (expert e gets slice
e mod m of m = F_dense / F_expert; the "fine-grained upcycling" of Qwen1.5-MoE).
With copies and renormalised top-k gates, the upcycled layer computes exactly the dense FFN
whatever the router does; the router starts from its own random initialisation.
"""

from __future__ import annotations

import torch

from moesim.nn.ffn import FeedForward
from moesim.nn.moe import MoELayer


@torch.no_grad()
def upcycle_ffn(dense: FeedForward, moe: MoELayer, noise_std: float = 0.0) -> MoELayer:
    """Copy ``dense``'s weights into every routed expert of ``moe`` (in place, returned).
    ``noise_std`` > 0 perturbs each copy so that experts can diverge."""
    ex = moe.experts
    F_dense = dense.w_up.weight.shape[0]
    if F_dense % ex.hidden:
        raise ValueError(
            f"expert hidden ({ex.hidden}) must equal or divide the dense hidden ({F_dense})"
        )
    if dense.kind != ex.kind:
        raise ValueError(f"FFN kinds differ: dense {dense.kind}, experts {ex.kind}")
    m = F_dense // ex.hidden
    for e in range(ex.n_experts):
        cols = slice((e % m) * ex.hidden, (e % m + 1) * ex.hidden)
        # nn.Linear stores (out, in); experts store (in, out)
        ex.w_up_EDF[e].copy_(dense.w_up.weight[cols].T)
        ex.w_down_EFD[e].copy_(dense.w_down.weight[:, cols].T)
        if ex.w_gate_EDF is not None:
            ex.w_gate_EDF[e].copy_(dense.w_gate.weight[cols].T)
    if noise_std > 0:
        for w in (ex.w_up_EDF, ex.w_down_EFD, ex.w_gate_EDF):
            if w is not None:
                w.add_(torch.randn_like(w) * noise_std)
    return moe
