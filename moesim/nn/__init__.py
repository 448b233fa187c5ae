"""PyTorch modules that moesim models: the MoE layer and a small transformer (imports torch).

Nothing outside ``moesim.nn``, ``moesim.training`` and ``moesim.calibrate`` imports torch.
"""

from moesim.nn.balance import BALANCE_PRESETS, NO_BALANCING, BalanceConfig
from moesim.nn.moe import MoELayer, MoEOutput, RoutingStats, write_routing_histogram
from moesim.nn.transformer import ModelOutput, Transformer

__all__ = [
    "BALANCE_PRESETS",
    "NO_BALANCING",
    "BalanceConfig",
    "MoELayer",
    "MoEOutput",
    "ModelOutput",
    "RoutingStats",
    "Transformer",
    "write_routing_histogram",
]
