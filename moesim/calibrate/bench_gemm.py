"""Dense GEMMs ``C (M×N) = A (M×K) · B (K×N)`` over a grid of shapes and dtypes.

FLOPs = 2·M·N·K; bytes = (M·K + K·N + M·N) elements (each operand read once, C written once).
The grid spans small (occupancy-bound) to large (compute-bound) problems and includes skinny
ones (small M: decode and small expert batches).
"""

from __future__ import annotations

from moesim.calibrate.context import Case, Context, Row
from moesim.calibrate.device import bytes_per_element, torch_dtype
from moesim.calibrate.records import row


def grid(cuda: bool, quick: bool) -> list[tuple[int, int, int, str]]:
    """(M, N, K, dtype) triples; the device's primary dtype on every shape, others on a few."""
    if cuda:
        if quick:
            squares, mnk, others = [512, 2048, 8192], [(64, 4096, 4096)], ["fp16", "fp32"]
        else:
            squares = [256, 512, 1024, 2048, 4096, 8192, 16384]
            mnk = [
                (m, n, k)
                for m in (16, 128, 1024, 4096, 16384)
                for (n, k) in ((1024, 4096), (4096, 4096), (14336, 4096), (4096, 14336))
            ]
            others = ["fp16", "fp32"]
        primary = "bf16"
    else:
        if quick:
            squares, mnk, others = [64, 128, 256, 512], [(16, 512, 512)], ["bf16"]
        else:
            squares = [32, 64, 128, 256, 384, 512, 768, 1024, 1536]
            mnk = [
                (m, n, k)
                for m in (8, 64, 512, 2048)
                for (n, k) in ((256, 1024), (1024, 256), (1024, 1024))
            ]
            others = ["bf16"]
        primary = "fp32"
    shapes = [(s, s, s) for s in squares] + mnk
    out = [(m, n, k, primary) for m, n, k in shapes]
    # other dtypes on the square shapes up to the middle of the range
    for dt in others:
        out += [(s, s, s, dt) for s in squares[: max(2, len(squares) // 2 + 1)]]
    return out


def measure(ctx: Context, m: int, n: int, k: int, dtype: str) -> Row:
    import torch

    dev, tdt, g = ctx.torch_device, torch_dtype(dtype), ctx.generator()

    def make():
        a = torch.randn(m, k, device=dev, dtype=tdt, generator=g)
        b = torch.randn(k, n, device=dev, dtype=tdt, generator=g)
        return a, b, torch.empty(m, n, device=dev, dtype=tdt)

    def fn(inp):
        a, b, c = inp
        torch.mm(a, b, out=c)

    t = ctx.timer.time(fn, make)
    return row(
        ctx.device.profile_id,
        "gemm",
        "gemm",
        dtype,
        t,
        flops=2.0 * m * n * k,
        bytes_=(m * k + k * n + m * n) * bytes_per_element(dtype),
        m=m,
        n=n,
        k=k,
    )


def cases(ctx: Context) -> list[Case]:
    return [
        Case(f"gemm {m}x{n}x{k} {dt}", lambda m=m, n=n, k=k, dt=dt: [measure(ctx, m, n, k, dt)])
        for m, n, k, dt in grid(ctx.cuda, ctx.quick)
    ]
