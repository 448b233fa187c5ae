"""Collectives through ``torch.distributed``: NCCL across the GPUs present (when there are at
least two), gloo across several CPU processes otherwise.

Each size is timed on every rank as: barrier, synchronise, the collective, synchronise. The
barrier aligns the repeats across ranks, so repeat i's time is the maximum over ranks of their
i-th sample (a collective is as slow as its slowest member); median and percentiles all come
from those per-repeat maxima, so they describe one sample set (p10 ≤ median ≤ p90).
Inputs are random (a pool of two per size, alternated). Bus bandwidth follows
nccl-tests: all-reduce moves 2(n−1)/n of the buffer per rank, all-gather and all-to-all
(n−1)/n; ``bytes`` in the row is the buffer (the all-gather's output).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moesim.calibrate.context import Case, Context, Row
from moesim.calibrate.records import row
from moesim.calibrate.timing import summarize

OPS = ("all_reduce", "all_gather", "all_to_all")


def sizes_bytes(cuda: bool, quick: bool) -> list[int]:
    if cuda:
        kib = [64, 4096, 262144] if quick else [8, 64, 512, 4096, 32768, 262144, 1048576]
    else:
        kib = [4, 1024] if quick else [4, 64, 1024, 4096, 16384]
    return [k * 1024 for k in kib]


def world_size(ctx: Context) -> int:
    if ctx.cuda:
        return ctx.device.count
    return max(2, min(4, os.cpu_count() or 2))


def _worker(rank: int, world: int, backend: str, init_file: str, sizes, repeats, out_path):
    import torch
    import torch.distributed as dist

    cuda = backend == "nccl"
    if cuda:
        torch.cuda.set_device(rank)
    dev = f"cuda:{rank}" if cuda else "cpu"
    torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    g = torch.Generator(device=dev).manual_seed(rank)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    results = []
    for op in OPS:
        for n_bytes in sizes:
            n = max(world, n_bytes // 4 // world * world)  # divisible by the world size
            pool = [torch.rand(n, device=dev, generator=g) + 0.5 for _ in range(2)]
            out = torch.empty(n * world if op == "all_gather" else n, device=dev)

            def call(x, op=op, out=out):
                if op == "all_reduce":
                    dist.all_reduce(x)
                elif op == "all_gather":
                    dist.all_gather_into_tensor(out, x)
                else:
                    dist.all_to_all_single(out, x)

            for i in range(2):
                call(pool[i % 2])
            samples = []
            for i in range(repeats):
                dist.barrier()
                sync()
                t0 = time.perf_counter()
                call(pool[i % 2])
                sync()
                samples.append(time.perf_counter() - t0)
            slowest = torch.tensor(samples, dtype=torch.float64, device=dev)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            buffer = out.numel() * 4 if op == "all_gather" else n * 4
            if rank == 0:
                s = summarize(slowest.tolist())
                results.append(
                    {
                        "op": op,
                        "bytes": buffer,
                        "median_s": s.median_s,
                        "p10_s": s.p10_s,
                        "p90_s": s.p90_s,
                        "repeats": repeats,
                    }
                )
    if rank == 0:
        Path(out_path).write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def measure_all(ctx: Context) -> list[Row]:
    """All ops and sizes in one launch of ``world_size`` worker processes (fresh interpreters
    started with ``python -m``, so nothing depends on how the caller's main module imports)."""
    from moesim.calibrate.timing import Timing

    world = world_size(ctx)
    backend = "nccl" if ctx.cuda else "gloo"
    repeats = 10 if ctx.quick else 30
    sizes = ",".join(str(b) for b in sizes_bytes(ctx.cuda, ctx.quick))
    with tempfile.TemporaryDirectory(prefix="moesim-coll-") as tmp:
        init_file, out_path = str(Path(tmp) / "init"), str(Path(tmp) / "out.json")
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    __name__,
                    str(r),
                    str(world),
                    backend,
                    init_file,
                    sizes,
                    str(repeats),
                    out_path,
                ],
                stderr=subprocess.PIPE,
                text=True,
            )
            for r in range(world)
        ]
        errors = []
        for r, p in enumerate(procs):
            _, err = p.communicate(timeout=600)
            if p.returncode:
                errors.append(f"rank {r} exited {p.returncode}: {err[-2000:]}")
        if errors:
            raise RuntimeError("collective benchmark failed: " + " | ".join(errors))
        results = json.loads(Path(out_path).read_text())
    return [
        row(
            ctx.device.profile_id,
            r["op"],
            "collective",
            "fp32",
            Timing(r["median_s"], r["p10_s"], r["p90_s"], r["repeats"]),
            bytes_=r["bytes"],
            note=f"backend={backend}; per repeat, the slowest rank",
            world_size=world,
        )
        for r in results
    ]


def cases(ctx: Context) -> list[Case]:
    if ctx.cuda and ctx.device.count < 2:
        return []  # one GPU: no NCCL peer to measure
    return [Case(f"collectives ({world_size(ctx)} ranks)", lambda: measure_all(ctx))]


if __name__ == "__main__":
    rank_, world_, backend_, init_, sizes_, repeats_, out_ = sys.argv[1:8]
    _worker(
        int(rank_),
        int(world_),
        backend_,
        init_,
        [int(b) for b in sizes_.split(",")],
        int(repeats_),
        out_,
    )
