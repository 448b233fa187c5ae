"""One case of ``calibration/bench_moe_layer.py`` (a shape, a token count, a routing): check
the fast path against the loop reference, then time each variant's forward and forward +
backward with ``moesim.calibrate.timing.Timer`` and summarise (medians, TFLOPS, the ratios the
goals are stated in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moesim.calibrate.moe_layer_bench_checks import check_correctness, count_layer_syncs
from moesim.calibrate.moe_layer_bench_modules import (
    BWD_FACTOR,
    GB,
    build_dense,
    build_hf_block,
    build_layer,
    forward_flops,
    hf_forward,
    memory_estimate_bytes,
)
from moesim.calibrate.timing import Timer, Timing
from moesim.nn import MoELayer
from moesim.nn.balance import load_cv
from moesim.nn.ffn import FeedForward
from moesim.specs import ModelSpec

VARIANTS = ("fast", "loop", "dense", "hf")
PASSES = ("fwd", "fwd_bwd")
GOALS = {"fwd_bwd_ratio_to_dense": 0.8, "speedup_vs_loop": 3.0, "speedup_vs_hf": 1.0}


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


def build_modules(run: Run, spec: ModelSpec, hf_impl: str | None) -> Modules:
    layer = build_layer(spec, run.device, run.dtype)
    dense = build_dense(spec, run.device, run.dtype) if "dense" in run.variants else None
    hf, hf_info = None, {"reason": "not requested (--variants)"}
    if "hf" in run.variants:
        hf, hf_info = build_hf_block(spec, layer, run.device, run.dtype, hf_impl)
    return Modules(spec, layer, dense, hf, hf_info)
