"""Token counts that vary from request to request: a prompt's, an output's, a GRPO response's.

Real serving traffic and RL rollouts are not one length: chat prompts and answers are heavy-tailed
(a few very long ones), and a synchronous rollout waits for its longest response. A length field
(``prompt_len``, ``output_len``, ``response_len``) therefore takes either a number (every request
the same, as before) or a distribution::

    output_len: 256
    output_len: {distribution: lognormal, mean: 256, p99: 2048, max: 8192}
    output_len: {distribution: uniform, min: 16, max: 512}
    output_len: {distribution: empirical, values: [12, 80, 80, 512]}
    output_len: {distribution: empirical, file: lengths.csv, column: output_len}

A lognormal is fixed by its mean and 99th percentile (the two figures serving papers quote);
``max`` caps draws as an engine's ``max_tokens`` does. Draws are seeded: the same seed gives the
same lengths, bit for bit. An empirical ``file`` is a CSV or JSONL with a ``column`` (needed
when it has more than one), or a plain list with one number per line; a relative path is
relative to the scenario file (the loader passes its folder as ``base_dir``).
"""

from __future__ import annotations

import csv
import functools
import json
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from moesim.specs.base import PositiveFloat, PositiveInt, Spec

#: z of the 99th percentile of a standard normal
_Z99 = NormalDist().inv_cdf(0.99)
#: the quantile taken as the largest length when a lognormal has no ``max`` (memory sizing)
UNCAPPED_MAX_QUANTILE = 0.9999
#: quantile grid used for the mean of a capped lognormal (midpoints: exact to ~1e-4 relative)
_MEAN_GRID_POINTS = 4096


