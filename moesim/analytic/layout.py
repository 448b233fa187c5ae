"""Which layers sit on which pipeline stage and virtual chunk.

Layers are split as evenly as possible over ``pp · virtual_stages`` chunks, the remainder going
to the earliest chunks (Megatron-Core's default when the count does not divide). Chunk c lives on
pipeline rank ``c % pp`` (interleaved schedule: rank r holds chunks r, r+pp, r+2·pp, …). The
embedding sits on the first stage, the LM head and the loss on the last. An encoder-decoder is
laid out as encoder layers followed by decoder layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.specs import ModelSpec


@dataclass(frozen=True)
class StageLayout:
    """The layers of one pipeline rank: (layer index, is_moe) over all its virtual chunks."""

    rank: int
    chunks: list[list[int]]  # global layer indices per virtual chunk (0 = first encoder layer)
    moe_layers: list[int]
    has_embedding: bool
    has_lm_head: bool

    @property
    def layers(self) -> list[int]:
        return [i for chunk in self.chunks for i in chunk]

    @property
    def n_layers(self) -> int:
        return sum(len(c) for c in self.chunks)

    @property
    def n_moe_layers(self) -> int:
        return len(self.moe_layers)


def layer_is_moe(m: ModelSpec, global_index: int) -> bool:
    """Encoder layers come first in the global numbering, then decoder layers."""
    if global_index < m.n_encoder_layers:
        return m.is_moe_encoder_layer(global_index)
    return m.is_moe_layer(global_index - m.n_encoder_layers)


def split_even(n: int, parts: int) -> list[int]:
    """``n`` items over ``parts`` bins, remainder to the first bins."""
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def pipeline_layout(m: ModelSpec, pp: int, virtual_stages: int = 1) -> list[StageLayout]:
    n = m.n_layers + m.n_encoder_layers
    chunks = pp * virtual_stages
    if chunks > n:
        raise ValueError(f"pp·virtual_stages = {chunks} exceeds the model's {n} layers")
    sizes = split_even(n, chunks)
    starts = [sum(sizes[:c]) for c in range(chunks)]
    stages = []
    for r in range(pp):
        own = [list(range(starts[c], starts[c] + sizes[c])) for c in range(r, chunks, pp)]
        flat = [i for chunk in own for i in chunk]
        stages.append(
            StageLayout(
                rank=r,
                chunks=own,
                moe_layers=[i for i in flat if layer_is_moe(m, i)],
                has_embedding=r == 0,
                has_lm_head=r == pp - 1,
            )
        )
    return stages


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
