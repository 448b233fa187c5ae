"""Serving with pp > 1: one engine step of the scheduler is a *round* of the pipeline, pp
micro-batches in flight, and this module splits a round's work into its micro-batches and
times the round.

vLLM V1 keeps ``max_concurrent_batches`` = pp scheduled batches in flight
(vllm/v1/engine/core.py: ``batch_queue_size = vllm_config.max_concurrent_batches``; "Batch queue
for scheduled batches ... required by pipeline parallelism to eliminate pipeline bubbles";
``step_with_batch_queue`` schedules a new batch while the queue is not full). Each batch is one
``Scheduler.schedule()`` call with its own token budget (``max_num_batched_tokens``), so a
round carries up to pp × that budget. A request whose tokens are in flight is not scheduled
again until its output returns, except a prompt's next chunk (vllm/v1/core/sched/scheduler.py:
"No new tokens to schedule. This may happen when PP>1 and we have already scheduled all prompt
tokens but they are not finished yet"): a running request's decode joins one micro-batch per
round, and a long prompt's chunks ride consecutive micro-batches.

The split (``split_round``). Under vllm_v1 each request keeps the micro-batch it rides
(its *cohort slot*, ``Cohorts``): it joins the batch being scheduled when it is first admitted
(``earliest_batch``: the batch whose ``schedule()`` call first follows its
arrival, or the next with token budget left), and, once it has run a step, it is in flight
through every stage and can only be scheduled again by the batch whose output brings it back,
the same batch of the next round. Upstream vLLM V1 does this (vllm PR #13064, as
RBLN-SW/vllm-rbln PR #243 describes it: "a request is implicitly assigned to a group based on
which batch happens to be scheduled at the time the request is first admitted ... requests that
were initially batched together naturally continue to remain in the same group across
subsequent iterations ... group sizes can become uneven. In the worst case ... all requests end
up in a single group"; vllm PR #19873: "front-loaded scheduling where most requests are packed
into the first few microbatches"; RFC #50853: "A burst can fill the global request slots in one
batch and leave later PP batches empty"; the cap of ⌈max_num_seqs / pp⌉ decodes per batch
proposed in vllm PR #57433 is not merged). So a round's micro-batch i carries exactly the
decodes and verifies (a request's token and its drafts, never cut) of the requests in slot i,
and the prompt chunks that start there, a chunk cut where a batch is full (its next tokens in
the next batch, as vLLM schedules a long prompt's next chunk). Without cohorts (the
prefill_first scheduler, a typical decode round) decodes and verifies spread evenly over the pp
micro-batches and the chunks fill them in order. The even split minimises the longest
traversal, but it is not always the fastest round: each micro-batch reads its stage's weights
once (the last stage's LM head too, and MoE experts, whose reads grow slower than the batch),
so where the busiest stage bounds the round, fewer and fuller micro-batches can take less
(llama-3-70b tp 2 pp 2, two decodes: 26.6 ms in one cohort, 26.9 ms split evenly). A round is
never shorter than the traversal of its largest cohort, so where the even round is bound by
its ⌈B/pp⌉ traversal, cohorts only slow it down.

The round's time (``round_s``), the steady state of identical rounds: every micro-batch
must come back before its requests run again (each one's traversal: its stages one after
another, sends included) and every stage must run every micro-batch of the round (the
slowest stage's busy time summed over the micro-batches):
``max(max_i traversal_i, max_s Σ_i busy_{s,i})``. With one micro-batch (a lone request, pp = 1)
that is its traversal, exactly; with pp equal micro-batches and equal stages it is one
traversal for pp batches' work. Every output of a round leaves at its end, so a prompt's
first token pays at least the traversal of its last chunk. Not modelled: the launch offset of
later micro-batches (a lone prompt cut over two batches gets its token up to one stage time
early), and stages waiting on a slower neighbour within a round.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class MicroBatch:
    """One scheduled batch of a round: decode tokens (their contexts summing to
    ``context_sum`` keys), prompt chunks (offset, tokens), ``finished`` of which end their
    prompt (the LM head runs for them), and speculative ``verifies`` (offset, q: a request's
    token and q − 1 drafts). ``speculative``: the decodes are a speculative engine's decode
    round, each verifying all its drafts (``EngineStep.decode_s``, tokens per step expected),
    not plain one-token decodes."""

    decodes: int = 0
    context_sum: float = 0.0
    chunks: tuple[tuple[int, int], ...] = ()
    finished: int = 0
    verifies: tuple[tuple[int, int], ...] = ()
    speculative: bool = False

    @property
    def tokens(self) -> int:
        """Tokens scheduled (a speculative decode counted once, as a plain one)."""
        return self.decodes + sum(c for _, c in self.chunks) + sum(q for _, q in self.verifies)


@dataclass(frozen=True)
class Cohorts:
    """Where a vllm_v1 round's work rides (see the module docstring): ``decodes[i]`` decodes,
    their contexts summing to ``context_sum[i]`` keys, in micro-batch i (i < pp), and the slot of
    each verify and the batch each prompt chunk starts in, in the order of the round's
    ``verifies`` and ``chunks``."""

    decodes: tuple[int, ...]
    context_sum: tuple[float, ...]
    verifies: tuple[int, ...] = ()
    chunks: tuple[int, ...] = ()


def split_round(
    decodes: int,
    context_sum: float,
    chunks: list[tuple[int, int]],
    finished: int,
    pp: int,
    batch_tokens: int,
    verifies: list[tuple[int, int]] | tuple[tuple[int, int], ...] = (),
    speculative: bool = False,
    cohorts: Cohorts | None = None,
) -> list[MicroBatch]:
    """The pp micro-batches of a round (empty ones left out; at least one). The first
    ``finished`` chunks are those ending their prompt (the scheduler's convention for the
    count); a cut chunk ends in its last piece. ``batch_tokens``: one batch's budget (raised to
    ⌈tokens / pp⌉ when the round holds more, so every token has a batch). ``cohorts``: the
    micro-batch of each decode, verify and chunk (vllm_v1); without, decodes and verifies
    (whole, in order) go evenly by count and every chunk may start in the first batch.
    ``speculative`` marks every batch's decodes as such."""
    total = decodes + sum(c for _, c in chunks) + sum(q for _, q in verifies)
    cap = max(batch_tokens, math.ceil(total / pp))
    if cohorts is None:
        n_dec = [decodes // pp + (1 if i < decodes % pp else 0) for i in range(pp)]
        ctx = [context_sum * n / decodes if decodes else 0.0 for n in n_dec]
        n_ver = [len(verifies) // pp + (1 if i < len(verifies) % pp else 0) for i in range(pp)]
        ver_slot = [i for i in range(pp) for _ in range(n_ver[i])]
        starts = [0] * len(chunks)
    else:
        n_dec, ctx = list(cohorts.decodes), list(cohorts.context_sum)
        ver_slot, starts = list(cohorts.verifies), list(cohorts.chunks)
        if len(n_dec) != pp or sum(n_dec) != decodes or len(ver_slot) != len(verifies):
            raise ValueError(f"cohorts {cohorts} do not match the round's work (pp {pp})")
    ver = [tuple(v for v, at in zip(verifies, ver_slot, strict=True) if at == k) for k in range(pp)]
    room = [cap - d - sum(q for _, q in v) for d, v in zip(n_dec, ver, strict=True)]
    pieces: list[list[tuple[int, int]]] = [[] for _ in range(pp)]
    ends = [0] * pp
    for j, ((offset, length), i) in enumerate(zip(chunks, starts, strict=True)):
        while length > 0:
            while room[i] <= 0 and i < pp - 1:
                i += 1
            take = length if i == pp - 1 else min(length, room[i])
            pieces[i].append((offset, take))
            room[i] -= take
            offset += take
            length -= take
        ends[i] += j < finished
    out = [
        MicroBatch(n_dec[k], ctx[k], tuple(pieces[k]), ends[k], ver[k], speculative)
        for k in range(pp)
    ]
    return [mb for mb in out if mb.tokens] or [MicroBatch(speculative=speculative)]


def round_s(traversals_s: list[float], stage_busy_s: list[list[float]]) -> float:
    """Seconds of a round whose micro-batches take ``traversals_s`` to cross every stage and
    keep stage s busy ``stage_busy_s[i][s]`` (see the module docstring)."""
    slowest_stage = max(map(sum, zip(*stage_busy_s, strict=True)), default=0.0)
    return max(max(traversals_s, default=0.0), slowest_stage)


# -- where the vllm_v1 scheduler puts a request's tokens in a round -----------------------------
def earliest_batch(arrival_s: float, last: tuple[float, float], freed: deque[int], pp: int) -> int:
    """The batch of the round a waiting request may first join. vLLM calls ``schedule()`` once
    per batch, the pp calls of a round spread over it (a stage apart), and a request is
    admitted by the first call after it arrives: one that arrived at fraction f of the last
    round (``last``: its start and end) joins batch ⌈f·pp⌉ mod pp (the round model runs it a
    round later, in that batch). One that waited longer (for a seat, a KV block, or preempted)
    is admitted when a finished request's batch comes back and frees its seat: the cohorts
    ``freed`` by the last round, in turn; otherwise, and on an idle engine, batch 0."""
    start, end = last
    if start < arrival_s < end:
        return math.ceil((arrival_s - start) / (end - start) * pp) % pp
    if arrival_s <= start and freed:
        return freed.popleft()
    return 0


def place(room: list[int], start: int, want: int, one_batch: bool) -> tuple[int, int]:
    """Where a request's next ``want`` tokens can go in a round whose batches have ``room``
    tokens of budget left: (first batch, tokens). A decode (``one_batch``) only in its cohort's
    batch ``start``; prompt tokens from the first batch at or after ``start`` with room on,
    cut where the round is full (a long prompt's next chunk rides the next batch)."""
    if one_batch:
        return start, min(want, room[start])
    first = next((b for b in range(start, len(room)) if room[b] > 0), start)
    return first, min(want, sum(room[first:]))


def take(room: list[int], first: int, tokens: int) -> int:
    """Spend ``tokens`` of ``room`` from batch ``first`` on (as ``place`` allowed); returns
    the batch of the last of them, the one whose output brings the request back: its cohort."""
    b = first
    while True:
        t = min(tokens, room[b])
        room[b] -= t
        tokens -= t
        if not tokens:
            return b
        b += 1
