"""A request trace: when each request arrived and its prompt and output token counts.

``workload.trace`` names a CSV or JSONL file with one request a row, in one of two layouts:

- moesim's: ``arrival_s, prompt_len, output_len`` (seconds from the trace's start);
- the Azure LLM inference trace's (github.com/Azure/AzurePublicDataset, data/
  AzureLLMInferenceTrace_code.csv and _conv.csv): ``TIMESTAMP, ContextTokens, GeneratedTokens``,
  TIMESTAMP a date and time (``2023-11-16 18:17:03.9799600``); arrivals are taken from the first
  row's time.

Rows are sorted by arrival. A relative path is relative to the scenario file.
"""

from __future__ import annotations

import csv
import functools
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

#: (arrival, prompt tokens, output tokens) column names of each accepted layout
LAYOUTS = {
    "moesim": ("arrival_s", "prompt_len", "output_len"),
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
}


@dataclass(frozen=True)
class RequestTrace:
    """The requests of a trace, sorted by arrival (seconds from the first request)."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def span_s(self) -> float:
        """Seconds from the first arrival to the last."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0


@functools.lru_cache(maxsize=16)
def read_request_trace(path: str) -> RequestTrace:
    """Read a trace file (cached: sweeps replay it many times); a bad row is an error naming
    the file, the row and the fix."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"workload.trace '{path}' is not a readable file: give an existing path")
    text = p.read_text(encoding="utf-8", errors="replace")
    rows: list[dict[str, Any]]
    if p.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(line for line in text.splitlines() if line.strip()))
    if not rows:
        raise ValueError(f"workload.trace '{path}' holds no requests")
    names = set(rows[0])
    layout = next((cols for cols in LAYOUTS.values() if set(cols) <= names), None)
    if layout is None:
        wanted = " or ".join(", ".join(c) for c in LAYOUTS.values())
        raise ValueError(f"workload.trace '{path}' has columns {sorted(names)}; it needs {wanted}")
    t_col, p_col, o_col = layout
    times, prompts, outputs = [], [], []
    for i, row in enumerate(rows, start=2 if p.suffix != ".jsonl" else 1):
        try:
            t = _seconds(row[t_col])
            n_p, n_o = int(float(row[p_col])), int(float(row[o_col]))
        except (TypeError, ValueError, KeyError):
            raise ValueError(
                f"workload.trace '{path}', row {i}: {row!r} is not (time, prompt tokens, "
                "output tokens)"
            ) from None
        if n_p < 1 or n_o < 1:
            raise ValueError(
                f"workload.trace '{path}', row {i}: prompt and output need at least one token "
                f"(got {n_p}, {n_o})"
            )
        times.append(t)
        prompts.append(n_p)
        outputs.append(n_o)
    t_arr = np.asarray(times, dtype=float)
    order = np.argsort(t_arr, kind="stable")
    t_arr = t_arr[order]
    if t_col == "TIMESTAMP":
        t_arr = t_arr - t_arr[0]
    elif t_arr[0] < 0:
        raise ValueError(f"workload.trace '{path}': arrival_s must be ≥ 0 (got {t_arr[0]:g})")
    return RequestTrace(
        t_arr,
        np.asarray(prompts, dtype=np.int64)[order],
        np.asarray(outputs, dtype=np.int64)[order],
    )


_EPOCH = datetime(1970, 1, 1)


def _seconds(value: object) -> float:
    """A number of seconds, or a date-time (Azure's TIMESTAMP) as seconds since the epoch."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        return (datetime.fromisoformat(text) - _EPOCH).total_seconds()
