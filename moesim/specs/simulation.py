"""SimulationSpec: how faithfully and with which models the simulator runs (not what it runs)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from moesim.specs.base import Float, PositiveInt, Spec


class SimulationSpec(Spec):
    fidelity: Literal["symmetric", "full"] = Field(
        "symmetric", description="simulate one representative rank per symmetry class, or all"
    )
    network: Literal["flow", "analytic"] = Field(
        "flow", description="max-min fair flows on links, or closed-form alpha-beta"
    )
    all_to_all: Literal["auto", "direct", "hierarchical"] = Field(
        "auto",
        description="the expert all-to-all's algorithm: direct = every (token, expert) copy "
        "straight to its GPU; hierarchical = DeepEP (one copy per GPU, one per node over RDMA "
        "then NVLink forwarding); auto = as parallel.moe_dispatcher picks. Kept for old "
        "scenarios: parallel.moe_dispatcher says the same and more; the two must agree",
    )
    all_reduce: Literal["auto", "ring", "tree"] = Field(
        "auto",
        description="all-reduce algorithm: auto = NCCL's own pick by its tuning model (ring, "
        "tree, NVLS, NVLS-tree, each with the LL / LL128 / Simple protocol of least predicted "
        "time); ring or tree force the algorithm as NCCL_ALGO does (protocol still NCCL's "
        "pick). auto is never slower than a forced choice: it takes the least time over a "
        "superset of candidates",
    )
    overlap_shared_experts: bool = Field(
        True, description="shared experts run while the dispatch all-to-all is in flight"
    )
    overlap_dp: bool = Field(True, description="gradient reduce overlaps the backward pass")
    overlap_tp: bool = Field(
        False,
        description="TP collectives overlap their GEMMs (comm-GEMM overlap) ideally: a block "
        "takes max(all-gather, GEMMs, reduce-scatter), the limit of a finely chunked pipeline "
        "(Transformer Engine's userbuffers); an upper bound on what the overlap buys",
    )
    overlap_cp: bool = Field(
        True,
        description="context parallelism: the ring's K/V exchange runs during the attention "
        "(ring attention computes on the chunk it holds while the next one arrives); False "
        "exchanges first, then computes (a lower bound on what overlap buys)",
    )
    dp_bucket_MB: Float = Field(40.0, gt=0, description="gradient bucket size (1e6 bytes)")
    profile: str | None = Field(
        None,
        description="calibration profile: a JSON path or a GPU id (calibration/<id>.json, "
        "measured, before calibration/published/<id>.json, fitted from published kernel "
        "tables); unset: the scenario GPU's measured profile, else its published one, else the "
        "default that ships with moesim",
    )
    microbatches_simulated: PositiveInt | None = Field(
        None,
        description="cap on microbatches simulated; the step is extrapolated to all of them "
        "by a line through this run and one of half the cap (a step grows by the same time "
        "per microbatch past the pipeline's fill); None = all",
    )
