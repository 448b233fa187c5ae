"""Pretraining: next-token cross-entropy on synthetic text, plus MoE aux losses and, for
models with MTP modules, the multi-token-prediction loss (DeepSeek-V3 §2.2)."""

from __future__ import annotations

import torch

from moesim.nn import ModelOutput, Transformer
from moesim.training.data import PretrainData
from moesim.training.losses import next_token_loss
from moesim.training.step import (
    TrainConfig,
    autocast,
    aux_loss,
    make_optimizer,
    moe_metrics,
    optimizer_step,
)


def mtp_loss(out: ModelOutput, input_ids_BS: torch.Tensor) -> torch.Tensor | float:
    """Mean over depths k of the cross-entropy of predicting token t+k+1 at position t."""
    if not out.mtp_logits:
        return 0.0
    losses = []
    for k, logits in enumerate(out.mtp_logits, start=1):
        targets = input_ids_BS[:, k + 1 :]  # logits[:, t] predicts input t+k+1
        losses.append(next_token_loss(logits[:, : targets.shape[1]], targets))
    return sum(losses) / len(losses)


class Pretrain:
    def __init__(self, model: Transformer, cfg: TrainConfig):
        self.model, self.cfg = model, cfg
        self.data = PretrainData(cfg.batch_size, cfg.seq_len, seed=cfg.seed)
        self.optimizer = make_optimizer(model, cfg)

    def step(self, step: int) -> dict[str, float]:
        ids, labels = (t.to(self.cfg.device) for t in self.data.batch_at(step))
        self.model.train()
        with autocast(self.cfg):
            out = self.model(ids)
            loss = next_token_loss(out.logits, labels)
            total = loss + aux_loss(out, self.cfg.balance, step)
            total = total + self.cfg.mtp_weight * mtp_loss(out, ids)
        optimizer_step(self.model, self.optimizer, total, self.cfg, out)
        return {"loss": loss.item(), "tokens": ids.numel(), **moe_metrics(out)}
