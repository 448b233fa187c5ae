"""A plan file, read and checked: what to search (``SearchSpace``), what must hold
(``Constraints``) and the base scenario every candidate shares (``PlanSpec``). Every problem of
the file is reported at once, each with its line (``moesim.plan`` runs the search)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, NonNegativeInt, PositiveInt, ValidationError, model_validator

from moesim.scenario_io import (
    ScenarioError,
    apply_overrides,
    format_validation_error,
    load_yaml,
    resolve_ids,
)
from moesim.specs import (
    Spec,
    Workload,
)


class PoolSearch(Spec):
    """The values one pool of ``workload.disaggregated`` may take in a serving plan: each a
    list to try; a field left out keeps the base scenario's pool value."""

    gpus: list[PositiveInt] | None = Field(None, description="GPUs of the pool (or nodes)")
    nodes: list[PositiveInt] | None = Field(None, description="whole nodes of the pool")
    tp: list[PositiveInt] | None = Field(None, description="tensor parallel per replica")
    pp: list[PositiveInt] | None = Field(None, description="pipeline stages per replica")
    ep: list[PositiveInt] | None = Field(None, description="expert parallel over the pool")
    etp: list[PositiveInt] | None = Field(None, description="expert tensor parallel")
    max_num_seqs: list[PositiveInt] | None = Field(
        None, description="sequences per replica of the pool (its max_batch_size)"
    )

    @model_validator(mode="after")
    def _one_size(self) -> PoolSearch:
        if self.gpus is not None and self.nodes is not None:
            raise ValueError("a pool's search takes gpus or nodes, not both: drop one")
        return self


#: the colocated layout's axes: a disaggregated plan varies its pools' instead
COLOCATED_AXES = ("nodes", "gpus", "tp", "pp", "cp", "ep", "etp")


class SearchSpace(Spec):
    nodes: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    tp: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8])
    pp: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8])
    cp: list[PositiveInt] = Field(default_factory=lambda: [1])
    ep: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    etp: list[PositiveInt] = Field(default_factory=lambda: [1])
    gpus: list[PositiveInt] | None = Field(
        None, description="total GPUs (replaces nodes): a slice of a node when below its size"
    )
    zero_stage: list[NonNegativeInt] = Field(default_factory=lambda: [1])
    microbatch_size: list[PositiveInt] = Field(default_factory=lambda: [1, 2])
    recompute: list[str] = Field(default_factory=lambda: ["selective", "full"])
    schedule: list[str] = Field(default_factory=lambda: ["1f1b"])
    two_batch_overlap: list[bool] = Field(
        default_factory=lambda: [False],
        description="serving: try each (workload.two_batch_overlap), e.g. [false, true]",
    )
    max_num_seqs: list[int] | None = Field(
        None,
        description="serving: engine concurrency limits to try (workload.max_batch_size); "
        "default the workload's",
    )
    max_num_batched_tokens: list[int] | None = Field(
        None,
        description="serving: tokens-per-step budgets to try (workload.max_prefill_tokens); "
        "default the workload's",
    )
    num_speculative_tokens: list[PositiveInt] | None = Field(
        None,
        description="serving with workload.speculative: drafts per step to try "
        "(workload.speculative.num_speculative_tokens), e.g. [1, 2, 3, 4]; default the "
        "workload's",
    )
    prefill: PoolSearch | None = Field(
        None,
        description="serving with workload.disaggregated: the prefill pool's gpus | nodes, tp, "
        "pp, ep, etp, max_num_seqs to try (replaces the colocated nodes/gpus/tp/pp/cp/ep/etp)",
    )
    decode: PoolSearch | None = Field(
        None, description="serving with workload.disaggregated: the decode pool's, as prefill"
    )


class Constraints(Spec):
    deadline_days: float | None = Field(None, gt=0, description="the run must finish in time")
    budget_usd: float | None = Field(None, gt=0)
    max_gpus: int | None = Field(None, gt=0)
    ttft_p99_s: float | None = Field(None, gt=0, description="serving SLO")
    tpot_p99_s: float | None = Field(None, gt=0, description="serving SLO")


