"""Supervised fine-tuning: prompt/response examples packed into full rows, attention kept
within each example, loss on response tokens only (prompts masked out)."""

from __future__ import annotations

from moesim.nn import Transformer
from moesim.training.data import SFTData
from moesim.training.losses import next_token_loss
from moesim.training.step import (
    TrainConfig,
    autocast,
    aux_loss,
    make_optimizer,
    moe_metrics,
    optimizer_step,
)


class SFT:
    def __init__(self, model: Transformer, cfg: TrainConfig):
        self.model, self.cfg = model, cfg
        self.data = SFTData(cfg.batch_size, cfg.seq_len, seed=cfg.seed)
        self.optimizer = make_optimizer(model, cfg)

    def step(self, step: int) -> dict[str, float]:
        b = self.data.batch_at(step)
        dev = self.cfg.device
        ids, labels, docs = b.input_ids_BS.to(dev), b.labels_BS.to(dev), b.doc_ids_BS.to(dev)
        self.model.train()
        with autocast(self.cfg):
            out = self.model(ids, doc_ids_BS=docs, mtp=False)
            loss = next_token_loss(out.logits, labels)
            total = loss + aux_loss(out, self.cfg.balance, step)
        optimizer_step(self.model, self.optimizer, total, self.cfg, out)
        return {
            "loss": loss.item(),
            "tokens": ids.numel(),
            "loss_tokens": b.n_loss_tokens,
            **moe_metrics(out),
        }
