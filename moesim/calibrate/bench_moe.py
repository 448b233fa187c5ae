"""The included MoE layer (``moesim.nn.MoELayer``): its grouped GEMM alone, and the whole layer
with balanced and skewed routing, forward and forward + backward.

Shape legend: T tokens, E experts, K top-k, D d_model (``hidden``), F expert hidden
(``ffn_hidden``), N = T·K routed rows.

- ``grouped_gemm`` (op class grouped_gemm): ``RoutedExperts.grouped_forward`` on N rows split
  evenly over E experts, dropless, with the kernel the layer picks
  (``moesim.nn.experts.grouped_kernel``: ``torch._grouped_mm`` where torch runs it, Hopper in
  bf16 and, in torch 2.13, the CPU; the per-expert loop elsewhere), named in ``note``.
  FLOPs = 2·N·D·F·3 (SwiGLU: gate, up, down), ``groups`` = E, so the curve's x is one
  expert's FFN, as the simulator reads it.
- ``moe_layer`` (validated, not fitted): ``MoELayer.forward`` (router, sort, gather, grouped
  GEMM, weighted scatter-add) with ``force_uniform_routing`` (round-robin: kernel cost without
  imbalance) or with a skew: a selection-only expert bias ∝ 1/(i+1) (Zipf, s = 1), scaled by
  bisection until the measured tokens-per-expert CV is near ``SKEW_TARGET_CV``. The realised
  histogram goes into ``note`` so the simulator is given the same load.
"""

from __future__ import annotations

import json

from moesim.calibrate.context import Case, Context, Row
from moesim.calibrate.device import bytes_per_element, torch_dtype
from moesim.calibrate.records import row

SKEW_TARGET_CV = 0.6
GATED_GEMMS = 3  # SwiGLU expert: gate, up, down


