"""Checks of ``calibration/bench_moe_layer.py``: the fast path against the loop reference
(output, input gradient, router and per-expert weight gradients) before any timing, and the
host synchronisations a training forward and backward make on CUDA.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from moesim.calibrate.moe_layer_bench_modules import hf_forward
from moesim.nn import MoELayer

TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}  # max |fast − loop| / max |loop|


class CorrectnessError(AssertionError):
    """The fast path disagrees with the loop reference."""


# -- correctness ----------------------------------------------------------------------------
def rel_max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b| (in fp32)."""
    a, b = a.float(), b.float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def per_expert_summary(g_E: torch.Tensor) -> torch.Tensor:
    """(2, E): each expert's gradient norm and sum, in fp32, one expert at a time (an fp32
    copy of all 256 DeepSeek-like experts' gradients would be 15 GB). Norms catch a wrong
    scale, sums (which, unlike norms, differ from expert to expert) a permutation or sign."""
    return torch.stack([torch.stack([w.float().norm(), w.float().sum()]) for w in g_E], dim=1)


def layer_run(layer: MoELayer, dispatch: str, x_TD: torch.Tensor, g_TD: torch.Tensor) -> dict:
    """Output and gradients of one dispatch for L = <out, g>: dL/dx, dL/d(router weight),
    and per-expert summaries of dL/d(expert weights)."""
    layer.dispatch = dispatch
    x = x_TD.detach().requires_grad_(True)
    out = layer(x).out
    experts = [w for w in (layer.experts.w_gate_EDF, layer.experts.w_up_EDF) if w is not None]
    experts.append(layer.experts.w_down_EFD)
    gx, gr, *gw = torch.autograd.grad(out, [x, layer.router.weight_ED, *experts], g_TD)
    summary = torch.cat([per_expert_summary(g) for g in gw], dim=1)
    del gw
    return {
        "out": out.detach(),
        "grad_x": gx,
        "grad_router": gr,
        "grad_expert_norms": summary[0],
        "grad_expert_sums": summary[1],
    }


def check_correctness(layer: MoELayer, x_TD, g_TD, tol: float, hf_block=None) -> dict:
    """Compare fast with loop on (x, g); raise CorrectnessError past ``tol``."""
    try:
        fast = layer_run(layer, "grouped", x_TD, g_TD)
        ref = layer_run(layer, "loop", x_TD, g_TD)
    finally:
        layer.dispatch = "grouped"
    errs = {name: rel_max_err(fast[name], ref[name]) for name in ref}
    bad = {k: v for k, v in errs.items() if not v <= tol}  # `not <=` catches NaN
    if bad:
        raise CorrectnessError(
            "fast path (dispatch='grouped') disagrees with the loop reference: "
            + ", ".join(f"{k} relative max error {v:.3g}" for k, v in bad.items())
            + f" > tolerance {tol:g}"
        )
    result: dict[str, Any] = {f"{k}_rel_err": v for k, v in errs.items()} | {"tolerance": tol}
    if hf_block is not None and not layer.force_uniform_routing:
        # same weights, same (natural) routing: the HF block should compute the same output
        with torch.no_grad():
            result["hf_out_rel_err"] = rel_max_err(hf_forward(hf_block, x_TD), ref["out"])
    return result


# -- host synchronisation (CUDA) ------------------------------------------------------------
def host_syncs(fn) -> dict[str, Any]:
    """Synchronising CUDA calls in ``fn()``, counted by ``torch.cuda.set_sync_debug_mode``."""
    torch.cuda.synchronize()
    prev = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(prev)
    hits = [w for w in caught if "synchroniz" in str(w.message)]
    sites = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in hits})
    return {"count": len(hits), "sites": sites}


def count_layer_syncs(layer: MoELayer, x_TD, g_TD) -> dict[str, Any]:
    """Host synchronisations in one training forward and its backward of the fast path."""
    x = x_TD.detach().requires_grad_(True)
    held: dict[str, torch.Tensor] = {}

    def fwd():
        held["out"] = layer(x).out

    fwd_syncs = host_syncs(fwd)
    bwd_syncs = host_syncs(lambda: held["out"].backward(g_TD))
    for p in layer.parameters():
        p.grad = None
    return {"fwd": fwd_syncs, "bwd": bwd_syncs}
