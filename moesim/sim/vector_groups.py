"""How the vector engine splits a pipeline stage's members into the groups of each kind of
collective (EP, TP, expert TP, CP, DP, expert DP), and a collective's group as a per-member
maximum over its group (``moesim.sim.vector_engine``)."""

from __future__ import annotations

import numpy as np

Vec = np.ndarray


class Partition:
    """The members split into equal groups (one kind of collective group): ``max`` is each
    member's group maximum."""

    def __init__(self, group_id: Vec):
        self.perm = np.argsort(group_id, kind="stable")
        self.groups = len(np.unique(group_id))
        self.size = len(group_id) // self.groups

    def max(self, x: Vec) -> Vec:
        if self.groups == 1:
            return np.full(len(x), x.max())
        y = x[self.perm].reshape(self.groups, self.size).max(axis=1)
        out = np.empty(len(x))
        out[self.perm] = np.repeat(y, self.size)
        return out


def group_kind(stream: str, name: str) -> str:
    """Which group a collective on ``stream`` named ``name`` runs over (the programs of
    ``layer_runner``, ``grad_sync``, ``moe_layer``, ``zero3`` name them so)."""
    if stream == "ep":
        return "ep"
    if stream == "tp":
        return "etp" if name.startswith("etp") else "tp"
    if stream == "cp":
        return "cp"
    if stream == "dp":
        return "edp" if "expert" in name else "dp"
    raise ValueError(f"vector engine: no group kind for a collective '{name}' on '{stream}'")
