"""How one MoE layer's dispatch and combine traffic is laid on the links, per dispatcher
(``moesim.analytic.dispatch`` says which one runs and why).

A ``DispatchPattern`` scales the (token, expert) copy matrix of a draw into bytes:

- ``alltoall``, ``deepep_low_latency``: every copy travels (``gpu_dedup`` = ``node_dedup`` = 1),
  straight from source to destination GPU.
- ``deepep``: a token reaches each destination GPU once, so a copy carries ``gpu_dedup`` =
  E[distinct GPUs per token] / k of a row; across nodes (``hierarchical``) once per destination
  node over RDMA (``node_dedup`` = E[distinct nodes per token] / k), then forwarded over NVLink.
  Both expectations follow the group-limited routing of the model.
- ``allgather``: no copy matrix; every rank gathers the group's tokens (``allgather``).
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.analytic.dispatch import expected_bins_per_token
from moesim.specs import Scenario


@dataclass(frozen=True)
class DispatchPattern:
    """How one rank's routed copies spread over the EP group, as byte multipliers.

    ``gpu_dedup``: bytes per copy that reach a GPU once deduplicated per GPU; ``node_dedup``:
    the same per destination node (the RDMA leg of a hierarchical dispatch)."""

    dispatcher: str
    hierarchical: bool
    gpu_dedup: float
    node_dedup: float

    @property
    def allgather(self) -> bool:
        return self.dispatcher == "allgather"


def dispatch_pattern(s: Scenario, group_nodes: int, dispatcher: str) -> DispatchPattern:
    """The pattern of ``dispatcher`` on an EP group spread over ``group_nodes`` nodes."""
    m, p = s.model, s.parallel
    assert m.moe is not None
    if dispatcher != "deepep":
        return DispatchPattern(dispatcher, False, 1.0, 1.0)
    k = m.moe.top_k
    gpu_dedup = expected_bins_per_token(m.moe, p.ep) / k
    if group_nodes <= 1:
        return DispatchPattern(dispatcher, False, gpu_dedup, gpu_dedup)
    node_dedup = expected_bins_per_token(m.moe, group_nodes) / k
    return DispatchPattern(dispatcher, True, gpu_dedup, node_dedup)


def allgather_bytes_per_token(s: Scenario, payload_bytes: float, dispatch: bool) -> float:
    """Bytes one token adds to the all-gather dispatcher's buffer: its hidden state and, on the
    dispatch, its routing map (one byte per expert) and probabilities (one activation-width
    value per expert), all three gathered by Megatron-Core's ``MoEAllGatherTokenDispatcher``
    (megatron/core/transformer/moe/token_dispatcher.py, ``token_dispatch``)."""
    m = s.model
    assert m.moe is not None
    row = m.d_model * payload_bytes
    if dispatch:
        row += m.moe.n_routed_experts * (1.0 + s.precision.activation_bytes)
    return row
