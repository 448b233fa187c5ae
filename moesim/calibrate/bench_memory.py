"""Memory-bound ops as bandwidth, and the launch overhead of the smallest kernels.

Shape legend: T tokens, D d_model, V softmax width, E experts, K top-k, N = T·K rows.
Bytes are logical traffic (each input read once, each output written once):

- ``rmsnorm`` (``moesim.nn.norm.RMSNorm``): x read, y written: 2·T·D elements (+ D weights);
- ``softmax`` over the last dim of (T, V): 2·T·V elements;
- ``router`` (``moesim.nn.router.Router``, fp32 math): x read, logits and probs written and
  read, the top-k written: T·D elements + 4 bytes·(2·T·E + E·D) + 16 bytes·T·K;
- ``permutation``: the MoE gather of N rows by a random index and the weighted scatter-add
  back (``index_add``): 4·N·D + T·D elements + 8 bytes·N of indices.

``launch`` ops are tiny kernels (a one-element add, a 1×1 matmul, an 8-element copy) whose
time is the per-kernel overhead the cost model adds to every op.
"""

from __future__ import annotations

from moesim.calibrate.context import Case, Context, Row
from moesim.calibrate.device import bytes_per_element, torch_dtype
from moesim.calibrate.records import row


def token_counts(cuda: bool, quick: bool) -> list[int]:
    if cuda:
        return [256, 2048, 16384] if quick else [64, 256, 1024, 4096, 16384, 65536]
    return [64, 1024] if quick else [16, 64, 256, 1024, 4096, 16384]


def measure(ctx: Context, op: str, t: int) -> Row:
    import torch

    from moesim.nn.norm import RMSNorm
    from moesim.nn.router import Router
    from moesim.specs import MoESpec

    dev, dt = ctx.torch_device, ctx.device.dtype
    tdt, g, b = torch_dtype(dt), ctx.generator(), bytes_per_element(dt)
    d = 4096 if ctx.cuda else 512
    shape: dict = {"tokens": t, "hidden": d}
    if op == "rmsnorm":
        norm = RMSNorm(d).to(dev, tdt)
        n_bytes = (2 * t * d + d) * b

        def make():
            return torch.randn(t, d, device=dev, dtype=tdt, generator=g)

        fn = norm
    elif op == "softmax":
        v = 8192 if ctx.cuda else 1024
        shape = {"tokens": t, "hidden": v}
        n_bytes = 2 * t * v * b

        def make():
            return torch.randn(t, v, device=dev, dtype=tdt, generator=g)

        def fn(x):
            return torch.softmax(x, dim=-1)
    elif op == "router":
        e, k = 64, 8
        shape |= {"experts": e, "top_k": k}
        router = Router(d, MoESpec(n_routed_experts=e, top_k=k, expert_hidden=64)).to(dev)
        n_bytes = t * d * b + 4 * (2 * t * e + e * d) + 16 * t * k

        def make():
            return torch.randn(t, d, device=dev, dtype=tdt, generator=g)

        fn = router
    elif op == "permutation":
        k = 2
        n = t * k
        shape |= {"top_k": k}
        n_bytes = (4 * n * d + t * d) * b + 8 * n

        def make():
            x = torch.randn(t, d, device=dev, dtype=tdt, generator=g)
            idx = torch.randint(0, t, (n,), device=dev, generator=g)
            return x, idx, torch.rand(n, 1, device=dev, dtype=tdt, generator=g) + 0.5

        def fn(inp):
            x, idx, w = inp
            y = x[idx] * w  # gather (the expert GEMM would run here)
            return torch.zeros_like(x).index_add_(0, idx, y)
    else:
        raise ValueError(f"unknown memory-bound op {op!r}")
    timing = ctx.timer.time(torch.no_grad()(fn), make)
    return row(ctx.device.profile_id, op, "memory_bound", dt, timing, bytes_=n_bytes, **shape)


def measure_launch(ctx: Context, op: str) -> Row:
    import torch

    dev, dt = ctx.torch_device, ctx.device.dtype
    tdt, g = torch_dtype(dt), ctx.generator()
    if op == "add":

        def make():
            return torch.rand(1, device=dev, dtype=tdt, generator=g) + 0.5

        def fn(x):
            x.add_(1.0)

        n_bytes = 2 * x_bytes(dt, 1)
    elif op == "mm":

        def make():
            return (torch.rand(1, 1, device=dev, dtype=tdt, generator=g) + 0.5,) * 2

        def fn(inp):
            torch.mm(inp[0], inp[1])

        n_bytes = 3 * x_bytes(dt, 1)
    else:

        def make():
            return (
                torch.rand(8, device=dev, dtype=tdt, generator=g) + 0.5,
                torch.empty(8, device=dev, dtype=tdt),
            )

        def fn(inp):
            inp[1].copy_(inp[0])

        n_bytes = 2 * x_bytes(dt, 8)
    timing = ctx.timer.time(fn, make)
    return row(ctx.device.profile_id, f"launch_{op}", "launch", dt, timing, bytes_=n_bytes)


def x_bytes(dt: str, n: int) -> int:
    return n * bytes_per_element(dt)


def cases(ctx: Context) -> list[Case]:
    out = [
        Case(f"launch {op}", lambda op=op: [measure_launch(ctx, op)])
        for op in ("add", "mm", "copy")
    ]
    for op in ("rmsnorm", "softmax", "router", "permutation"):
        for t in token_counts(ctx.cuda, ctx.quick):
            out.append(Case(f"{op} T{t}", lambda op=op, t=t: [measure(ctx, op, t)]))
    return out
