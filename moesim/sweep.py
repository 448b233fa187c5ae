"""Sweeps: many scenarios at once, from a grid over any scenario fields.

A sweep file names a base scenario and a grid of dotted keys::

    name: ep-vs-skew
    base: deepseek-v3-2048xh800.yaml     # a scenario file (relative to this file) or inline
    grid:
      parallel.ep: [16, 32, 64]
      routing: [{distribution: uniform}, {distribution: zipf, skew: 1.0}]
    zip:                                 # optional: keys varied together, not crossed
      cluster.nodes: [16, 32]
      parallel.dp: [16, 32]

Every combination becomes one scenario; one that cannot be built (ep not dividing the
experts, say) is a row with its ``error``, not the end of the sweep. Runs on local processes by
default, or on a Dask cluster (``scheduler="tcp://host:8786"``); results come back as a pandas
DataFrame in the grid's order, whatever order the workers finished in.
"""

from __future__ import annotations

import copy
import io
import itertools
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.file_io import write_atomic
from moesim.scenario_io import ScenarioError, load_yaml, scenario_from_dict, set_dotted

Row = dict[str, Any]

#: the most points one sweep may hold, counted from the lists before anything is expanded: a
#: point is a simulation (0.3-2 s on a core), so 100,000 is already a day of one machine's time
MAX_SWEEP_POINTS = 100_000
Runner = Callable[[dict[str, Any]], Row]


@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    zipped: dict[str, list[Any]]
    base_dir: Path | None = None

    @property
    def size(self) -> int:
        n = math.prod(len(v) for v in self.grid.values()) if self.grid else 1
        return n * (len(next(iter(self.zipped.values()))) if self.zipped else 1)


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    data, lines = load_yaml(path)
    return sweep_from_dict(data, base_dir=path.parent, source=str(path), lines=lines)


def sweep_from_dict(
    data: dict[str, Any],
    base_dir: Path | None = None,
    source: str = "",
    lines: dict[tuple, int] | None = None,
) -> SweepSpec:
    """A SweepSpec; every problem of the file is reported at once, each with its line."""
    problems: list[str] = []

    def at(*loc: Any) -> str:
        line = next(
            (lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in (lines or {})), None
        )
        where = f"{source}:{line}" if source and line else source
        return f"{where}: " if where else ""

    unknown = sorted(set(data) - {"name", "base", "grid", "zip", "description"}, key=str)
    if unknown:
        problems.append(f"{at(unknown[0])}unknown sweep keys {unknown}: use name, base, grid, zip")
    base = data.get("base")
    if base is None:
        problems.append(f"{at()}base: required: a scenario file or an inline scenario")
    elif isinstance(base, str):
        base_path = (base_dir / base) if base_dir else Path(base)
        try:
            base, _ = load_yaml(base_path)
            base_dir = base_path.parent
        except ScenarioError as e:
            problems.append(f"{at('base')}base: {e}")
    elif not isinstance(base, dict):
        problems.append(
            f"{at('base')}base: a scenario file name or an inline scenario, got {base!r}"
        )
    sections = {}
    for section in ("grid", "zip"):
        value = data.get(section) or {}
        if not isinstance(value, dict):
            problems.append(f"{at(section)}{section}: a mapping of dotted key: [values]")
            value = {}
        sections[section] = value
        for key, values in value.items():
            if not isinstance(values, list) or not values:
                problems.append(
                    f"{at(section, key)}{section}.{key}: give a non-empty list of values"
                )
    grid, zipped = sections["grid"], sections["zip"]
    if zipped and len({len(v) if isinstance(v, list) else -1 for v in zipped.values()}) != 1:
        problems.append(f"{at('zip')}zip: every key needs a list of the same length")
    if not grid and not zipped:
        problems.append(f"{at('grid')}grid: give at least one key to vary")
    if problems:
        raise ScenarioError("\n".join(problems))
    spec = SweepSpec(str(data.get("name", "sweep")), base, grid, zipped, base_dir)
    if spec.size > MAX_SWEEP_POINTS:  # counted from the list lengths, never expanded
        sizes = " × ".join(str(len(v)) for v in grid.values())
        if zipped:
            sizes += f"{' × ' if grid else ''}{len(next(iter(zipped.values())))} (zip)"
        raise ScenarioError(
            f"{at('grid')}grid: {sizes} = {spec.size:,} points, over the limit of "
            f"{MAX_SWEEP_POINTS:,} (each point is a simulation): split the sweep or shorten "
            "its lists"
        )
    return spec


def _label(value: Any) -> str:
    if isinstance(value, dict):
        return "-".join(f"{_label(v)}" for v in value.values())
    return str(value)


def expand(spec: SweepSpec) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(parameters, scenario dict) for every point, in grid order (zip varies fastest)."""
    grid_keys = list(spec.grid)
    zip_keys = list(spec.zipped)
    zip_rows = list(zip(*spec.zipped.values(), strict=True)) if zip_keys else [()]
    for combo in itertools.product(*spec.grid.values()):
        for zrow in zip_rows:
            params = dict(zip(grid_keys, combo, strict=True)) | dict(
                zip(zip_keys, zrow, strict=True)
            )
            scenario = copy.deepcopy(spec.base)
            for key, value in params.items():
                set_dotted(scenario, key, value)
            suffix = ",".join(f"{k.split('.')[-1]}={_label(v)}" for k, v in params.items())
            scenario["name"] = f"{spec.base.get('name', spec.name)}[{suffix}]"
            yield params, scenario


def simulate_row(scenario: dict[str, Any], base_dir: str | None = None) -> Row:
    """Build and simulate one scenario; a spec error becomes the row's ``error``."""
    from moesim.sim.run import simulate  # imported here: workers import moesim lazily

    try:
        s = scenario_from_dict(scenario, base=Path(base_dir) if base_dir else None)
    except ScenarioError as e:
        return {"name": scenario.get("name", ""), "error": str(e)}
    return _flatten(simulate(s).to_json_dict())


