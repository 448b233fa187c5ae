"""Streams, processor-shared links and interval arithmetic."""

from __future__ import annotations

import pytest
import simpy

from moesim.sim.engine import Rank, Rendezvous, run_to_completion
from moesim.sim.shared_link import SharedLink
from moesim.sim.spans import exposed_length_s, union_length_s


def _finish_times(starts_and_work: list[tuple[float, float]]) -> list[float]:
    env = simpy.Environment()
    link = SharedLink(env)
    done = [0.0] * len(starts_and_work)

    def job(i, start, work):
        yield env.timeout(start)
        yield from link.transfer(work)
        done[i] = env.now

    for i, (s, w) in enumerate(starts_and_work):
        env.process(job(i, s, w))
    env.run()
    return done


def test_alone_transfer_takes_its_time():
    assert _finish_times([(0.0, 2.0)]) == [2.0]


def test_two_concurrent_transfers_share_the_link():
    assert _finish_times([(0.0, 1.0), (0.0, 1.0)]) == pytest.approx([2.0, 2.0])


def test_late_arrival_slows_the_first_and_speeds_up_after_it_leaves():
    # job 0: 2 s of work from t=0; job 1: 0.5 s of work from t=1.
    # 0..1: job 0 alone (1 s left); then both at half speed: job 1 done at 2.0 (job 0 has
    # 0.5 left), job 0 alone again: done at 2.5
    assert _finish_times([(0.0, 2.0), (1.0, 0.5)]) == pytest.approx([2.5, 2.0])


def test_compute_stream_serialises_and_comm_overlaps():
    env = simpy.Environment()
    r = Rank(env, 0, "r0")

    def a():
        yield from r.compute("x", 1.0)

    def b():
        yield from r.compute("y", 1.0)

    def c():
        yield from r.comm("ep", "z", "all_to_all", 1.5, "network")

    for g in (a, b, c):
        env.process(g())
    env.run()
    ends = sorted(iv[4] for iv in r.intervals)
    assert ends == [1.0, 1.5, 2.0]
    comm = [(iv[3], iv[4]) for iv in r.intervals if iv[0] != "compute"]
    comp = [(iv[3], iv[4]) for iv in r.intervals if iv[0] == "compute"]
    assert exposed_length_s(comm, comp) == 0.0


def test_rendezvous_waits_for_the_whole_group():
    env = simpy.Environment()
    rv = Rendezvous(env)
    ranks = [Rank(env, g, f"r{g}", rv) for g in range(3)]

    def prog(rank, delay):
        yield env.timeout(delay)
        yield from rank.comm("ep", "a2a", "all_to_all", 1.0, "nvlink", ("k",), 3)

    for rank, d in zip(ranks, (0.0, 0.5, 2.0), strict=True):
        env.process(prog(rank, d))
    env.run()
    assert [r.intervals[0][4] for r in ranks] == [3.0, 3.0, 3.0]


def test_union_and_exposed_lengths():
    assert union_length_s([(0, 2), (1, 3), (5, 6)]) == 4
    assert exposed_length_s([(0, 4)], [(1, 2), (3, 5)]) == 2


def _two_ranks() -> tuple[simpy.Environment, Rank, Rank]:
    env = simpy.Environment()
    rv = Rendezvous(env)
    return env, Rank(env, 0, "g0", rv), Rank(env, 1, "g1", rv)


def test_collectives_issued_in_different_orders_do_not_deadlock():
    """Two collectives on one stream, issued A then B on one rank and B then A on the other
    (DualPipe's overlapped chunks can do this): both complete."""
    env, r0, r1 = _two_ranks()

    def issue(rank: Rank, first: str, second: str):
        a = rank.start(rank.comm("ep", first, "all_to_all", 1.0, "nvlink", (first,), 2))
        b = rank.start(rank.comm("ep", second, "all_to_all", 1.0, "nvlink", (second,), 2))
        yield simpy.AllOf(env, [a, b])

    procs = {0: env.process(issue(r0, "A", "B")), 1: env.process(issue(r1, "B", "A"))}
    run_to_completion(env, procs)
    assert env.now == pytest.approx(2.0)  # one stream: the two run one after the other


def test_a_rank_left_waiting_is_reported_as_a_deadlock():
    env, r0, _ = _two_ranks()
    lonely = r0.comm("ep", "a2a", "all_to_all", 1.0, "nvlink", ("x",), 2)  # peer never comes
    with pytest.raises(RuntimeError, match=r"deadlock.*GPUs \[0\]"):
        run_to_completion(env, {0: env.process(lonely)})


def _slowdowns(queued_behind_s: float, pair: bool) -> list[float]:
    """Issue a 5 s all-to-all, then at once a 2 s kernel (the shared experts), on a rank whose
    communication kernels take half its SMs; with ``queued_behind_s`` the compute stream is
    busy that long first. Returns the shared experts' stretch factor(s)."""
    from moesim.sim.dualpipe import ChunkView

    env = simpy.Environment()
    rank = Rank(env, 0, "r", comm_sm_slowdown=2.0)
    view = ChunkView(rank, {}, [0]) if pair else rank

    def program():
        if queued_behind_s:
            rank.start(rank.compute_ops([("earlier", queued_behind_s)]))
            yield env.timeout(0)  # the earlier kernel takes the compute stream first
        dispatch = view.issue(view.comm("ep", "dispatch", "all_to_all", 5.0, "network"))
        yield from view.compute_ops([("shared_experts", 2.0)])
        yield dispatch

    run_to_completion(env, {0: env.process(program())})
    return [e[5] for e in rank.log if len(e) == 6 and e[1][0][0] == "shared_experts"]


@pytest.mark.parametrize("pair", [False, True])
@pytest.mark.parametrize("queued_behind_s", [0.0, 1.0])
def test_a_kernel_issued_after_an_all_to_all_runs_on_the_sms_left(queued_behind_s, pair):
    """The all-to-all holds its SMs from issue, so the kernel issued right after it is
    stretched whether it found the compute stream free or waited for it (it was stretched
    only in the second case while the collective first ran at SimPy's Initialize event)."""
    assert _slowdowns(queued_behind_s, pair) == [2.0]


def test_a_kernel_after_the_all_to_all_ended_runs_at_full_speed():
    env = simpy.Environment()
    rank = Rank(env, 0, "r", comm_sm_slowdown=2.0)

    def program():
        yield rank.issue(rank.comm("ep", "dispatch", "all_to_all", 1.0, "network"))
        yield from rank.compute_ops([("experts", 2.0)])

    run_to_completion(env, {0: env.process(program())})
    assert [e[5] for e in rank.log if len(e) == 6] == [1.0]


def test_an_issued_collective_with_nothing_to_move_ends_at_once():
    env = simpy.Environment()
    rank = Rank(env, 0, "r", comm_sm_slowdown=2.0)

    def program():
        yield rank.issue(rank.comm("ep", "dispatch", "all_to_all", 0.0, "network"))
        yield from rank.compute_ops([("experts", 2.0)])

    run_to_completion(env, {0: env.process(program())})
    assert env.now == 2.0 and [e[5] for e in rank.log if len(e) == 6] == [1.0]
