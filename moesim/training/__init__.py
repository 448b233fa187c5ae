"""PyTorch training stages on ``moesim.nn.Transformer``: pretrain, SFT, DPO, GRPO (imports
torch). ``run_stage`` is what ``moesim train`` calls."""

from moesim.training.runner import STAGES, run_stage
from moesim.training.step import TrainConfig

__all__ = ["STAGES", "TrainConfig", "run_stage"]