def _flatten(d: dict[str, Any], prefix: str = "") -> Row:
    out: Row = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif not isinstance(v, list):
            out[key] = v
    return out


def _run_chunk(args: tuple[list[dict[str, Any]], str | None]) -> list[Row]:
    scenarios, base_dir = args
    return [simulate_row(s, base_dir) for s in scenarios]


def _chunks(items: list, n: int) -> list[list]:
    size = max(1, math.ceil(len(items) / n))
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_sweep(
    spec: SweepSpec,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Simulate every point; one row per point with the grid's parameters and the result."""
    points = list(expand(spec))
    scenarios = [s for _, s in points]
    base_dir = str(spec.base_dir) if spec.base_dir else None
    # Chunks amortise process start-up and pickling: ~4 chunks per worker balances the load.
    workers = workers or os.cpu_count() or 1
    chunks = _chunks(scenarios, workers * 4) if len(scenarios) > 1 else [scenarios]
    results: list[list[Row]] = [[] for _ in chunks]
    if scheduler:
        results = _run_dask(chunks, base_dir, scheduler, progress)
    elif workers == 1 or len(chunks) == 1:
        for i, chunk in enumerate(chunks):
            results[i] = _run_chunk((chunk, base_dir))
            if progress:
                progress(len(chunk))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_run_chunk, (c, base_dir)): i for i, c in enumerate(chunks)}
            from concurrent.futures import as_completed

            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                if progress:
                    progress(len(chunks[i]))
    rows = [r for chunk in results for r in chunk]
    frame = pd.DataFrame(
        [
            {**{f"param.{k}": _cell(v) for k, v in p.items()}, **r}
            for (p, _), r in zip(points, rows, strict=True)
        ]
    )
    return frame


def _cell(v: Any) -> Any:
    return v if isinstance(v, int | float | str | bool) or v is None else str(v)


#: how long ``--scheduler`` waits for the scheduler to answer before it is an error
DASK_CONNECT_TIMEOUT_S = 10


def _run_dask(
    chunks: list[list[dict[str, Any]]],
    base_dir: str | None,
    scheduler: str,
    progress: Callable[[int], None] | None,
) -> list[list[Row]]:
    try:
        from dask.distributed import Client, as_completed
    except ImportError as e:  # pragma: no cover - the extra is not installed
        raise ScenarioError(
            "a Dask scheduler was given but dask[distributed] is not installed: "
            "pip install 'moesim[dask]'"
        ) from e
    results: list[list[Row]] = [[] for _ in chunks]
    try:
        client = Client(scheduler, timeout=f"{DASK_CONNECT_TIMEOUT_S}s")
    except (OSError, ValueError, TimeoutError) as e:  # a bad address; nobody listening
        raise ScenarioError(
            f"--scheduler {scheduler}: cannot reach a Dask scheduler there ({e}): give the "
            "address `dask scheduler` prints (tcp://host:8786), or leave --scheduler out to "
            "run on local processes"
        ) from None
    with client:
        futures = [client.submit(_run_chunk, (c, base_dir), pure=False) for c in chunks]
        index = {f.key: i for i, f in enumerate(futures)}
        for fut in as_completed(futures):
            i = index[fut.key]
            results[i] = fut.result()
            if progress:
                progress(len(chunks[i]))
    return results


def sweep_objective(frame: pd.DataFrame) -> tuple[str, bool] | None:
    """The column a sweep's summary ranks by and whether lower is better: the step time when
    the points train, output tokens/s per GPU when every point serves; None when neither."""
    stages = set(frame["stage"].dropna()) if "stage" in frame else set()
    if stages == {"inference"} and "tokens_per_s_per_gpu" in frame:
        return "tokens_per_s_per_gpu", False
    if "step_time_s" in frame:
        return "step_time_s", True
    return None


def sweep_summary(frame: pd.DataFrame) -> list[str]:
    """Lines said after a sweep: rows, error rows, and the best and worst point by the
    objective (``sweep_objective``), named by their grid values."""
    errors = int(frame["error"].notna().sum()) if "error" in frame else 0
    lines = [f"{len(frame)} rows, {errors} error{'s' if errors != 1 else ''}"]
    objective = sweep_objective(frame)
    if objective is None:
        return lines
    column, lower_better = objective
    ok = frame[frame[column].notna()]
    if ok.empty:
        return lines
    order = ok.sort_values(column, ascending=lower_better, kind="stable")
    word = "lower" if lower_better else "higher"
    for label, row in (("best", order.iloc[0]), ("worst", order.iloc[-1])):
        lines.append(f"{label}: {row['name']} ({column} {row[column]:.4g}, {word} is better)")
    return lines


def write_frame(frame: pd.DataFrame, out: str | Path) -> Path:
    """Parquet for ``.parquet``, CSV otherwise."""
    out = Path(out)
    if out.suffix == ".parquet":
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        data: str | bytes = buf.getvalue()
    else:
        data = frame.to_csv(index=False)
    return write_atomic(out, data, make_parents=True)  # all or nothing (moesim.file_io)
