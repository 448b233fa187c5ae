"""MoE token dispatchers: which one a scenario runs, how many distinct GPUs and nodes one
token's top-k copies reach (what a deduplicating dispatcher sends), and the SMs its kernels
take from compute.

Dispatchers (``parallel.moe_dispatcher``):

- ``alltoall``: Megatron-Core's all-to-all token dispatcher (NCCL): every (token, expert) copy
  travels to the expert's GPU.
- ``allgather``: Megatron-Core's all-gather dispatcher (``MoEAllGatherTokenDispatcher``): every
  rank gathers the hidden states, routing map and probabilities of all tokens of the group and
  keeps the rows of its own experts; the combine is a reduce-scatter.
- ``deepep``: DeepEP's normal (high-throughput) kernels (deepseek-ai/DeepEP, docs/legacy.md and
  ``deep_ep/buffers/legacy.py``): inside a node a token is sent once to each GPU that holds
  one of its experts (``is_token_in_rank``); across nodes once per destination node over RDMA
  to the GPU of the same local index, which forwards it over NVLink ("forwarding data from
  NVLink domain to RDMA domain"). They run on ``Buffer.num_sms = 20`` SMs by default.
- ``deepep_low_latency``: DeepEP's decode kernels: each (token, expert) copy is written straight
  to the expert's GPU (RDMA, or NVLink inside a node: ``allow_nvlink_for_low_latency_mode``
  defaults to True), nothing forwarded; their hook-based receive "does not occupy any SM".
  They are timed like ``alltoall``'s traffic (route latencies included); no per-message cost of
  their RDMA writes is added, for want of a source other than DeepEP's held-out tables.

Group-limited routing (DeepSeek-V2/V3, ``moe.n_groups``, ``moe.topk_groups`` = M): a token
first picks M of the G expert groups, then its top-k experts inside them. With experts placed
contiguously (group g = experts [g·E/G, (g+1)·E/G)) and the EP ranks holding contiguous blocks,
the choice bounds the GPUs and nodes a token reaches; ``expected_bins_per_token`` counts them
under uniform routing (i.i.d. router scores).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from moesim.analytic.comm import expected_distinct_bins
from moesim.specs import MoESpec, Scenario

DISPATCHERS = ("alltoall", "allgather", "deepep", "deepep_low_latency")

# SMs each dispatcher's kernels occupy while they run, as they ship. DeepEP normal kernels:
# ``Buffer.num_sms: int = 20`` ("the SMs used in high-throughput kernels",
# deep_ep/buffers/legacy.py, deepseek-ai/DeepEP @ dd758ca); the DeepSeek-V3 report (§3.2.2)
# also dedicates 20 SMs to communication. Low-latency kernels: 0 (docs/legacy.md: "a hook-based
# communication-computation overlapping method that does not occupy any SM resource").
# NCCL (alltoall, allgather): its channels' SMs are not modelled for any NCCL collective.
DEFAULT_COMM_SMS = {"alltoall": 0, "allgather": 0, "deepep": 20, "deepep_low_latency": 0}


# tokens of the seeded draw behind a group-limited expectation: the standard error of the mean
# distinct bins (at most min(k, bins) values, spread < 1) stays below 0.01
ROUTER_DRAW_TOKENS = 8192


@lru_cache(maxsize=256)
def _router_bins_hit(
    experts: int, k: int, groups: int, m_groups: int, bins: int, top2_sum: bool
) -> float:
    """Mean distinct bins of a seeded draw of the group-limited router under uniform routing:
    i.i.d. scores, each group scored by its best expert (DeepSeek-V2) or the sum of its two best
    (DeepSeek-V3), the top-M groups kept, the top-k experts among them (moesim.nn.router's
    rule, ``group_limited_mask``)."""
    rng = np.random.default_rng([experts, k, groups, m_groups, bins, top2_sum])
    per_group = experts // groups
    scores_TE = rng.random((ROUTER_DRAW_TOKENS, experts))
    grouped_TGe = scores_TE.reshape(-1, groups, per_group)
    if top2_sum and per_group >= 2:
        group_TG = np.sort(grouped_TGe, axis=-1)[..., -2:].sum(axis=-1)
    else:
        group_TG = grouped_TGe.max(axis=-1)
    top_TM = np.argpartition(-group_TG, m_groups - 1, axis=1)[:, :m_groups]
    keep_TG = np.zeros_like(group_TG, dtype=bool)
    np.put_along_axis(keep_TG, top_TM, True, axis=1)
    masked_TE = np.where(np.repeat(keep_TG, per_group, axis=1), scores_TE, -1.0)
    bins_TK = np.sort(np.argpartition(-masked_TE, k - 1, axis=1)[:, :k] // (experts // bins))
    distinct_T = 1 + (np.diff(bins_TK, axis=1) != 0).sum(axis=1)
    return float(distinct_T.mean())


def expected_bins_per_token(moe: MoESpec, bins: int) -> float:
    """Expected distinct bins (EP ranks, or the EP group's nodes) that one token's top-k
    experts live on, the routed experts split into ``bins`` contiguous equal blocks.

    Without a group limit every k-subset is equally likely under uniform routing: the closed
    form of ``expected_distinct_bins``. With one, the router keeps the M groups whose best
    experts score highest, and those experts then make its top-k, so a token's k experts spread
    more evenly over its M groups than a uniform k-subset of them would (DeepSeek-V3 on EP 64:
    7.49 GPUs against 7.36); the expectation is the mean of a seeded draw of the router's own
    rule (``_router_bins_hit``), capped by the unlimited value, which the limit cannot exceed
    and which a draw's sampling error could."""
    experts, k = moe.n_routed_experts, moe.top_k
    if bins <= 1:
        return float(max(bins, 0))
    free = expected_distinct_bins(experts, bins, experts / bins, k)
    m_groups = moe.topk_groups
    if moe.n_groups <= 1 or m_groups is None or m_groups >= moe.n_groups:
        return free
    top2 = moe.router == "sigmoid_topk"  # as moesim.nn.router picks its group score
    return min(free, _router_bins_hit(experts, k, moe.n_groups, m_groups, bins, top2))


def resolve_dispatcher(s: Scenario) -> str:
    """The dispatcher a scenario runs. An explicit ``parallel.moe_dispatcher`` wins; ``auto``
    follows ``simulation.all_to_all`` when that is set (direct: alltoall, hierarchical:
    deepep); otherwise deepep where its deduplication sends fewer bytes than alltoall — a
    token's top-k experts share a GPU (fine-grained experts: several per GPU, k > 1), or the EP
    group spans nodes (one RDMA copy per node) — and alltoall where it cannot (one expert per
    GPU with top-k = 1, say, or ep = 1), since DeepEP's kernels then only take SMs."""
    p, moe = s.parallel, s.model.moe
    if p.moe_dispatcher != "auto":
        return p.moe_dispatcher
    mode = s.simulation.all_to_all
    if mode == "direct":
        return "alltoall"
    if mode == "hierarchical":
        return "deepep"
    if moe is None or p.ep == 1:
        return "alltoall"
    span_gpus = p.ep * p.etp
    if span_gpus > s.cluster.domain_gpus:
        return "deepep"
    gpus_hit = expected_bins_per_token(moe, p.ep)
    return "deepep" if gpus_hit < moe.top_k - 1e-9 else "alltoall"


def comm_sms(s: Scenario) -> int:
    """SMs the scenario's dispatch and combine kernels occupy (``parallel.moe_comm_sms``, or
    the dispatcher's own default)."""
    if s.parallel.moe_comm_sms is not None:
        return s.parallel.moe_comm_sms
    return DEFAULT_COMM_SMS[resolve_dispatcher(s)]


def comm_sm_slowdown(s: Scenario) -> float:
    """Time factor of a kernel that runs while the dispatcher's kernels hold their SMs:
    SMs / (SMs − comm SMs), throughput taken as proportional to SMs (which holds for
    compute-bound GEMMs and overstates the loss of memory-bound kernels). 1 when the GPU's SM
    count is unknown or nothing is taken."""
    total, taken = s.cluster.gpu.sms, comm_sms(s)
    if total is None or taken == 0:
        return 1.0
    return total / (total - taken)
