"""Serving in reports: the verdict of a serving comparison, decode time and throughput against
batch size (MoE against dense), p99 latency against request rate, and the two pools of a
disaggregated deployment (the serving-plan report: ``moesim.report.serving_plan``).

Every curve is a set of simulations of variants of one scenario (``common.variant``), so it
shows what the simulator says the scenario would do at another batch or rate, nothing more.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go

from moesim.report import figures
from moesim.report.common import ms, num, variant
from moesim.report.html import Section
from moesim.sim.run import simulate
from moesim.specs import InferenceWorkload, Result, Scenario

DECODE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RATE_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def is_serving(r: Result) -> bool:
    return r.stage == "inference"


def usd_per_million_tokens(r: Result) -> float | None:
    return getattr(r, "cost_per_million_tokens_usd", None)


# -- the verdict of a serving comparison --------------------------------------------------------
def serving_verdict(scenarios: Sequence[Scenario], results: Sequence[Result]) -> str:
    """Which model serves an output token cheapest, which decodes fastest, which answers first."""
    pairs = [(s, r) for s, r in zip(scenarios, results, strict=True) if r.fits_in_memory]
    if not pairs:
        return "None of these configurations fits in GPU memory."
    costed = [(s, r) for s, r in pairs if usd_per_million_tokens(r) is not None]
    parts = []
    if costed:
        s, r = min(costed, key=lambda t: usd_per_million_tokens(t[1]))
        parts.append(
            f"Cheapest per output token: <b>{html.escape(s.name)}</b> "
            f"(${usd_per_million_tokens(r):,.2f} per million output tokens, "
            f"{num(r.tokens_per_s_per_gpu)} tokens/s per GPU)."
        )
    timed = [(s, r) for s, r in pairs if r.tpot_s_p50 is not None]
    if timed:
        s, r = min(timed, key=lambda t: t[1].tpot_s_p50)
        parts.append(
            f"Fastest decode: <b>{html.escape(s.name)}</b> (p50 time per output token "
            f"{ms(r.tpot_s_p50)})."
        )
    first = [(s, r) for s, r in pairs if r.ttft_s_p99 is not None]
    if first:
        s, r = min(first, key=lambda t: t[1].ttft_s_p99)
        parts.append(
            f"Lowest p99 time to first token: <b>{html.escape(s.name)}</b> ({ms(r.ttft_s_p99)})."
        )
    return " ".join(parts)


def latency_table(scenarios: Sequence[Scenario], results: Sequence[Result]) -> go.Figure:
    header = ["scenario", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "output tokens/s",
              "tokens/s per GPU", "$ per M output tokens", "experts touched/layer"]  # fmt: skip
    rows = [
        [s.name, ms(r.ttft_s_p50), ms(r.ttft_s_p99), ms(r.tpot_s_p50), ms(r.tpot_s_p99),
         num(r.output_tokens_per_s), num(r.tokens_per_s_per_gpu),
         num(usd_per_million_tokens(r), ",.2f"),
         num(getattr(r, "experts_touched_per_layer", None), ".1f")]
        for s, r in zip(scenarios, results, strict=True)
        if is_serving(r)
    ]  # fmt: skip
    return figures.table(header, rows, "Latency, throughput and cost of serving")


# -- decode time and throughput against batch size ---------------------------------------------
@dataclass
class BatchCurve:
    """One scenario's decode at each static batch size (sequences per replica)."""

    name: str
    batches: list[int] = field(default_factory=list)
    tpot_s: list[float | None] = field(default_factory=list)
    tokens_per_s_per_gpu: list[float | None] = field(default_factory=list)
    usd_per_million_tokens: list[float | None] = field(default_factory=list)
    fits: list[bool] = field(default_factory=list)

    def first_unfit_batch(self) -> int | None:
        return next((b for b, ok in zip(self.batches, self.fits, strict=True) if not ok), None)

    def cheapest(self) -> tuple[int, float] | None:
        """(batch, $ per M output tokens) of the cheapest batch that fits."""
        pts = [(c, b) for b, c, ok in zip(self.batches, self.usd_per_million_tokens, self.fits,
                                          strict=True) if ok and c is not None]  # fmt: skip
        if not pts:
            return None
        cost, batch = min(pts)
        return batch, cost


