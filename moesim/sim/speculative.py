"""Speculative decoding (``workload.speculative``): what one draft-and-verify step costs and
how many tokens it yields.

Leviathan, Kalman & Matias 2023 ("Fast Inference from Transformers via Speculative Decoding",
arXiv 2211.17192): a drafter proposes k tokens, the target scores all of them in one forward,
the accepted prefix is kept and the target's own sample at the first rejection (or after the
k-th draft) is added; with each draft accepted with probability a, a step yields
(1 − a^(k+1)) / (1 − a) tokens in expectation (``SpeculativeSpec.tokens_per_step``).

Costs of one step of a batch of B sequences:

- verify: one forward of the target over B·(k+1) tokens (each sequence's last token and its k
  drafts); query j of a sequence attends its context plus j keys; the k+1 queries of a
  sequence read its KV cache once (one query tile of the attention kernel, as a prefill chunk
  of k+1 tokens does); every position goes through the LM head (each is scored).
- draft: k forwards of the drafter, one per drafted token: one layer of the MTP module
  (DeepSeek-V3's: "a shared embedding layer, a projection matrix, a Transformer block, and a
  shared output head", Megatron-Core developer guide, multi_token_prediction; SGLang and vLLM
  run it once per drafted token) or the whole draft model. The first forward also runs over
  the step's prefill-chunk tokens: the drafter keeps its own KV cache of every prompt (vLLM
  V1's ``EagleProposer.propose``, vllm/v1/spec_decode/eagle.py, runs its first drafter pass
  over all ``target_token_ids`` of the step, prefill tokens included, and samples drafts at
  each request's last token; the next k − 1 passes are one token per request). A decoding
  sequence counts one token in that first pass (vLLM feeds it the 1 + accepted tokens of the
  step; for a drafter that reads its weights once per pass the difference is small). The
  MTP module's projection (2d → d per token) is left out, small beside its block.

The drafter's weights and KV cache are in the memory estimate (``moesim.sim.serving_memory``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from moesim.sim.serving_step import FLASH_QUERY_TILE
from moesim.specs.serving import SpeculativeSpec


class _Replica(Protocol):
    def step(
        self,
        tokens: int,
        attended_keys: float,
        logits: int,
        queries_per_kv_read: float = 1.0,
        stage: int | None = None,
    ): ...

    def decode(self, batch: int, context_sum: float): ...

    def mixed_step(
        self,
        decodes: int,
        decode_context_sum: float,
        chunks: list[tuple[int, int]],
        finished: int,
    ): ...


@dataclass(frozen=True)
class Speculator:
    """Draft-and-verify steps of ``spec`` on a target replica ``target`` with drafter
    ``drafter`` (a replica cost of the draft model or of one MTP layer)."""

    spec: SpeculativeSpec
    target: _Replica
    drafter: _Replica

    @property
    def tokens_per_step(self) -> float:
        return self.spec.tokens_per_step

    def verify(self, batch: int, context_sum: float, stage: int | None = None):
        """The target's forward over each sequence's last token and its k drafts (a StepCost;
        ``stage``: that pipeline stage's part alone, ``ReplicaCost.step``)."""
        q = self.spec.num_speculative_tokens + 1
        keys = q * context_sum + batch * q * (q - 1) / 2.0
        # the k+1 queries of a sequence share one KV read per query tile of the attention kernel
        return self.target.step(batch * q, keys, batch * q, min(FLASH_QUERY_TILE, q), stage)

    def draft_s(
        self,
        batch: int,
        context_sum: float,
        chunks: list[tuple[int, int]] | None = None,
        finished: int = 0,
    ) -> float:
        """The drafter's k forwards of a step that verifies ``batch`` sequences (contexts
        summing to ``context_sum`` keys) and runs prompt ``chunks`` (offset, tokens),
        ``finished`` of which end their prompt: the first pass over one token per verified
        sequence and every chunk token (one forward), then k − 1 passes of one token for each
        sequence that drafts (the verified ones and the prompts just finished)."""
        chunks = chunks or []
        if batch == 0 and not chunks:
            return 0.0
        k = self.spec.num_speculative_tokens
        first = self.drafter.mixed_step(batch, context_sum, chunks, finished).total_s
        drafting = batch + finished
        if k == 1 or drafting == 0:
            return first
        # a prompt just finished attends its whole prompt: the chunks' mean end stands for it
        ends = sum(o + c for o, c in chunks) / len(chunks) if chunks else 0.0
        later = self.drafter.decode(drafting, context_sum + finished * ends).total_s
        return first + (k - 1) * later

    def step_s(self, batch: int, context_sum: float) -> float:
        return self.verify(batch, context_sum).total_s + self.draft_s(batch, context_sum)
