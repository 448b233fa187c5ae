"""Benchmark of the included MoE layer (issue 8): is ``moesim.nn.MoELayer``'s fast path as fast
as the dense GEMMs it has to do, and faster than the loop reference and the Transformers block?

Shape legend: T tokens, D d_model, E routed experts, K top-k, F expert hidden, Fs shared-expert
hidden, H = K·F + n_shared·Fs (the hidden size of the dense-equivalent FFN).

For each shape (Mixtral-like, DeepSeek-like; from the catalog), token count and routing, it
times forward and forward + backward of:

- ``fast``: ``MoELayer(dispatch="grouped")``: router, sort, gather, grouped GEMM
  (``torch._grouped_mm`` where torch runs it: Hopper in bf16 and, in torch 2.13, the CPU; the
  per-expert loop elsewhere; the JSON's ``fast_path_kernel`` names it), weighted scatter-add,
  shared expert;
- ``loop``: the same module with ``dispatch="loop"`` (the plain loop over experts, the oracle);
- ``dense``: a dense SwiGLU FFN of hidden H on the T tokens: the same expert FLOPs in three
  plain GEMMs, the roofline the fast path cannot beat (the router's 2·T·D·E FLOPs are not in
  it, ≤ 0.5 % here);
- ``hf``: the Hugging Face Transformers Mixtral sparse MoE block with the layer's weights
  (Mixtral-like shape only, and only where ``import transformers`` works), with the experts
  implementation a ``from_pretrained`` model gets by default (``grouped_mm`` in Transformers 5,
  the eager per-expert loop before).

Routing: ``balanced`` (``force_uniform_routing``: round-robin, every expert gets exactly
T·K/E rows; the router is still computed) and ``natural`` (the random-init router on random
inputs; its load CV is recorded). The HF block always routes with its own (natural) router.

Every case first checks ``fast`` against ``loop`` on fresh random inputs (output, input gradient,
router-weight gradient; relative max error ≤ 1e-5 in fp32, 2e-2 in bf16) and aborts on a
mismatch. Timing is ``moesim.calibrate.timing.Timer`` (warm-up, CUDA events, medians over a
rotating pool of fresh random inputs). The JSON is rewritten after every case, so a run cut
short keeps what it measured; ``--append`` adds cases to an earlier file of the same device.

    python calibration/bench_moe_layer.py --device cuda  # -> calibration/moe_layer_bench_<gpu>.json
    python calibration/bench_moe_layer.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout without `pip install -e`
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from moesim.calibrate.device import catalog_gpu_id, detect  # noqa: E402
from moesim.calibrate.timing import Timer, Timing  # noqa: E402
from moesim.catalog import raw_entry  # noqa: E402
from moesim.nn import MoELayer  # noqa: E402
from moesim.nn.balance import load_cv  # noqa: E402
from moesim.nn.ffn import FeedForward  # noqa: E402
from moesim.specs import ModelSpec  # noqa: E402

SHAPES = {"mixtral-like": "mixtral-8x7b", "deepseek-like": "deepseek-v3"}  # name -> catalog id
# --quick: the same routing (router kind, groups, shared expert), tiny sizes, for a CPU smoke run
QUICK_SIZES = {
    "mixtral-like": {"d_model": 64, "expert_hidden": 128},
    "deepseek-like": {"d_model": 64, "expert_hidden": 32, "n_routed_experts": 32},
}
TOKENS = (4096, 8192, 16384, 32768)
QUICK_TOKENS = (128, 256)
ROUTINGS = ("balanced", "natural")
VARIANTS = ("fast", "loop", "dense", "hf")
PASSES = ("fwd", "fwd_bwd")
GATED_GEMMS = 3  # SwiGLU: gate, up, down
BWD_FACTOR = 3  # forward + backward = 3× the forward FLOPs (dX and dW each cost a forward)
GOALS = {"fwd_bwd_ratio_to_dense": 0.8, "speedup_vs_loop": 3.0, "speedup_vs_hf": 1.0}
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}  # max |fast − loop| / max |loop|
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GB = 1e9


class CorrectnessError(AssertionError):
    """The fast path disagrees with the loop reference."""


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


# -- timing ---------------------------------------------------------------------------------
@dataclass
class Bench:
    """What every timing of a case shares."""

    timer: Timer
    device: str
    dtype: torch.dtype
    tokens: int
    d_model: int
    generator: torch.Generator

    def make_inputs(self, grad: bool):
        def make():
            kw = {"device": self.device, "dtype": self.dtype, "generator": self.generator}
            x = torch.randn(self.tokens, self.d_model, **kw).requires_grad_(grad)
            return x, torch.randn(self.tokens, self.d_model, **kw)

        return make

    def time(self, forward, params: list[nn.Parameter], pass_: str) -> Timing:
        """``forward(x) -> out``, timed alone (no grad) or with ``out.backward(g)``."""
        if pass_ == "fwd":

            @torch.no_grad()
            def fn(inp):
                forward(inp[0])

        else:

            def fn(inp):
                x, g = inp
                x.grad = None
                for p in params:
                    p.grad = None
                forward(x).backward(g)

        try:
            return self.timer.time(fn, self.make_inputs(pass_ == "fwd_bwd"))
        finally:
            for p in params:
                p.grad = None


def timing_dict(t: Timing) -> dict[str, float | int]:
    return {"median_s": t.median_s, "p10_s": t.p10_s, "p90_s": t.p90_s, "repeats": t.repeats}


# -- one case -------------------------------------------------------------------------------
@dataclass
class Run:
    """One invocation's options and what all its cases share."""

    device: str
    dtype: torch.dtype
    dtype_name: str
    variants: list[str]
    timer: Timer
    generator: torch.Generator
    tol: float
    memory_bytes: float | None  # the GPU's, None on the CPU
    out: Path
    profile: bool = False