@dataclass(frozen=True)
class PlanSpec:
    name: str
    base: dict[str, Any]  # scenario dict without cluster size and parallel layout
    search: SearchSpace
    constraints: Constraints
    objective: str
    top: int
    simulate_max: int
    base_dir: Path | None

    @property
    def serving(self) -> bool:
        return self.base["workload"].get("stage") == "inference"

    @property
    def disaggregated(self) -> bool:
        """A serving plan whose candidates vary the pools of ``workload.disaggregated``."""
        return self.serving and bool(self.base["workload"].get("disaggregated"))


def load_plan(path: str | Path, overrides: Sequence[tuple[str, Any]] = ()) -> PlanSpec:
    """A plan file; ``overrides`` (``--set``) replace its fields first."""
    path = Path(path)
    data, lines = load_yaml(path)
    apply_overrides(data, overrides)
    return plan_from_dict(data, path.parent, str(path), lines)


def plan_from_dict(
    data: dict[str, Any], base_dir: Path | None = None, source: str = "", lines: dict | None = None
) -> PlanSpec:
    """A PlanSpec; every problem of the file is reported at once, each with its line."""
    known = {"name", "description", "model", "gpu", "gpus_per_node", "workload", "cost"}
    known |= {"search", "constraints", "objective", "top", "simulate_max", "precision", "routing"}
    known |= {"simulation", "intra_node", "inter_node", "reliability"}
    known |= {"nvlink_domain_gpus", "fabric"}
    problems: list[str] = []

    def at(*loc: Any) -> str:
        line = _line_of(loc, lines)
        where = f"{source}:{line}" if source and line else source
        return f"{where}: " if where else ""

    unknown = sorted(set(data) - known, key=str)
    if unknown:
        problems.append(f"{at(unknown[0])}unknown plan keys {unknown}: allowed {sorted(known)}")
    for key in ("model", "gpu", "workload"):
        if key not in data:
            problems.append(f"{at()}{key}: required and missing: add it")
    search = constraints = None
    for key, model in (("search", SearchSpace), ("constraints", Constraints)):
        try:
            value = model.model_validate(data.get(key) or {})
        except ValidationError as e:
            problems.append(format_validation_error(e, source, lines, (key,), model))
            continue
        if key == "search":
            search = value
        else:
            constraints = value
    objective = data.get("objective", "cost")
    if objective not in ("cost", "time"):
        problems.append(f"{at('objective')}objective: '{objective}' is not cost or time")
    top = _count(data, "top", 10, MAX_TOP, problems, at)
    simulate_max = _count(data, "simulate_max", 64, MAX_PLAN_SIMULATIONS, problems, at)
    workload = data.get("workload")
    stage = workload.get("stage") if isinstance(workload, dict) else None
    if isinstance(workload, dict):  # checked alone, so its errors come before the search's
        try:
            resolved = _resolved_workload(workload, base_dir, source, lines)
            _WorkloadBox.model_validate({"workload": resolved})
        except ValidationError as e:
            problems.append(format_validation_error(e, source, lines, (), _WorkloadBox))
        except ScenarioError as e:
            problems.append(str(e))
    if search is not None:
        problems += _pool_search_problems(search, workload, at)
    speculative = isinstance(workload, dict) and bool(workload.get("speculative"))
    if search is not None and search.num_speculative_tokens is not None and not speculative:
        problems.append(
            f"{at('search', 'num_speculative_tokens')}search.num_speculative_tokens: the "
            "plan's workload has no speculative decoding to tune: add workload.speculative "
            "({method: mtp | draft, acceptance_rate, num_speculative_tokens}) or drop "
            "search.num_speculative_tokens"
        )
    if constraints is not None:
        slos = [k for k in ("ttft_p99_s", "tpot_p99_s") if getattr(constraints, k) is not None]
        if slos and stage != "inference":
            problems.append(
                f"{at('constraints', slos[0])}constraints.{slos[0]}: a serving SLO needs "
                f"workload.stage: inference (this plan's stage is {stage})"
            )
    if problems:
        raise ScenarioError(_by_line(problems))
    assert search is not None and constraints is not None
    cluster = {"gpu": data["gpu"]}
    for key in ("gpus_per_node", "intra_node", "inter_node", "nvlink_domain_gpus", "fabric"):
        if key in data:
            cluster[key] = data[key]
    base = {
        "name": data.get("name", "plan"),
        "model": data["model"],
        "cluster": cluster,
        "workload": data["workload"],
    }
    for key in ("cost", "precision", "routing", "simulation", "reliability"):
        if key in data:
            base[key] = data[key]
    base = resolve_ids(base, base_dir, source, lines)
    gpn = _gpus_per_node(base)
    for g in search.gpus or []:
        if g > gpn and g % gpn:
            problems.append(
                f"{at('search', 'gpus')}search.gpus: {g} is neither a slice of one {gpn}-GPU "
                f"node nor whole nodes: use at most {gpn} or a multiple of {gpn}"
            )
    if problems:
        raise ScenarioError("\n".join(problems))
    return PlanSpec(
        name=data.get("name", "plan"),
        base=base,
        search=search,
        constraints=constraints,
        objective=objective,
        top=top,
        simulate_max=simulate_max,
        base_dir=base_dir,
    )