def model_spec(tokens: int, experts: int, top_k: int, d_model: int, hidden: int):
    """A one-layer MoE ModelSpec for the layer under test (no shared expert)."""
    from moesim.specs import ModelSpec

    return ModelSpec(
        name=f"calib-moe-e{experts}k{top_k}d{d_model}f{hidden}",
        source="moesim calibrate: synthetic one-layer MoE for benchmarking",
        vocab_size=256,
        n_layers=1,
        d_model=d_model,
        n_heads=max(1, d_model // 64),
        ffn_hidden=4 * d_model,
        max_seq_len=tokens,
        moe={"n_routed_experts": experts, "top_k": top_k, "expert_hidden": hidden},
    )


def grid(cuda: bool, quick: bool) -> list[tuple[int, int, int, int, int]]:
    """(T, E, K, D, F) configurations."""
    if cuda:
        # shapes of real MoE layers (one EP rank's experts where the model has many)
        configs = [
            (2048, 8, 2, 2048, 1408),
            (4096, 8, 2, 4096, 14336),  # Mixtral-8x7B layer
            (16384, 8, 2, 4096, 14336),
            (4096, 64, 6, 2048, 1408),  # DeepSeek-V2-Lite layer
            (16384, 64, 6, 2048, 1408),
            (4096, 128, 8, 2048, 768),  # Qwen3-30B-A3B layer
            (16384, 128, 8, 2048, 768),
            (8192, 32, 8, 7168, 2048),  # DeepSeek-V3: 32 of 256 experts (one rank of EP 8)
        ]
        return configs[:2] if quick else configs
    if quick:
        return [(256, 4, 2, 128, 128), (512, 8, 2, 128, 256)]
    return [
        (t, e, k, d, f)
        for t in (256, 1024, 2048)
        for (e, k) in ((8, 2), (32, 4))
        for (d, f) in ((256, 256), (512, 512))
    ]


def _fwd_bwd_fn(module_out, params_of):
    """A callable running forward + backward with a random output gradient."""

    def fn(inp):
        g = inp[-1]
        inp[0].grad = None
        for p in params_of():
            p.grad = None
        out = module_out(inp)
        out.backward(g)

    return fn


def measure_grouped(ctx: Context, t: int, e: int, k: int, d: int, f: int, pass_: str) -> Row:
    import torch

    from moesim.nn.experts import RoutedExperts

    dev, dt = ctx.torch_device, ctx.device.dtype
    tdt, g = torch_dtype(dt), ctx.generator()
    n = t * k
    with torch.device(dev):
        experts = RoutedExperts(e, d, f).to(tdt)
    counts = torch.full((e,), n // e, dtype=torch.int64, device=dev)
    counts[: n % e] += 1
    max_rows = None  # dropless: no capacity bounds an expert's rows
    bwd = pass_ == "fwd_bwd"

    def make():
        x = torch.randn(n, d, device=dev, dtype=tdt, generator=g).requires_grad_(bwd)
        return x, torch.randn(n, d, device=dev, dtype=tdt, generator=g)

    if bwd:
        fn = _fwd_bwd_fn(
            lambda inp: experts.grouped_forward(inp[0], counts, max_rows), experts.parameters
        )
    else:

        @torch.no_grad()
        def fn(inp):
            experts.grouped_forward(inp[0], counts, max_rows)

    timing = ctx.timer.time(fn, make)
    fwd_flops = 2.0 * n * d * f * GATED_GEMMS
    b = bytes_per_element(dt)
    fwd_bytes = (GATED_GEMMS * e * d * f + 2 * n * d + 3 * n * f) * b
    # what grouped_forward ran: rows of this device and dtype, bounded as in the calls above
    probe = torch.empty(0, d, device=dev, dtype=tdt)
    path = experts.kernel(probe, bounded=max_rows is not None)  # grouped_mm|padded|loop
    return row(
        ctx.device.profile_id,
        "grouped_gemm",
        "grouped_gemm",
        dt,
        timing,
        pass_=pass_,
        flops=fwd_flops * (3 if bwd else 1),
        bytes_=fwd_bytes * (3 if bwd else 1),
        note=f"path={path}",
        tokens=t,
        experts=e,
        top_k=k,
        hidden=d,
        ffn_hidden=f,
        groups=e,
    )


def skew_router(layer, x_TD, target_cv: float = SKEW_TARGET_CV, steps: int = 12) -> float:
    """Set the router's selection bias to c/(i+1) with c bisected (in log space) so that the
    tokens-per-expert CV on ``x_TD`` is near ``target_cv``; returns the CV reached."""
    import torch

    from moesim.nn.balance import load_cv, tokens_per_expert

    e = layer.n_experts
    zipf_E = 1.0 / torch.arange(1, e + 1, dtype=torch.float32, device=x_TD.device)
    lo, hi = -6.0, 1.0  # log10 of c
    cv = 0.0
    with torch.no_grad():
        for _ in range(steps):
            mid = (lo + hi) / 2
            layer.router.expert_bias_E.copy_(10**mid * zipf_E)
            r = layer.router(x_TD)
            cv = load_cv(tokens_per_expert(r.expert_idx_A, e))
            if cv < target_cv:
                lo = mid
            else:
                hi = mid
    return cv


def measure_layer(
    ctx: Context, t: int, e: int, k: int, d: int, f: int, routing: str, pass_: str
) -> Row:
    import torch

    from moesim.nn import MoELayer

    dev, dt = ctx.torch_device, ctx.device.dtype
    tdt, g = torch_dtype(dt), ctx.generator()
    torch.manual_seed(ctx.seed)
    with torch.device(dev):
        layer = MoELayer(model_spec(t, e, k, d, f), force_uniform_routing=routing == "uniform")
    layer = layer.to(tdt)
    bwd = pass_ == "fwd_bwd"

    def make():
        x = torch.randn(t, d, device=dev, dtype=tdt, generator=g).requires_grad_(bwd)
        return x, torch.randn(t, d, device=dev, dtype=tdt, generator=g)

    probe = make()[0].detach()
    if routing == "skewed":
        skew_router(layer, probe)
    with torch.no_grad():
        stats = layer(probe).stats
    if bwd:
        fn = _fwd_bwd_fn(lambda inp: layer(inp[0]).out, layer.parameters)
    else:

        @torch.no_grad()
        def fn(inp):
            layer(inp[0])

    timing = ctx.timer.time(fn, make)
    n = t * k
    fwd_flops = 2.0 * n * d * f * GATED_GEMMS + 2.0 * t * d * e  # experts + router
    note = {
        "routing": routing,
        "load_cv": round(stats.load_cv, 4),
        "tokens_per_expert": [int(c) for c in stats.tokens_per_expert_E.tolist()],
    }
    return row(
        ctx.device.profile_id,
        "moe_layer",
        "moe_layer",
        dt,
        timing,
        pass_=pass_,
        flops=fwd_flops * (3 if bwd else 1),
        bytes_=0.0,
        note=json.dumps(note, separators=(",", ":")),
        tokens=t,
        experts=e,
        top_k=k,
        hidden=d,
        ffn_hidden=f,
        groups=e,
    )


def cases(ctx: Context) -> list[Case]:
    out: list[Case] = []
    for t, e, k, d, f in grid(ctx.cuda, ctx.quick):
        shape = f"T{t} E{e} K{k} D{d} F{f}"
        for p in ("fwd", "fwd_bwd"):
            out.append(
                Case(
                    f"grouped_gemm {shape} {p}",
                    lambda t=t, e=e, k=k, d=d, f=f, p=p: [measure_grouped(ctx, t, e, k, d, f, p)],
                )
            )
            for routing in ("uniform", "skewed"):
                out.append(
                    Case(
                        f"moe_layer {shape} {routing} {p}",
                        lambda t=t, e=e, k=k, d=d, f=f, r=routing, p=p: [
                            measure_layer(ctx, t, e, k, d, f, r, p)
                        ],
                    )
                )
    return out
