"""Causal attention, forward and forward + backward, over sequence lengths: the
``scaled_dot_product_attention`` call that ``moesim.nn.attention`` makes (flash or
memory-efficient kernels on CUDA, the math path on the CPU).

Shape legend: B batch, H heads, S sequence, Dh head dim. FLOPs follow
``moesim.analytic.flops.attention_core_flops``: QKᵀ and AV cost 2·H·Dh·ctx each per query,
ctx = (S+1)/2 keys on average under the causal mask, so forward = 4·B·H·Dh·S·(S+1)/2;
backward counts 2× forward (the convention the simulator uses; flash backward really does
more, and the validation error shows how much that matters).
"""

from __future__ import annotations

from moesim.calibrate.context import Case, Context, Row
from moesim.calibrate.device import bytes_per_element, torch_dtype
from moesim.calibrate.records import row


def grid(cuda: bool, quick: bool) -> list[tuple[int, int, int, int]]:
    """(B, H, S, Dh), with B·S roughly constant so that short sequences still fill the device."""
    if cuda:
        seqs = [1024, 4096] if quick else [512, 1024, 2048, 4096, 8192, 16384]
        return [
            (max(1, 16384 // s), h, s, 128) for s in seqs for h in ((16,) if quick else (16, 32))
        ]
    seqs = [128, 256] if quick else [64, 128, 256, 512, 1024, 2048]
    return [(max(1, 2048 // s), 4, s, 64) for s in seqs]


def flops_fwd(b: int, h: int, s: int, dh: int) -> float:
    return 4.0 * b * h * dh * s * (s + 1) / 2


def measure(ctx: Context, b: int, h: int, s: int, dh: int, pass_: str) -> Row:
    import torch
    import torch.nn.functional as F

    dev, dt = ctx.torch_device, ctx.device.dtype
    tdt, g = torch_dtype(dt), ctx.generator()
    bwd = pass_ == "fwd_bwd"

    def make():
        q, k, v, go = (
            torch.randn(b, h, s, dh, device=dev, dtype=tdt, generator=g) for _ in range(4)
        )
        return q.requires_grad_(bwd), k.requires_grad_(bwd), v.requires_grad_(bwd), go

    if bwd:

        def fn(inp):
            q, k, v, go = inp
            for x in (q, k, v):
                x.grad = None
            F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(go)
    else:

        @torch.no_grad()
        def fn(inp):
            F.scaled_dot_product_attention(inp[0], inp[1], inp[2], is_causal=True)

    timing = ctx.timer.time(fn, make)
    io_bytes = 4 * b * h * s * dh * bytes_per_element(dt)  # q, k, v read, o written
    return row(
        ctx.device.profile_id,
        "attention",
        "attention",
        dt,
        timing,
        pass_=pass_,
        flops=flops_fwd(b, h, s, dh) * (3 if bwd else 1),
        bytes_=io_bytes * (3 if bwd else 1),
        seq_len=s,
        batch=b,
        heads=h,
        head_dim=dh,
    )


def cases(ctx: Context) -> list[Case]:
    return [
        Case(
            f"attention B{b} H{h} S{s} Dh{dh} {p}",
            lambda b=b, h=h, s=s, dh=dh, p=p: [measure(ctx, b, h, s, dh, p)],
        )
        for b, h, s, dh in grid(ctx.cuda, ctx.quick)
        for p in ("fwd", "fwd_bwd")
    ]
