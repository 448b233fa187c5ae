"""Pipeline schedules: the order in which each pipeline rank runs forward and backward passes.

A task is (kind, microbatch, chunk): kind "F" or "B", chunk the virtual stage index on that
rank (0 without interleaving). The simulator runs each rank's list in order, each task waiting
for its input from the neighbouring stage, so bubbles come out of the dependencies.

- GPipe (Huang et al. 2019): all forwards, then all backwards.
- 1F1B (PipeDream-Flush, Narayanan et al. 2021): rank r warms up with pp−r−1 forwards, then
  alternates one forward and one backward, then drains the backwards.
- Interleaved 1F1B (Narayanan et al. 2021 §2.2; Megatron-LM's
  ``forward_backward_pipelining_with_interleaving``): v chunks per rank, microbatches in groups
  of pp, warm-up of (pp−r−1)·2 + (v−1)·pp forwards.
- DualPipe (DeepSeek-V3 §3.2.1): bidirectional, with overlapped forward/backward pairs; its
  order and layout live in ``moesim.sim.dualpipe``. Where its layout does not apply (odd pp,
  fewer than 2·pp microbatches) the 1F1B order below runs with each steady-state forward and
  backward pair overlapped.
"""

from __future__ import annotations

from typing import NamedTuple


class Task(NamedTuple):
    kind: str  # "F" or "B"
    microbatch: int
    chunk: int


def gpipe(pp: int, m: int, rank: int) -> list[Task]:
    return [Task("F", i, 0) for i in range(m)] + [Task("B", i, 0) for i in range(m)]


def one_f_one_b(pp: int, m: int, rank: int) -> list[Task]:
    warmup = min(pp - rank - 1, m)
    tasks = [Task("F", i, 0) for i in range(warmup)]
    f, b = warmup, 0
    while f < m:
        tasks.append(Task("F", f, 0))
        tasks.append(Task("B", b, 0))
        f += 1
        b += 1
    tasks += [Task("B", i, 0) for i in range(b, m)]
    return tasks


def interleaved_1f1b(pp: int, m: int, rank: int, v: int) -> list[Task]:
    """Megatron's order; needs m to be a multiple of pp (checked)."""
    if m % pp:
        raise ValueError(
            f"interleaved 1F1B needs microbatches ({m}) to be a multiple of pp ({pp}): "
            "change global_batch or microbatch_size"
        )
    total = m * v

    def fwd(k: int) -> Task:
        chunk = (k // pp) % v
        mb = (k // (pp * v)) * pp + k % pp
        return Task("F", mb, chunk)

    def bwd(k: int) -> Task:
        chunk = v - 1 - (k // pp) % v
        mb = (k // (pp * v)) * pp + k % pp
        return Task("B", mb, chunk)

    warmup = min((pp - rank - 1) * 2 + (v - 1) * pp, total)
    tasks = [fwd(k) for k in range(warmup)]
    for i in range(total - warmup):
        tasks.append(fwd(warmup + i))
        tasks.append(bwd(i))
    tasks += [bwd(k) for k in range(total - warmup, total)]
    return tasks


def schedule(name: str, pp: int, m: int, rank: int, virtual_stages: int = 1) -> list[Task]:
    if name == "gpipe":
        return gpipe(pp, m, rank)
    if name in ("1f1b", "dualpipe"):
        return one_f_one_b(pp, m, rank)
    if name == "interleaved_1f1b":
        return interleaved_1f1b(pp, m, rank, virtual_stages)
    raise ValueError(f"unknown pipeline schedule {name!r}")


def bubble_fraction_1f1b(pp: int, m: int) -> float:
    """(p−1)/(m+p−1): the idle share of a 1F1B or GPipe step with equal stages and free
    communication (Narayanan et al. 2021, §2.2.1)."""
    return (pp - 1) / (m + pp - 1)
