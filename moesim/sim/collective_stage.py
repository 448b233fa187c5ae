"""The ``collective`` stage: one collective over all GPUs of the cluster, timed alone as
nccl-tests times it, with nccl-tests' bandwidth definitions (its doc/PERFORMANCE.md):

- ``algorithm_bandwidth_GBps`` = size / time (1e9 bytes/s);
- ``bus_bandwidth_GBps`` = algbw · 2(n−1)/n for all-reduce, algbw · (n−1)/n for all-gather,
  reduce-scatter and all-to-all.

All-reduce, all-gather and reduce-scatter go through NCCL's own algorithm/protocol choice and
model (``collective_timing.nccl_time_s``; ``simulation.all_reduce`` forces the all-reduce's
algorithm); the all-to-all is NCCL's grouped point-to-point (size/n to every peer) on the flow
or alpha-beta machinery of ``collectives``, each flow paying its route's latency."""

from __future__ import annotations

from moesim.analytic.flops import token_flops
from moesim.analytic.params import count_params
from moesim.sim.collective_timing import CollectiveTimer, nccl_time_s
from moesim.sim.collectives import all_to_all_direct
from moesim.sim.costmodel import CostModel
from moesim.sim.nccl_tuning import ALGORITHMS, arch_of, has_nvls
from moesim.sim.network import Topology
from moesim.sim.profile import resolve_profile
from moesim.specs import CollectiveWorkload, Result, Scenario


def bus_factor(collective: str, n: int) -> float:
    """nccl-tests' busbw / algbw: 2(n−1)/n for all-reduce, (n−1)/n for the others."""
    return (2.0 if collective == "all_reduce" else 1.0) * (n - 1) / n


def simulate_collective(scenario: Scenario) -> Result:
    s = scenario
    w = s.workload
    assert isinstance(w, CollectiveWorkload)
    profile = resolve_profile(s.simulation.profile, s.cluster.gpu.name)
    cm = CostModel(s.cluster.gpu, profile, s.precision.compute)
    topo = Topology.from_cluster(s.cluster, cm.link_fraction("nvlink"), cm.link_fraction("network"))
    group = tuple(range(topo.gpus))
    n = len(group)
    gpu = s.cluster.gpu
    extra: dict[str, object] = {
        "collective": w.collective,
        "size_bytes": w.size_bytes,
        "network": s.simulation.network,
        "profile": profile.device,
    }
    if n <= 1:
        time_s = 0.0
    elif w.collective == "all_to_all":
        per_peer = w.size_bytes / n
        mat = [[0.0 if i == j else per_peer for j in range(n)] for i in range(n)]
        timer = CollectiveTimer(topo, s.simulation.network, cm.collective_overhead_s)
        time_s = timer.time_s(("a2a", n, w.size_bytes), lambda: all_to_all_direct(group, mat))
        extra.update(algorithm="p2p", protocol="Simple")
    else:
        forced = s.simulation.all_reduce if w.collective == "all_reduce" else "auto"
        algos = ALGORITHMS if forced == "auto" else (forced,)
        arch, nvls = arch_of(gpu.name), has_nvls(gpu.name, s.cluster.intra.kind)
        t, choice = nccl_time_s(topo, group, w.collective, w.size_bytes, arch, nvls, algos)
        time_s = t + cm.collective_overhead_s
        assert choice is not None
        extra.update(
            algorithm=choice.algorithm,
            protocol=choice.protocol,
            nccl_latency_us=choice.latency_us,
            nccl_algorithm_bandwidth_GBps=choice.algbw_GBps,
        )
    algbw = w.size_bytes / time_s / 1e9 if time_s > 0 else 0.0
    counts = count_params(s.model)
    out = Result(
        name=s.name,
        stage=w.stage,
        gpus=n,
        params_total=float(counts.total_main),
        params_active=float(counts.active_main),
        model_flops_per_token=token_flops(s.model, s.model.max_seq_len).model_flops,
        step_time_s=time_s,
        time_breakdown_s={"compute": 0.0, "exposed_comm": time_s, "bubble": 0.0},
    )
    out.collective_time_s = time_s
    out.algorithm_bandwidth_GBps = algbw
    out.bus_bandwidth_GBps = algbw * bus_factor(w.collective, n) if n > 1 else 0.0
    for k, v in extra.items():
        setattr(out, k, v)
    return out
