"""Which GPU holds which shard: Megatron-Core's rank order and the groups of each parallelism.

``parallel.order`` (Megatron-Core's RankGenerator, fastest-varying first) places the ranks.
Attention ranks use it without ep: with the default ``tp-cp-ep-dp-pp``,
g = tp_r + tp·(cp_r + cp·(dp_r + dp·pp_r)) (tp varies fastest, so a TP group sits inside a
node). Expert ranks use it without cp, with etp for tp and edp for dp (MoE Parallel Folding):
g = etp_r + etp·(ep_r + ep·(edp_r + edp·pp_r)), so an EP group is ``ep`` consecutive (stride
etp) ranks of a stage and packs into as few nodes as possible. Both grids agree on every rank's
pipeline stage (``specs.scenario._check_order``).

Everything is arithmetic on a rank's coordinates: nothing here lists the cluster's GPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from moesim.specs import ParallelSpec
from moesim.specs.parallel import DEFAULT_ORDER

#: each group kind: the grid it lives in, and the dimensions along which its members differ
GROUP_DIMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tp": ("attn", ("tp",)),
    "cp": ("attn", ("cp",)),
    "dp": ("attn", ("dp", "cp")),
    "pp": ("attn", ("pp",)),
    "ep": ("expert", ("ep",)),
    "etp": ("expert", ("tp",)),
    "edp": ("expert", ("dp",)),
}


@dataclass(frozen=True)
class _Radix:
    """A mixed-radix numbering of ranks: ``sizes[d]`` per dimension, ``order`` fastest first."""

    order: tuple[str, ...]
    sizes: dict[str, int]
    stride: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        stride, s = {}, 1
        for d in self.order:
            stride[d] = s
            s *= self.sizes[d]
        object.__setattr__(self, "stride", stride)

    def coord(self, g: int, d: str) -> int:
        return (g // self.stride[d]) % self.sizes[d]

    def group(self, g: int, dims: tuple[str, ...], limit: int | None = None) -> tuple[int, ...]:
        """The ranks that differ from g only along ``dims``, the first of ``dims`` varying
        slowest (so a one-dimension group is ordered by that coordinate); the first ``limit``
        of them when given."""
        base = g - sum(self.coord(g, d) * self.stride[d] for d in dims)
        sizes = [self.sizes[d] for d in dims]
        count = math.prod(sizes) if limit is None else min(math.prod(sizes), limit)
        out = []
        for i in range(count):  # i in mixed radix, the last of dims fastest (no full lists)
            offset = 0
            for d, n in zip(reversed(dims), reversed(sizes), strict=True):
                i, c = divmod(i, n)
                offset += c * self.stride[d]
            out.append(base + offset)
        return tuple(out)

    def is_leader(self, g: int, dims: tuple[str, ...]) -> bool:
        """g is the first rank of its group along ``dims``."""
        return all(self.coord(g, d) == 0 for d in dims)


@dataclass(frozen=True)
class Grid:
    tp: int
    cp: int
    dp: int
    pp: int
    ep: int
    etp: int
    order: tuple[str, ...] = tuple(DEFAULT_ORDER.split("-"))

    def __post_init__(self) -> None:
        attn = _Radix(
            tuple(d for d in self.order if d != "ep"),
            {"tp": self.tp, "cp": self.cp, "dp": self.dp, "pp": self.pp},
        )
        expert = _Radix(
            tuple(d for d in self.order if d != "cp"),
            {"tp": self.etp, "ep": self.ep, "dp": self.edp, "pp": self.pp},
        )
        # the ranks of one stage, numbered by the attention order without pp
        in_stage = _Radix(
            tuple(d for d in self.order if d not in ("ep", "pp")),
            {"tp": self.tp, "cp": self.cp, "dp": self.dp},
        )
        object.__setattr__(self, "_attn", attn)
        object.__setattr__(self, "_expert", expert)
        object.__setattr__(self, "_in_stage", in_stage)
        # pipeline stages outermost (the default): a stage is a block of consecutive ranks
        object.__setattr__(self, "_pp_last", self.order[-1] == "pp")

    @classmethod
    def of(cls, p: ParallelSpec) -> Grid:
        return cls(p.tp, p.cp, p.dp_size, p.pp, p.ep, p.etp, p.order_dims)

    @property
    def pp_last(self) -> bool:
        """Pipeline stages outermost: each stage is a block of consecutive ranks."""
        return self._pp_last

    @property
    def stage_size(self) -> int:
        return self.tp * self.cp * self.dp

    @property
    def edp(self) -> int:
        return self.stage_size // (self.ep * self.etp)

    @property
    def gpus(self) -> int:
        return self.stage_size * self.pp

    def gpu(self, stage: int, q: int) -> int:
        """Global id of the q-th rank of pipeline ``stage``."""
        if self._pp_last:
            return stage * self.stage_size + q
        a, s = self._attn, self._in_stage
        return stage * a.stride["pp"] + sum(s.coord(q, d) * a.stride[d] for d in s.order)

    def coords(self, g: int) -> tuple[int, int]:
        """(stage, q) of global rank g."""
        if self._pp_last:
            return divmod(g, self.stage_size)
        a, s = self._attn, self._in_stage
        return a.coord(g, "pp"), sum(a.coord(g, d) * s.stride[d] for d in s.order)

    def tp_group(self, g: int) -> tuple[int, ...]:
        return self._attn.group(g, ("tp",))

    def dp_group(self, g: int) -> tuple[int, ...]:
        """The dp·cp ranks that hold the same non-expert shard (Megatron's data-parallel group
        with context parallelism folded in), ascending."""
        return tuple(sorted(self._attn.group(g, ("dp", "cp"))))

    def cp_group(self, g: int) -> tuple[int, ...]:
        """The cp ranks that split one sequence (same tp rank, dp rank and stage): the ring
        that ring attention passes K/V chunks around."""
        return self._attn.group(g, ("cp",))

    def ep_group(self, g: int) -> tuple[int, ...]:
        """The ep ranks that share one layer's experts, in EP-rank order."""
        return self._expert.group(g, ("ep",))

    def etp_group(self, g: int) -> tuple[int, ...]:
        """The etp ranks that hold shards of the same experts: they gather each other's
        dispatched tokens before the expert GEMMs."""
        return self._expert.group(g, ("tp",))

    def ep_rank(self, g: int) -> int:
        return self._expert.coord(g, "ep")

    def edp_group(self, g: int) -> tuple[int, ...]:
        return self._expert.group(g, ("dp",))

    def pp_group(self, g: int) -> tuple[int, ...]:
        """The pp ranks that pass one microbatch's activations along, stage order."""
        return self._attn.group(g, ("pp",))

    def pp_peer(self, g: int, delta: int) -> int:
        a = self._attn
        stage = a.coord(g, "pp")
        return g + (((stage + delta) % self.pp) - stage) * a.stride["pp"]

    # -- every group of a kind, for placement reports ---------------------------------------
    def groups(self, kind: str, limit_gpus: int) -> list[tuple[int, ...]]:
        """The groups of ``kind`` (a key of ``GROUP_DIMS``) whose first rank is below
        ``limit_gpus``, each cut to its first ``limit_gpus`` members: the placement report
        looks at a bounded prefix, not every GPU, so it costs the same at any scale."""
        which, dims = GROUP_DIMS[kind]
        radix = self._attn if which == "attn" else self._expert
        return [
            radix.group(g, dims, limit_gpus)
            for g in range(min(limit_gpus, self.gpus))
            if radix.is_leader(g, dims)
        ]

    def group_of(self, kind: str, g: int, limit: int | None = None) -> tuple[int, ...]:
        """Rank g's group of ``kind`` (its first ``limit`` members when given)."""
        which, dims = GROUP_DIMS[kind]
        radix = self._attn if which == "attn" else self._expert
        return radix.group(g, dims, limit)
