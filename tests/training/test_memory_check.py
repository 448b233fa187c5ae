"""moesim.training.memory_check: a model too large to train here is refused before torch."""

from __future__ import annotations

from pathlib import Path

from moesim.training.memory_check import available_host_bytes, training_memory_problem


def test_sixteen_bytes_per_parameter_must_fit() -> None:
    assert training_memory_problem(10**9, 16 * 10**9, "here") is None
    msg = training_memory_problem(10**9 + 10**8, 16 * 10**9, "here")
    assert msg is not None and "need 17.6 GB" in msg and "here has 16.0 GB free" in msg
    big = training_memory_problem(100_000_000_000, 64 * 10**9, "this machine")
    assert big is not None
    assert "100.00 B parameters need 1,600.0 GB" in big and "64.0 GB free" in big
    assert training_memory_problem(10**12, None, "here") is None  # unknown memory: no guess


def test_mem_available_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable: 2048 kB\n")
    assert available_host_bytes(meminfo) == 2048 * 1024
