"""Which layers sit on which pipeline stage and virtual chunk.

A layout is a list of ``pp · virtual_stages`` virtual stages in Megatron-Core's order (stage i
on pipeline rank ``i % pp`` as its chunk ``i // pp``; the interleaved schedule's rank r holds
chunks r, r+pp, r+2·pp, …), each a run of symbols: ``E`` embedding, ``t`` a transformer layer,
``m`` an MTP layer, ``L`` the LM head with the final norm and the loss
(``moesim.specs.pipeline_layout``). It comes from ``parallel.pipeline_layout``, from
``first_stage_layers``/``last_stage_layers``/``account_for_*``, or by default from an even split
(the remainder to the earliest chunks; the embedding on the first stage, the MTP layers and the
head on the last). An encoder-decoder is laid out as encoder layers followed by decoder layers.
``pipeline_balance: auto`` is resolved by the simulator (``moesim.sim.pipeline_balance``) into
a layout string; here it reads as the even split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moesim.specs import ModelSpec, ParallelSpec
from moesim.specs.pipeline_layout import parse_layout, rank_string, split_layout, split_of


@dataclass(frozen=True)
class StageLayout:
    """The layers of one pipeline rank: (layer index, is_moe) over all its virtual chunks."""

    rank: int
    chunks: list[list[int]]  # global layer indices per virtual chunk (0 = first encoder layer)
    moe_layers: list[int]
    has_embedding: bool  # in chunk 0
    has_lm_head: bool  # the head and loss, in the last chunk
    mtp_layers: int = 0  # MTP layers, in the last chunk
    symbols: list[list[str]] = field(default_factory=list)  # per chunk: E, t, m, L

    @property
    def layers(self) -> list[int]:
        return [i for chunk in self.chunks for i in chunk]

    @property
    def n_layers(self) -> int:
        return sum(len(c) for c in self.chunks)

    @property
    def n_moe_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def has_mtp(self) -> bool:
        return self.mtp_layers > 0

    @property
    def layout(self) -> str:
        """This rank's layout for people, e.g. ``"E t t t | t t"``."""
        return rank_string(self.symbols)

    def chunk_has(self, chunk: int, symbol: str) -> bool:
        return bool(self.symbols) and symbol in self.symbols[chunk]


def layer_is_moe(m: ModelSpec, global_index: int) -> bool:
    """Encoder layers come first in the global numbering, then decoder layers."""
    if global_index < m.n_encoder_layers:
        return m.is_moe_encoder_layer(global_index)
    return m.is_moe_layer(global_index - m.n_encoder_layers)


def split_even(n: int, parts: int) -> list[int]:
    """``n`` items over ``parts`` bins, remainder to the first bins."""
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def layout_symbols(m: ModelSpec, p: ParallelSpec) -> list[list[str]]:
    """The virtual stages of ``p`` for ``m`` (Megatron order), before layer numbering."""
    if p.pipeline_layout is not None:
        return parse_layout(p.pipeline_layout)
    return split_of(m, p)


def stages_from_symbols(m: ModelSpec, virtual: list[list[str]], pp: int) -> list[StageLayout]:
    """Number the ``t`` of ``virtual`` in order and group the virtual stages by rank."""
    vp = len(virtual) // pp
    numbered: list[list[int]] = []
    nxt = 0
    for st in virtual:
        k = st.count("t")
        numbered.append(list(range(nxt, nxt + k)))
        nxt += k
    stages = []
    for r in range(pp):
        idx = [c * pp + r for c in range(vp)]
        own = [numbered[i] for i in idx]
        syms = [list(virtual[i]) for i in idx]
        flat = [i for chunk in own for i in chunk]
        stages.append(
            StageLayout(
                rank=r,
                chunks=own,
                moe_layers=[i for i in flat if layer_is_moe(m, i)],
                has_embedding="E" in syms[0],
                has_lm_head="L" in syms[-1],
                mtp_layers=syms[-1].count("m"),
                symbols=syms,
            )
        )
    return stages


def stage_layouts(m: ModelSpec, p: ParallelSpec) -> list[StageLayout]:
    """Every pipeline rank's layers under ``p``'s layout options."""
    return stages_from_symbols(m, layout_symbols(m, p), p.pp)


def pipeline_layout(m: ModelSpec, pp: int, virtual_stages: int = 1) -> list[StageLayout]:
    """The even split (no layout options)."""
    n = m.n_layers + m.n_encoder_layers
    if pp * virtual_stages > n:
        raise ValueError(
            f"pp·virtual_stages = {pp * virtual_stages} exceeds the model's {n} layers"
        )
    return stages_from_symbols(m, split_layout(n, m.mtp_depth, pp, virtual_stages), pp)


def dualpipe_applies(pp: int, microbatches: int, virtual_stages: int = 1) -> bool:
    """DualPipe's layout (deepseek-ai/DualPipe's requirements): even pp, an even number of
    microbatches ≥ 2·pp, no interleaving. Elsewhere a ``dualpipe`` schedule runs as 1F1B."""
    return (
        pp >= 2
        and pp % 2 == 0
        and microbatches % 2 == 0
        and microbatches >= 2 * pp
        and virtual_stages == 1
    )


def dualpipe_positions(pp: int, rank: int) -> tuple[int, int]:
    """The two pipeline positions (stages of layers) DualPipe places on ``rank``: its own and
    the mirror one of the other direction, so every rank holds two stages' parameters."""
    h = min(rank, pp - 1 - rank)
    return h, pp - 1 - h
