"""Faults and reliability: the scenario's top-level ``faults`` (stragglers: a slow GPU, a slow
link) and ``reliability`` (failures over a long run: MTBF, checkpoints, restarts → goodput).

Both are opt-in: a scenario without them runs exactly as before.

- ``faults`` change the step the simulator runs. A slow GPU runs every kernel of its compute
  stream (GEMMs and memory-bound ops alike) ``factor`` times longer; a slow link carries its
  traffic ``factor`` times slower (bandwidth / factor). Under full fidelity the fault sits on its
  own rank and reaches its peers through the rendezvous of each collective; under symmetric
  fidelity the representative of the fault's pipeline stage takes it (``moesim.sim.faults``).
- ``reliability`` does not change the step: it turns the simulated throughput into the
  throughput of a long run that fails, checkpoints and restarts (``moesim.analytic.goodput``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from moesim.specs.base import NO_BOOL_FLOAT, NonNegativeFloat, NonNegativeInt, PositiveFloat, Spec

# A slow GPU or link is slower: factor ≥ 1 (1 = healthy). Refused below 1 with the fix.
SlowFactor = Annotated[
    float,
    Field(
        description="how many times slower than healthy (≥ 1: 1.5 = takes 1.5× as long; a "
        "link's bandwidth is divided by it)"
    ),
    NO_BOOL_FLOAT,
]


def _check_factor(kind: str, factor: float) -> None:
    if factor < 1.0:
        raise ValueError(
            f"faults: a {kind} has factor {factor:g} < 1, which would make it faster: use a "
            "factor ≥ 1 (1.5 = 1.5× as long; a faster GPU is a different gpu spec, not a fault)"
        )


class SlowGPU(Spec):
    """A straggler GPU: every kernel of its compute stream takes ``factor`` times as long."""

    kind: Literal["slow_gpu"] = Field(description="slow_gpu: a GPU that computes slower")
    rank: NonNegativeInt = Field(
        description="the global rank (GPU index, node-major: node · gpus_per_node + local) of "
        "the slow GPU; below the cluster's GPU count"
    )
    factor: SlowFactor

    @model_validator(mode="after")
    def _check(self) -> SlowGPU:
        _check_factor("slow_gpu", self.factor)
        return self


class SlowLink(Spec):
    """A slow link: a node's NICs (``node``) or one rank's link (``rank``) carry their traffic
    ``factor`` times slower."""

    kind: Literal["slow_link"] = Field(description="slow_link: a link with less bandwidth")
    rank: NonNegativeInt | None = Field(
        None, description="the rank whose link is slow (give rank or node, not both)"
    )
    node: NonNegativeInt | None = Field(
        None, description="the node whose links are slow, for every GPU on it (a degraded NIC)"
    )
    link: Literal["network", "nvlink"] = Field(
        "network",
        description="which link: network = the inter-node NIC path (RDMA), nvlink = the GPU's "
        "NVLink port",
    )
    factor: SlowFactor

    @model_validator(mode="after")
    def _check(self) -> SlowLink:
        _check_factor("slow_link", self.factor)
        if (self.rank is None) == (self.node is None):
            raise ValueError(
                "faults: a slow_link names either rank (one GPU's link) or node (every GPU of "
                "that node), exactly one of them: add one or drop the other"
            )
        return self


Fault = Annotated[SlowGPU | SlowLink, Field(discriminator="kind")]


class ReliabilitySpec(Spec):
    """Failures over a long run. Every figure is the user's: moesim ships no default MTBF (the
    failure rate of a fleet is a property of that fleet; publish yours)."""

    gpu_mtbf_hours: PositiveFloat = Field(
        description="mean time between failures of one GPU with its share of the node (host, "
        "NICs, software) in hours: any failure of any GPU interrupts the synchronous job, so "
        "the job's MTBF is this / GPUs"
    )
    checkpoint_interval_s: PositiveFloat | Literal["auto"] = Field(
        "auto",
        description="seconds of training between checkpoints; auto = the optimum "
        "sqrt(2·write·MTBF) − write for the job's MTBF and the checkpoint write time (Young "
        "1974 less the write: Daly 2006's optimum to first order)",
    )
    checkpoint_write_s: PositiveFloat | None = Field(
        None,
        description="seconds training stalls to write one checkpoint; leave out to derive it "
        "from the checkpoint's bytes (weights and optimizer states) and checkpoint_write_GBps",
    )
    checkpoint_write_GBps: PositiveFloat | None = Field(
        None,
        description="aggregate write bandwidth of the checkpoint storage (1e9 bytes/s) as the "
        "job sees it; used when checkpoint_write_s is left out",
    )
    restart_s: NonNegativeFloat = Field(
        description="seconds from a failure to training again: detection, rescheduling, "
        "process start, loading the last checkpoint"
    )

    @model_validator(mode="after")
    def _check(self) -> ReliabilitySpec:
        if self.checkpoint_write_s is None and self.checkpoint_write_GBps is None:
            raise ValueError(
                "reliability: give checkpoint_write_s (seconds one checkpoint stalls training) "
                "or checkpoint_write_GBps (the storage's write bandwidth, to derive it from the "
                "checkpoint's bytes)"
            )
        return self


def check_faults(faults: list, gpus: int, nodes: int) -> None:
    """Ranks and nodes of ``faults`` inside the cluster (raises ValueError naming the entry)."""
    for i, f in enumerate(faults):
        if f.rank is not None and f.rank >= gpus:
            raise ValueError(
                f"faults[{i}].rank: {f.rank} is outside the cluster's {gpus} GPUs (ranks "
                f"0..{gpus - 1}): use a rank below {gpus}"
            )
        node = getattr(f, "node", None)
        if node is not None and node >= nodes:
            raise ValueError(
                f"faults[{i}].node: {node} is outside the cluster's {nodes} nodes (0.."
                f"{nodes - 1}): use a node below {nodes}"
            )
