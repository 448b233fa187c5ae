"""Causal self-attention: GQA/MHA (Ainslie et al. 2023) and multi-head latent attention
(DeepSeek-V2 §2.1), both through ``scaled_dot_product_attention``, with a KV cache.

Shape legend: B batch, S query length, P cached + new length, D d_model, H query heads,
G key/value heads, Dh head dim, Dn/Dr/Dv MLA's no-RoPE, RoPE and value head dims,
Rq/Rkv MLA's query and KV latent ranks.

Masks: a plain causal mask unless ``attn_mask`` is given (packed documents, see
``document_causal_mask``). With a cache the S new queries sit at the end of the P keys, so query
i may see keys j ≤ P − S + i: a single decoded query sees every key (no mask), a first prefill
(P = S) is the plain causal mask, and a chunk prefilled into a non-empty cache needs the causal
mask offset by the cached length (``scaled_dot_product_attention``'s ``is_causal`` aligns the
diagonal to the top-left corner, which is wrong when S < P).

The MLA here is the training form (latent up-projected to per-head K and V); its cache stores
the up-projected K and V, not the latent, which is enough for sampling completions in GRPO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moesim.nn.norm import RMSNorm
from moesim.nn.rope import apply_rope
from moesim.specs import ModelSpec


class KVCache:
    """Preallocated keys and values of one layer: (B, heads, max_len, dim)."""

    def __init__(self, k_shape: tuple, v_shape: tuple, device, dtype):
        self.k = torch.zeros(k_shape, device=device, dtype=dtype)
        self.v = torch.zeros(v_shape, device=device, dtype=dtype)
        self.length = 0

    def append(self, k_BHSd: torch.Tensor, v_BHSd: torch.Tensor):
        """Store the new keys/values; return all of them so far."""
        S = k_BHSd.shape[2]
        end = self.length + S
        self.k[:, :, self.length : end] = k_BHSd
        self.v[:, :, self.length : end] = v_BHSd
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def document_causal_mask(doc_ids_BS: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, S, S): query i may see key j iff j ≤ i and both are in one document
    (packed sequences must not attend across examples)."""
    S = doc_ids_BS.shape[1]
    causal_SS = torch.ones(S, S, dtype=torch.bool, device=doc_ids_BS.device).tril()
    same_BSS = doc_ids_BS[:, :, None] == doc_ids_BS[:, None, :]
    return (same_BSS & causal_SS)[:, None]


def offset_causal_mask(n_queries: int, n_keys: int, device) -> torch.Tensor:
    """Boolean (S, P): the S queries are the last S of P positions; query i sees key j iff
    j ≤ P − S + i (the bottom-right-aligned causal mask)."""
    ones_SP = torch.ones(n_queries, n_keys, dtype=torch.bool, device=device)
    return ones_SP.tril(diagonal=n_keys - n_queries)


def _sdpa(q, k, v, attn_mask, enable_gqa: bool = False):
    S, P = q.shape[-2], k.shape[-2]
    is_causal = False
    if attn_mask is None:
        if S == P:
            is_causal = True  # no cache, or a prefill into an empty one
        elif S > 1:
            attn_mask = offset_causal_mask(S, P, q.device)  # a chunk after cached keys
        # S == 1 < P: one decoded query sees every key, no mask
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=enable_gqa
    )


