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

Group-limited routing (DeepSeek-V2/V3, ``moe.n_groups``, ``moe.topk_groups`` = M): a token
first picks M of the G expert groups, then its top-k experts inside them. With experts placed
contiguously (group g = experts [g·E/G, (g+1)·E/G)) and the EP ranks holding contiguous blocks,
the choice bounds the GPUs and nodes a token reaches; ``expected_bins_per_token`` counts them
exactly under uniform routing (every M-subset of groups, then every k-subset of their experts,
equally likely: the symmetric case of the router's top-k).
"""

from __future__ import annotations

import math
from functools import lru_cache

from moesim.analytic.comm import _log_comb, expected_distinct_bins
from moesim.specs import MoESpec, Scenario

DISPATCHERS = ("alltoall", "allgather", "deepep", "deepep_low_latency")

# SMs each dispatcher's kernels occupy while they run, as they ship. DeepEP normal kernels:
# ``Buffer.num_sms: int = 20`` ("the SMs used in high-throughput kernels",
# deep_ep/buffers/legacy.py, deepseek-ai/DeepEP @ dd758ca); the DeepSeek-V3 report (§3.2.2)
# also dedicates 20 SMs to communication. Low-latency kernels: 0 (docs/legacy.md: "a hook-based
# communication-computation overlapping method that does not occupy any SM resource").
# NCCL (alltoall, allgather): its channels' SMs are not modelled for any NCCL collective.
DEFAULT_COMM_SMS = {"alltoall": 0, "allgather": 0, "deepep": 20, "deepep_low_latency": 0}


def _surjective_fraction(h: int, groups: int, per_group: float, k: int) -> float:
    """Probability that ``k`` experts drawn without replacement from ``groups`` groups of
    ``per_group`` experts hit exactly the groups of one fixed set of ``h`` groups, each at least
    once (inclusion–exclusion over the groups of the set left empty)."""
    total = _log_comb(groups * per_group, k)
    p = 0.0
    for j in range(h + 1):
        lc = _log_comb((h - j) * per_group, k)
        if lc == -math.inf:
            continue
        p += (-1) ** j * math.comb(h, j) * math.exp(lc - total)
    return max(p, 0.0)


@lru_cache(maxsize=256)
def _bins_hit(experts: int, k: int, groups: int, m_groups: int, bins: int) -> float:
    if bins <= 1:
        return float(bins)
    if groups <= 1 or m_groups >= groups:  # no group limit
        return expected_distinct_bins(experts, bins, experts / bins, k)
    per_group = experts / groups
    if bins > groups and bins % groups == 0:
        # each group spans bins/groups bins: k experts inside the M groups' M·bins/groups bins
        return expected_distinct_bins(
            m_groups * per_group, m_groups * bins // groups, experts / bins, k
        )
    if groups % bins == 0:
        # whole groups per bin: the k experts hit h of the M chosen groups (a uniform h-subset
        # of all G groups), and h groups out of G fill the bins holding them
        out = 0.0
        for h in range(1, min(m_groups, k) + 1):
            p_h = math.comb(m_groups, h) * _surjective_fraction(h, m_groups, per_group, k)
            out += p_h * expected_distinct_bins(groups, bins, groups / bins, h)
        return out
    # groups and bins not nested: the limit is not used (an upper bound)
    return expected_distinct_bins(experts, bins, experts / bins, k)


def expected_bins_per_token(moe: MoESpec, bins: int) -> float:
    """Expected distinct bins (EP ranks, or the EP group's nodes) that one token's top-k
    experts live on, the routed experts split into ``bins`` contiguous equal blocks; under
    group-limited routing when the model has it."""
    m_groups = moe.topk_groups if moe.topk_groups is not None else moe.n_groups
    return _bins_hit(moe.n_routed_experts, moe.top_k, moe.n_groups, m_groups, bins)


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
    if span_gpus > s.cluster.gpus_per_node:
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