#: the most layouts a plan simulates (``simulate_max``): each takes 0.3-2 s on one core, so 512
#: is minutes already; the analytic bound ranks the rest
MAX_PLAN_SIMULATIONS = 512
MAX_TOP = 1000


class _WorkloadBox(Spec):
    """The workload field alone, for its errors' fixes (``_bound_fix`` walks a model)."""

    workload: Workload


def _pool_search_problems(search: SearchSpace, workload: Any, at: Any) -> list[str]:
    """A disaggregated plan varies its pools (search.prefill / search.decode), a colocated one
    its layout: each knob given on the other kind of plan is a problem naming the fix."""
    disaggregated = isinstance(workload, dict) and bool(workload.get("disaggregated"))
    out = []
    for which in ("prefill", "decode"):
        if getattr(search, which) is not None and not disaggregated:
            out.append(
                f"{at('search', which)}search.{which}: varies a pool of workload.disaggregated, "
                f"but this workload is colocated: add workload.disaggregated (the pools to "
                f"start from) or drop search.{which}"
            )
    for key in COLOCATED_AXES:
        if disaggregated and key in search.model_fields_set:
            pool_key = None if key == "cp" else key  # a serving pool has no context parallel
            fix = (
                f"search.prefill.{pool_key} / search.decode.{pool_key}"
                if pool_key
                else "the pools' own layouts"
            )
            out.append(
                f"{at('search', key)}search.{key}: a disaggregated deployment's layout is its "
                f"pools': vary {fix} instead"
            )
    return out


def _resolved_workload(
    workload: dict[str, Any], base_dir: Path | None, source: str, lines: dict | None
) -> dict[str, Any]:
    """The workload with its catalog ids (reward_model, critic_model) resolved."""
    return resolve_ids({"workload": workload}, base_dir, source, lines)["workload"]


def _by_line(problems: list[str]) -> str:
    """The problems in the file's order (``file:LINE: ...``; those without a line first)."""
    lines = [line for p in problems for line in p.split("\n")]

    def line_no(text: str) -> int:
        m = re.match(r"[^\n]*?:(\d+): ", text)
        return int(m.group(1)) if m else 0

    return "\n".join(sorted(lines, key=line_no))


def _line_of(loc: tuple, lines: dict | None) -> int | None:
    for n in range(len(loc), 0, -1):
        if lines and loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _count(
    data: dict[str, Any], key: str, default: int, most: int, problems: list[str], at: Any
) -> int:
    """``top`` / ``simulate_max``: an integer in [1, most], else a problem naming the key."""
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        problems.append(
            f"{at(key)}{key}: {value!r} is not an integer in [1, {most:,}]: set it to one"
            + (" (each simulation takes 0.3-2 s on a core)" if key == "simulate_max" else "")
        )
        return default
    return value


def _gpus_per_node(base: dict[str, Any]) -> int:
    return base["cluster"].get("gpus_per_node") or base["cluster"]["gpu"].get("gpus_per_node", 8)
