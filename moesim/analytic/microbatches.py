"""How a training step is cut into microbatches and which schedule runs them: sequences per
step, microbatches per pipeline, the schedule the simulator runs (DualPipe where its layout
applies) and the microbatches whose activations a stage holds at its peak."""

from __future__ import annotations

from moesim.analytic.layout import dualpipe_applies
from moesim.specs import DPOWorkload, GRPOWorkload, ParallelSpec, Scenario


def effective_schedule(p: ParallelSpec, n_microbatches: int) -> str:
    """The schedule the simulator runs: DualPipe where its layout applies, else 1F1B."""
    if p.schedule == "dualpipe" and not dualpipe_applies(p.pp, n_microbatches, p.virtual_stages):
        return "1f1b"
    return p.schedule


def runs_as_scheduled(p: ParallelSpec, total: int, m: int) -> bool:
    """Whether ``m`` microbatches (a cap of the step's ``total``) run under the schedule the
    whole step runs: DualPipe needs an even m ≥ 2·pp, interleaved 1F1B a multiple of pp."""
    schedule = effective_schedule(p, total)
    if schedule == "dualpipe":
        return dualpipe_applies(p.pp, m, p.virtual_stages)
    if schedule == "interleaved_1f1b":
        return m % p.pp == 0
    return m >= 1


def capped_microbatches(p: ParallelSpec, total: int, cap: int, up: bool = True) -> int | None:
    """The count nearest ``cap`` (the smallest above it, or with ``up`` False the largest
    below it) that runs as the whole step's schedule; None when there is none."""
    candidates = range(min(cap, total), total + 1) if up else range(min(cap, total), 0, -1)
    return next((m for m in candidates if runs_as_scheduled(p, total, m)), None)


def microbatches_in_flight(p: ParallelSpec, n_microbatches: int) -> float:
    """Microbatches whose activations the first pipeline stage holds at its peak."""
    pp, m = p.pp, n_microbatches
    schedule = effective_schedule(p, m)
    if pp == 1:
        return 1.0
    if schedule == "gpipe":
        return float(m)
    if schedule == "interleaved_1f1b":
        return min(float(m), pp + (pp - 1) / p.virtual_stages)
    if schedule == "dualpipe":
        return float(pp + 1)
    return float(min(pp, m))


def sequences_per_step(s: Scenario) -> int:
    """Sequences the training step processes (pairs count twice, GRPO groups in full)."""
    w = s.workload
    if isinstance(w, GRPOWorkload):
        return w.global_batch * w.group_size
    if isinstance(w, DPOWorkload):
        return 2 * w.global_batch
    return w.global_batch


def n_microbatches(s: Scenario) -> int:
    """Microbatches per pipeline per step (DPO microbatches hold chosen and rejected)."""
    w, p = s.workload, s.parallel
    seqs = w.global_batch * (w.group_size if isinstance(w, GRPOWorkload) else 1)
    return max(1, seqs // (p.dp_size * p.microbatch_size))