@dataclass
class Modules:
    """The modules of one shape; ``cache`` keeps dense and hf timings, which do not depend on
    the layer's routing, by (variant, tokens, pass)."""

    spec: ModelSpec
    layer: MoELayer
    dense: FeedForward | None
    hf: nn.Module | None
    hf_info: dict[str, Any]  # the implementation used, or why there is no hf block
    cache: dict[tuple[str, int, str], Timing] = field(default_factory=dict)


def run_case(run: Run, mods: Modules, shape: str, t: int, routing: str) -> dict[str, Any]:
    """Check, then time, one (shape, tokens, routing); a dict for the JSON's ``cases``."""
    spec, layer = mods.spec, mods.layer
    case: dict[str, Any] = {"shape": shape, "tokens": t, "routing": routing, "status": "ok"}
    est = memory_estimate_bytes(spec, t, torch.finfo(run.dtype).bits // 8, mods.hf is not None)
    case["memory_estimate_GB"] = round(est / GB, 1)
    if run.memory_bytes and est > 0.95 * run.memory_bytes:
        need = f"needs ~{est / GB:.0f} GB, the GPU has {run.memory_bytes / GB:.0f} GB"
        return case | {"status": "skipped", "reason": need}
    layer.force_uniform_routing = routing == "balanced"
    bench = Bench(run.timer, run.device, run.dtype, t, spec.d_model, run.generator)
    try:
        # 1. fast against loop on fresh random inputs, before anything is timed
        x_TD, g_TD = bench.make_inputs(False)()
        case["correctness"] = check_correctness(layer, x_TD, g_TD, run.tol, mods.hf)
        with torch.no_grad():
            counts_E = layer(x_TD).stats.tokens_per_expert_E
        case["load_cv"] = load_cv(counts_E)
        case["max_over_mean_load"] = (counts_E.max() / counts_E.float().mean()).item()
        if run.device == "cuda":
            case["host_syncs"] = count_layer_syncs(layer, x_TD, g_TD)
        del x_TD, g_TD
        # 2. medians of every variant and pass
        med = {v: time_variant(run, mods, bench, v) for v in VARIANTS}
        if run.profile:
            case["profile_file"] = profile_fast(layer, bench, run.out, shape, t, routing)
    except torch.cuda.OutOfMemoryError as e:
        if run.device == "cuda":
            torch.cuda.empty_cache()
        return case | {"status": "skipped", "reason": f"out of memory: {str(e).splitlines()[0]}"}
    finally:
        layer.dispatch = "grouped"
    return case | summarize(spec, t, routing, med)


def time_variant(run: Run, mods: Modules, bench: Bench, variant: str) -> dict | None:
    """{pass: Timing} of one variant, or None where it is not run."""
    if variant not in run.variants or (variant == "hf" and mods.hf is None):
        return None
    layer = mods.layer
    out = {}
    for pass_ in PASSES:
        key = (variant, bench.tokens, pass_)
        if variant in ("fast", "loop"):
            layer.dispatch = "grouped" if variant == "fast" else "loop"
            out[pass_] = bench.time(lambda x: layer(x).out, list(layer.parameters()), pass_)
        elif key in mods.cache:
            out[pass_] = mods.cache[key]
        else:
            module = mods.dense if variant == "dense" else mods.hf
            fwd = module if variant == "dense" else lambda x: hf_forward(mods.hf, x)
            out[pass_] = mods.cache[key] = bench.time(fwd, list(module.parameters()), pass_)
    return out


def summarize(spec: ModelSpec, t: int, routing: str, timed: dict) -> dict[str, Any]:
    """Medians, TFLOPS, the ratios of the issue and whether each goal is met."""
    med = {
        v: None if tv is None else {p: tv[p].median_s for p in PASSES} for v, tv in timed.items()
    }
    flops = {"fwd": forward_flops(spec, t), "fwd_bwd": BWD_FACTOR * forward_flops(spec, t)}

    def over_fast(variant: str, pass_: str) -> float | None:
        m = med.get(variant)
        return m[pass_] / med["fast"][pass_] if m else None

    out: dict[str, Any] = {
        "median_s": med,
        "timings": {
            v: None if tv is None else {p: timing_dict(tv[p]) for p in PASSES}
            for v, tv in timed.items()
        },
        "flops": flops,
        "tflops": {
            v: None if m is None else {p: flops[p] / m[p] / 1e12 for p in PASSES}
            for v, m in med.items()
        },
        "fwd_bwd_ratio_to_dense": over_fast("dense", "fwd_bwd"),
        "speedup_vs_loop": over_fast("loop", "fwd_bwd"),
        "speedup_vs_hf": over_fast("hf", "fwd_bwd"),
        "fwd_ratio_to_dense": over_fast("dense", "fwd"),
        "fwd_speedup_vs_loop": over_fast("loop", "fwd"),
        "fwd_speedup_vs_hf": over_fast("hf", "fwd"),
    }
    out["goals_met"] = {
        # the roofline goal is judged at balanced routing only
        key: None
        if out[key] is None or (key == "fwd_bwd_ratio_to_dense" and routing != "balanced")
        else bool(out[key] >= threshold)
        for key, threshold in GOALS.items()
    }
    return out


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


def profile_fast(layer, bench: Bench, out: Path, shape: str, t: int, routing: str) -> str:
    """One profiled fast forward + backward (after a warm one); the top ops to a text file."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device == "cuda" else [])
    x, g = bench.make_inputs(True)()
    for _ in range(2):
        with profile(activities=acts) as prof:
            layer(x).out.backward(g)
            if bench.device == "cuda":
                torch.cuda.synchronize()
    for p in layer.parameters():
        p.grad = None
    sort = "self_cuda_time_total" if bench.device == "cuda" else "self_cpu_time_total"
    path = out.with_name(f"{out.stem}.{shape}.T{t}.{routing}.profile.txt")
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=30) + "\n")
    return path.name


# -- the run --------------------------------------------------------------------------------
COLUMNS = {
    "median_s": "median seconds per call, per variant (fast, loop, dense, hf) and pass",
    "tflops": "expert FLOPs (routed + shared: forward 2·T·D·H·3, fwd_bwd 3×) / median time",
    "fwd_bwd_ratio_to_dense": "dense fwd_bwd median / fast fwd_bwd median (1 = at the roofline)",
    "speedup_vs_loop": "loop fwd_bwd median / fast fwd_bwd median",
    "speedup_vs_hf": "Transformers block fwd_bwd median / fast fwd_bwd median",
    "load_cv": "std/mean of rows per expert under the case's routing (0 = balanced)",
    "correctness": "max |fast - loop| / max |loop| of the output and the gradients",
    "host_syncs": "synchronising CUDA calls in one fast forward / backward (sync debug mode)",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes and token counts (smoke)")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shape names")
    p.add_argument("--tokens", default=None, help="comma-separated token counts")
    p.add_argument("--routing", default=",".join(ROUTINGS), help="balanced,natural")
    p.add_argument("--variants", default=",".join(VARIANTS), help="subset of fast,loop,dense,hf")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="bf16 on cuda, fp32 cpu")
    p.add_argument("--tol", type=float, default=None, help="correctness tolerance override")
    p.add_argument("--hf-impl", default=None, help="Transformers experts_implementation")
    p.add_argument("--seed", type=int, default=None, help="default: fresh, recorded in the JSON")
    p.add_argument("--budget-s", type=float, default=None, help="timer budget per timing")
    p.add_argument("--out", default=None, help="default calibration/moe_layer_bench_<dev>.json")
    p.add_argument("--append", action="store_true", help="keep the other cases of --out")
    p.add_argument("--profile", action="store_true", help="a torch.profiler table per case")
    p.add_argument("--table", metavar="JSON", help="print a results JSON as a Markdown table")
    return p.parse_args(argv)


def split(arg: str, known, name: str) -> list[str]:
    items = [s for s in arg.split(",") if s]
    if unknown := sorted(set(items) - set(known)):
        raise SystemExit(f"unknown {name} {unknown}: use {','.join(known)}")
    return items


def make_timer(device: str, quick: bool, budget_s: float | None) -> Timer:
    if device == "cuda":
        return Timer("cuda", warmup=3, min_repeats=5, max_repeats=30, budget_s=budget_s or 1.0)
    if quick:
        return Timer("cpu", warmup=1, min_repeats=3, max_repeats=15, budget_s=budget_s or 0.05)
    return Timer("cpu", warmup=1, min_repeats=3, max_repeats=10, budget_s=budget_s or 0.5)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def header(device: str, dtype_name: str, quick: bool, seed: int, timer: Timer) -> dict:
    """Device, versions, date and settings: the top of the JSON."""
    gpu_id = None
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA GPU; try --device cpu --quick")
        gpu_id = catalog_gpu_id(torch.cuda.get_device_name(0)) or "uncatalogued"
    info = detect(device, gpu_id)
    env = info.environment
    keys = ("torch", "cuda", "cudnn", "driver", "python", "compute_capability")
    versions = {k: env.get(k) for k in keys}
    versions |= {"transformers": transformers_version(), "moesim": git_commit()}
    mem = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else None
    return {
        "benchmark": "moe_layer",
        "issue": 8,
        "device": {
            "kind": info.kind,
            "name": info.name,
            "profile_id": info.profile_id,
            "memory_GB": round(mem / GB, 1) if mem else None,
        },
        "versions": versions,
        "date": env["date"],
        "dtype": dtype_name,
        "quick": quick,
        "seed": seed,
        "timer": {
            k: getattr(timer, k)
            for k in ("warmup", "min_repeats", "max_repeats", "budget_s", "pool")
        },
        "goals": GOALS,
        "columns": COLUMNS,
        "shapes": {},
        "cases": [],
    }


def case_key(c: dict) -> tuple:
    return (c["shape"], c["tokens"], c["routing"])


def write(result: dict, out: Path) -> None:
    """Rewrite the JSON (atomically), cases in (shape, tokens, routing) order."""
    result["cases"].sort(key=lambda c: (list(SHAPES).index(c["shape"]), c["tokens"], c["routing"]))
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns what it wrote to ``--out``. Raises CorrectnessError when the
    fast path disagrees with the loop reference."""
    args = parse_args(argv)
    if args.table:
        result = json.loads(Path(args.table).read_text())
        print(markdown_table(result))
        return result
    shapes = split(args.shapes, SHAPES, "shapes")
    routings = split(args.routing, ROUTINGS, "routing")
    variants = split(args.variants, VARIANTS, "variants")
    if "fast" not in variants:
        raise SystemExit("--variants must include fast: every ratio is relative to it")
    tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else None
    tokens = tokens or list(QUICK_TOKENS if args.quick else TOKENS)
    dtype_name = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    timer = make_timer(args.device, args.quick, args.budget_s)

    result = header(args.device, dtype_name, args.quick, seed, timer)
    default_out = REPO / "calibration" / f"moe_layer_bench_{result['device']['profile_id']}.json"
    out = Path(args.out) if args.out else default_out
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.exists():
        old = json.loads(out.read_text())
        if old.get("device", {}).get("name") != result["device"]["name"]:
            raise SystemExit(f"--append: {out} holds {old.get('device')}, not this device")
        result["shapes"], result["cases"] = old.get("shapes", {}), old.get("cases", [])
    torch.manual_seed(seed)
    run = Run(
        device=args.device,
        dtype=DTYPES[dtype_name],
        dtype_name=dtype_name,
        variants=variants,
        timer=timer,
        generator=torch.Generator(device=args.device).manual_seed(seed),
        tol=args.tol if args.tol is not None else TOLERANCE[dtype_name],
        memory_bytes=(result["device"]["memory_GB"] or 0) * GB or None,
        out=out,
        profile=args.profile,
    )
    n = len(shapes) * len(tokens) * len(routings)
    print(
        f"MoE layer benchmark on {result['device']['name']} ({dtype_name}), seed {seed}, "
        f"transformers {result['versions']['transformers']}: {n} cases -> {out}",
        flush=True,
    )
    i = 0
    for shape in shapes:
        mods = build_modules(run, layer_spec(shape, args.quick), args.hf_impl)
        result["shapes"][shape] = shape_info(mods.spec) | {
            "fast_path_kernel": fast_path_kernel(mods.layer),
            "hf": mods.hf_info,
        }
        for t in tokens:
            for routing in routings:
                i += 1
                case = run_case(run, mods, shape, t, routing)
                result["cases"] = [c for c in result["cases"] if case_key(c) != case_key(case)]
                result["cases"].append(case)
                write(result, out)
                print(f"[{i}/{n}] {progress_line(case)}", flush=True)
        del mods
        if run.device == "cuda":
            torch.cuda.empty_cache()
    return result


def build_modules(run: Run, spec: ModelSpec, hf_impl: str | None) -> Modules:
    layer = build_layer(spec, run.device, run.dtype)
    dense = build_dense(spec, run.device, run.dtype) if "dense" in run.variants else None
    hf, hf_info = None, {"reason": "not requested (--variants)"}
    if "hf" in run.variants:
        hf, hf_info = build_hf_block(spec, layer, run.device, run.dtype, hf_impl)
    return Modules(spec, layer, dense, hf, hf_info)


def markdown_table(result: dict) -> str:
    """The README's table: fwd+bwd medians (ms), the issue's ratios, the fast path's TFLOPS."""

    def ms(case: dict, v: str) -> str:
        m = case["median_s"].get(v)
        return f"{m['fwd_bwd'] * 1e3:.3g}" if m else "-"

    def x(v: float | None) -> str:
        return f"{v:.2f}" if v is not None else "-"

    rows = [
        "| shape | tokens | routing | fast | loop | dense | hf | ratio to dense | vs loop "
        "| vs hf | fast TFLOPS |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["cases"]:
        head = f"| {c['shape']} | {c['tokens']} | {c['routing']} |"
        if c["status"] != "ok":
            rows.append(f"{head} skipped ({c['reason']}) |" + " |" * 7)
            continue
        rows.append(
            f"{head} {ms(c, 'fast')} | {ms(c, 'loop')} | {ms(c, 'dense')} | {ms(c, 'hf')} "
            f"| {x(c['fwd_bwd_ratio_to_dense'])} | {x(c['speedup_vs_loop'])} "
            f"| {x(c['speedup_vs_hf'])} | {c['tflops']['fast']['fwd_bwd']:.3g} |"
        )
    return "\n".join(rows)


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


def fmt_s(s: float) -> str:
    return f"{s * 1e3:.3g} ms"


def progress_line(case: dict) -> str:
    head = f"{case['shape']} T={case['tokens']} {case['routing']}"
    if case["status"] != "ok":
        return f"{head}: skipped ({case['reason']})"
    med, c = case["median_s"], case["correctness"]
    parts = [
        f"fast fwd {fmt_s(med['fast']['fwd'])} fwd+bwd {fmt_s(med['fast']['fwd_bwd'])}"
        f" ({case['tflops']['fast']['fwd_bwd']:.3g} TFLOPS)"
    ]
    for key, label in (
        ("fwd_bwd_ratio_to_dense", "of dense"),
        ("speedup_vs_loop", "vs loop"),
        ("speedup_vs_hf", "vs hf"),
    ):
        v = case[key]
        parts.append(f"{label} {v:.2f}x" if v is not None else f"{label} -")
    parts.append(f"load cv {case['load_cv']:.2f}")
    errs = [v for k, v in c.items() if k.endswith("_rel_err") and not k.startswith("hf_")]
    parts.append(f"max err {max(errs):.1g}")
    if "host_syncs" in case:
        parts.append(f"host syncs fwd {case['host_syncs']['fwd']['count']}")
    return f"{head}: " + ", ".join(parts)


if __name__ == "__main__":
    try:
        main()
    except CorrectnessError as e:
        sys.exit(f"ABORT: {e}")
