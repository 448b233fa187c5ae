"""Serving: the cost of one engine step of a model replica (prefill, decode or a mix).

Legend: ``B`` sequences decoding together on one replica, ``T`` tokens of one engine step on
one replica (B in decode, n·prompt_len in prefill), ``T_g`` tokens entering one EP group
(T · ep·etp / tp: the attention replicas that share the group), ``E`` routed experts, ``k``
top-k, ``ctx`` keys a query attends.

A *replica* is the tp × pp GPUs holding one copy of the attention; there are ``dp`` of them and
requests are split evenly over them (``arrival_rate_per_s / dp`` each); with ``ep`` > 1 the
replicas of an EP group step together and share the experts (DP attention + EP experts).

One step, layer by layer, on the busiest GPU (every GPU must finish a layer before the next):

- attention projections and the dense FFN / shared experts: GEMMs that read their weights
  once per step (``precision.weights_inference``: fp8/int4 halve/quarter the bytes);
- attention core: reads the KV cache of every key attended (``precision.kv_cache``); in
  prefill a FlashAttention kernel reads each key once per tile of ``FLASH_QUERY_TILE`` queries
  (K/V stay in SRAM across the tile), not once per query;
- routed experts: only the experts the step's tokens touch are read. With T_g tokens and
  uniform top-k routing the expected number of distinct experts per layer is
  E·(1 − (1 − k/E)^T_g); the busiest EP rank's touched experts and copies are drawn from the
  routing distribution (seeded top-k sampling without replacement), so one expert per rank at
  batch 1 costs a whole expert read on the rank that got it (``moesim.sim.serving_expert_load``);
- TP: two all-reduces of the (T, d) activations per layer; EP: dispatch and combine
  all-to-alls; PP: a send per stage boundary. A step here is one traversal of every stage
  (the sum over stages); ``stage=s`` costs stage s alone (its layers, the LM head on the last,
  its send to the next), so the stages of a traversal sum to it. The engine
  (``moesim.sim.engine_step``) pipelines steps over pp micro-batches in flight (vLLM's batch
  queue): its round is set by the slowest stage and by each micro-batch's traversal;
- expert offloading (``expert_offload``): touched experts come over PCIe from host memory,
  before their GEMM (routing is known only at the layer, so the copy cannot be prefetched).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from moesim.analytic.flops import attention_core_flops, layer_flops
from moesim.analytic.layout import stage_layouts
from moesim.analytic.params import count_params, ffn_params
from moesim.sim.context import SimContext
from moesim.sim.costmodel import OpWork
from moesim.sim.profile import resolve_profile
from moesim.sim.routing_load import expert_probabilities
from moesim.sim.serving_expert_load import busiest_rank_load, expected_experts_touched
from moesim.specs import BYTES_PER_ELEMENT, InferenceWorkload, Scenario

# Queries per tile of a FlashAttention forward: each K/V block read from HBM serves this many
# queries (FlashAttention-2, Dao 2023, §3.3: block sizes 64 or 128; FlashAttention-3's Hopper
# forward uses 128-row query tiles). Prefill only: a decode query has no tile to share with.
FLASH_QUERY_TILE = 128


@dataclass(frozen=True)
class StepCost:
    """Seconds of one engine step on one replica, split into parts that sum to ``total_s``."""

    attention_s: float = 0.0  # projections + core (KV reads)
    dense_ffn_s: float = 0.0  # dense FFN, shared experts, router, norms
    experts_s: float = 0.0  # routed experts (touched weights read + GEMMs)
    lm_head_s: float = 0.0
    tp_comm_s: float = 0.0
    all_to_all_s: float = 0.0
    pp_comm_s: float = 0.0
    offload_s: float = 0.0  # experts fetched over PCIe
    experts_touched: float = 0.0  # expected distinct experts per MoE layer (whole EP group)
    expert_bytes_read: float = 0.0  # bytes of routed-expert weights the busiest GPU reads
    hbm_bytes: float = 0.0  # bytes the busiest GPU moves to and from HBM (weights, KV, I/O)

    @property
    def compute_s(self) -> float:
        return self.attention_s + self.dense_ffn_s + self.experts_s + self.lm_head_s

    @property
    def comm_s(self) -> float:
        return self.tp_comm_s + self.all_to_all_s + self.pp_comm_s

    def time_breakdown_s(self) -> dict[str, float]:
        """The result's ``time_breakdown_s`` of a serving run: this (typical) step's parts."""
        return {
            "compute": self.compute_s,
            "all_to_all": self.all_to_all_s,
            "tp_comm": self.tp_comm_s,
            "dp_comm": 0.0,
            "pp_comm": self.pp_comm_s,
            "bubble": 0.0,
            "exposed_comm": self.comm_s,
            "expert_offload": self.offload_s,
        }

    @property
    def total_s(self) -> float:
        return self.compute_s + self.comm_s + self.offload_s


class ReplicaCost:
    """Step times of one serving replica of ``scenario`` (its model, layout and precision)."""

    def __init__(self, scenario: Scenario, base_dir: Path | None = None):
        s = scenario
        self.s = s
        profile = resolve_profile(s.simulation.profile, s.cluster.gpu.name)
        # one token per attention rank: the context is only used for its cost model, collective
        # timer and grid (layer costs of training are not read here)
        self.ctx = SimContext(s, profile, "symmetric", tokens=1.0, microbatches=1)
        self.cm = self.ctx.cm
        m, p, prec = s.model, s.parallel, s.precision
        self.m, self.p = m, p
        self.wb = BYTES_PER_ELEMENT[prec.weights_inference]
        self.ab = prec.activation_bytes
        self.kvb = BYTES_PER_ELEMENT[prec.kv_cache]
        counts = count_params(m)
        self.counts = counts
        # identical layers are costed once: (layer params, is_moe) -> how many
        self.kinds = Counter((lp, m.is_moe_layer(i)) for i, lp in enumerate(counts.decoder_layers))
        self.flops = {moe: layer_flops(m, moe, 0.0) for moe in {k[1] for k in self.kinds}}
        # each pipeline stage's decoder layers by kind (encoder layers come first in the
        # layout's numbering and are not served here)
        self.stage_kinds = [self.kinds]
        if p.pp > 1:
            enc, dec = m.n_encoder_layers, counts.decoder_layers
            self.stage_kinds = [
                Counter((dec[i - enc], m.is_moe_layer(i - enc)) for i in st.layers if i >= enc)
                for st in stage_layouts(m, p)
            ]
        self.kv_heads_split = 1 if m.mla is not None else min(p.tp, m.kv_heads)
        if m.mla is not None:  # the compressed latent and the RoPE key (DeepSeek-V2 §2.1.2)
            self.kv_bytes_per_token_layer = (m.mla.kv_lora_rank + m.mla.qk_rope_head_dim) * self.kvb
        else:
            self.kv_bytes_per_token_layer = 2 * m.kv_dim * self.kvb
        self.tp_group = self.ctx.grid.tp_group(0)
        self.ep_group = self.ctx.grid.ep_group(0)
        self.offload = isinstance(s.workload, InferenceWorkload) and s.workload.expert_offload
        self.pcie_Bps = s.cluster.gpu.pcie_GBps * 1e9 * self.cm.link_fraction("pcie")
        if m.moe is not None:
            self.probs_E = expert_probabilities(s.routing, m.moe.n_routed_experts, base_dir)
            self.expert_params = ffn_params(m, m.moe.expert_hidden) / p.etp  # one expert shard
        self._base: dict[tuple[int, int | None], StepCost] = {}
        self._loads: dict[int, tuple[float, float, np.ndarray]] = {}

    # -- routed-expert load -------------------------------------------------------------------
    def tokens_per_ep_group(self, tokens: float) -> float:
        """T_g: the step's tokens of every attention replica that shares this EP group."""
        p = self.p
        return tokens * p.ep * p.etp / p.tp

    def rank_loads(self, tokens_group: int) -> tuple[float, float, np.ndarray]:
        """(experts touched, copies) on the busiest EP rank for ``tokens_group`` tokens and the
        copies each EP rank receives per draw (``serving_expert_load.busiest_rank_load``),
        cached per token count."""
        hit = self._loads.get(tokens_group)
        if hit is None:
            assert self.m.moe is not None
            hit = self._loads[tokens_group] = busiest_rank_load(
                self.probs_E, self.m.moe.top_k, self.p.ep, self.s.routing.seed, tokens_group
            )
        return hit

    # -- one step -----------------------------------------------------------------------------
    def stage_layers(self, stage: int | None) -> int:
        """Decoder layers of pipeline stage ``stage`` (all of them for None)."""
        return self.m.n_layers if stage is None else sum(self.stage_kinds[stage].values())

    def step(
        self,
        tokens: int,
        attended_keys: float,
        logits: int,
        queries_per_kv_read: float = 1.0,
        stage: int | None = None,
    ) -> StepCost:
        """One forward step of ``tokens`` new tokens whose queries attend ``attended_keys`` keys
        in all (summed over tokens), with ``logits`` rows through the LM head; each key read
        from HBM serves ``queries_per_kv_read`` queries. ``stage``: that pipeline stage alone
        (None: the traversal of every stage)."""
        base = self._base_cost(tokens, logits, stage)
        share = self.stage_layers(stage) / self.m.n_layers  # the attention core is per layer
        attn = share * self._attention_core_s(tokens, attended_keys, queries_per_kv_read)
        kv_bytes = share * self._attention_core_bytes(tokens, attended_keys, queries_per_kv_read)
        return replace(
            base, attention_s=base.attention_s + attn, hbm_bytes=base.hbm_bytes + kv_bytes
        )

    def decode(self, batch: int, context_sum: float, stage: int | None = None) -> StepCost:
        """A decode step of ``batch`` sequences whose contexts sum to ``context_sum`` keys
        (each sequence's one query reads its whole KV cache)."""
        return self.step(batch, context_sum, batch, stage=stage)

    def prefill(self, n_seqs: int, prompt_len: int) -> StepCost:
        """A prefill step of ``n_seqs`` whole prompts (causal: token i attends i keys)."""
        return self.prefill_chunks([(0, prompt_len)] * n_seqs, n_seqs)

    def prefill_chunks(
        self, chunks: list[tuple[int, int]], finished: int, stage: int | None = None
    ) -> StepCost:
        """A prefill step of prompt chunks ``(offset, length)``: a chunk's token i attends the
        offset earlier tokens (in the KV cache) and i of its own; ``finished`` chunks end their
        prompt and go through the LM head. Each chunk's keys are read once per FlashAttention
        query tile of its own queries."""
        tokens = sum(c for _, c in chunks)
        keys = [c * o + c * (c + 1) / 2.0 for o, c in chunks]
        reads = sum(k / min(FLASH_QUERY_TILE, c) for k, (_, c) in zip(keys, chunks, strict=True))
        total = sum(keys)
        return self.step(tokens, total, finished, total / reads, stage)

    def mixed_step(
        self,
        decodes: int,
        decode_context_sum: float,
        chunks: list[tuple[int, int]],
        finished: int,
        verifies: list[tuple[int, int]] | None = None,
        stage: int | None = None,
    ) -> StepCost:
        """One step of ``decodes`` decode tokens (their contexts summing to
        ``decode_context_sum`` keys, each read once) and prefill ``chunks`` (offset, length),
        ``finished`` of which end their prompt: vLLM V1's batch of both kinds. The weights are
        read once for all the step's tokens; each decode and chunk reads its own KV cache.
        ``verifies`` (offset, q): speculative decodes, each a sequence of ``offset`` cached
        tokens scoring its last token and q − 1 drafts: attended as a chunk of q tokens (one
        KV read per query tile), every position through the LM head. ``stage``: that pipeline
        stage's part alone (None: the traversal of every stage)."""
        verifies = verifies or []
        if not verifies:
            if not chunks:
                return self.decode(decodes, decode_context_sum, stage)
            if not decodes:
                return self.prefill_chunks(chunks, finished, stage)
        spans = chunks + verifies
        tokens = decodes + sum(c for _, c in spans)
        keys = [c * o + c * (c + 1) / 2.0 for o, c in spans]
        reads = sum(k / min(FLASH_QUERY_TILE, c) for k, (_, c) in zip(keys, spans, strict=True))
        total = decode_context_sum + sum(keys)
        reads += decode_context_sum
        logits = decodes + finished + sum(q for _, q in verifies)
        return self.step(tokens, total, logits, total / reads, stage)

    def _attention_core_bytes(self, tokens: int, keys: float, queries_per_kv_read: float) -> float:
        """HBM bytes of every layer's attention core (KV read and written, queries, output)."""
        m, p = self.m, self.p
        kv_per_token = self.kv_bytes_per_token_layer / self.kv_heads_split
        kv_read = keys * kv_per_token / queries_per_kv_read + tokens * kv_per_token
        return m.n_layers * (kv_read + 2 * tokens * m.q_dim * self.ab / p.tp)

    def _attention_core_s(self, tokens: int, keys: float, queries_per_kv_read: float) -> float:
        """QKᵀ and AV of every layer: FLOPs per attended key, KV bytes per key read, the KV
        cache written once per new token."""
        m, p = self.m, self.p
        n_layers = m.n_layers
        flops = attention_core_flops(m, keys) / p.tp
        kv_per_token = self.kv_bytes_per_token_layer / self.kv_heads_split
        kv_read = keys * kv_per_token / queries_per_kv_read + tokens * kv_per_token
        q_and_out = 2 * tokens * m.q_dim * self.ab / p.tp
        op = OpWork("attn_core", "attention", flops, kv_read + q_and_out)
        return n_layers * self.cm.time_s(op)

    def _base_cost(self, tokens: int, logits: int, stage: int | None = None) -> StepCost:
        """Every part of a step but the attention core: the layers' GEMMs and communication
        (cached per token count) and the LM head of ``logits`` rows (on the last stage)."""
        m, p, wb = self.m, self.p, self.wb
        layers = self._layers_cost(tokens, stage)
        if stage is not None and stage < p.pp - 1:
            return layers
        head = OpWork(
            "lm_head",
            "gemm",
            logits * 2.0 * m.vocab_size * m.d_model / p.tp,
            m.vocab_size * m.d_model * wb / p.tp + logits * m.vocab_size * 4 / p.tp,
            fp8=False,
        )
        return replace(
            layers, lm_head_s=self.cm.time_s(head), hbm_bytes=layers.hbm_bytes + head.bytes
        )

    def _layers_cost(self, tokens: int, stage: int | None = None) -> StepCost:
        hit = self._base.get((tokens, stage))
        if hit is not None:
            return hit
        kinds = self.kinds if stage is None else self.stage_kinds[stage]
        m, p, cm, wb, ab = self.m, self.p, self.cm, self.wb, self.ab
        io = tokens * m.d_model * ab  # one (T, d) activation
        parts = dict.fromkeys(
            ("attention_s", "dense_ffn_s", "experts_s", "tp_comm_s", "all_to_all_s", "offload_s"),
            0.0,
        )
        touched_group = expert_bytes = hbm = 0.0
        tp_ar = self.ctx.all_reduce_s(self.tp_group, io) if p.tp > 1 else 0.0
        for (lp, moe), n in kinds.items():
            fl = self.flops[moe]
            proj = OpWork(
                "attn_proj",
                "gemm",
                tokens * fl.attention_proj / p.tp,
                lp.attention * wb / p.tp + 4 * io / p.tp,
            )
            parts["attention_s"] += n * cm.time_s(proj)
            ffn_n = lp.dense_ffn + lp.shared_experts
            ffn = OpWork(
                "ffn",
                "gemm",
                tokens * (fl.dense_ffn + fl.shared_experts) / p.tp,
                ffn_n * wb / p.tp + 3 * io / p.tp,
            )
            norms = OpWork("norms", "memory_bound", 0.0, 12 * io / p.tp)
            dense = cm.time_s(ffn) + cm.time_s(norms)
            hbm += n * (proj.bytes + ffn.bytes + norms.bytes)
            parts["tp_comm_s"] += n * 2 * tp_ar
            if moe:
                t_group = self.tokens_per_ep_group(tokens)
                router = OpWork(
                    "router",
                    "gemm",
                    tokens * fl.router / p.tp,
                    lp.router * wb + tokens * 4,
                    fp8=False,
                )
                dense += cm.time_s(router)
                ex_s, off_s, a2a_s, touched, ebytes, op_bytes = self._experts(t_group)
                hbm += n * (router.bytes + op_bytes)
                parts["experts_s"] += n * ex_s
                parts["offload_s"] += n * off_s
                parts["all_to_all_s"] += n * a2a_s
                touched_group = touched
                expert_bytes += n * ebytes
            parts["dense_ffn_s"] += n * dense
        pp_s = 0.0
        sends = p.pp - 1 if stage is None else int(stage < p.pp - 1)  # to the next stage
        if sends:
            g0 = self.ctx.grid.gpu(0, 0)
            pp_s = sends * self.ctx.p2p_s(g0, self.ctx.grid.pp_peer(g0, +1), io / p.tp)
        out = StepCost(
            pp_comm_s=pp_s,
            experts_touched=touched_group,
            expert_bytes_read=expert_bytes,
            hbm_bytes=hbm,
            **parts,
        )
        self._base[(tokens, stage)] = out
        return out

    def _experts(self, tokens_group: float) -> tuple[float, float, float, float, float, float]:
        """(expert GEMMs, PCIe fetch, all-to-all, distinct experts touched in the group,
        expert weight bytes the busiest rank reads, its HBM bytes) of one MoE layer."""
        m, p, cm = self.m, self.p, self.cm
        assert m.moe is not None
        k = m.moe.top_k
        t = max(1, round(tokens_group))
        touched_rank, copies_rank, loads_NR = self.rank_loads(t)
        weight_bytes = touched_rank * self.expert_params * self.wb
        widths = 2 * m.d_model + 3 * m.moe.expert_hidden / p.etp
        op = OpWork(
            "experts",
            "grouped_gemm",
            copies_rank * 2.0 * self.expert_params,
            weight_bytes + copies_rank * widths * self.ab,
            groups=max(1, round(touched_rank)),
        )
        offload_s = weight_bytes / self.pcie_Bps if self.offload else 0.0
        a2a_s = 0.0
        if p.ep > 1:
            # each EP rank dispatches t / ep tokens; the draws set what each rank receives
            group, mean_rank = self.ep_group, t * k / p.ep
            disp_b = m.d_model * self.s.precision.dispatch_bytes
            comb_b = m.d_model * self.s.precision.combine_bytes
            a2a_s = float(
                np.mean(
                    self.ctx.skewed_a2a_s(group, loads_NR, mean_rank, disp_b, "dispatch")
                    + self.ctx.skewed_a2a_s(group, loads_NR, mean_rank, comb_b, "combine")
                )
            )
        touched = expected_experts_touched(self.probs_E, k, t)
        return cm.time_s(op), offload_s, a2a_s, touched, weight_bytes, op.bytes
