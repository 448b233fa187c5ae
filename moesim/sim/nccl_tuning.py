"""NCCL's own cost model: which (algorithm, protocol) it picks for a collective, and the time it
predicts for it.

Source: NVIDIA/nccl v2.30.7 (makefiles/version.mk; commit 5067397c), ``src/graph/tuning.cc``
(``ncclTunerConstantsDefaults``, ``ncclTopoTuneModel``, ``ncclTopoGetAlgoTime``),
``src/enqueue.cc`` (``topoGetAlgoInfo``: the (algorithm, protocol) of least predicted time wins,
ties to the first in NCCL's order) and ``src/graph/topo.h`` (per-link NVLink bandwidths). The
model NCCL uses is

    time_us = latency_us(algorithm, protocol) + nBytes / (1000 · algbw_GBps(algorithm, protocol))

with ``nBytes`` the larger of the send and receive buffers (nccl-tests' "size": the output of an
all-gather, the input of a reduce-scatter) and ``algbw`` the bus bandwidth of NCCL's topology
graph times per-protocol factors, converted to algorithm bandwidth (ring/NVLS: × nRanks/nsteps,
tree: × 1/2).

Where moesim differs from NCCL (it has no topology search):
- The graph's bandwidth (NCCL: nChannels × bw per channel) is the GPU's own link capacity:
  ``intra_GBps`` (NVLink per direction × the profile's achieved fraction) on one node; across
  nodes the smaller of that and ``inter_GBps`` (the NICs on the GPUs' rails, per the group's GPUs
  on a node, over the spine oversubscription). The per-channel caps (``perChMax*Bws``), which
  bind only when channels × cap < the links, are not modelled, nor is the
  ``NCCL_TOPO_PATTERN_TREE`` 0.85 factor or CollNet (needs SHARP switches: off by default); the
  ring's plateau factor across nodes (latency × 1.4 when nBytes/(nChannels·nRanks) ≥ 64) is
  applied as if nChannels were 1.
- NVLS on one node: NCCL's search gives the NVLS graph bwInter = bwIntra, so its bus bandwidth
  is min(2 · nvlsEfficiency · NVLink, NVLink) = the NVLink's; read literally here.
- NCCL's latency constants stand for the hardware's; ``cluster.*.latency_us`` does not enter.
- The CPU is taken to be x86 Intel (``llMaxBws`` row 0 across nodes, net overhead 1 µs).
- NCCL's tree correction factors (``treeCorrectionFactor``) make its predicted tree time drop
  where the factor rises from one power-of-two bucket to the next; moesim takes the time of a
  message as the least predicted time of any message at least as large (a message can always be
  sent as a larger one), so a fixed algorithm's time never falls as the size grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CollectiveKind = Literal["all_reduce", "all_gather", "reduce_scatter"]
Arch = Literal["volta", "ampere", "hopper", "blackwell"]

#: NCCL's orders (NCCL_ALGO_*: Tree 0, Ring 1, CollNetDirect 2, CollNetChain 3, NVLS 4,
#: NVLSTree 5, PAT 6; NCCL_PROTO_*: LL 0, LL128 1, Simple 2): ties go to the first
ALGORITHMS = ("tree", "ring", "nvls", "nvls_tree", "pat")
PROTOCOLS = ("LL", "LL128", "Simple")

# -- constants of tuning.cc (ncclTunerConstantsDefaults), microseconds --------------------------
BASE_LATENCY_US = {  # baseLatencies[algorithm][LL, LL128, Simple]
    "tree": (6.8, 14.0, 8.4),
    "ring": (6.6, 14.0, 8.4),
    "nvls": (0.0, 0.0, 0.0),
    "nvls_tree": (0.0, 0.0, 0.0),
    "pat": (8.0, 8.0, 8.0),
}
HW_LATENCY_US = {  # hwLatencies[NVLINK | NET][algorithm][LL, LL128, Simple]
    "nvlink": {
        "tree": (0.6, 1.25, 4.0),
        "ring": (0.6, 1.9, 3.4),
        "nvls": (0.0, 0.0, 25.0),
        "nvls_tree": (0.0, 0.0, 25.0),
        "pat": (0.0, 0.0, 4.0),
    },
    "net": {
        "tree": (5.0, 8.5, 14.0),
        "ring": (2.7, 4.0, 14.0),
        "nvls": (0.0, 0.0, 18.0),
        "nvls_tree": (0.0, 0.0, 20.9),
        "pat": (0.0, 0.0, 14.0),
    },
}
#: llMaxBws: one node by GPU generation; across nodes by CPU (Intel row) for 2 and > 2 nodes
LL_MAX_BW_ONE_NODE_GBPS = {"volta": 39.0, "ampere": 87.7, "hopper": 141.0, "blackwell": 282.0}
LL_MAX_BW_NODES_GBPS = (39.0, 20.4)
#: nvlsEfficiency: NVLS's achieved fraction (Hopper, Blackwell; none before)
NVLS_EFFICIENCY = {"volta": 0.0, "ampere": 0.0, "hopper": 0.85, "blackwell": 0.74}
#: getNetOverhead on x86 Intel: 1 µs per inter-node ring step (× 3 for Simple)
NET_OVERHEAD_US = 1.0
#: treeCorrectionFactor[protocol][log2(nBytes/64)], applied to tree all-reduce for log < 23
TREE_CORRECTION = {
    "LL": (1.0, 1.0, 1.0, 1.0, 0.9, 0.8, 0.7, 0.7, 0.7, 0.7, 0.6, 0.5,
           0.4, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0),
    "LL128": (1.0, 1.0, 1.0, 1.0, 1.0, 0.9, 0.8, 0.8, 0.8, 0.7, 0.6, 0.6,
              0.6, 0.6, 0.6, 0.6, 0.8, 0.9, 0.9, 0.9, 0.9, 1.0, 1.0, 1.0),
    "Simple": (0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.8, 0.7, 0.6, 0.6, 0.5,
               0.5, 0.5, 0.5, 0.6, 0.7, 0.8, 0.7, 0.7, 0.8, 0.9, 0.9, 0.9),
}  # fmt: skip
TREE_CORRECTION_BUCKETS = 23


def arch_of(gpu_name: str) -> Arch:
    """NCCL's compute-capability class of a catalog GPU (its tuning tables are per class)."""
    name = gpu_name.lower()
    if name.startswith(("b100", "b200", "gb200", "b300", "gb300")):
        return "blackwell"
    if name.startswith(("h100", "h200", "h800", "h20", "gh200")):
        return "hopper"
    if name.startswith("v100"):
        return "volta"
    return "ampere"


