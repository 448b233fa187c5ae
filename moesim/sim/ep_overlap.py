"""Megatron-Core's EP communication overlap outside DualPipe
(``parallel.overlap_moe_expert_parallel_comm``).

Megatron-Core (megatron/core/model_parallel_config.py): "Overlap EP A2A communications with
independent computations of different micro-batches in 1f1b phase of pipelining or
non-pipelining schedule". In the steady state of (interleaved) 1F1B a rank runs a forward
chunk and then a backward chunk of another microbatch; the combined schedule runs the two
together, so that one's dispatch and combine run under the other's attention, experts and
shared experts. Here the pair runs as two processes on the rank's views (``moesim.sim.dualpipe``
``pair_views``): one compute stream for both (an overlapped pair is never faster than its
compute), one ``ep`` queue for their all-to-alls, and compute that starts while an all-to-all
of the pair is in flight slowed by the dispatcher's SMs. Warm-up and cool-down chunks run
alone, as in Megatron.

Without a pipeline (pp = 1) the 1F1B order runs each microbatch's forward right before its
own backward, which cannot overlap it; Megatron's non-pipelined overlap pairs the forward of
microbatch i+1 with the backward of microbatch i, which ``overlap_order`` lays out.

Not modelled: the memory of the pairing (at pp = 1 two microbatches' activations are alive at
once; ``analytic.memory`` counts the schedule without it), and Megatron's finer split of each
layer into sub-modules scheduled against the other chunk's (here each op of either chunk takes
the compute stream when it is ready, in issue order).
"""

from __future__ import annotations

from moesim.sim.schedules import Task


def overlap_order(tasks: list[Task]) -> list[Task]:
    """A rank's tasks with each backward placed after the next forward, when every forward is
    directly followed by its own backward (no pipeline): F0, F1, B0, F2, B1, …, B(m−1).
    Other orders already alternate different microbatches and are returned as they are."""
    fwd = [t for t in tasks if t.kind == "F"]
    bwd = [t for t in tasks if t.kind == "B"]
    own = len(fwd) == len(bwd) and all(
        tasks[2 * i] == f and tasks[2 * i + 1] == b and _same(f, b)
        for i, (f, b) in enumerate(zip(fwd, bwd, strict=True))
    )
    if not own or len(fwd) < 2:
        return tasks
    out = [fwd[0]]
    for i in range(1, len(fwd)):
        out += [fwd[i], bwd[i - 1]]
    out.append(bwd[-1])
    return out


def overlaps(task: Task, nxt: Task) -> bool:
    """A forward and the backward after it run together when they belong to different
    (microbatch, chunk)s: a backward needs its own forward finished."""
    return task.kind == "F" and nxt.kind == "B" and not _same(task, nxt)


def _same(a: Task, b: Task) -> bool:
    return a.microbatch == b.microbatch and a.chunk == b.chunk
