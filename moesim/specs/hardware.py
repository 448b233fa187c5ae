"""Hardware specs: a GPU, the links between GPUs, and a cluster of nodes.

Units: ``_GBps`` = 1e9 bytes/s per direction, ``_Gbps`` = 1e9 bits/s, ``_GB`` = 1e9 bytes,
``_TBps`` = 1e12 bytes/s, ``_TFLOPS`` = 1e12 FLOP/s (dense, no sparsity), ``_us`` microseconds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from moesim.specs.base import Float, NonNegativeFloat, PositiveFloat, PositiveInt, Spec

DType = Literal["fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4"]


class IntraNodeLink(Spec):
    """The scale-up fabric inside a node (NVLink through NVSwitch, or AMD Infinity Fabric).

    ``bandwidth_GBps`` is what one GPU can send per direction to the switch (H100: 450).
    """

    bandwidth_GBps: PositiveFloat
    latency_us: NonNegativeFloat = 3.0
    kind: str = "nvswitch"


class InterNodeLink(Spec):
    """The scale-out fabric between nodes: NICs per node, each on a rail (GPU i uses NIC i)."""

    nics_per_node: PositiveInt = 8
    nic_Gbps: PositiveFloat = 400.0
    latency_us: NonNegativeFloat = 5.0
    spine_oversubscription: Float = Field(
        1.0, ge=1.0, description="leaf-to-spine oversubscription (1 = full bisection)"
    )
    kind: str = "infiniband"

    @property
    def node_bandwidth_GBps(self) -> float:
        """Bytes per second one node can send per direction over all its NICs."""
        return self.nics_per_node * self.nic_Gbps / 8.0


class GPUSpec(Spec):
    """One accelerator: peak dense throughput per dtype, memory, and its default fabrics."""

    name: str
    source: str = ""
    bf16_TFLOPS: PositiveFloat
    fp16_TFLOPS: PositiveFloat | None = None
    fp8_TFLOPS: PositiveFloat | None = None
    fp32_TFLOPS: PositiveFloat
    tf32_TFLOPS: PositiveFloat | None = None
    int8_TOPS: PositiveFloat | None = None
    hbm_GB: PositiveFloat = Field(
        description="device memory as the driver reports it (nvidia-smi memory.total), in 1e9 "
        "bytes: a datasheet's '80 GB' of HBM counts GiB (an H100 reports 85.52e9 bytes)"
    )
    hbm_TBps: PositiveFloat
    pcie_GBps: PositiveFloat = Field(64.0, description="host link per direction")
    intra_node: IntraNodeLink
    inter_node: InterNodeLink = InterNodeLink()
    gpus_per_node: PositiveInt = 8
    nvlink_domain_gpus: PositiveInt | None = Field(
        None,
        description="GPUs in one NVLink domain as the system ships (GB200 NVL72: 72); "
        "None = gpus_per_node",
    )
    tdp_W: PositiveFloat | None = None
    sms: PositiveInt | None = Field(
        None,
        description="streaming multiprocessors (AMD: compute units); sets the compute share "
        "communication kernels take (parallel.moe_comm_sms); None = that share is not modelled",
    )
    sustained_clock_fraction: Float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description=(
            "SM clock held under sustained GEMM load over the clock the datasheet peaks are "
            "computed at (power-limited GPUs run below it); the cost model scales every compute "
            "peak by it, and a calibration fitted on this GPU divides by the same scaled peak. "
            "1.0 (the default) unless a published measurement gives it: cite it in source"
        ),
    )

    def sustained_peak_TFLOPS(self, dtype: DType) -> float:
        """``peak_TFLOPS`` at the clock held under sustained load (``sustained_clock_fraction``)."""
        return self.peak_TFLOPS(dtype) * self.sustained_clock_fraction

    def peak_TFLOPS(self, dtype: DType) -> float:
        """Dense peak for a compute dtype; dtypes a GPU lacks fall back to the next wider one."""
        table = {
            "fp32": self.fp32_TFLOPS,
            "tf32": self.tf32_TFLOPS or self.fp32_TFLOPS,
            "bf16": self.bf16_TFLOPS,
            "fp16": self.fp16_TFLOPS or self.bf16_TFLOPS,
            "fp8": self.fp8_TFLOPS or self.bf16_TFLOPS,
            "int8": self.int8_TOPS or self.fp8_TFLOPS or self.bf16_TFLOPS,
            "int4": self.int8_TOPS or self.fp8_TFLOPS or self.bf16_TFLOPS,
        }
        return table[dtype]


FabricKind = Literal["rail_optimized", "top_of_rack"]


class FabricSpec(Spec):
    """The scale-out network as a fat tree of leaf, spine and core switches.

    Leaves hold ``leaf_nodes`` nodes; a pod holds ``pod_nodes`` nodes (whole leaves) under one
    set of spines; pods meet at the core. Rail-optimized: each leaf serves one rail (NIC i of
    every node of its group, DGX SuperPOD), so traffic between rails meets only at the spine;
    top-of-rack: one leaf takes every NIC of its nodes. A tier's uplinks carry what its
    downlinks carry over its oversubscription (downlink / uplink bandwidth).
    """

    kind: FabricKind = Field(
        "rail_optimized",
        description="rail_optimized (GPU i of every node on rail i: one leaf per rail and "
        "leaf group) or top_of_rack (one leaf takes every NIC of its nodes)",
    )
    leaf_nodes: PositiveInt | None = Field(
        None,
        description="nodes under one leaf (rail-optimized: one leaf per rail for these "
        "nodes); None = every node (one leaf per rail)",
    )
    leaf_oversubscription: Float = Field(
        1.0,
        ge=1.0,
        description="leaf downlink over uplink bandwidth (1 = non-blocking): traffic that leaves "
        "a leaf for the spines gets a NIC's bandwidth over this",
    )
    pod_nodes: PositiveInt | None = Field(
        None,
        description="nodes under one set of spines (a pod; a multiple of leaf_nodes); "
        "None = one pod (two tiers, no core)",
    )
    pod_oversubscription: Float = Field(
        1.0,
        ge=1.0,
        description="spine (aggregation) downlink over core uplink bandwidth: traffic between "
        "pods gets a NIC's bandwidth over leaf_oversubscription · pod_oversubscription",
    )

    @model_validator(mode="after")
    def _check(self) -> FabricSpec:
        if self.pod_nodes is not None:
            leaf = self.leaf_nodes or self.pod_nodes
            if self.pod_nodes % leaf:
                raise ValueError(
                    f"cluster.fabric.pod_nodes ({self.pod_nodes}) must be a multiple of "
                    f"leaf_nodes ({self.leaf_nodes}): a pod holds whole leaves"
                )
        elif self.pod_oversubscription != 1.0:
            raise ValueError(
                "cluster.fabric.pod_oversubscription needs pods: set cluster.fabric.pod_nodes"
            )
        return self


class ClusterSpec(Spec):
    """``nodes`` × ``gpus_per_node`` GPUs; links default to the GPU's own fabrics."""

    gpu: GPUSpec
    nodes: PositiveInt = 1
    gpus_per_node: PositiveInt | None = None
    intra_node: IntraNodeLink | None = None
    inter_node: InterNodeLink | None = None
    nvlink_domain_gpus: PositiveInt | None = Field(
        None,
        description="GPUs in one NVLink (scale-up) domain: GB200 NVL72 = 72 (18 nodes of 4), "
        "NVL36 = 36, HGX H100 = 8; a multiple of gpus_per_node that divides the cluster's "
        "GPUs, or a divisor of gpus_per_node; its links are intra_node's (the GPU's NVLink "
        "port and latency). Groups inside one domain use NVLink, groups across domains the "
        "NICs. Default: the GPU's own (catalog), else gpus_per_node",
    )
    fabric: FabricSpec | None = Field(
        None,
        description="multi-tier scale-out fabric (leaf / spine / core, oversubscription per "
        "tier, pods, rail-optimized or top-of-rack); None = one switch tier per rail, with "
        "inter_node.spine_oversubscription charged to every inter-node flow as before",
    )
    gpu_memory_reserve_GB: NonNegativeFloat = Field(
        1.0,
        description="HBM per GPU that tensors cannot use: the CUDA context, cuBLAS/cuDNN "
        "workspaces and launch buffers (300 MB to 1 GB per process, NAIRR's GPU-estimation "
        "guide, nairr.readthedocs.io resource_guides/gpu_estimation), plus what the allocator "
        "and NCCL keep; booked as 'other' memory, so the usable HBM is hbm_GB minus this",
    )

    @model_validator(mode="after")
    def _fill_defaults(self) -> ClusterSpec:
        # Frozen model: fill the defaults through object.__setattr__ once, at validation.
        if self.gpus_per_node is None:
            object.__setattr__(self, "gpus_per_node", self.gpu.gpus_per_node)
        if self.intra_node is None:
            object.__setattr__(self, "intra_node", self.gpu.intra_node)
        if self.inter_node is None:
            object.__setattr__(self, "inter_node", self.gpu.inter_node)
        self._check_domain()
        self._check_fabric()
        return self

    def _check_domain(self) -> None:
        d, gpn, gpus = self.domain_gpus, self.gpus_per_node, self.gpus
        assert gpn is not None
        if d <= gpn:
            if gpn % d:
                raise ValueError(
                    f"cluster.nvlink_domain_gpus ({d}) must divide gpus_per_node ({gpn}) or be "
                    "a multiple of it: a domain holds whole nodes or splits a node evenly"
                )
            return
        if d % gpn:
            raise ValueError(
                f"cluster.nvlink_domain_gpus ({d}) is not a multiple of gpus_per_node ({gpn}): "
                f"a domain holds whole nodes; use {d // gpn * gpn or gpn} or {(d // gpn + 1) * gpn}"
            )
        if gpus % d:
            raise ValueError(
                f"cluster.nvlink_domain_gpus ({d}) must divide the cluster's {gpus} GPUs "
                f"({self.nodes} nodes × {gpn}): set cluster.nodes to a multiple of "
                f"{d // gpn} (whole domains), or cluster.nvlink_domain_gpus to a divisor"
            )

    def _check_fabric(self) -> None:
        if self.fabric is None:
            return
        if self.inter.spine_oversubscription != 1.0:
            raise ValueError(
                "cluster.inter_node.spine_oversubscription and cluster.fabric both set the "
                "network's oversubscription: with a fabric, use "
                "cluster.fabric.leaf_oversubscription (and pod_oversubscription) instead"
            )

    @property
    def domain_gpus(self) -> int:
        """GPUs of one NVLink domain: ``nvlink_domain_gpus``, else the GPU's own (a cluster
        smaller than one of its domains sits in one: 16 GB200 GPUs of an NVL72 rack), else a
        node. Left unresolved in the field, so a copy of the spec with other nodes (the
        rollout GPUs of post-training) resolves it again."""
        if self.nvlink_domain_gpus is not None:
            return self.nvlink_domain_gpus
        assert self.gpus_per_node is not None
        own = self.gpu.nvlink_domain_gpus or self.gpus_per_node
        return min(own, self.gpus) if own > self.gpus_per_node else own

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def intra(self) -> IntraNodeLink:
        assert self.intra_node is not None
        return self.intra_node

    @property
    def inter(self) -> InterNodeLink:
        assert self.inter_node is not None
        return self.inter_node