def has_nvls(gpu_name: str, intra_kind: str) -> bool:
    """NVLink SHARP: NVSwitch gen 3 or later, i.e. Hopper or Blackwell GPUs on an NVSwitch
    (HGX/DGX H100, H200, H800, B200); NCCL enables NVLS there by default (NCCL ≥ 2.17)."""
    return intra_kind == "nvswitch" and arch_of(gpu_name) in ("hopper", "blackwell")


@dataclass(frozen=True)
class NcclSystem:
    """What NCCL's model sees of a communicator: ranks, nodes, GPU class, and the bandwidths
    of its topology graph per GPU (GB/s, per direction)."""

    n_ranks: int
    n_nodes: int
    arch: Arch
    intra_GBps: float
    inter_GBps: float
    nvls: bool  # NVLink SHARP available (NVSwitch gen 3+ on Hopper/Blackwell HGX)

    @property
    def ppn(self) -> float:
        return self.n_ranks / self.n_nodes


@dataclass(frozen=True)
class Choice:
    """One (algorithm, protocol) and NCCL's model of it: latency, algorithm bandwidth, time."""

    algorithm: str
    protocol: str
    latency_us: float
    algbw_GBps: float
    time_us: float


def _log2i(x: int) -> int:
    return max(x, 1).bit_length() - 1