def decode_batch_curve(
    s: Scenario, base_dir: Path | None = None, batches: Sequence[int] = DECODE_BATCHES
) -> BatchCurve:
    """Simulate ``s`` at each static batch size. A batch whose KV cache does not fit in HBM (or,
    under a paged engine, in its pool at once) keeps its point with ``fits`` False (the curves
    leave it out)."""
    curve = BatchCurve(s.name)
    for b in batches:
        sb = variant(s, workload__batch_size=b, workload__arrival_rate_per_s=None)
        if sb is None:
            continue
        r = simulate(sb, base_dir=base_dir)
        curve.batches.append(b)
        curve.tpot_s.append(r.tpot_s_p50)
        curve.tokens_per_s_per_gpu.append(r.tokens_per_s_per_gpu)
        curve.usd_per_million_tokens.append(usd_per_million_tokens(r))
        # a batch the KV pool cannot hold at once is queued or preempted by a paged engine,
        # not decoded together: not a point of the curve
        held = getattr(r, "kv_capacity_sequences", b) >= b
        curve.fits.append(bool(r.fits_in_memory) and held)
    return curve


def _fitting(curve: BatchCurve, values: Sequence[float | None], scale: float = 1.0) -> list:
    return [v * scale if ok and v is not None else None
            for v, ok in zip(values, curve.fits, strict=True)]  # fmt: skip


def decode_batch_figures(curves: Sequence[BatchCurve]) -> list[go.Figure]:
    """Time per output token and output tokens/s per GPU against the decode batch, one line per
    scenario (an MoE against dense models when the report compares them)."""
    tpot = figures.curves(
        {c.name: (c.batches, _fitting(c, c.tpot_s, 1e3)) for c in curves},
        "Decode: time per output token vs batch size",
        "concurrent sequences per replica (log scale)",
        "ms per output token (p50)",
        log_x=True,
    )
    throughput = figures.curves(
        {c.name: (c.batches, _fitting(c, c.tokens_per_s_per_gpu)) for c in curves},
        "Decode: output tokens/s per GPU vs batch size",
        "concurrent sequences per replica (log scale)",
        "output tokens/s per GPU",
        log_x=True,
    )
    return [tpot, throughput]


def decode_batch_summary(curves: Sequence[BatchCurve]) -> str:
    """One sentence per curve: its cheapest batch, and where its KV cache stops fitting."""
    parts = []
    for c in curves:
        best = c.cheapest()
        text = html.escape(c.name)
        if best is not None:
            text += f": cheapest at batch {best[0]} (${best[1]:,.2f} per million output tokens)"
        unfit = c.first_unfit_batch()
        if unfit is not None:
            text += f"; does not fit in memory from batch {unfit}"
        parts.append(text)
    return "; ".join(parts) + "." if parts else ""


def decode_batch_section(
    scenarios: Sequence[Scenario], base_dirs: Sequence[Path | None] | None = None
) -> Section | None:
    """The decode-batch sensitivity of every static-batch serving scenario, or None."""
    dirs = list(base_dirs) if base_dirs is not None else [None] * len(scenarios)
    curves = [
        decode_batch_curve(s, d)
        for s, d in zip(scenarios, dirs, strict=True)
        if isinstance(s.workload, InferenceWorkload) and s.workload.batch_size is not None
    ]
    if not curves:
        return None
    intro = (
        "<p class='note'>Each scenario simulated again at a static batch of 1 to 256 "
        "sequences per replica (same layout, prompt and output lengths). A larger batch reads "
        "the weights once for more tokens: throughput rises until compute or the KV cache "
        "bounds it; an MoE reads more of its experts as the batch grows. Batches whose KV "
        "cache does not fit in HBM are left out.</p>"
        f"<p>{decode_batch_summary(curves)}</p>"
    )
    return Section("Sensitivity: decode batch size", intro, figures=decode_batch_figures(curves))


