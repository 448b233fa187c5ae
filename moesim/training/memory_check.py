"""Whether a model can be trained here at all, before torch allocates it.

``moesim train`` builds the whole model in fp32 with AdamW: weights, gradients and two moments
are 16 bytes per parameter before any activation. A model YAML of 100 B parameters asked for
1.6 TB and was killed by the kernel's OOM killer after minutes (issue 16); this check says so
at once, from the parameter count (moesim.analytic) and the memory the machine has free.
"""

from __future__ import annotations

import os
from pathlib import Path

#: fp32 weights, gradients and AdamW's two moments (bytes per parameter)
TRAIN_BYTES_PER_PARAM = 16
MEMINFO = Path("/proc/meminfo")


def available_host_bytes(meminfo: Path = MEMINFO) -> int | None:
    """MemAvailable from /proc/meminfo, else free pages × page size, else None (unknown)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def training_memory_problem(params: int, available_bytes: int | None, where: str) -> str | None:
    """A message when ``params`` cannot be trained in ``available_bytes``; None when it can
    (or the memory is unknown)."""
    need = params * TRAIN_BYTES_PER_PARAM
    if available_bytes is None or need <= available_bytes:
        return None
    return (
        f"{params / 1e9:,.2f} B parameters need {need / 1e9:,.1f} GB to train (fp32 weights, "
        f"gradients and AdamW moments, 16 bytes each) and {where} has {available_bytes / 1e9:,.1f} "
        "GB free: moesim train is for small models (tiny-dense, tiny-moe); use `moesim simulate` "
        "for large ones"
    )