def _nsteps(kind: CollectiveKind, n: int) -> int:
    return 2 * (n - 1) if kind == "all_reduce" else n - 1


def enabled(kind: CollectiveKind, algorithm: str, protocol: str, sys: NcclSystem) -> bool:
    """Whether NCCL considers the pair (its ``ncclTopoTuneModel`` skips, ``bw = 0`` cases and
    ``updateCollCostTable``'s filters, CollNet off)."""
    one_node = sys.n_nodes == 1
    if algorithm in ("nvls", "nvls_tree") and (protocol != "Simple" or not sys.nvls):
        return False
    if algorithm == "nvls" and not one_node:  # multi-node NVLS needs CollNet
        return False
    if algorithm == "nvls_tree" and one_node:
        return False
    if algorithm == "tree" and kind != "all_reduce":
        return False
    if algorithm == "pat":  # AG/RS with one GPU per node only (ncclPatEnable)
        return kind != "all_reduce" and protocol == "Simple" and sys.ppn == 1 and not one_node
    return True


def _bus_bw_GBps(kind: CollectiveKind, algorithm: str, protocol: str, sys: NcclSystem) -> float:
    """The graph's bus bandwidth with tuning.cc's per-protocol refinements."""
    one_node = sys.n_nodes == 1
    graph_GBps = sys.intra_GBps if one_node else min(sys.intra_GBps, sys.inter_GBps)
    if algorithm in ("nvls", "nvls_tree"):
        intra = sys.intra_GBps * NVLS_EFFICIENCY[sys.arch]
        intra *= 2.0 if kind == "all_reduce" else (sys.ppn - 1) / sys.ppn
        inter = sys.intra_GBps if one_node else sys.inter_GBps
        if algorithm == "nvls_tree" and sys.n_nodes <= 2:
            inter *= 2.0
        return min(intra, inter)
    bw = graph_GBps
    idx = 0 if one_node else (1 if sys.n_nodes == 2 else 2)
    ll_max = LL_MAX_BW_ONE_NODE_GBPS[sys.arch] if one_node else LL_MAX_BW_NODES_GBPS[idx - 1]
    if algorithm == "ring" and protocol == "LL":
        bw = min(ll_max, bw * 0.5)
    if algorithm == "ring" and protocol == "LL128":
        bw *= 0.92
    if algorithm == "tree" and kind == "all_reduce":
        bw *= 0.92
    if algorithm == "tree" and protocol == "LL":
        bw = min(bw / 3.8, ll_max)
    if algorithm == "tree" and protocol == "LL128":
        bw *= 7.0 / 9.0 if one_node else 120.0 / 128.0
    if algorithm == "pat":
        bw *= 0.75
    return bw


def algorithm_bw_GBps(
    kind: CollectiveKind, algorithm: str, protocol: str, sys: NcclSystem
) -> float:
    """NCCL's ``comm->bandwidths``: bus bandwidth converted to algorithm bandwidth (ring and
    NVLS × nRanks/nsteps, tree × 1/2; AG/RS of other algorithms are left as they are)."""
    bw = _bus_bw_GBps(kind, algorithm, protocol, sys)
    if algorithm == "ring" or (kind == "all_reduce" and algorithm in ("nvls", "nvls_tree")):
        bw *= sys.n_ranks / _nsteps(kind, sys.n_ranks)
    elif algorithm == "tree":
        bw *= 0.5
    return bw


