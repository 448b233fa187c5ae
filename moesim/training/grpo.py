"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath §4.1): for each prompt
sample ``group_size`` completions (KV-cached generation), score them with a verifiable reward,
normalise rewards within the group into advantages (no value model), and maximise the clipped
ratio objective with a k3 KL penalty to a frozen reference.

The policy first gets ``warmup_sft_steps`` of SFT on the task (as GRPO starts from an SFT model
in practice): from random weights a byte-level model almost never samples a right answer, and a
group whose rewards are all equal has zero advantage. The reference is the policy after that
warm-up. The task is single-digit addition (``AdditionTask``).

After the warm-up the router runs without exploration noise (noisy top-k), in rollouts (eval
mode), in the log-probs of the sampling policy and in the policy updates alike: the ratio
π/π_old is then exactly 1 on the first inner step, as the clipped objective assumes (with fresh
noise in each forward it was not). A documented choice: RL sharpens a trained router rather
than exploring new routes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moesim.nn import Transformer
from moesim.nn.generate import generate
from moesim.training.data import EOS, IGNORE, AdditionTask, encode, pack_examples
from moesim.training.dpo import frozen_copy
from moesim.training.losses import group_advantages, grpo_loss, next_token_loss, token_logprobs
from moesim.training.step import (
    TrainConfig,
    autocast,
    aux_loss,
    make_optimizer,
    moe_metrics,
    optimizer_step,
)


@dataclass(frozen=True)
class GRPOConfig:
    group_size: int = 8
    prompts_per_step: int = 32
    clip_eps: float = 0.2
    kl_beta: float = 0.04
    inner_steps: int = 2  # μ: policy updates per batch of rollouts
    temperature: float = 1.0
    warmup_sft_steps: int = 30  # at TrainConfig.lr
    lr: float = 1e-4  # policy updates: smaller than SFT's (Adam on a noisy policy gradient
    # with a large step drifts away, KL grows, reward falls: measured at 3e-4 on tiny-dense)


def completion_labels(prompt_len: int, full_BL: torch.Tensor) -> torch.Tensor:
    """Labels (B, L−1) for inputs full[:, :-1]: the completion tokens up to and including the
    first EOS; IGNORE on the prompt and after the EOS."""
    labels = full_BL[:, 1:].clone()
    labels[:, : prompt_len - 1] = IGNORE
    comp = full_BL[:, prompt_len:]
    # positions after the first EOS of the completion carry no loss
    after_eos = (comp == EOS).long().cumsum(1) - (comp == EOS).long() > 0
    labels[:, prompt_len - 1 :][after_eos] = IGNORE
    return labels


class GRPO:
    def __init__(self, model: Transformer, cfg: TrainConfig, grpo: GRPOConfig | None = None):
        self.model, self.cfg, self.grpo = model, cfg, grpo or GRPOConfig()
        self.task = AdditionTask(seed=cfg.seed)
        self.optimizer = make_optimizer(model, cfg)
        self.gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
        self.warmup_losses = [self._sft_step() for _ in range(self.grpo.warmup_sft_steps)]
        model.set_exploration_noise(False)  # rollouts, π_old, π_ref and π: one router function
        self.reference = frozen_copy(model)
        for group in self.optimizer.param_groups:
            group["lr"] = self.grpo.lr

    def _sft_step(self) -> float:
        b = pack_examples(self.task.sample(self.cfg.batch_size * 8), self.cfg.batch_size, 48)
        dev = self.cfg.device
        out = self.model(b.input_ids_BS.to(dev), doc_ids_BS=b.doc_ids_BS.to(dev), mtp=False)
        loss = next_token_loss(out.logits, b.labels_BS.to(dev))
        optimizer_step(self.model, self.optimizer, loss + aux_loss(out, self.cfg.balance, 0),
                       self.cfg, out)  # fmt: skip
        return loss.item()

    def _logps(self, model: Transformer, inputs, labels) -> tuple[torch.Tensor, object]:
        with autocast(self.cfg):
            out = model(inputs, mtp=False)
        return token_logprobs(out.logits, labels), out

    def step(self, step: int) -> dict[str, float]:
        g, dev = self.grpo, self.cfg.device
        examples = self.task.sample(g.prompts_per_step)
        prompts = [encode(e.prompt) for e in examples]
        P = len(prompts[0])
        assert all(len(p) == P for p in prompts), "GRPO prompts must share a length"
        prompt_BP = torch.tensor(prompts, device=dev).repeat_interleave(g.group_size, 0)
        # 1. rollouts
        with autocast(self.cfg):
            comp_BN = generate(self.model, prompt_BP, self.task.max_new_tokens,
                               temperature=g.temperature, eos=EOS, generator=self.gen)  # fmt: skip
        rewards_B = torch.tensor(
            [self.task.reward(examples[i // g.group_size], c) for i, c in enumerate(comp_BN)],
            device=dev,
        )
        # 2. advantages within each prompt's group
        adv_B = group_advantages(rewards_B.view(-1, g.group_size)).view(-1)
        full_BL = torch.cat([prompt_BP, comp_BN], 1)
        inputs, labels = full_BL[:, :-1], completion_labels(P, full_BL)
        mask_BS = labels != IGNORE
        # 3. log-probs of the sampling policy and of the reference
        with torch.no_grad():
            old_BS, _ = self._logps(self.model, inputs, labels)
            ref_BS, _ = self._logps(self.reference, inputs, labels)
        # 4. μ policy updates on these rollouts
        self.model.train()
        for _ in range(g.inner_steps):
            logp_BS, out = self._logps(self.model, inputs, labels)
            loss, m = grpo_loss(logp_BS, old_BS, ref_BS, adv_B, mask_BS, g.clip_eps, g.kl_beta)
            total = loss + aux_loss(out, self.cfg.balance, step)
            optimizer_step(self.model, self.optimizer, total, self.cfg, out)
        return {
            "loss": loss.item(),
            "reward": rewards_B.mean().item(),
            "tokens": full_BL.numel() * (1 + g.inner_steps),
            **m,
            **moe_metrics(out),
        }
