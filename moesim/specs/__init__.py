"""Pydantic specs: the public vocabulary of scenario files. Imports nothing else of moesim."""

from moesim.specs.base import Spec, SpecError
from moesim.specs.cost import Cost
from moesim.specs.hardware import ClusterSpec, GPUSpec, InterNodeLink, IntraNodeLink
from moesim.specs.model import MLASpec, ModelSpec, MoESpec
from moesim.specs.parallel import SELECTIVE_MODULES, ParallelSpec
from moesim.specs.precision import BYTES_PER_ELEMENT, Precision
from moesim.specs.result import POST_TRAINING_PHASES, MemoryBreakdown, Result, TimeBreakdown
from moesim.specs.routing import Routing
from moesim.specs.scenario import Scenario
from moesim.specs.simulation import SimulationSpec
from moesim.specs.workload import (
    TRAINING_STAGES,
    CollectiveWorkload,
    DPOWorkload,
    GRPOWorkload,
    InferenceWorkload,
    LoRASpec,
    MoELayerWorkload,
    PPOWorkload,
    PretrainWorkload,
    SFTWorkload,
    Workload,
)

__all__ = [
    "BYTES_PER_ELEMENT",
    "POST_TRAINING_PHASES",
    "SELECTIVE_MODULES",
    "TRAINING_STAGES",
    "ClusterSpec",
    "CollectiveWorkload",
    "Cost",
    "DPOWorkload",
    "GPUSpec",
    "GRPOWorkload",
    "InferenceWorkload",
    "InterNodeLink",
    "IntraNodeLink",
    "LoRASpec",
    "MLASpec",
    "MemoryBreakdown",
    "MoELayerWorkload",
    "MoESpec",
    "ModelSpec",
    "PPOWorkload",
    "ParallelSpec",
    "Precision",
    "PretrainWorkload",
    "Result",
    "Routing",
    "SFTWorkload",
    "Scenario",
    "SimulationSpec",
    "Spec",
    "SpecError",
    "TimeBreakdown",
    "Workload",
]
