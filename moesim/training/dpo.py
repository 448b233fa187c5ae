"""Direct Preference Optimization (Rafailov et al. 2023): the policy learns to prefer the
chosen completion over the rejected one relative to a frozen reference, no reward model.

As in TRL: per-sequence log-probs summed over completion tokens, chosen and rejected in one
batch, the reference under ``no_grad`` or precomputed once for the whole dataset
(``precompute_reference``), which frees the reference's memory during training.

The policy's router runs without exploration noise (noisy top-k): the reference is scored in
eval mode, and a policy scored with fresh noise would differ from it (and from itself) with the
same weights, so the loss would not start at log 2. A documented choice: preference tuning
sharpens a trained router rather than exploring new routes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from moesim.nn import Transformer
from moesim.training.data import PreferenceBatch, preference_batch
from moesim.training.losses import dpo_loss, sequence_logprobs
from moesim.training.step import (
    TrainConfig,
    autocast,
    aux_loss,
    make_optimizer,
    moe_metrics,
    optimizer_step,
)


@dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1
    precompute_reference: bool = False
    pool_batches: int = 16  # distinct batches of pairs, cycled


def frozen_copy(model: Transformer) -> Transformer:
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


class DPO:
    def __init__(self, model: Transformer, cfg: TrainConfig, dpo: DPOConfig | None = None):
        self.model, self.cfg, self.dpo = model, cfg, dpo or DPOConfig()
        model.set_exploration_noise(False)  # policy and reference: the same router function
        self.reference: Transformer | None = frozen_copy(model)
        self.optimizer = make_optimizer(model, cfg)
        self.pool = [
            preference_batch(cfg.batch_size, cfg.seq_len, seed=cfg.seed * 10_000 + i)
            for i in range(self.dpo.pool_batches)
        ]
        self.ref_logps: list[torch.Tensor] | None = None
        if self.dpo.precompute_reference:
            self.ref_logps = [self._reference_logps(b) for b in self.pool]
            self.reference = None  # no longer needed

    @torch.no_grad()
    def _reference_logps(self, b: PreferenceBatch) -> torch.Tensor:
        with autocast(self.cfg):
            out = self.reference(b.input_ids_BS.to(self.cfg.device), mtp=False)
        return sequence_logprobs(out.logits, b.labels_BS.to(self.cfg.device))

    def step(self, step: int) -> dict[str, float]:
        i = step % len(self.pool)
        b = self.pool[i]
        ids, labels = b.input_ids_BS.to(self.cfg.device), b.labels_BS.to(self.cfg.device)
        ref_2B = self.ref_logps[i] if self.ref_logps is not None else self._reference_logps(b)
        n = b.n_pairs
        self.model.train()
        with autocast(self.cfg):
            out = self.model(ids, mtp=False)
            logp_2B = sequence_logprobs(out.logits, labels)
            loss, m = dpo_loss(logp_2B[:n], logp_2B[n:], ref_2B[:n], ref_2B[n:], self.dpo.beta)
            total = loss + aux_loss(out, self.cfg.balance, step)
        optimizer_step(self.model, self.optimizer, total, self.cfg, out)
        return {"loss": loss.item(), "tokens": ids.numel(), **m, **moe_metrics(out)}
