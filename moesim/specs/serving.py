"""Serving engine options of ``workload.stage: inference`` beyond the plain continuous-batching
server: speculative decoding and prefill/decode disaggregation.

Their costs live in ``moesim.sim.speculative`` and ``moesim.sim.pd_disaggregation``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from moesim.specs.base import Float, PositiveInt, Spec
from moesim.specs.model import ModelSpec
from moesim.specs.parallel import MoEDispatcher


class SpeculativeSpec(Spec):
    """Speculative decoding (Leviathan et al. 2023, "Fast Inference from Transformers via
    Speculative Decoding", arXiv 2211.17192): a cheap drafter proposes ``k`` tokens, one forward
    of the target verifies all of them; with each drafted token accepted with probability
    ``a`` (i.i.d.), a step yields (1 − a^(k+1)) / (1 − a) tokens in expectation."""

    method: Literal["mtp", "draft"] = Field(
        description="mtp: the model's own multi-token-prediction module drafts (DeepSeek-V3; "
        "needs model.mtp_depth ≥ 1; one MTP layer forward per drafted token; the MTP modules' "
        "weights and one KV layer each are held only then); draft: a separate draft model "
        "(workload.speculative.draft_model; its whole forward per drafted token)"
    )
    draft_model: ModelSpec | None = Field(
        None,
        description="method: draft: the draft model (a catalog id, a model YAML or an inline "
        "spec); it runs on the target's GPUs with the target's tp, no pp or ep; its weights "
        "and KV cache per token count in the memory (memory_per_gpu_GB.drafter, the KV pool)",
    )
    num_speculative_tokens: PositiveInt = Field(
        description="k: tokens drafted per step (vLLM's num_speculative_tokens, SGLang's "
        "speculative-num-steps); the verify step is a (k+1)-token forward per sequence; under "
        "scheduler vllm_v1 the k drafts take k tokens of the step's max_num_batched_tokens "
        "and KV slots (with k lookahead slots); the plan can search it "
        "(search.num_speculative_tokens)"
    )
    acceptance_rate: Float = Field(
        ge=0.0,
        le=1.0,
        description="a: probability that a drafted token is accepted (given the ones before it "
        "were); 0 = every draft rejected (only costs), 1 = every draft accepted; vllm_v1 draws "
        "each request's acceptances per step (seeded by workload.seed), prefill_first uses the "
        "expected tokens per step",
    )

    @model_validator(mode="after")
    def _check(self) -> SpeculativeSpec:
        if self.method == "draft" and self.draft_model is None:
            raise ValueError(
                "workload.speculative.method is 'draft': name workload.speculative.draft_model "
                "(a catalog id such as llama-3.2-1b, or a model YAML)"
            )
        if self.method == "mtp" and self.draft_model is not None:
            raise ValueError(
                "workload.speculative.method is 'mtp' (the model's own MTP module drafts): "
                "remove workload.speculative.draft_model, or set method: draft"
            )
        return self

    @property
    def tokens_per_step(self) -> float:
        """Expected tokens one verify step yields per sequence: Σ_{i=0..k} a^i =
        (1 − a^(k+1)) / (1 − a) (k+1 at a = 1): the accepted prefix of the k drafts plus the
        token the target samples at the first rejection (or after the last draft)."""
        a, k = self.acceptance_rate, self.num_speculative_tokens
        if a >= 1.0:
            return float(k + 1)
        return (1.0 - a ** (k + 1)) / (1.0 - a)


class ServingPoolSpec(Spec):
    """One pool of a disaggregated deployment: its GPUs and its own parallel layout. Fields
    left out are the scenario's ``parallel`` values (moe_dispatcher, moe_comm_sms)."""

    gpus: PositiveInt | None = Field(None, description="GPUs of the pool (or give nodes)")
    nodes: PositiveInt | None = Field(None, description="whole nodes of the pool (or give gpus)")
    tp: PositiveInt = Field(1, description="tensor parallel inside each replica of the pool")
    pp: PositiveInt = Field(1, description="pipeline stages of each replica of the pool")
    ep: PositiveInt = Field(
        1,
        description="expert parallel; may exceed tp: the experts are folded over tp·dp "
        "attention ranks of the pool (data-parallel attention with expert-parallel MoE, as "
        "DeepSeek and SGLang serve)",
    )
    etp: PositiveInt = Field(1, description="expert tensor parallel")
    moe_dispatcher: MoEDispatcher | None = Field(
        None,
        description="the pool's dispatcher (e.g. deepep for prefill, deepep_low_latency for "
        "decode, as SGLang's --deepep-mode auto picks); default parallel.moe_dispatcher",
    )
    max_batch_size: PositiveInt | None = Field(
        None,
        description="sequences per replica of this pool at once (default "
        "workload.max_batch_size); the KV capacity caps it",
    )

    @model_validator(mode="after")
    def _check(self) -> ServingPoolSpec:
        if (self.gpus is None) == (self.nodes is None):
            raise ValueError(
                "a disaggregated pool needs exactly one of gpus or nodes: set one, drop the other"
            )
        return self


class DisaggregatedSpec(Spec):
    """Prefill/decode disaggregation (DistServe, Splitwise, Mooncake; SGLang and vLLM's PD
    serving): prompts are prefilled on one pool, their KV cache is sent to a replica of the
    other pool, which decodes. The two pools' GPUs make up the cluster."""

    prefill: ServingPoolSpec = Field(description="the pool that runs the prompts' prefill")
    decode: ServingPoolSpec = Field(description="the pool that decodes (receives the KV cache)")
    kv_link: Literal["auto", "nvlink", "network"] = Field(
        "auto",
        description="the link the KV cache crosses: nvlink when both pools sit in one node, "
        "network otherwise (auto), or forced",
    )
