"""A small decoder-only transformer built from the same ``ModelSpec`` the simulator costs.

Shape legend: B batch, S sequence, D d_model, V vocabulary.

Pre-norm blocks (RMSNorm → attention → residual, RMSNorm → FFN → residual) as in Llama,
Mixtral and DeepSeek; the FFN of layer i is an ``MoELayer`` when ``spec.is_moe_layer(i)``,
else a dense ``FeedForward``. ``spec.mtp_depth`` adds DeepSeek-V3 multi-token-prediction
modules (arXiv:2412.19437 §2.2). Encoder-decoder specs (T5/Switch) are not built here.

Every parameter here is one that ``moesim.analytic.params.count_params`` counts, and every
GEMM one that ``moesim.analytic.flops.token_flops`` counts; tests hold them to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from moesim.nn.attention import KVCache, document_causal_mask, make_attention
from moesim.nn.ffn import FeedForward
from moesim.nn.moe import MoELayer, MoEOutput, RoutingStats
from moesim.nn.norm import RMSNorm
from moesim.nn.rope import rope_cos_sin
from moesim.specs import ModelSpec


@dataclass
class ModelOutput:
    """``aux_losses`` are summed over MoE layers, unweighted; ``mtp_logits[k-1]`` (B, S−k, V)
    predicts token t+k+1 at position t."""

    logits: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    moe_stats: list[RoutingStats] = field(default_factory=list)
    mtp_logits: list[torch.Tensor] = field(default_factory=list)


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, moe: bool, **moe_kwargs):
        super().__init__()
        self.attn_norm = RMSNorm(spec.d_model)
        self.attn = make_attention(spec)
        self.ffn_norm = RMSNorm(spec.d_model)
        self.ffn: nn.Module = (
            MoELayer(spec, **moe_kwargs)
            if moe
            else FeedForward(spec.d_model, spec.ffn_hidden, spec.ffn_kind)
        )

    def forward(self, x_BSD, cos, sin, attn_mask=None, cache=None, token_ids_BS=None):
        x_BSD = x_BSD + self.attn(self.attn_norm(x_BSD), cos, sin, attn_mask, cache)
        h_BSD = self.ffn_norm(x_BSD)
        if isinstance(self.ffn, MoELayer):
            moe_out: MoEOutput = self.ffn(h_BSD, token_ids_BS)
            return x_BSD + moe_out.out, moe_out
        return x_BSD + self.ffn(h_BSD), None


class MTPModule(nn.Module):
    """One multi-token-prediction depth: h' = W[RMSNorm(h); RMSNorm(Emb(t_{i+k}))], a block,
    an output RMSNorm; the embedding and output head are the main model's."""

    def __init__(self, spec: ModelSpec, **moe_kwargs):
        super().__init__()
        D = spec.d_model
        self.h_norm, self.e_norm = RMSNorm(D), RMSNorm(D)
        self.proj = nn.Linear(2 * D, D, bias=False)
        self.block = Block(spec, spec.is_moe, **moe_kwargs)
        self.out_norm = RMSNorm(D)


