"""Sampling completions with the KV cache: one prefill of the prompts, then one token per
step (GRPO's rollouts).

Shape legend: B sequences, P prompt length, N new tokens.
"""

from __future__ import annotations

import torch

from moesim.nn.transformer import Transformer


@torch.no_grad()
def generate(
    model: Transformer,
    prompt_BP: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    eos: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sampled continuations (B, N); after a sequence's EOS the rest is EOS. Runs the model in
    eval mode (no router noise) and restores its mode."""
    was_training = model.training
    model.eval()
    B, P = prompt_BP.shape
    caches = model.new_kv_caches(B, P + max_new_tokens)
    logits_BV = model(prompt_BP, caches=caches).logits[:, -1]
    done_B = torch.zeros(B, dtype=torch.bool, device=prompt_BP.device)
    out = []
    for _ in range(max_new_tokens):
        if temperature == 0:
            next_B = logits_BV.argmax(-1)
        else:
            probs_BV = torch.softmax(logits_BV.float() / temperature, -1)
            next_B = torch.multinomial(probs_BV, 1, generator=generator)[:, 0]
        if eos is not None:
            next_B = torch.where(done_B, torch.full_like(next_B, eos), next_B)
            done_B |= next_B == eos
        out.append(next_B)
        if eos is not None and bool(done_B.all()):
            break
        logits_BV = model(next_B[:, None], caches=caches).logits[:, -1]
    new_BN = torch.stack(out, 1)
    if new_BN.shape[1] < max_new_tokens:  # everyone stopped early: pad with EOS
        pad = torch.full((B, max_new_tokens - new_BN.shape[1]), eos, dtype=new_BN.dtype,
                         device=new_BN.device)  # fmt: skip
        new_BN = torch.cat([new_BN, pad], 1)
    model.train(was_training)
    return new_BN