# -- p99 latency against request rate -----------------------------------------------------------
def load_curve(
    s: Scenario, base_dir: Path | None = None, factors: Sequence[float] = RATE_FACTORS
) -> tuple[list[float], list[Result]]:
    """``s`` (Poisson arrivals) simulated at its request rate times each of ``factors``."""
    w = s.workload
    assert isinstance(w, InferenceWorkload) and w.arrival_rate_per_s is not None
    rates, results = [], []
    for f in factors:
        sv = variant(s, workload__arrival_rate_per_s=w.arrival_rate_per_s * f)
        if sv is not None:
            rates.append(w.arrival_rate_per_s * f)
            results.append(simulate(sv, base_dir=base_dir))
    return rates, results


def load_figures(
    rates: Sequence[float],
    results: Sequence[Result],
    ttft_slo_s: float | None = None,
    tpot_slo_s: float | None = None,
) -> list[go.Figure]:
    """p99 TTFT and p99 TPOT against the offered request rate, with the SLOs as dashed lines."""
    ttft = figures.curve(
        rates,
        {"TTFT p99": [r.ttft_s_p99 for r in results], "TTFT p50": [r.ttft_s_p50 for r in results]},
        "Time to first token vs request rate",
        "requests/s (whole deployment)",
        "seconds",
    )
    tpot = figures.curve(
        rates,
        {
            "TPOT p99": [_times_1e3(r.tpot_s_p99) for r in results],
            "TPOT p50": [_times_1e3(r.tpot_s_p50) for r in results],
        },
        "Time per output token vs request rate",
        "requests/s (whole deployment)",
        "ms",
    )
    for fig, slo in ((ttft, ttft_slo_s), (tpot, _times_1e3(tpot_slo_s))):
        if slo is not None:
            fig.add_hline(y=slo, line_dash="dash", line_color="#D62728", annotation_text="SLO")
    ttft.update_yaxes(type="log")  # a queue that cannot keep up grows TTFT by orders
    return [ttft, tpot]


def _times_1e3(x: float | None) -> float | None:
    return None if x is None else 1e3 * x


# -- prefill/decode disaggregation ---------------------------------------------------------------
def disaggregation_table(r: Result) -> go.Figure | None:
    """The two pools of a disaggregated deployment side by side, and where TTFT goes."""
    d = getattr(r, "disaggregated", None)
    if not d:
        return None
    header = ["pool", "GPUs", "replicas", "layout", "dispatcher", "utilization",
              "capacity (requests/s)", "memory/GPU (GB)"]  # fmt: skip
    rows = []
    for which in ("prefill", "decode"):
        p = d[which]
        lay = p["layout"]
        rows.append(
            [which, str(p["gpus"]), str(p["replicas"]),
             f"tp {lay['tp']} · pp {lay['pp']} · ep {lay['ep']} · dp {lay['dp']}",
             str(p.get("dispatcher") or "—"), f"{p['utilization']:.0%}",
             num(p["capacity_requests_per_s"], ",.1f"), num(p["memory_per_gpu_GB"]["total"], ".1f")]
        )  # fmt: skip
    parts = d.get("ttft_parts_s_mean", {})
    words = ", ".join(f"{k.replace('_', ' ')} {ms(v)}" for k, v in parts.items())
    title = (
        f"Prefill/decode pools (bottleneck: {d['bottleneck']}; KV {d['kv_link']} "
        f"{ms(d['kv_transfer_s'])} per request; mean TTFT = {words})"
    )
    return figures.table(header, rows, title)
