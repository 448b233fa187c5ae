"""How many CPU threads torch's intra-op pool gets for ``moesim train``.

torch starts one thread per core it sees, which on a shared machine fights the other
processes: ``moesim train grpo`` took 77 s per step with torch's default on a busy 2-core
machine and 4.6 s with ``OMP_NUM_THREADS=1`` (issue 16). The count here is the CPUs this
process may run on (its affinity mask, capped by a cgroup CPU quota) less the load already on
them, at least 1; an explicit ``--threads`` or ``OMP_NUM_THREADS`` wins. No torch import: the
caller applies the count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    why: str  # said in the output: where the number came from


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 quota if any."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows: no affinity call
        n = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _load_1min() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def choose_threads(
    explicit: int | None = None,
    environ: Mapping[str, str] | None = None,
    cpus: int | None = None,
    load: float | None = None,
) -> ThreadChoice:
    """The thread count and its reason: ``--threads``, else OMP_NUM_THREADS, else the usable
    CPUs less the 1-minute load average (rounded), at least 1."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return ThreadChoice(explicit, "--threads")
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return ThreadChoice(int(omp), "OMP_NUM_THREADS")
    cpus = usable_cpus() if cpus is None else cpus
    load = _load_1min() if load is None else load
    free = max(1, min(cpus, cpus - round(load)))
    return ThreadChoice(
        free, f"{cpus} usable CPU{'s' if cpus != 1 else ''}, load {load:.1f}; --threads to set"
    )