class Attention(nn.Module):
    """MHA/GQA with optional QKV bias (Qwen2) and per-head q/k RMSNorm (Qwen3)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        D = spec.d_model
        self.n_heads, self.n_kv_heads, self.head_dim = spec.n_heads, spec.kv_heads, spec.head_size
        self.wq = nn.Linear(D, spec.q_dim, bias=spec.attention_bias)
        self.wk = nn.Linear(D, spec.kv_dim, bias=spec.attention_bias)
        self.wv = nn.Linear(D, spec.kv_dim, bias=spec.attention_bias)
        self.wo = nn.Linear(spec.attn_out_dim, D, bias=False)
        self.q_norm = RMSNorm(self.head_dim) if spec.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim) if spec.qk_norm else None

    @property
    def rope_dim(self) -> int:
        return self.head_dim

    def new_cache(self, batch: int, max_len: int, device, dtype) -> KVCache:
        shape = (batch, self.n_kv_heads, max_len, self.head_dim)
        return KVCache(shape, shape, device, dtype)

    def forward(self, x_BSD, cos, sin, attn_mask=None, cache: KVCache | None = None):
        B, S, _ = x_BSD.shape
        q = self.wq(x_BSD).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x_BSD).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x_BSD).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (B, H|G, S, Dh)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, G, P, Dh)
        gqa = self.n_kv_heads != self.n_heads
        o_BHSd = _sdpa(q, k, v, attn_mask, enable_gqa=gqa)
        return self.wo(o_BHSd.transpose(1, 2).reshape(B, S, -1))


class MLAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2 eq. 9–19): low-rank Q (optional) and a shared
    KV latent; a decoupled RoPE key shared by all heads."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        a = spec.mla
        assert a is not None
        D, H = spec.d_model, spec.n_heads
        self.n_heads = H
        self.dn, self.dr, self.dv = a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim
        self.kv_rank = a.kv_lora_rank
        if a.q_lora_rank is None:
            self.wq = nn.Linear(D, H * (self.dn + self.dr), bias=False)
            self.wq_a = self.q_norm = self.wq_b = None
        else:
            self.wq = None
            self.wq_a = nn.Linear(D, a.q_lora_rank, bias=False)  # W_DQ
            self.q_norm = RMSNorm(a.q_lora_rank)
            self.wq_b = nn.Linear(a.q_lora_rank, H * (self.dn + self.dr), bias=False)  # W_UQ
        self.wkv_a = nn.Linear(D, self.kv_rank + self.dr, bias=False)  # W_DKV and W_KR
        self.kv_norm = RMSNorm(self.kv_rank)
        self.wkv_b = nn.Linear(self.kv_rank, H * (self.dn + self.dv), bias=False)  # W_UK, W_UV
        self.wo = nn.Linear(H * self.dv, D, bias=False)

    @property
    def rope_dim(self) -> int:
        return self.dr

    def new_cache(self, batch: int, max_len: int, device, dtype) -> KVCache:
        H = self.n_heads
        return KVCache(
            (batch, H, max_len, self.dn + self.dr), (batch, H, max_len, self.dv), device, dtype
        )

    def forward(self, x_BSD, cos, sin, attn_mask=None, cache: KVCache | None = None):
        B, S, _ = x_BSD.shape
        H = self.n_heads
        q = self.wq(x_BSD) if self.wq is not None else self.wq_b(self.q_norm(self.wq_a(x_BSD)))
        q = q.view(B, S, H, self.dn + self.dr).transpose(1, 2)
        q_nope, q_pe = q.split([self.dn, self.dr], dim=-1)
        latent, k_pe = self.wkv_a(x_BSD).split([self.kv_rank, self.dr], dim=-1)
        kv = self.wkv_b(self.kv_norm(latent)).view(B, S, H, self.dn + self.dv).transpose(1, 2)
        k_nope, v = kv.split([self.dn, self.dv], dim=-1)
        k_pe = apply_rope(k_pe[:, None], cos, sin).expand(B, H, S, self.dr)  # shared by heads
        q = torch.cat([q_nope, apply_rope(q_pe, cos, sin)], dim=-1)  # (B, H, S, Dn+Dr)
        k = torch.cat([k_nope, k_pe], dim=-1)
        if cache is not None:
            k, v = cache.append(k, v)
        o_BHSv = _sdpa(q, k, v, attn_mask)
        return self.wo(o_BHSv.transpose(1, 2).reshape(B, S, H * self.dv))


def make_attention(spec: ModelSpec) -> nn.Module:
    return MLAttention(spec) if spec.attention == "mla" else Attention(spec)
