"""Chrome / Perfetto trace of a simulation: one process per simulated rank, one thread per
stream (compute, tp, ep, pp, dp), one complete ("X") event per op.

Open the file at https://ui.perfetto.dev or chrome://tracing. Each event's ``cat`` is the
time-breakdown category (compute, optimizer, all_to_all, tp_comm, dp_comm, pp_comm), so reports
can re-derive the breakdown from the trace alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moesim.file_io import write_atomic
from moesim.sim.engine import Rank

STREAM_ORDER = ("compute", "tp", "ep", "pp", "dp", "ep_bwd", "pp_bwd", "cp")


def chrome_trace(ranks: list[Rank]) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    for rank in ranks:
        events.append(
            {"name": "process_name", "ph": "M", "pid": rank.gpu, "args": {"name": rank.label}}
        )
        for tid, stream in enumerate(STREAM_ORDER):
            events.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": rank.gpu,
                    "tid": tid,
                    "args": {"name": stream},
                }
            )
        for stream, name, category, start_s, end_s in rank.intervals:
            events.append(
                {
                    "name": name,
                    "cat": category,
                    "ph": "X",
                    "pid": rank.gpu,
                    "tid": STREAM_ORDER.index(stream),
                    "ts": start_s * 1e6,
                    "dur": (end_s - start_s) * 1e6,
                }
            )
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_trace(ranks: list[Rank], path: str | Path) -> None:
    """All or nothing (moesim.file_io.write_atomic): a full disk leaves no partial trace."""
    write_atomic(path, json.dumps(chrome_trace(ranks)))
