"""moesim.training.threads: torch's thread count from the CPUs a process may use."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.training import threads
from moesim.training.threads import choose_threads, usable_cpus


def test_explicit_choices_win_in_order() -> None:
    env = {"OMP_NUM_THREADS": "3"}
    assert choose_threads(5, env, cpus=8, load=0.0).threads == 5
    assert choose_threads(None, env, cpus=8, load=0.0) == threads.ThreadChoice(3, "OMP_NUM_THREADS")
    # a malformed OMP_NUM_THREADS is ignored, not trusted
    assert choose_threads(None, {"OMP_NUM_THREADS": "0"}, cpus=8, load=0.0).threads == 8
    assert choose_threads(None, {"OMP_NUM_THREADS": "x"}, cpus=8, load=0.0).threads == 8


@pytest.mark.parametrize(
    ("cpus", "load", "expected"),
    [(2, 0.2, 2), (2, 1.4, 1), (2, 7.0, 1), (16, 3.6, 12), (1, 0.0, 1)],
)
def test_busy_cpus_are_left_to_their_owners(cpus: int, load: float, expected: int) -> None:
    choice = choose_threads(None, {}, cpus=cpus, load=load)
    assert choice.threads == expected
    assert f"{cpus} usable CPU" in choice.why and f"load {load:.1f}" in choice.why


def test_usable_cpus_follow_the_affinity_mask_and_the_cgroup_quota(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    cpu_max = tmp_path / "cpu.max"
    assert usable_cpus(cpu_max) == 4  # no cgroup file
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) == 4
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs of quota: 2 threads
    assert usable_cpus(cpu_max) == 2
