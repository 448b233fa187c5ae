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

The split (``split_round``): the round's decodes, and its speculative verifies (a request's
token and its drafts, never cut), spread evenly over the pp micro-batches (in the steady state
every in-flight batch carries its share of the running requests), the prompt
chunks fill the micro-batches in order up to the per-batch budget, a chunk cut where a batch
is full (its next tokens in the next batch, as vLLM schedules a long prompt's next chunk).

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


def split_round(
    decodes: int,
    context_sum: float,
    chunks: list[tuple[int, int]],
    finished: int,
    pp: int,
    batch_tokens: int,
    verifies: list[tuple[int, int]] | tuple[tuple[int, int], ...] = (),
    speculative: bool = False,
) -> list[MicroBatch]:
    """The pp micro-batches of a round (empty ones left out; at least one). The first
    ``finished`` chunks are those ending their prompt (the scheduler's convention for the
    count); a cut chunk ends in its last piece. ``batch_tokens``: one batch's budget (raised to
    ⌈tokens / pp⌉ when the round holds more, so every token has a batch). ``verifies`` go
    whole, in order, evenly by count; ``speculative`` marks every batch's decodes as such."""
    total = decodes + sum(c for _, c in chunks) + sum(q for _, q in verifies)
    cap = max(batch_tokens, math.ceil(total / pp))
    n_dec = [decodes // pp + (1 if i < decodes % pp else 0) for i in range(pp)]
    n_ver = [len(verifies) // pp + (1 if i < len(verifies) % pp else 0) for i in range(pp)]
    cuts = [sum(n_ver[:i]) for i in range(pp + 1)]
    ver = [tuple(verifies[cuts[i] : cuts[i + 1]]) for i in range(pp)]
    room = [cap - d - sum(q for _, q in v) for d, v in zip(n_dec, ver, strict=True)]
    pieces: list[list[tuple[int, int]]] = [[] for _ in range(pp)]
    ends = [0] * pp
    i = 0
    for j, (offset, length) in enumerate(chunks):
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
        MicroBatch(
            n_dec[k],
            context_sum * n_dec[k] / decodes if decodes else 0.0,
            tuple(pieces[k]),
            ends[k],
            ver[k],
            speculative,
        )
        for k in range(pp)
    ]
    return [mb for mb in out if mb.tokens] or [MicroBatch(speculative=speculative)]


def round_s(traversals_s: list[float], stage_busy_s: list[list[float]]) -> float:
    """Seconds of a round whose micro-batches take ``traversals_s`` to cross every stage and
    keep stage s busy ``stage_busy_s[i][s]`` (see the module docstring)."""
    slowest_stage = max(map(sum, zip(*stage_busy_s, strict=True)), default=0.0)
    return max(max(traversals_s, default=0.0), slowest_stage)
