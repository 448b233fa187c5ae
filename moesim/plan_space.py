"""The search space of a plan: every buildable scenario it names (``candidates``). Colocated
layouts are the product of the cluster sizes and the layout axes (training: ZeRO stage,
microbatch, recompute, schedule; serving: the engine's max_num_seqs, max_num_batched_tokens,
two-batch overlap and speculative drafts per step); a disaggregated serving base pairs its
pools instead (``moesim.plan_pd``), with the same engine knobs. A point that cannot be built
(the scenario's own validation refuses it) is dropped here; ``moesim.plan`` bounds, simulates
and ranks what is left."""

from __future__ import annotations

import itertools
from typing import Any

from moesim.plan_file import PlanSpec, _gpus_per_node
from moesim.plan_pd import pd_layouts
from moesim.scenario_io import ScenarioError, scenario_from_dict
from moesim.specs import Scenario


def cluster_sizes(spec: PlanSpec) -> list[tuple[int, int]]:
    """(nodes, GPUs per node) of every cluster size searched: ``search.gpus`` as slices of a
    node (or whole nodes beyond one), else ``search.nodes`` full nodes."""
    gpn = _gpus_per_node(spec.base)
    if spec.search.gpus is None:
        return [(n, gpn) for n in spec.search.nodes]
    return [(1, g) if g <= gpn else (g // gpn, gpn) for g in spec.search.gpus]


def candidates(spec: PlanSpec) -> tuple[int, list[Scenario]]:
    """Every buildable scenario of the search space (and how many points were considered)."""
    if spec.disaggregated:
        return _pd_candidates(spec)
    sp, considered, out = spec.search, 0, []
    moe = spec.base["model"].get("moe") is not None
    serving = spec.serving
    axes = itertools.product(
        cluster_sizes(spec), sp.tp, sp.pp, sp.cp,
        sp.ep if moe else [1], sp.etp if moe else [1],
        [0] if serving else sp.zero_stage,  # nothing to shard without optimizer states
        sp.microbatch_size[:1] if serving else sp.microbatch_size,  # the server sets batches
        ["none"] if serving else sp.recompute,
        sp.schedule[:1] if serving else sp.schedule,
        (sp.max_num_seqs or [None]) if serving else [None],
        (sp.max_num_batched_tokens or [None]) if serving else [None],
        sp.two_batch_overlap if serving else [None],
        (sp.num_speculative_tokens or [None]) if serving else [None],
    )  # fmt: skip
    for (nodes, gpn), tp, pp, cp, ep, etp, zero, mbs, rc, sched, seqs, budget, tbo, k in axes:
        considered += 1
        if spec.constraints.max_gpus and nodes * gpn > spec.constraints.max_gpus:
            continue
        if tp > gpn:  # TP stays inside a node
            continue
        d = dict(spec.base)
        d["cluster"] = {**spec.base["cluster"], "nodes": nodes, "gpus_per_node": gpn}
        d["parallel"] = {
            "tp": tp, "pp": pp, "cp": cp, "ep": ep, "etp": etp, "zero_stage": zero,
            "microbatch_size": mbs, "recompute": rc, "schedule": sched,
        }  # fmt: skip
        d["name"] = _candidate_name(spec, nodes, gpn, d["parallel"])
        d["workload"], engine = _engine_knobs(spec.base["workload"], seqs, budget, k)
        if tbo is not None:
            d["workload"]["two_batch_overlap"] = tbo
            engine += " tbo" if tbo else ""
        d["name"] = d["name"][:-1] + engine + "]" if engine else d["name"]
        try:
            out.append(scenario_from_dict(d, base=spec.base_dir))
        except ScenarioError:
            continue
    return considered, out


def _pd_candidates(spec: PlanSpec) -> tuple[int, list[Scenario]]:
    """Every buildable pairing of a prefill and a decode pool (``moesim.plan_pd``), with the
    engine knobs searched as for colocated serving."""
    sp, out = spec.search, []
    considered, layouts = pd_layouts(spec)
    knobs = list(
        itertools.product(
            sp.max_num_seqs or [None],
            sp.max_num_batched_tokens or [None],
            sp.num_speculative_tokens or [None],
        )
    )
    for (nodes, gpn, pools, name), (seqs, budget, k), tbo in itertools.product(
        layouts, knobs, sp.two_batch_overlap
    ):
        d = dict(spec.base)
        d["cluster"] = {**spec.base["cluster"], "nodes": nodes, "gpus_per_node": gpn}
        d["parallel"] = {"zero_stage": 0, "recompute": "none"}
        wl, engine = _engine_knobs(spec.base["workload"], seqs, budget, k)
        d["workload"] = {**wl, "disaggregated": pools, "two_batch_overlap": tbo}
        engine += " tbo" if tbo else ""
        d["name"] = name[:-1] + engine + "]" if engine else name
        try:
            out.append(scenario_from_dict(d, base=spec.base_dir))
        except ScenarioError:
            continue
    return considered * len(knobs) * len(sp.two_batch_overlap), out


def _engine_knobs(
    workload: dict[str, Any], seqs: int | None, budget: int | None, drafts: int | None = None
) -> tuple[dict[str, Any], str]:
    """A serving workload with the searched engine limits set (under moesim's names; the
    vLLM aliases dropped so the two cannot disagree) and the speculative drafts per step, and
    the name suffix that says them."""
    wl, suffix = dict(workload), ""
    if seqs is not None:
        wl.pop("max_num_seqs", None)
        wl["max_batch_size"] = seqs
        suffix += f" seqs{seqs}"
    if budget is not None:
        wl.pop("max_num_batched_tokens", None)
        wl["max_prefill_tokens"] = budget
        suffix += f" tok{budget}"
    if drafts is not None:
        wl["speculative"] = {**wl["speculative"], "num_speculative_tokens": drafts}
        suffix += f" k{drafts}"
    return wl, suffix


def _candidate_name(spec: PlanSpec, nodes: int, gpus_per_node: int, p: dict[str, Any]) -> str:
    etp = f" etp{p['etp']}" if p["etp"] > 1 else ""
    etp += f" cp{p['cp']}" if p["cp"] > 1 else ""  # else cp layouts share their cp-1 name
    if spec.serving:
        return f"{spec.name}[{nodes * gpus_per_node} GPUs tp{p['tp']} pp{p['pp']} ep{p['ep']}{etp}]"
    return (
        f"{spec.name}[n{nodes} tp{p['tp']} pp{p['pp']} ep{p['ep']}{etp} z{p['zero_stage']} "
        f"mb{p['microbatch_size']} {p['recompute']}]"
    )
