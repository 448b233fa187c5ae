"""The disaggregated layouts a serving plan searches: every pairing of a prefill pool and a
decode pool (``search.prefill`` / ``search.decode``: GPUs or nodes, tp, pp, ep, etp,
max_num_seqs; what a pool's search leaves out keeps the base scenario's value), the cluster
being the two pools' GPUs together. ``moesim.plan_space`` builds them and ``moesim.plan``
bounds and simulates them as it does colocated layouts; their rows name both pools."""

from __future__ import annotations

import itertools
from typing import Any

from moesim.plan_file import PlanSpec, PoolSearch, _gpus_per_node

#: the pool fields a plan varies, in the order of a candidate's name
POOL_AXES = ("tp", "pp", "ep", "etp", "max_batch_size")


def pool_choices(spec: PlanSpec, which: str) -> list[dict[str, Any]]:
    """Every pool ``which`` of the search: the base pool with each searched value set."""
    base = dict(spec.base["workload"]["disaggregated"][which])
    search = getattr(spec.search, which) or PoolSearch()
    if search.gpus is not None:
        sizes = [{"gpus": g} for g in search.gpus]
    elif search.nodes is not None:
        sizes = [{"nodes": n} for n in search.nodes]
    else:
        sizes = [{k: base[k] for k in ("gpus", "nodes") if base.get(k) is not None}]
    for k in ("gpus", "nodes"):
        base.pop(k, None)
    searched = {
        "tp": search.tp,
        "pp": search.pp,
        "ep": search.ep,
        "etp": search.etp,
        "max_batch_size": search.max_num_seqs,
    }
    lists = [v if v is not None else [base.get(k)] for k, v in searched.items()]
    out = []
    for size, *values in itertools.product(sizes, *lists):
        pool = {**base, **size}
        pool.update({k: v for k, v in zip(searched, values, strict=True) if v is not None})
        out.append(pool)
    return out


def pool_gpus(pool: dict[str, Any], gpus_per_node: int) -> int:
    return pool["gpus"] if pool.get("gpus") is not None else pool["nodes"] * gpus_per_node


def pool_label(pool: dict[str, Any], gpus_per_node: int) -> str:
    """``8 tp1 ep8`` (pp, etp and max_num_seqs when set)."""
    out = f"{pool_gpus(pool, gpus_per_node)} tp{pool.get('tp') or 1}"
    out += f" pp{pool['pp']}" if (pool.get("pp") or 1) > 1 else ""
    out += f" ep{pool.get('ep') or 1}"
    out += f" etp{pool['etp']}" if (pool.get("etp") or 1) > 1 else ""
    out += f" seqs{pool['max_batch_size']}" if pool.get("max_batch_size") else ""
    return out


def pd_layouts(spec: PlanSpec) -> tuple[int, list[tuple[int, int, dict[str, Any], str]]]:
    """(pairings considered, [(nodes, GPUs per node, workload.disaggregated, name)]) of every
    pairing whose GPUs fill whole nodes or one slice of a node, within ``max_gpus``."""
    gpn = _gpus_per_node(spec.base)
    base = spec.base["workload"]["disaggregated"]
    pairs = itertools.product(pool_choices(spec, "prefill"), pool_choices(spec, "decode"))
    considered, out = 0, []
    for pre, dec in pairs:
        considered += 1
        total = pool_gpus(pre, gpn) + pool_gpus(dec, gpn)
        if spec.constraints.max_gpus and total > spec.constraints.max_gpus:
            continue
        if total > gpn and total % gpn:  # the pools must make up whole nodes
            continue
        nodes, per_node = (1, total) if total <= gpn else (total // gpn, gpn)
        name = f"{spec.name}[{total} GPUs P {pool_label(pre, gpn)} | D {pool_label(dec, gpn)}]"
        out.append((nodes, per_node, {**base, "prefill": pre, "decode": dec}, name))
    return considered, out


def pool_rows(s, result) -> dict[str, Any]:
    """A disaggregated candidate's row entries: each pool's GPUs and layout (the colocated
    layout columns are None: the pools have their own), and the slower pool once simulated."""
    from moesim.specs.scenario import pool_scenario

    pools = {}
    for which in ("prefill", "decode"):
        ps = pool_scenario(s, which)
        p = ps.parallel
        pools[which] = {
            "gpus": ps.gpus,
            "tp": p.tp,
            "pp": p.pp,
            "ep": p.ep,
            "etp": p.etp,
            "replicas": p.dp_size * p.cp,
            "max_num_seqs": ps.workload.max_batch_size,
        }
    d = getattr(result, "disaggregated", None) if result is not None else None
    if d:
        pools["bottleneck"] = d["bottleneck"]
    return {"tp": None, "pp": None, "dp": None, "ep": None, "disaggregated": pools}


def pd_layout_text(row: dict[str, Any]) -> str:
    """``P 8: tp1 ep8 ×8 | D 16: tp1 ep16 ×16`` for the plan's tables."""
    parts = []
    for which in ("prefill", "decode"):
        p = row["disaggregated"][which]
        pp = f" pp{p['pp']}" if p["pp"] > 1 else ""
        etp = f" etp{p['etp']}" if p["etp"] > 1 else ""
        parts.append(
            f"{which[0].upper()} {p['gpus']}: tp{p['tp']}{pp} ep{p['ep']}{etp} ×{p['replicas']}"
        )
    return " | ".join(parts)