def latency_us(kind: CollectiveKind, algorithm: str, protocol: str, sys: NcclSystem) -> float:
    """NCCL's ``comm->latencies``: base latency plus per-hop latencies of the algorithm."""
    p = PROTOCOLS.index(protocol)
    n, nodes = sys.n_ranks, sys.n_nodes
    ppn = n // nodes
    intra = HW_LATENCY_US["nvlink"][algorithm][p]
    net_algo = "tree" if ppn == 1 else algorithm  # ppn = 1: latencies fully exposed
    inter = HW_LATENCY_US["net"][net_algo][p]
    lat = BASE_LATENCY_US[algorithm][p]
    if algorithm == "ring":
        if nodes > 1:  # inter-node rings still launch nsteps × the net overhead
            intra = max(intra, NET_OVERHEAD_US * (3 if protocol == "Simple" else 1))
        nsteps = _nsteps(kind, n)
        inter_steps = 0 if nodes == 1 else (2 * (nodes - 1) if kind == "all_reduce" else nodes - 1)
        return lat + (nsteps - inter_steps) * intra + inter_steps * inter
    if algorithm == "tree":
        return lat + 2 * ((ppn - 1) * intra + _log2i(nodes) * inter)
    if algorithm == "nvls":
        return intra + (inter if nodes > 1 else 0.0)
    if algorithm == "nvls_tree":
        return lat + intra + 2 * _log2i(nodes) * inter
    # pat
    return lat + _log2i(nodes) * (inter / 3.5) + n * 2.8


def nccl_time_us(
    kind: CollectiveKind, algorithm: str, protocol: str, nbytes: float, sys: NcclSystem
) -> float:
    """``ncclTopoGetAlgoTime`` for one operation: latency + nBytes / (1000 · algbw), with the
    tree correction factor and the ring's plateau factor (1.4 on ≥ sm80) across nodes."""
    bw = algorithm_bw_GBps(kind, algorithm, protocol, sys)
    lat = latency_us(kind, algorithm, protocol, sys)
    log_size = _log2i(int(nbytes) >> 6) if nbytes >= 64 else -1
    if algorithm == "tree" and kind == "all_reduce" and 0 <= log_size < TREE_CORRECTION_BUCKETS:
        bw *= TREE_CORRECTION[protocol][log_size]
    if (
        algorithm == "ring"
        and protocol == "Simple"
        and sys.n_nodes > 1
        and kind == "all_reduce"
        and nbytes / sys.n_ranks >= 64
    ):
        lat *= 1.9 if sys.arch == "volta" else 1.4
    return lat + nbytes / (1000.0 * bw)


def time_us(
    kind: CollectiveKind, algorithm: str, protocol: str, nbytes: float, sys: NcclSystem
) -> float:
    """NCCL's predicted time made non-decreasing in size: the least ``nccl_time_us`` of any
    message of at least ``nbytes`` (only the tree's correction factors make them differ)."""
    t = nccl_time_us(kind, algorithm, protocol, nbytes, sys)
    if algorithm != "tree" or nbytes < 64:
        return t
    for k in range(_log2i(int(nbytes) >> 6) + 1, TREE_CORRECTION_BUCKETS + 1):
        t = min(t, nccl_time_us(kind, algorithm, protocol, float(64 << k), sys))
    return t


def choices(
    kind: CollectiveKind, nbytes: float, sys: NcclSystem, algorithms: tuple[str, ...] = ALGORITHMS
) -> list[Choice]:
    """Every enabled (algorithm, protocol) among ``algorithms`` with its modelled time, in
    NCCL's order."""
    out = []
    for a in ALGORITHMS:
        if a not in algorithms:
            continue
        for p in PROTOCOLS:
            if not enabled(kind, a, p, sys):
                continue
            bw = algorithm_bw_GBps(kind, a, p, sys)
            if bw <= 0:
                continue
            lat = latency_us(kind, a, p, sys)
            out.append(Choice(a, p, lat, bw, time_us(kind, a, p, nbytes, sys)))
    return out


def choose(
    kind: CollectiveKind, nbytes: float, sys: NcclSystem, algorithms: tuple[str, ...] = ALGORITHMS
) -> Choice:
    """NCCL's pick (``topoGetAlgoInfo``): the least time, ties to the first in NCCL's order;
    ``algorithms`` restricts the candidates as ``NCCL_ALGO`` does."""
    cands = choices(kind, nbytes, sys, algorithms)
    if not cands:
        raise ValueError(f"no NCCL algorithm among {algorithms} runs {kind} on this system")
    best = cands[0]
    for c in cands[1:]:
        if c.time_us < best.time_us:
            best = c
    return best
