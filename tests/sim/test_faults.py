"""Stragglers in the simulated step (moesim/sim/faults.py and the engine's hooks): a slow GPU or
link never speeds a step, its delay reaches its peers through the rendezvous under full
fidelity, symmetric fidelity agrees, and the trace names the slow rank."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import simpy
from sim_scenarios import SMALL_MOE, build

from moesim.sim.engine import Rank, Rendezvous
from moesim.sim.faults import rank_faults
from moesim.sim.grid import Grid
from moesim.sim.run import simulate

# llama-3-8b on two 8-GPU nodes: tp 2 inside a node, pp 2 (one stage per node), dp 4
DENSE: dict[str, Any] = {
    "name": "dense-16",
    "model": "llama-3-8b",
    "cluster": {"gpu": "h100-sxm", "nodes": 2, "gpus_per_node": 8},
    "parallel": {"tp": 2, "pp": 2, "zero_stage": 1},
    "workload": {"stage": "pretrain", "seq_len": 1024, "global_batch": 16},
}


def step_s(base: dict, fidelity: str, faults: list) -> float:
    r = simulate(build(base, simulation={"fidelity": fidelity}, faults=faults))
    assert r.step_time_s is not None
    return r.step_time_s


@pytest.mark.parametrize("fidelity", ["symmetric", "full"])
def test_a_slow_gpu_never_speeds_a_step(fidelity: str) -> None:
    healthy = step_s(DENSE, fidelity, [])
    previous = healthy
    for factor in (1.0, 1.1, 1.5, 3.0):
        t = step_s(DENSE, fidelity, [{"kind": "slow_gpu", "rank": 5, "factor": factor}])
        assert t >= previous - 1e-12
        previous = t
    assert step_s(DENSE, fidelity, [{"kind": "slow_gpu", "rank": 5, "factor": 1.0}]) == healthy
    assert previous > healthy * 1.3  # 3× slower compute on a synchronous stage shows


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "slow_link", "node": 1, "factor": 4.0},
        {"kind": "slow_link", "rank": 9, "link": "nvlink", "factor": 4.0},
    ],
)
@pytest.mark.parametrize("fidelity", ["symmetric", "full"])
def test_a_slow_link_never_speeds_a_step(fidelity: str, fault: dict) -> None:
    healthy = step_s(DENSE, fidelity, [])
    mild = step_s(DENSE, fidelity, [{**fault, "factor": 1.5}])
    worse = step_s(DENSE, fidelity, [fault])
    assert healthy <= mild <= worse


def test_a_slow_nvlink_slows_the_tp_collectives() -> None:
    healthy = step_s(DENSE, "full", [])
    t = step_s(DENSE, "full", [{"kind": "slow_link", "rank": 9, "link": "nvlink", "factor": 4}])
    assert t > healthy * 1.1  # tp 2 all-gathers / reduce-scatters every layer on NVLink


def test_the_delay_reaches_the_peers_through_the_rendezvous() -> None:
    """Full fidelity: a slow GPU in stage 0 holds up its TP peer (same TP group) at every TP
    collective, so the peer's compute finishes no earlier than the slow rank's allows, and
    ranks of the stage idle (imbalance) while a healthy run has none of it."""
    s = build(DENSE, simulation={"fidelity": "full"}, faults=[
        {"kind": "slow_gpu", "rank": 4, "factor": 2.0}])  # fmt: skip
    r = simulate(s)
    healthy = simulate(build(DENSE, simulation={"fidelity": "full"}))
    assert r.time_breakdown_s["imbalance"] > healthy.time_breakdown_s["imbalance"] + 1e-3


def test_tp_peer_waits_for_the_slow_rank(tmp_path: Path) -> None:
    trace = tmp_path / "t.json"
    s = build(DENSE, simulation={"fidelity": "full"}, faults=[
        {"kind": "slow_gpu", "rank": 4, "factor": 2.0}])  # fmt: skip
    simulate(s, trace_path=trace)
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert "slow gpu ×2" in names[4] and "slow" not in names[5]

    def tp_starts(pid: int) -> list[float]:
        return sorted(e["ts"] for e in events if e.get("cat") == "tp_comm" and e["pid"] == pid)

    def busy_us(pid: int) -> float:
        return sum(e["dur"] for e in events if e.get("cat") == "compute" and e["pid"] == pid)

    slow, peer, other = tp_starts(4), tp_starts(5), tp_starts(6)
    assert slow and slow == peer  # the peer (same TP group) starts each collective with it
    assert max(p - o for p, o in zip(peer, other, strict=True)) > 0  # later than a healthy group
    assert busy_us(4) == pytest.approx(2 * busy_us(5), rel=0.05)  # twice the compute


@pytest.mark.parametrize("base", [DENSE, SMALL_MOE], ids=["dense", "moe"])
@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "slow_gpu", "rank": 3, "factor": 1.5},
        {"kind": "slow_link", "rank": 3, "link": "nvlink", "factor": 4.0},
    ],
    ids=["slow_gpu", "slow_nvlink"],
)
def test_symmetric_agrees_with_full(base: dict, fault: dict) -> None:
    sym, full = step_s(base, "symmetric", [fault]), step_s(base, "full", [fault])
    assert sym == pytest.approx(full, rel=0.03)


def test_symmetric_representative_takes_the_slowest_of_its_stage() -> None:
    s = build(DENSE, faults=[
        {"kind": "slow_gpu", "rank": 13, "factor": 1.7},
        {"kind": "slow_gpu", "rank": 9, "factor": 1.2},
        {"kind": "slow_link", "node": 1, "factor": 3.0},
    ])  # fmt: skip
    grid = Grid.of(s.parallel)
    stage0 = rank_faults(s, grid, grid.gpu(0, 0), "symmetric")
    stage1 = rank_faults(s, grid, grid.gpu(1, 0), "symmetric")
    assert stage0.healthy
    assert stage1.compute_factor == 1.7 and stage1.link_factor == {"network": 3.0}
    assert rank_faults(s, grid, 9, "full").compute_factor == 1.2
    assert rank_faults(s, grid, 8, "full").compute_factor == 1.0  # node 1: only its link


def test_rendezvous_fires_with_the_slowest_members_factor() -> None:
    env = simpy.Environment()
    rz = Rendezvous(env)
    got: list[float] = []

    def member(delay_s: float, factor: float):
        yield env.timeout(delay_s)
        got.append((yield rz.arrive(("g",), 3, factor)))

    for d, f in ((0.0, 1.0), (1.0, 2.5), (2.0, 1.2)):
        env.process(member(d, f))
    env.run()
    assert got == [2.5, 2.5, 2.5]


def test_a_slow_link_stretches_a_collective_for_every_member() -> None:
    env = simpy.Environment()
    rz = Rendezvous(env)
    ranks = [Rank(env, g, f"gpu{g}", rz) for g in range(2)]
    ranks[1].link_factor = {"network": 3.0}
    for r in ranks:
        env.process(r.comm("dp", "ar", "dp_comm", 1.0, "network", ("k",), 2))
    env.run()
    assert [r.intervals[0][4] for r in ranks] == [3.0, 3.0]


@pytest.mark.parametrize("fidelity", ["symmetric", "full"])
def test_a_slow_gpu_slows_a_dualpipe_step(fidelity: str) -> None:
    """DualPipe runs its kernels through its own chunk views: the slow GPU must stretch them
    too (it once did not: the step was as fast as a healthy one)."""
    dual = {**DENSE, "parallel": {**DENSE["parallel"], "schedule": "dualpipe"}}
    dual["workload"] = {**DENSE["workload"], "global_batch": 32}
    healthy = step_s(dual, fidelity, [])
    slow = step_s(dual, fidelity, [{"kind": "slow_gpu", "rank": 5, "factor": 2.0}])
    assert slow > healthy * 1.7  # 1.86× here; 1.37× when its chunk kernels were not stretched
