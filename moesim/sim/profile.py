"""The calibration profile: how close to peak a device gets, per op class and per link.

A profile is one JSON file (``calibration/<device>.json`` once measured; the default ships in
``moesim/sim/profiles/default.json``). Every number carries a ``source`` so a reader can tell a
measurement from an assumption. Schema (all keys required unless marked optional)::

    {
      "schema_version": 1,
      "device": "default",                       # GPU id the numbers were measured on, or "default"
      "source": "...",                           # how the file was made
      "compute": {                               # op class -> efficiency curve
        "gemm":         {"x": "flops", "points": [[1e6, 0.05], [1e12, 0.75]], "source": "..."},
        "grouped_gemm": {"x": "flops", ...},     # x = FLOPs of one group (one expert's GEMM)
        "attention":    {"x": "flops", ...},
        "memory_bound": {"x": "bytes", ...}      # efficiency of HBM bandwidth
      },
      "hbm": {"x": "bytes", ...},                # HBM efficiency for the bytes term of compute ops
      "launch_overhead_us": {"value": 4.0, "source": "..."},
      "links": {                                 # achieved fraction of the nominal link bandwidth
        "nvlink": {"value": 0.9, "source": "..."},
        "network": {"value": 0.85, "source": "..."},
        "pcie": {"value": 0.78, "source": "..."} # optional: host link (GPUSpec.pcie_GBps),
      },                                         # fitted from h2d/d2h copies by calibrate
      "collective_overhead_us": {"value": 10.0, "source": "..."},  # optional, per collective call
      "measured": {...},                         # optional: environment, bandwidths (calibrate)
      "validation": {"gemm": {"median_abs_rel_error": 0.1, "max_abs_rel_error": 0.3, "n": 12}}
                                                 # optional: held-out prediction errors
    }

Schema version 2 adds, all optional (a version 1 file loads unchanged and means what it meant):

    "kind": "published",                         # measured | published | default (absent: measured,
                                                 # or default for the device "default")
    "compute": {..., "attention_bwd": {...}},    # the attention backward's own curve, x = FLOPs of
                                                 # the backward op (2x the forward, the simulator's
                                                 # convention); absent: the forward curve
    "compute_fp8": {"gemm": {...}, "grouped_gemm": {...}}
                                                 # GEMMs run at the fp8 peak; absent: the 16-bit
                                                 # curves read against the fp8 peak (version 1)

Curves are piecewise linear in log10(x) (sizes span many decades) and flat beyond their ends.
The calibration engineers write these files from measured points; nothing here imports SimPy.

A profile named by device id (``simulation.profile: h100-sxm``, ``--profile h100-sxm``, or the
scenario's GPU when no profile is named) is looked up as ``<dir>/<id>.json`` in, in order:
the directories a caller passes (``search_dirs``), the repository's ``calibration/`` when moesim
runs from a source checkout (an editable install: the folder beside the package, so the answer
does not depend on the working directory), then ``./calibration`` of the working directory
(where ``moesim calibrate run`` writes by default, for installs without a checkout). The first
match wins. When no directory holds ``<id>.json``, the published kernel profile
``<dir>/published/<id>.json`` is looked up the same way (fitted from published kernel tables by
``moesim.calibrate.published``), and only then, for a scenario's GPU, the shipped default: a
measured profile wins over a published one, which wins over the default. A named id that matches
nowhere is an error listing the places searched.
"""

from __future__ import annotations

import bisect
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from moesim.file_io import input_problem