class Transformer(nn.Module):
    def __init__(
        self,
        spec: ModelSpec,
        *,
        dispatch: str = "grouped",
        force_uniform_routing: bool = False,
        bias_update_rate: float = 0.0,
        init_std: float = 0.02,
    ):
        super().__init__()
        if spec.n_encoder_layers:
            raise ValueError(
                f"{spec.name}: encoder-decoder models are not built by moesim.nn "
                "(decoder-only specs only)"
            )
        self.spec = spec
        moe_kwargs = dict(
            dispatch=dispatch,
            force_uniform_routing=force_uniform_routing,
            bias_update_rate=bias_update_rate,
        )
        self.embed = nn.Embedding(spec.vocab_size, spec.d_model)
        self.layers = nn.ModuleList(
            Block(spec, spec.is_moe_layer(i), **moe_kwargs) for i in range(spec.n_layers)
        )
        self.norm = RMSNorm(spec.d_model)
        self.lm_head = (
            None if spec.tie_embeddings else nn.Linear(spec.d_model, spec.vocab_size, bias=False)
        )
        self.mtp = nn.ModuleList(MTPModule(spec, **moe_kwargs) for _ in range(spec.mtp_depth))
        self.rope_dim = self.layers[0].attn.rope_dim
        # token embeddings enter the residual stream times √D (Vaswani et al. 2017 §3.4;
        # Gemma's normalizer); why, in ``embed_tokens``
        self.embed_scale = spec.d_model**0.5
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)

    def embed_tokens(self, input_ids_BS: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, S, D) times √D. Weights init N(0, 0.02²) like the rest.

        Why the √D: every branch reads an RMSNorm of the residual, so its output is large
        whatever the residual's scale, and a plain 0.02 embedding (norm 0.02·√D) is smaller
        than the first attention output, which at init is a near-uniform average of the
        context's values, the same for every token. The MoE layers then see near-identical
        inputs and route them alike. Measured on tiny-moe (D = 256, 5 seeds), plain: the first
        MoE layer's inputs had cosine 0.74 to their mean, load CV 0.99 at init and 1.59–1.70
        over the first 12 steps with the default aux loss; a smaller router init, a 10× smaller
        router learning rate, a 10-step learning-rate warm-up or zero-initialised attention
        outputs left it above 1. With √D: CV 0.71–0.99 over those steps. A unit-std init
        (torchtitan's) fixes routing too, but Adam's steps are then small next to the
        embeddings and learning slows (a 64-wide model's SFT loss at 30 steps: 3.67–3.71,
        √D 3.32–3.33, plain 3.17–3.19); the scale keeps the step relative to the weights.
        Loss: tiny-moe pretrain at 60 steps 0.57–0.60 (plain 0.79–0.85), tiny-dense 0.58–0.63
        (0.82–0.87), 3 seeds; SFT is slower in the first ~50 steps (tiny-dense at 40 steps
        1.61–1.70 vs 1.43–1.57) and better after (mean over steps 110–119, 2 seeds: 0.31–0.41
        vs 0.62–0.68). A tied output head reads the unscaled weights, so its initial logits
        are unchanged. A constant factor: a checkpoint without it is this model with the
        embeddings multiplied by √D.
        """
        return self.embed(input_ids_BS) * self.embed_scale

    # -- helpers -------------------------------------------------------------------------
    def moe_layers(self) -> list[MoELayer]:
        """MoE layers in the order their stats appear in ``ModelOutput.moe_stats``."""
        return [m for m in self.modules() if isinstance(m, MoELayer)]

    def set_exploration_noise(self, enabled: bool) -> None:
        """Noisy top-k's router noise in training (on by default). Off, training runs the
        same deterministic router as eval: what DPO and GRPO need, because they compare the
        policy's log-probs with log-probs taken under ``no_grad`` (the sampling policy's, the
        reference's), and fresh noise would make the ratio ≠ 1 with unchanged weights."""
        for layer in self.moe_layers():
            layer.router.exploration_noise = enabled

    def update_router_biases(self, moe_stats: list[RoutingStats]) -> None:
        """Aux-loss-free balancing: after each optimizer step, with that step's stats."""
        for layer, stats in zip(self.moe_layers(), moe_stats, strict=True):
            layer.update_bias(stats)

    def new_kv_caches(self, batch: int, max_len: int) -> list[KVCache]:
        p = next(self.parameters())
        return [b.attn.new_cache(batch, max_len, p.device, p.dtype) for b in self.layers]

    def head(self, h_BSD: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            return F.linear(h_BSD, self.embed.weight)
        return self.lm_head(h_BSD)

    # -- forward -------------------------------------------------------------------------
    def forward(
        self,
        input_ids_BS: torch.Tensor,
        *,
        positions_BS: torch.Tensor | None = None,
        doc_ids_BS: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
        mtp: bool | None = None,
    ) -> ModelOutput:
        """Logits (B, S, V). ``doc_ids_BS`` masks attention to within each packed document
        (and restarts positions there unless ``positions_BS`` is given); ``caches`` continue a
        cached generation; MTP heads run on whole-sequence forwards unless ``mtp=False``."""
        S = input_ids_BS.shape[1]
        offset = caches[0].length if caches else 0
        if positions_BS is None:
            positions_BS = torch.arange(offset, offset + S, device=input_ids_BS.device)
            if doc_ids_BS is not None:
                positions_BS = _positions_within_documents(doc_ids_BS)
        cos, sin = rope_cos_sin(positions_BS, self.rope_dim)
        mask = document_causal_mask(doc_ids_BS) if doc_ids_BS is not None else None
        out = ModelOutput(logits=None)  # type: ignore[arg-type]
        h_BSD = self.embed_tokens(input_ids_BS)
        for i, block in enumerate(self.layers):
            cache = caches[i] if caches else None
            h_BSD, moe_out = block(h_BSD, cos, sin, mask, cache, input_ids_BS)
            _collect(out, moe_out)
        out.logits = self.head(self.norm(h_BSD))
        if mtp is None:
            mtp = caches is None
        if mtp:
            self._mtp_forward(out, h_BSD, input_ids_BS, cos, sin, mask)
        return out

    def _mtp_forward(self, out, h_BSD, input_ids_BS, cos, sin, mask) -> None:
        S = input_ids_BS.shape[1]
        for k, m in enumerate(self.mtp, start=1):
            if k >= S:
                break
            n = S - k  # positions that have a token k ahead
            emb_BnD = self.embed_tokens(input_ids_BS[:, k:])  # RMSNorm'd: the scale is moot
            x_BnD = m.proj(torch.cat([m.h_norm(h_BSD[:, :n]), m.e_norm(emb_BnD)], dim=-1))
            c, s = cos[..., :n, :], sin[..., :n, :]
            sub_mask = mask[..., :n, :n] if mask is not None else None
            h_BSD, moe_out = m.block(x_BnD, c, s, sub_mask, None, input_ids_BS[:, k:])
            _collect(out, moe_out)
            out.mtp_logits.append(self.head(m.out_norm(h_BSD)))


def _collect(out: ModelOutput, moe_out: MoEOutput | None) -> None:
    if moe_out is None:
        return
    out.moe_stats.append(moe_out.stats)
    for name, value in moe_out.aux_losses.items():
        out.aux_losses[name] = out.aux_losses.get(name, 0.0) + value


def _positions_within_documents(doc_ids_BS: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, … restarting wherever the document id changes."""
    B, S = doc_ids_BS.shape
    idx_BS = torch.arange(S, device=doc_ids_BS.device).expand(B, S)
    starts_BS = torch.ones_like(doc_ids_BS, dtype=torch.bool)
    starts_BS[:, 1:] = doc_ids_BS[:, 1:] != doc_ids_BS[:, :-1]
    first_BS = torch.where(starts_BS, idx_BS, torch.zeros_like(idx_BS)).cummax(dim=1).values
    return idx_BS - first_BS
