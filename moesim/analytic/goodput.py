"""Goodput of a long training run that fails, checkpoints and restarts (``reliability``).

Legend: ``T`` useful training seconds (the failure-free run: total tokens / tokens per second),
``M`` the job's mean time between failures in seconds, ``tau`` the training seconds between two
checkpoints, ``delta`` the seconds one checkpoint stalls training, ``R`` the restart seconds,
``seg = tau + delta`` one segment (train, then write), ``n`` the expected interruptions.

The model (first order, Young 1974, "A first order approximation to the optimum checkpoint
interval", CACM 17(9); Daly 2006, "A higher order estimate of the optimum checkpoint interval
for restart dumps", FGCS 22(3), §2):

- Failures of the GPUs are independent and Poisson: any GPU's failure interrupts the
  synchronous job, so the job fails at N times one GPU's rate, ``M = gpu_mtbf / N``. Failures
  strike while the job runs (training, writing, redoing lost work), not while it restarts.
- A failure loses the work since the last completed checkpoint: it strikes anywhere in a
  segment alike, so half a segment (``seg/2``) on average; then ``R`` to restart.
- Checkpoints are written synchronously: training stalls ``delta`` per ``tau`` trained.

Running time U = T·seg/tau + n·seg/2 with n = U/M, so U = T·(seg/tau) / (1 − seg/(2M)), and
the wall time W = U + n·R = U·(1 + R/M). Goodput (useful fraction of the wall time, the same for
GPU-hours since every GPU waits out every interruption) is

    goodput = T / W = (tau / seg) · (1 − seg / (2M)) / (1 + R/M),

and W splits into useful T, checkpoint writes T·delta/tau, lost work n·seg/2 and restarts n·R
(the fractions the result reports sum to 1). A segment of 2M or more never completes: goodput 0.

The interval that maximises it solves d/dseg [(1 − delta/seg)(1 − seg/(2M))] = 0: seg² = 2·delta·M,

    tau_opt = sqrt(2·delta·M) − delta    (independent of R),

which ``checkpoint_interval_s: auto`` uses (``optimal_interval_s``). It is Young's
sqrt(2·delta·M) less the write, and the first two terms of Daly's higher-order optimum (his
eq. 37, as LLNL's SCR library computes it in scr_ckpt_interval.py):

    tau_daly = sqrt(2·delta·M) · (1 + sqrt(delta/(2M))/3 + delta/(18M)) − delta   (delta < 2M)

whose further terms come from Daly's complete (exponential) model; they add about delta/3,
a fraction (1/3)·sqrt(delta/(2M)) of the interval (1% at delta = 2e-3·M), where goodput is
flat. The result reports Young's and Daly's intervals beside the one used. Daly's paper
checks eq. 37 against simulation for delta = 5 min, R = 10 min: tau_opt = 117 min at M = 24 h,
57 min at M = 6 h, 9.1 min at M = 15 min (its Figs. 3-5; tests/analytic check them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moesim.analytic.lora import lora_counts
from moesim.analytic.params import count_params
from moesim.specs import Scenario
from moesim.specs.faults import ReliabilitySpec


def job_mtbf_s(gpu_mtbf_hours: float, gpus: int) -> float:
    """The job's MTBF: one GPU's over the GPUs (independent Poisson failures add their rates)."""
    return gpu_mtbf_hours * 3600.0 / gpus


def young_interval_s(write_s: float, mtbf_s: float) -> float:
    """Young (1974): sqrt(2·delta·M)."""
    return math.sqrt(2.0 * write_s * mtbf_s)


def daly_interval_s(write_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimum (eq. 37; LLNL SCR's scr_ckpt_interval.py)."""
    if write_s >= 2.0 * mtbf_s:
        return mtbf_s
    f = write_s / (2.0 * mtbf_s)
    return math.sqrt(2.0 * write_s * mtbf_s) * (1.0 + math.sqrt(f) / 3.0 + f / 9.0) - write_s


def optimal_interval_s(write_s: float, mtbf_s: float) -> float:
    """The interval that maximises this model's goodput: sqrt(2·delta·M) − delta (M when the
    write alone outlasts 2M: no interval completes then)."""
    if write_s >= 2.0 * mtbf_s:
        return mtbf_s
    return math.sqrt(2.0 * write_s * mtbf_s) - write_s