OpClass = Literal["gemm", "grouped_gemm", "attention", "memory_bound"]
OP_CLASSES: tuple[str, ...] = ("gemm", "grouped_gemm", "attention", "memory_bound")
# compute curves: the op classes plus the optional attention backward (schema version 2)
CurveName = Literal["gemm", "grouped_gemm", "attention", "memory_bound", "attention_bwd"]
Fp8Class = Literal["gemm", "grouped_gemm"]
ProfileKind = Literal["measured", "published", "default"]
PUBLISHED_SUBDIR = "published"
DEFAULT_PROFILE_PATH = Path(__file__).parent / "profiles" / "default.json"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Curve(_Strict):
    """Efficiency (0, 1] as a function of problem size, piecewise linear in log10(size)."""

    x: Literal["flops", "bytes"]
    points: list[tuple[float, float]] = Field(min_length=1)
    source: str

    @model_validator(mode="after")
    def _check(self) -> Curve:
        xs = [p[0] for p in self.points]
        if any(x <= 0 for x in xs) or xs != sorted(xs):
            raise ValueError("curve points need positive, increasing sizes")
        if any(not 0 < p[1] <= 1 for p in self.points):
            raise ValueError("curve efficiencies must lie in (0, 1]")
        return self

    def __call__(self, size: float) -> float:
        pts = self.points
        if size <= pts[0][0]:
            return pts[0][1]
        if size >= pts[-1][0]:
            return pts[-1][1]
        i = bisect.bisect_right([p[0] for p in pts], size)
        (x0, y0), (x1, y1) = pts[i - 1], pts[i]
        t = (math.log10(size) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
        return y0 + t * (y1 - y0)


class Value(_Strict):
    value: float = Field(ge=0)
    source: str


class Links(_Strict):
    nvlink: Value
    network: Value
    # optional: achieved fraction of GPUSpec.pcie_GBps over the host link (pinned h2d copies),
    # which the expert-offload path can scale its PCIe time by; absent = not measured
    pcie: Value | None = None


class Profile(_Strict):
    schema_version: Literal[1, 2] = 1
    device: str
    source: str
    kind: ProfileKind | None = None  # absent (version 1): see ``profile_kind``
    compute: dict[CurveName, Curve]
    # optional (version 2): GEMM curves read against the fp8 peak, for GEMMs that run in fp8
    compute_fp8: dict[Fp8Class, Curve] | None = None
    hbm: Curve
    launch_overhead_us: Value
    links: Links
    collective_overhead_us: Value = Value(value=0.0, source="not modelled")
    # written by moesim.calibrate (optional; the simulator does not read them):
    measured: dict[str, Any] | None = None  # environment, peaks used, bandwidths, counts
    validation: dict[str, dict[str, Any]] | None = None  # op class -> prediction errors

    @model_validator(mode="after")
    def _check(self) -> Profile:
        missing = [c for c in OP_CLASSES if c not in self.compute]
        if missing:
            raise ValueError(f"profile.compute lacks op classes {missing}")
        for name in ("nvlink", "network", "pcie"):
            link = getattr(self.links, name)
            if link is None:
                continue
            v = link.value
            if not 0 < v <= 1:
                raise ValueError(f"profile.links.{name}.value must lie in (0, 1], got {v}")
        return self


def profile_kind(p: Profile) -> str:
    """measured | published | default: the file's ``kind``, else (version 1 files, which have
    none) ``default`` for the shipped default and ``measured`` for anything else."""
    if p.kind is not None:
        return p.kind
    return "default" if p.device == "default" else "measured"


def profile_label(p: Profile) -> dict[str, str]:
    """What a Result says of the profile it used: ``{"device": ..., "kind": ...}``."""
    return {"device": p.device, "kind": profile_kind(p)}


class ProfileError(ValueError):
    """A calibration profile file that cannot be read; the message names the file."""


def load_profile(path: str | Path) -> Profile:
    """A profile JSON; a file that is not one is a ProfileError naming the file and fields."""
    try:
        return Profile.model_validate(json.loads(Path(path).read_text()))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or 'file'}: {err['msg']}"
            for err in e.errors()[:6]
        )
        raise ProfileError(
            f"profile {path}: not a moesim calibration profile ({problems}): give a file "
            "that `moesim calibrate run` or `python -m moesim.calibrate.published` wrote"
        ) from None
    except (OSError, ValueError) as e:  # JSON and UTF-8 errors (ValidationError above)
        raise ProfileError(f"profile {path}: cannot read it as JSON ({e})") from None
    except RecursionError:
        raise ProfileError(f"profile {path}: nested too deeply to read as JSON") from None


@lru_cache(maxsize=1)
def default_profile() -> Profile:
    return load_profile(DEFAULT_PROFILE_PATH)


@lru_cache(maxsize=1)
def repo_root() -> Path | None:
    """The source checkout moesim runs from (an editable install), else None: an installed
    wheel has no repository beside the package."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "moesim"' in pyproject.read_text():
        return root
    return None


def repo_calibration_dir() -> Path | None:
    """``calibration/`` of the source checkout, when there is one."""
    root = repo_root()
    return root / "calibration" if root and (root / "calibration").is_dir() else None


def profile_search_dirs(search_dirs: tuple[Path, ...] = ()) -> tuple[Path, ...]:
    """Where a profile id is looked up, in order (see the module docstring), duplicates once."""
    repo = repo_calibration_dir()
    dirs = (*search_dirs, *((repo,) if repo else ()), Path.cwd() / "calibration")
    out: list[Path] = []
    for d in dirs:
        if all(d.resolve() != o.resolve() for o in out):
            out.append(d)
    return tuple(out)


def resolve_profile(
    name: str | None, gpu_name: str = "", search_dirs: tuple[Path, ...] = ()
) -> Profile:
    """A profile from ``simulation.profile``: a JSON path, a device id looked up as
    ``<dir>/<id>.json`` in ``profile_search_dirs`` order, or (None) the measured profile of the
    scenario's GPU when one exists there, else the shipped default."""
    dirs = profile_search_dirs(search_dirs)
    if name is not None:
        p = Path(name)
        if p.suffix == ".json":
            problem = input_problem(p)
            if problem is not None:
                raise FileNotFoundError(f"simulation.profile: {problem}")
            return load_profile(p)
        found = _find_by_id(name, dirs)
        if found is not None:
            return load_profile(found)
        looked = ", ".join(str(c) for c in _candidates(name, dirs))
        raise FileNotFoundError(
            f"simulation.profile: no calibration/{name}.json found (looked for {looked}); "
            "give a JSON path or run moesim calibrate"
        )
    found = _find_by_id(gpu_name, dirs) if gpu_name else None
    return load_profile(found) if found is not None else default_profile()


def _candidates(device_id: str, dirs: tuple[Path, ...]) -> list[Path]:
    """Where ``device_id`` is looked for, in order: every measured ``<dir>/<id>.json`` first,
    then every published ``<dir>/published/<id>.json``."""
    return [d / f"{device_id}.json" for d in dirs] + [
        d / PUBLISHED_SUBDIR / f"{device_id}.json" for d in dirs
    ]


def _find_by_id(device_id: str, dirs: tuple[Path, ...]) -> Path | None:
    return next((c for c in _candidates(device_id, dirs) if c.is_file()), None)
