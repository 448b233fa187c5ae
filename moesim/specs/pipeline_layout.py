"""Megatron-Core's ``--pipeline-model-parallel-layout`` strings: parse, check, write.

Grammar as Megatron-Core parses it (``megatron/core/transformer/pipeline_parallel_layer_layout.py``,
``PipelineParallelLayerLayout.parse_str_to_list``): commas are cosmetic and removed; then every
``(X)*n`` (no nesting) is unrolled to n copies of X, then every ``c*n`` (any one character) to n
copies of c; the result is split at ``|`` into virtual stages, each a run of ``E`` (embedding),
``t`` (transformer decoder layer), ``m`` (multi-token-prediction layer) and ``L`` (loss; here the
LM head, final norm and cross-entropy). Empty stages are allowed (``E||t|L``).

Virtual stage i runs on pipeline rank ``i % pp`` as its chunk ``i // pp`` (Megatron: "Let
i = a * pp_size + b, then layout[i] gives ... the a-th vpp stage and the b-th pp stage").
``check_layout`` applies ``validate_layer_layout``'s rules. Pure string work: no moesim imports.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # specs.parallel imports this module
    from moesim.specs.model import ModelSpec
    from moesim.specs.parallel import ParallelSpec

SYMBOLS = {"E": "embedding", "t": "transformer layer", "m": "MTP layer", "L": "loss"}
_PAREN = re.compile(r"\(([^)]+)\)\*(\d+)")
_CHAR = re.compile(r"(.)\*(\d+)")
_GRAMMAR_CHARS = set("EtmL|()*,0123456789")
FIELD = "parallel.pipeline_layout"
HINT = "symbols E, t, m, L; '|' between virtual stages; repeat with 't*3' or '(tt|)*7'"


def expand(layout: str) -> str:
    """The layout with commas removed and every repetition unrolled (Megatron's two passes)."""
    s = layout.replace(",", "")
    s = _PAREN.sub(lambda x: x.group(1) * int(x.group(2)), s)
    return _CHAR.sub(lambda x: x.group(1) * int(x.group(2)), s)


def parse_layout(layout: str) -> list[list[str]]:
    """Virtual stages in Megatron's order (stage i on rank i % pp), each a list of symbols.

    Errors name the position: a character outside the grammar by its index in ``layout``, a
    leftover of a repetition that did not unroll (``((t)*2)*3``, ``t*``) by its virtual stage
    and index in the unrolled string."""
    for i, ch in enumerate(layout):
        if ch not in _GRAMMAR_CHARS:
            raise ValueError(
                f"{FIELD}: invalid character {ch!r} at position {i} of {layout!r}: {HINT}"
            )
    flat = expand(layout)
    stages: list[list[str]] = []
    pos = 0
    for k, stage in enumerate(flat.split("|")):
        for j, ch in enumerate(stage):
            if ch not in SYMBOLS:
                raise ValueError(
                    f"{FIELD}: {ch!r} left at position {pos + j} of the unrolled layout "
                    f"{_clip(flat)!r} (virtual stage {k}): a repetition did not unroll "
                    f"(nested parentheses or a '*' without its count?): {HINT}"
                )
        stages.append(list(stage))
        pos += len(stage) + 1
    return stages


def _clip(s: str, n: int = 120) -> str:
    return s if len(s) <= n else s[:n] + "…"


def check_layout(
    stages: list[list[str]], pp: int, n_layers: int, mtp_layers: int, virtual_stages: int
) -> None:
    """Megatron-Core's ``validate_layer_layout`` for ``pp`` ranks, ``n_layers`` decoder layers
    and ``mtp_layers`` MTP layers; plus the virtual stages moesim was given."""
    n = len(stages)
    if n % pp:
        raise ValueError(
            f"{FIELD}: {n} virtual stages do not split over pp = {pp} ranks: write a multiple "
            f"of {pp} stages (separated by '|')"
        )
    vpp = n // pp
    if vpp != virtual_stages:
        raise ValueError(
            f"{FIELD}: {n} stages over pp = {pp} make {vpp} virtual stages per rank but "
            f"parallel.virtual_stages is {virtual_stages}: set virtual_stages: {vpp}"
            + (" and schedule: interleaved_1f1b" if vpp > 1 else "")
        )
    flat = [(k, c) for k, st in enumerate(stages) for c in st]
    if not flat or flat[0][1] != "E":
        raise ValueError(f"{FIELD}: the first layer must be the embedding: start with 'E'")
    if flat[-1][1] != "L":
        raise ValueError(f"{FIELD}: the last layer must be the loss: end with 'L'")
    for sym, what in (("E", "embedding"), ("L", "loss")):
        if sum(c == sym for _, c in flat) != 1:
            raise ValueError(f"{FIELD}: write the {what} {sym!r} exactly once")
    n_t = sum(c == "t" for _, c in flat)
    if n_t != n_layers:
        raise ValueError(
            f"{FIELD}: {n_t} transformer layers 't' but the model has {n_layers}: place {n_layers}"
        )
    n_m = sum(c == "m" for _, c in flat)
    if n_m != mtp_layers:
        raise ValueError(
            f"{FIELD}: {n_m} MTP layers 'm' but the model has {mtp_layers} (model.mtp_depth): "
            f"place {mtp_layers}"
        )
    if n_m:
        first_m = next(i for i, (_, c) in enumerate(flat) if c == "m")
        if any(c == "t" for _, c in flat[first_m:]):
            raise ValueError(f"{FIELD}: MTP layers 'm' must come after every 't'")
        with_m = {k for k, c in flat if c == "m"}
        if len(with_m) > 1:
            raise ValueError(f"{FIELD}: all MTP layers must sit in one virtual stage")
        (k,) = with_m
        if k // pp != vpp - 1:
            raise ValueError(
                f"{FIELD}: the MTP layers sit in virtual stage {k} (chunk {k // pp} of rank "
                f"{k % pp}); Megatron-Core places them only in a rank's last chunk "
                f"(stages {(vpp - 1) * pp}…{vpp * pp - 1})"
            )


def write_layout(stages: list[list[str]]) -> str:
    """A compact string that ``parse_layout`` reads back to ``stages``: runs of ≥ 3 equal
    symbols as ``t*k``, runs of ≥ 2 equal stages (not the last) as ``(…|)*k``."""

    def stage_str(st: list[str]) -> str:
        out, i = [], 0
        while i < len(st):
            j = i
            while j < len(st) and st[j] == st[i]:
                j += 1
            run = j - i
            out.append(f"{st[i]}*{run}" if run >= 3 else st[i] * run)
            i = j
        return "".join(out)

    parts: list[str] = []
    i, n = 0, len(stages)
    while i < n:
        j = i
        while j < n - 1 and stages[j] == stages[i]:
            j += 1
        run = j - i
        body = stage_str(stages[i])
        if run >= 2:
            parts.append(f"({body}|)*{run}")
            i = j
        else:
            parts.append(body + ("|" if i < n - 1 else ""))
            i += 1
    return "".join(parts)


def rank_string(chunks: list[list[str]]) -> str:
    """One pipeline rank's layout for people: symbols spaced, chunks split by ' | '
    (``"E t t t | t t"``)."""
    return " | ".join(" ".join(c) if c else "-" for c in chunks)


def split_layout(
    n_layers: int,
    mtp_layers: int,
    pp: int,
    virtual_stages: int = 1,
    first: int | None = None,
    last: int | None = None,
    account_for_embedding: bool = False,
    account_for_loss: bool = False,
) -> list[list[str]]:
    """The virtual stages (Megatron order) of a split by counts, as Megatron-Core computes it
    (``get_num_layers_to_build`` in ``transformer_block.py``):

    - ``first``/``last``: decoder layers on the first/last rank; the other ranks share the rest
      evenly (it must divide); each rank's layers split evenly over its chunks.
    - ``account_for_*``: the embedding / the loss count as one layer: (layers + 1 + 1) split
      evenly over ranks and chunks, the first / last chunk building one decoder layer less.
    - neither: moesim's even split, the remainder to the earliest chunks (Megatron-Core asserts
      that it divides).

    The embedding opens chunk 0 of rank 0; the MTP layers and the loss close the last chunk of
    the last rank (where Megatron-Core builds them without a layout string)."""
    vp, chunks = virtual_stages, pp * virtual_stages
    if first is not None or last is not None:
        per_rank = _uneven_ranks(n_layers, pp, vp, first, last)
        counts = [per_rank[i % pp] // vp for i in range(chunks)]
    elif account_for_embedding or account_for_loss:
        total = n_layers + int(account_for_embedding) + int(account_for_loss)
        what = " + ".join(
            [f"{n_layers} layers"]
            + (["the embedding"] if account_for_embedding else [])
            + (["the loss"] if account_for_loss else [])
        )
        if total % chunks:
            raise ValueError(
                f"parallel.account_for_embedding/account_for_loss: {what} = {total} do not "
                f"split evenly over pp·virtual_stages = {chunks} chunks: change pp, "
                "virtual_stages or the account_for_* flags"
            )
        counts = [total // chunks] * chunks
        counts[0] -= int(account_for_embedding)
        counts[-1] -= int(account_for_loss)
        if min(counts) < 0:
            raise ValueError(
                "parallel.account_for_embedding/account_for_loss: a chunk of one layer cannot "
                "also hold the embedding or loss: lower pp·virtual_stages"
            )
    else:
        if chunks > n_layers:
            raise ValueError(f"pp·virtual_stages = {chunks} exceeds the model's {n_layers} layers")
        base, extra = divmod(n_layers, chunks)
        counts = [base + (1 if i < extra else 0) for i in range(chunks)]
    stages = [["t"] * c for c in counts]
    stages[0].insert(0, "E")
    stages[-1] += ["m"] * mtp_layers + ["L"]
    return stages


def _uneven_ranks(
    n_layers: int, pp: int, vp: int, first: int | None, last: int | None
) -> list[int]:
    """Decoder layers per rank under first_stage_layers / last_stage_layers."""
    rest, middle = n_layers, pp
    for name, n in (("first_stage_layers", first), ("last_stage_layers", last)):
        if n is not None:
            rest -= n
            middle -= 1
            if rest < 0:
                raise ValueError(
                    f"parallel.{name} ({n}): more layers than the model's {n_layers} left for "
                    "it: lower it"
                )
    if bool(rest) != bool(middle):
        raise ValueError(
            f"parallel.first_stage_layers/last_stage_layers leave {rest} layers for {middle} "
            f"middle ranks: make them sum to {n_layers} at pp = {pp}, or leave ranks in between"
        )
    if middle and rest % (middle * vp):
        raise ValueError(
            f"parallel.first_stage_layers/last_stage_layers leave {rest} layers that do not "
            f"split evenly over the {middle} middle ranks × {vp} virtual stages: change them "
            f"so that {middle * vp} divides the rest"
        )
    per_mid = rest // middle if middle else 0
    per_rank = [per_mid] * pp
    if first is not None:
        per_rank[0] = first
    if last is not None:
        per_rank[-1] = last
    return per_rank


def split_of(m: ModelSpec, p: ParallelSpec) -> list[list[str]]:
    """The virtual stages Megatron's split gives ``m`` under ``p``'s first/last stage layers
    and account_for_* options (``split_layout`` with the scenario's fields)."""
    return split_layout(
        m.n_layers + m.n_encoder_layers,
        m.mtp_depth,
        p.pp,
        p.virtual_stages,
        p.first_stage_layers,
        p.last_stage_layers,
        p.account_for_embedding,
        p.account_for_loss,
    )
