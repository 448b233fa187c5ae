"""What ``calibration/bench_moe_layer.py`` benchmarks: the shapes (the MoE block of a catalog
model, or a tiny one of the same routing for ``--quick``), their FLOPs and memory, and the modules
timed (moesim's ``MoELayer``, the dense FFN of the same expert FLOPs, the Hugging Face Mixtral
block with the same weights).

Shape legend: T tokens, D d_model, E routed experts, K top-k, F expert hidden, Fs shared-expert
hidden, H = K·F + n_shared·Fs (the hidden size of the dense-equivalent FFN).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from moesim.catalog import raw_entry
from moesim.nn import MoELayer
from moesim.nn.ffn import FeedForward
from moesim.specs import ModelSpec

GB = 1e9
SHAPES = {"mixtral-like": "mixtral-8x7b", "deepseek-like": "deepseek-v3"}  # name -> catalog id
# --quick: the same routing (router kind, groups, shared expert), tiny sizes, for a CPU smoke run
QUICK_SIZES = {
    "mixtral-like": {"d_model": 64, "expert_hidden": 128},
    "deepseek-like": {"d_model": 64, "expert_hidden": 32, "n_routed_experts": 32},
}
GATED_GEMMS = 3  # SwiGLU: gate, up, down
BWD_FACTOR = 3  # forward + backward = 3× the forward FLOPs (dX and dW each cost a forward)


# -- shapes ---------------------------------------------------------------------------------
def layer_spec(shape: str, quick: bool = False) -> ModelSpec:
    """The one-layer ModelSpec of a benchmark shape: the catalog model's MoE block."""
    entry = raw_entry("models", SHAPES[shape])
    moe = {k: v for k, v in entry["moe"].items() if k not in ("first_k_dense", "moe_every")}
    d_model = entry["d_model"]
    if quick:
        sizes = dict(QUICK_SIZES[shape])
        d_model = sizes.pop("d_model")
        moe.update(sizes)
    return ModelSpec(
        name=f"bench-{shape}{'-quick' if quick else ''}",
        source=f"moesim calibration/bench_moe_layer.py: the MoE layer of catalog {SHAPES[shape]}",
        vocab_size=entry["vocab_size"],
        n_layers=1,
        d_model=d_model,
        n_heads=max(1, d_model // 64),
        ffn_hidden=entry["ffn_hidden"],
        ffn_kind=entry.get("ffn_kind", "swiglu"),
        moe=moe,
    )


def dense_hidden(spec: ModelSpec) -> int:
    """H = K·F + n_shared·Fs: a dense FFN of this hidden does the layer's expert FLOPs."""
    m = spec.moe
    return m.top_k * m.expert_hidden + m.n_shared_experts * m.shared_hidden


def forward_flops(spec: ModelSpec, tokens: int) -> float:
    """Expert FLOPs of one forward (routed + shared): 2 FLOPs per MAC · 3 GEMMs of T×D×H."""
    return 2.0 * tokens * spec.d_model * dense_hidden(spec) * GATED_GEMMS


def shape_info(spec: ModelSpec) -> dict[str, Any]:
    m = spec.moe
    return {
        "catalog_id": spec.source.rsplit(" ", 1)[-1],
        "d_model": spec.d_model,
        "n_routed_experts": m.n_routed_experts,
        "top_k": m.top_k,
        "expert_hidden": m.expert_hidden,
        "n_shared_experts": m.n_shared_experts,
        "shared_hidden": m.shared_hidden if m.n_shared_experts else None,
        "router": m.router,
        "n_groups": m.n_groups,
        "topk_groups": m.topk_groups,
        "dense_equivalent_hidden": dense_hidden(spec),
    }


def memory_estimate_bytes(spec: ModelSpec, tokens: int, bytes_per_el: int, hf: bool) -> float:
    """Peak device memory of a case, roughly: every module's weights, one module's gradients
    (they are dropped after each timing), the fast path's forward + backward activations, the
    timer's input pool, and 2 GB of workspace (cuBLAS, allocator slack)."""
    m, D = spec.moe, spec.d_model
    N = tokens * m.top_k  # routed rows
    Fs = m.n_shared_experts * m.shared_hidden
    layer_w = m.n_routed_experts * (GATED_GEMMS * D * m.expert_hidden + D) + GATED_GEMMS * D * Fs
    dense_w = GATED_GEMMS * D * dense_hidden(spec)
    hf_w = m.n_routed_experts * (GATED_GEMMS * D * m.expert_hidden + D) if hf else 0
    weights = (layer_w + dense_w + hf_w) * bytes_per_el
    grads = max(layer_w, hf_w) * bytes_per_el
    # saved and transient: gathered rows, expert output, weighted output and their gradients
    # (4·N·D); gate, up, act, h and two gradients (6·N·F); tokens in, out, grads, shared (6·T·D)
    acts = (4 * N * D + 6 * N * m.expert_hidden + 6 * tokens * D + 4 * tokens * Fs) * bytes_per_el
    acts += 6 * tokens * m.n_routed_experts * 4  # fp32 router logits, probs, grads
    pool = 3 * 2 * tokens * D * bytes_per_el  # Timer pool: (x, grad_out) × 3
    return weights + grads + acts + pool + 2 * GB


# -- modules --------------------------------------------------------------------------------
@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules directly in ``dtype`` (no fp32 copy of 22 GB of DeepSeek-like experts)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(prev)


def build_layer(spec: ModelSpec, device: str, dtype: torch.dtype) -> MoELayer:
    with torch.device(device), default_dtype(dtype):
        layer = MoELayer(spec)
    return layer.train()


def build_dense(spec: ModelSpec, device: str, dtype: torch.dtype) -> FeedForward:
    with torch.device(device), default_dtype(dtype):
        dense = FeedForward(spec.d_model, dense_hidden(spec), spec.ffn_kind)
    with torch.no_grad():
        for p in dense.parameters():
            p.normal_(std=0.02)  # the experts' init
    return dense.train()


def transformers_version() -> str | None:
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


def build_hf_block(
    spec: ModelSpec, layer: MoELayer, device: str, dtype: torch.dtype, impl: str | None
) -> tuple[nn.Module | None, dict[str, Any]]:
    """The Transformers Mixtral block with ``layer``'s weights, or None and why not."""
    m = spec.moe
    if transformers_version() is None:
        return None, {"reason": "transformers is not installed"}
    if m.n_shared_experts or m.router != "softmax_topk" or m.n_groups > 1:
        return None, {"reason": "the Mixtral block has no shared expert / sigmoid / group routing"}
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    kwargs: dict[str, Any] = {
        "hidden_size": spec.d_model,
        "intermediate_size": m.expert_hidden,
        "num_local_experts": m.n_routed_experts,
        "num_experts_per_tok": m.top_k,
        "router_jitter_noise": 0.0,
    }
    config = MixtralConfig(**kwargs)
    has_impls = hasattr(config, "_experts_implementation")
    if has_impls:  # Transformers ≥ 5: pick what from_pretrained picks unless told
        config._experts_implementation = impl or "grouped_mm"
    elif impl not in (None, "eager"):
        return None, {"reason": f"this Transformers has no experts_implementation {impl!r}"}
    with torch.device(device), default_dtype(dtype):
        block = MixtralSparseMoeBlock(config)
    copied = copy_weights_to_hf(layer, block)
    info = {
        "experts_implementation": config._experts_implementation if has_impls else "eager",
        "weights": "copied from the moesim layer" if copied else "random (unknown layout)",
    }
    return block.train(), info


@torch.no_grad()
def copy_weights_to_hf(layer: MoELayer, block: nn.Module) -> bool:
    """Copy the router and expert weights into either HF layout; False if neither matches."""
    ex = layer.experts
    gate_EDF, up_EDF, down_EFD = ex.w_gate_EDF, ex.w_up_EDF, ex.w_down_EFD
    router_w = block.gate.weight
    router_w.copy_(layer.router.weight_ED)
    experts = block.experts
    if hasattr(experts, "gate_up_proj"):  # Transformers ≥ 5: (E, 2F, D) and (E, D, F)
        experts.gate_up_proj.copy_(torch.cat([gate_EDF, up_EDF], dim=2).transpose(1, 2))
        experts.down_proj.copy_(down_EFD.transpose(1, 2))
        return True
    if isinstance(experts, nn.ModuleList) and hasattr(experts[0], "w1"):  # ≤ 4.x: w1 gate, w3 up
        for e, mlp in enumerate(experts):
            mlp.w1.weight.copy_(gate_EDF[e].T)
            mlp.w3.weight.copy_(up_EDF[e].T)
            mlp.w2.weight.copy_(down_EFD[e].T)
        return True
    for p in block.parameters():
        p.normal_(std=0.02)
    return False


def hf_forward(block: nn.Module, x_TD: torch.Tensor) -> torch.Tensor:
    out = block(x_TD.unsqueeze(0))
    out = out[0] if isinstance(out, tuple) else out  # ≤ 4.x also return the router logits
    return out.reshape(x_TD.shape)


KERNEL_NAMES = {
    "grouped_mm": "torch._grouped_mm",
    "padded": "padded batched matmul",
    "loop": "per-expert loop over contiguous slices",
}


def fast_path_kernel(layer: MoELayer) -> str:
    """What ``RoutedExperts.grouped_forward`` runs for this layer's device, dtype and capacity
    (a capacity bounds the rows per expert, which lets the padded kernel skip its host sync).
    The layer's own ``capacity`` says whether one applies: None dropless and for expert
    choice, whatever the capacity factor, at any token count."""
    ex = layer.experts
    probe = ex.w_up_EDF.new_empty(0, ex.d_model)
    bounded = layer.capacity(1) is not None
    return KERNEL_NAMES[ex.kernel(probe, bounded=bounded)]