class LengthDistribution(Spec):
    """A distribution of token counts (see the module docstring for the forms)."""

    distribution: Literal["fixed", "uniform", "lognormal", "empirical"] = Field(
        description="fixed (mean), uniform (min..max), lognormal (mean, p99, optional max) or "
        "empirical (values, or a file)"
    )
    mean: PositiveFloat | None = Field(None, description="mean tokens (fixed, lognormal)")
    p99: PositiveFloat | None = Field(
        None, description="99th-percentile tokens (lognormal; above the mean, at most 14.9× it)"
    )
    min: PositiveInt | None = Field(None, description="smallest length (uniform; a floor else)")
    max: PositiveInt | None = Field(None, description="largest length (uniform; a cap else)")
    values: list[PositiveInt] | None = Field(
        None, description="empirical: the lengths, drawn with equal probability"
    )
    file: str | None = Field(
        None,
        description="empirical: a CSV/JSONL file with a `column`, or one number per line; "
        "relative to the scenario file",
    )
    column: str | None = Field(None, description="empirical file: the column to read")

    @field_validator("file")
    @classmethod
    def _absolute_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        base = (info.context or {}).get("base_dir") if info.context else None
        if value is None or Path(value).is_absolute() or base is None:
            return value
        return str(Path(base) / value)

    @model_validator(mode="after")
    def _check(self) -> LengthDistribution:
        need = {
            "fixed": ("mean",),
            "uniform": ("min", "max"),
            "lognormal": ("mean", "p99"),
            "empirical": (),
        }[self.distribution]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(
                f"a {self.distribution} length needs {' and '.join(missing)} "
                f"(e.g. {_EXAMPLES[self.distribution]})"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"length min ({self.min}) is above max ({self.max}): swap them")
        if self.distribution == "lognormal":
            ratio = self.p99 / self.mean
            if not 1 < ratio <= math.exp(_Z99**2 / 2):
                raise ValueError(
                    f"a lognormal length's p99 must be above its mean and at most "
                    f"{math.exp(_Z99**2 / 2):.1f}× it (got p99/mean = {ratio:.3g}); for a "
                    "heavier tail give an empirical distribution"
                )
        if self.distribution == "empirical":
            if (self.values is None) == (self.file is None):
                raise ValueError(
                    "an empirical length needs exactly one of values (a list) or file (a path)"
                )
            if self.values is not None and not self.values:
                raise ValueError("an empirical length's values are empty: give at least one")
            if self.file is not None:
                _read_lengths(self.file, self.column)  # an unreadable file is an error now
        return self

    # -- what the simulator asks ---------------------------------------------------------------
    def empirical_values(self) -> np.ndarray:
        raw = self.values if self.values is not None else _read_lengths(self.file, self.column)
        return self._clip(np.asarray(raw, dtype=np.int64))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` seeded draws (int64 tokens, each ≥ 1)."""
        if self.distribution == "fixed":
            return self._clip(np.full(n, round(self.mean), dtype=np.int64))
        if self.distribution == "uniform":
            return rng.integers(self.min, self.max + 1, size=n, dtype=np.int64)
        if self.distribution == "lognormal":
            mu, sigma = self._lognormal_params()
            return self._clip(np.rint(rng.lognormal(mu, sigma, size=n)).astype(np.int64))
        values = self.empirical_values()
        return values[rng.integers(0, len(values), size=n)]

    def quantile(self, q: float) -> float:
        """The q-quantile of the length (0 < q < 1), caps applied."""
        if self.distribution == "fixed":
            return float(self._clip(np.array([round(self.mean)]))[0])
        if self.distribution == "uniform":
            return self.min + q * (self.max - self.min)
        if self.distribution == "lognormal":
            mu, sigma = self._lognormal_params()
            x = math.exp(mu + sigma * NormalDist().inv_cdf(q))
            return float(min(max(x, self.min or 1), self.max or math.inf))
        return float(np.quantile(self.empirical_values(), q))

    def mean_tokens(self) -> float:
        """The expected length, caps applied."""
        if self.distribution == "fixed":
            return self.quantile(0.5)
        if self.distribution == "uniform":
            return (self.min + self.max) / 2
        if self.distribution == "lognormal":
            if self.min is None and self.max is None:
                return self.mean
            qs = (np.arange(_MEAN_GRID_POINTS) + 0.5) / _MEAN_GRID_POINTS
            return float(np.mean([self.quantile(q) for q in qs]))
        return float(self.empirical_values().mean())

    def max_tokens(self) -> int:
        """The largest length a request can have (what memory must hold for one sequence)."""
        if self.max is not None:
            return self.max
        if self.distribution == "lognormal":
            return math.ceil(self.quantile(UNCAPPED_MAX_QUANTILE))
        if self.distribution == "fixed":
            return round(self.mean)
        return int(self.empirical_values().max())

    def _lognormal_params(self) -> tuple[float, float]:
        """(mu, sigma) with exp(mu + sigma²/2) = mean and exp(mu + z99·sigma) = p99: the smaller
        root of sigma²/2 − z99·sigma + ln(p99/mean) = 0 (the larger one is a second, wider
        lognormal with the same two figures, whose mode is far below its median)."""
        log_ratio = math.log(self.p99 / self.mean)
        sigma = _Z99 - math.sqrt(max(_Z99**2 - 2 * log_ratio, 0.0))
        return math.log(self.mean) - sigma**2 / 2, sigma

    def _clip(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, self.min or 1, self.max or np.iinfo(np.int64).max)


_EXAMPLES = {
    "fixed": "{distribution: fixed, mean: 256}",
    "uniform": "{distribution: uniform, min: 16, max: 512}",
    "lognormal": "{distribution: lognormal, mean: 256, p99: 2048}",
    "empirical": "{distribution: empirical, values: [12, 80, 512]}",
}

#: a length field: a number (every request alike) or a distribution
Length = PositiveInt | LengthDistribution


@functools.lru_cache(maxsize=32)
def _read_lengths(path: str, column: str | None) -> tuple[int, ...]:
    """The positive integers of a lengths file (cached: sweeps draw from it many times)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"length file '{path}' is not a readable file: give an existing path")
    text = p.read_text(encoding="utf-8", errors="replace")
    rows: list[Any]
    if p.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif p.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    else:
        rows = [line.strip() for line in text.splitlines() if line.strip()]
    if rows and isinstance(rows[0], dict):
        key = column or _only_column(rows[0], path)
        if key not in rows[0]:
            raise ValueError(f"length file '{path}' has no column '{key}' (it has {list(rows[0])})")
        rows = [r.get(key) for r in rows]
    out = []
    for i, v in enumerate(rows, start=1):
        try:
            n = int(float(v))
        except (TypeError, ValueError):
            raise ValueError(f"length file '{path}', row {i}: {v!r} is not a number") from None
        if n < 1 or n != float(v):
            raise ValueError(f"length file '{path}', row {i}: {v!r} is not a positive integer")
        out.append(n)
    if not out:
        raise ValueError(f"length file '{path}' holds no lengths")
    return tuple(out)


def _only_column(row: dict, path: str) -> str:
    if len(row) == 1:
        return next(iter(row))
    raise ValueError(f"length file '{path}' has columns {list(row)}: name one with `column`")


# -- helpers for fields typed ``Length`` -------------------------------------------------------
def mean_length(x: int | LengthDistribution) -> float:
    return float(x) if isinstance(x, int) else x.mean_tokens()


def max_length(x: int | LengthDistribution) -> int:
    return x if isinstance(x, int) else x.max_tokens()


def sample_lengths(x: int | LengthDistribution, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.full(n, x, dtype=np.int64) if isinstance(x, int) else x.sample(n, rng)