@dataclass(frozen=True)
class Goodput:
    """Where the wall time of a long run goes, per second of useful training."""

    job_mtbf_s: float
    interval_s: float
    write_s: float
    restart_s: float

    @property
    def segment_s(self) -> float:
        return self.interval_s + self.write_s

    @property
    def completes(self) -> bool:
        """False when a segment is 2·M or longer: on average a failure strikes before it ends."""
        return self.segment_s < 2.0 * self.job_mtbf_s

    def running_per_useful(self) -> float:
        """U / T: running seconds (training, writing, redoing) per useful second."""
        seg, m = self.segment_s, self.job_mtbf_s
        return (seg / self.interval_s) / (1.0 - seg / (2.0 * m))

    @property
    def goodput(self) -> float:
        """T / W, the useful fraction of the wall time (0 when the run never completes)."""
        if not self.completes:
            return 0.0
        return 1.0 / (self.running_per_useful() * (1.0 + self.restart_s / self.job_mtbf_s))

    def interruptions_per_useful_s(self) -> float:
        """n / T: expected failures per second of useful training."""
        return self.running_per_useful() / self.job_mtbf_s

    def fractions(self) -> dict[str, float]:
        """The wall time's parts: useful, checkpoint (writes), lost_work (redone), restart;
        they sum to 1."""
        if not self.completes:
            return {"useful": 0.0, "checkpoint": 0.0, "lost_work": 0.0, "restart": 1.0}
        g = self.goodput
        n = self.interruptions_per_useful_s()
        return {
            "useful": g,
            "checkpoint": g * self.write_s / self.interval_s,
            "lost_work": g * n * self.segment_s / 2.0,
            "restart": g * n * self.restart_s,
        }


def checkpoint_bytes(s: Scenario) -> float:
    """One checkpoint: every trained parameter's weights and optimizer states, once (a
    distributed checkpoint writes each shard from one rank): parameters × (weight bytes +
    optimizer bytes per parameter, 2 + 12 for bf16 with Adam and fp32 master weights). With
    LoRA only the adapters train, and only they are saved (the frozen base is on disk)."""
    per_param = s.precision.param_bytes + s.precision.optimizer_bytes_per_param
    lora = getattr(s.workload, "lora", None)
    trained = lora_counts(s.model, lora).total if lora is not None else count_params(s.model).total
    return float(trained) * per_param


def checkpoint_write_s(s: Scenario, r: ReliabilitySpec) -> float:
    """The given write time, else the checkpoint's bytes over the storage's write bandwidth."""
    if r.checkpoint_write_s is not None:
        return r.checkpoint_write_s
    assert r.checkpoint_write_GBps is not None  # the spec requires one of the two
    return checkpoint_bytes(s) / (r.checkpoint_write_GBps * 1e9)


def goodput_of(s: Scenario) -> Goodput | None:
    """The scenario's goodput model (None without ``reliability``)."""
    r = s.reliability
    if r is None:
        return None
    m = job_mtbf_s(r.gpu_mtbf_hours, s.gpus)
    write = checkpoint_write_s(s, r)
    interval = (
        optimal_interval_s(write, m)
        if r.checkpoint_interval_s == "auto"
        else r.checkpoint_interval_s
    )
    return Goodput(m, interval, write, r.restart_s)


def reliability_fields(
    s: Scenario, tokens_per_s: float | None, total_tokens: float | None
) -> dict[str, object]:
    """The result's goodput fields for a training step of ``tokens_per_s`` (empty without
    ``reliability``): ``goodput``, ``effective_tokens_per_s`` and, with ``total_tokens``,
    ``effective_gpu_hours`` and ``effective_cost_usd``, plus the ``reliability`` breakdown."""
    g = goodput_of(s)
    if g is None or not tokens_per_s:
        return {}
    r = s.reliability
    assert r is not None
    detail: dict[str, object] = {
        "job_mtbf_hours": g.job_mtbf_s / 3600.0,
        "checkpoint_interval_s": g.interval_s,
        "checkpoint_interval_chosen": r.checkpoint_interval_s == "auto",
        "young_interval_s": young_interval_s(g.write_s, g.job_mtbf_s),
        "daly_interval_s": daly_interval_s(g.write_s, g.job_mtbf_s),
        "checkpoint_write_s": g.write_s,
        "checkpoint_GB": checkpoint_bytes(s) / 1e9,
        "restart_s": g.restart_s,
        "completes": g.completes,
        "wall_fraction": g.fractions(),
    }
    out: dict[str, object] = {
        "goodput": g.goodput,
        "effective_tokens_per_s": tokens_per_s * g.goodput,
        "reliability": detail,
    }
    if total_tokens and g.completes:
        useful_s = total_tokens / tokens_per_s
        wall_s = useful_s / g.goodput
        n = g.interruptions_per_useful_s() * useful_s
        detail |= {
            "run_days": wall_s / 86_400.0,
            "interruptions": n,
            "lost_work_per_interruption_s": g.segment_s / 2.0 + g.restart_s,
        }
        out["effective_gpu_hours"] = wall_s * s.gpus / 3600.0
        out["effective_cost_usd"] = out["effective_gpu_hours"] * s.cost.usd_per_gpu_hour
    return out
