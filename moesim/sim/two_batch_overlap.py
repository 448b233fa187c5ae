"""Two-batch overlap (``workload.two_batch_overlap``): a serving step split in two micro-batches
whose MoE dispatch and combine run under each other's compute.

Engines: SGLang's ``--enable-two-batch-overlap``; vLLM's dual batch overlap (docs/design/dbo.md:
"the core motivation ... is to overlap the sparse all-to-all communication in the MoE layer
with the surrounding computation"; two micro-batch threads ping-pong "so that when one is
running compute, the other is waiting on communication"). Its schedule per MoE layer is

    Comp: |-A0₀-A1₀-||-MLP₁-||-S₁-MLP₀-||-S₀-A0₁-A1₁-|
    Comm: |----D₁---||--D₀--||----C₁---||-----C₀-----|

so over the MoE layers of a step the time is max(compute of A, comm of B) + max(compute of B,
comm of A), which is at least each of the step's compute and its all-to-all. Only the MoE
layers overlap (a dense layer has no all-to-all); their share of the attention and dense parts
is taken in proportion to their count (``moe_layer_fraction``). The other communication (TP
all-reduces, pipeline sends) and expert offload copies stay exposed. Compute that overlaps a
DeepEP normal-mode transfer runs on the SMs it leaves (``sm_slowdown``,
``moesim.analytic.dispatch.comm_sm_slowdown``).

Splitting costs something too: each half reads the weights again, so a memory-bound decode
step of a small batch is slower split. vLLM splits only a step whose tokens reach
``dbo_decode_token_threshold`` / ``dbo_prefill_token_threshold``
(vllm/v1/worker/ubatch_splitting.py, ``check_ubatch_thresholds``); moesim idealises that
threshold as "split when it is faster", so overlap never makes a step slower.
"""

from __future__ import annotations

from typing import Protocol


class _Parts(Protocol):
    """The parts of ``moesim.sim.serving_step.StepCost`` this module reads."""

    attention_s: float
    dense_ffn_s: float
    experts_s: float
    lm_head_s: float
    tp_comm_s: float
    all_to_all_s: float
    pp_comm_s: float
    offload_s: float

    @property
    def total_s(self) -> float: ...


def _split(part: _Parts, moe_layer_fraction: float) -> tuple[float, float, float]:
    """(compute of the MoE layers, the step's all-to-all, everything that does not overlap)."""
    moe_compute = part.experts_s + (part.attention_s + part.dense_ffn_s) * moe_layer_fraction
    rest = (
        (part.attention_s + part.dense_ffn_s) * (1.0 - moe_layer_fraction)
        + part.lm_head_s
        + part.tp_comm_s
        + part.pp_comm_s
        + part.offload_s
    )
    return moe_compute, part.all_to_all_s, rest


def overlapped_s(
    half_a: _Parts, half_b: _Parts, moe_layer_fraction: float, sm_slowdown: float = 1.0
) -> float:
    """Seconds of the two halves of a step run with two-batch overlap: each half's MoE-layer
    compute under the other's all-to-all, the rest of both in sequence."""
    ca, da, ra = _split(half_a, moe_layer_fraction)
    cb, db, rb = _split(half_b, moe_layer_fraction)
    return max(ca * sm_slowdown, db) + max(cb * sm_slowdown, da) + ra + rb


def tbo_step_s(
    full: _Parts,
    half_a: _Parts,
    half_b: _Parts,
    moe_layer_fraction: float,
    sm_slowdown: float = 1.0,
) -> float:
    """A step with two-batch overlap: split when that is faster, else the whole step."""
    return min(full.total_s, overlapped_s(half_a, half_b, moe_layer_fraction, sm_slowdown))


def split_batch(batch: int, context_sum: float) -> tuple[tuple[int, float], tuple[int, float]]:
    """Two decode micro-batches of a running batch: ⌈B/2⌉ and ⌊B/2⌋ sequences, each with its
    share of the attended keys."""
    a = (batch + 1) // 2
    b = batch - a
    per_seq = context_sum / batch if batch else 0.0
    return (a, per_seq * a), (b, per_seq * b)


def split_chunks(
    chunks: list[tuple[int, int]],
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Two prefill micro-batches of about half the tokens each: whole chunks go to the lighter
    half, largest first; a lone chunk is cut in two (its second part attends the first)."""
    if len(chunks) == 1:
        off, c = chunks[0]
        first = (c + 1) // 2
        return [(off, first)], ([(off + first, c - first)] if c - first else [])
    a: list[tuple[int, int]] = []
    b: list[tuple[int, int]] = []
    ta = tb = 0
    for ch in sorted(chunks, key=lambda x: -x[1]):
        if ta <= tb:
            a.append(ch)
            ta += ch[1]
        else:
            b.append(ch)
            tb += ch[1]
    return a, b
