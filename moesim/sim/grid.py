"""Which GPU holds which shard: Megatron-Core's rank order and the groups of each parallelism.

Global rank g = tp_r + tp·(cp_r + cp·(dp_r + dp·pp_r)) (tp varies fastest, so a TP group sits
inside a node). Inside a pipeline stage the tp·cp·dp attention ranks are refolded for the
experts as q = etp_r + etp·(ep_r + ep·edp_r) (MoE Parallel Folding), so an EP group is ``ep``
consecutive (stride etp) ranks of the stage and packs into as few nodes as possible.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.specs import ParallelSpec


@dataclass(frozen=True)
class Grid:
    tp: int
    cp: int
    dp: int
    pp: int
    ep: int
    etp: int

    @classmethod
    def of(cls, p: ParallelSpec) -> Grid:
        return cls(p.tp, p.cp, p.dp_size, p.pp, p.ep, p.etp)

    @property
    def stage_size(self) -> int:
        return self.tp * self.cp * self.dp

    @property
    def edp(self) -> int:
        return self.stage_size // (self.ep * self.etp)

    def gpu(self, stage: int, q: int) -> int:
        """Global id of the q-th rank of pipeline ``stage``."""
        return stage * self.stage_size + q

    def coords(self, g: int) -> tuple[int, int]:
        """(stage, q) of global rank g."""
        return divmod(g, self.stage_size)

    def tp_group(self, g: int) -> tuple[int, ...]:
        base = g - g % self.tp
        return tuple(base + i for i in range(self.tp))

    def dp_group(self, g: int) -> tuple[int, ...]:
        """The dp·cp ranks that hold the same non-expert shard (Megatron's data-parallel group
        with context parallelism folded in)."""
        stage, q = self.coords(g)
        tp_r = q % self.tp
        return tuple(self.gpu(stage, tp_r + self.tp * j) for j in range(self.cp * self.dp))

    def cp_group(self, g: int) -> tuple[int, ...]:
        """The cp ranks that split one sequence (same tp rank, dp rank and stage): the ring
        that ring attention passes K/V chunks around."""
        stage, q = self.coords(g)
        tp_r, dp_r = q % self.tp, q // (self.tp * self.cp)
        return tuple(self.gpu(stage, tp_r + self.tp * (j + self.cp * dp_r)) for j in range(self.cp))

    def ep_group(self, g: int) -> tuple[int, ...]:
        stage, q = self.coords(g)
        etp_r = q % self.etp
        edp_r = q // (self.etp * self.ep)
        return tuple(
            self.gpu(stage, etp_r + self.etp * (e + self.ep * edp_r)) for e in range(self.ep)
        )

    def etp_group(self, g: int) -> tuple[int, ...]:
        """The etp ranks that hold shards of the same experts (consecutive in the folded
        order): they gather each other's dispatched tokens before the expert GEMMs."""
        base = g - self.coords(g)[1] % self.etp
        return tuple(base + i for i in range(self.etp))

    def ep_rank(self, g: int) -> int:
        return (self.coords(g)[1] // self.etp) % self.ep

    def edp_group(self, g: int) -> tuple[int, ...]:
        stage, q = self.coords(g)
        inner = q % (self.etp * self.ep)
        return tuple(self.gpu(stage, inner + self.etp * self.ep * j) for j in range(self.edp))

    def pp_peer(self, g: int, delta: int) -> int:
        stage, q = self.coords(g)
        return self.gpu((stage + delta) % self.pp, q)
