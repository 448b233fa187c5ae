"""Copies: device memory to device memory (``d2d``, op class ``copy``: the achieved memory
bandwidth, read + write), and on CUDA host to device and back through pinned host memory
(``h2d``, ``d2h``, op class ``host_copy``: the PCIe link, one direction each). The classes
differ because the fit turns them into different figures: ``copy`` into the HBM efficiency
curve, ``host_copy`` into the host-link fraction ``links.pcie``. On the CPU ``d2d`` is a memcpy
in host memory and there is no host link to measure.
"""

from __future__ import annotations

from moesim.calibrate.context import Case, Context, Row
from moesim.calibrate.records import row


def sizes_bytes(cuda: bool, quick: bool) -> list[int]:
    if cuda:
        mib = [1, 16, 256] if quick else [1, 4, 16, 64, 256, 1024]
    else:
        mib = [1, 16, 64] if quick else [0.0625, 0.25, 1, 4, 16, 64, 256]
    return [int(m * 2**20) for m in mib]


def measure(ctx: Context, op: str, n_bytes: int) -> Row:
    import torch

    dev, g = ctx.torch_device, ctx.generator()
    n = n_bytes // 4  # fp32 elements

    def rand(device, pin=False):
        x = torch.rand(n, device=dev, generator=g) + 0.5  # never zeros
        x = x.to(device)
        return x.pin_memory() if pin else x

    if op == "d2d":

        def make():
            return rand(dev), torch.empty(n, device=dev)

        traffic = 2 * n * 4  # read + write
    elif op == "h2d":

        def make():
            return rand("cpu", pin=True), torch.empty(n, device=dev)

        traffic = n * 4
    elif op == "d2h":

        def make():
            return rand(dev), torch.empty(n, pin_memory=True)

        traffic = n * 4
    else:
        raise ValueError(f"unknown copy {op!r}")

    def fn(inp):
        inp[1].copy_(inp[0], non_blocking=True)

    timing = ctx.timer.time(fn, make)
    return row(ctx.device.profile_id, op, op_class(op), "fp32", timing, bytes_=traffic)


def op_class(op: str) -> str:
    """``copy`` for device memory (HBM), ``host_copy`` for the host link (PCIe)."""
    return "copy" if op == "d2d" else "host_copy"


def cases(ctx: Context) -> list[Case]:
    ops = ("d2d", "h2d", "d2h") if ctx.cuda else ("d2d",)
    return [
        Case(f"copy {op} {b / 2**20:g} MiB", lambda op=op, b=b: [measure(ctx, op, b)])
        for op in ops
        for b in sizes_bytes(ctx.cuda, ctx.quick)
    ]
