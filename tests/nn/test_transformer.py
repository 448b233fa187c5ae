"""The analytic layer agrees with the modules: parameters exactly, forward FLOPs within 2%
of ``torch.utils.flop_counter.FlopCounterMode``; KV-cached decoding and packed documents."""

import pytest

torch = pytest.importorskip("torch")
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count  # noqa: E402

from moesim.analytic.flops import token_flops  # noqa: E402
from moesim.analytic.params import count_params  # noqa: E402
from moesim.catalog import load_model  # noqa: E402
from moesim.nn import Transformer  # noqa: E402
from moesim.specs import ModelSpec  # noqa: E402

aten = torch.ops.aten


def scaled(catalog_id: str, **changes) -> ModelSpec:
    """A catalog model's shape, shrunk: same kinds, routing and layer pattern."""
    data = load_model(catalog_id).model_dump(exclude_none=True)
    for key in ("published_params_total", "published_params_active"):
        data.pop(key, None)
    for key, value in changes.items():
        if isinstance(value, dict):
            data[key] = data.get(key, {}) | value
        else:
            data[key] = value
    return ModelSpec.model_validate(data)


SMALL_MIXTRAL = scaled(
    "mixtral-8x7b",
    vocab_size=320,
    n_layers=2,
    d_model=64,
    n_heads=8,
    n_kv_heads=2,
    head_dim=16,
    ffn_hidden=112,
    moe={"expert_hidden": 112},
)
SMALL_DEEPSEEK = scaled(
    "deepseek-v3",
    vocab_size=320,
    n_layers=3,
    d_model=64,
    n_heads=4,
    ffn_hidden=96,
    mla={
        "q_lora_rank": 32,
        "kv_lora_rank": 16,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
    },
    moe={
        "n_routed_experts": 16,
        "top_k": 4,
        "expert_hidden": 32,
        "first_k_dense": 1,
        "n_groups": 4,
        "topk_groups": 2,
    },
)
SMALL_QWEN = scaled(  # qk_norm, attention bias, shared-expert gate, tied embeddings
    "qwen3-30b-a3b",
    vocab_size=320,
    n_layers=2,
    d_model=64,
    n_heads=4,
    n_kv_heads=2,
    head_dim=16,
    ffn_hidden=96,
    attention_bias=True,
    tie_embeddings=True,
    moe={
        "n_routed_experts": 8,
        "top_k": 2,
        "expert_hidden": 24,
        "n_shared_experts": 1,
        "shared_expert_gate": True,
    },
)
MLA_FULL_RANK_Q = SMALL_DEEPSEEK.model_copy(
    update={"mla": SMALL_DEEPSEEK.mla.model_copy(update={"q_lora_rank": None}), "mtp_depth": 0}
)


def with_router(spec: ModelSpec, router: str) -> ModelSpec:
    return spec.model_copy(update={"moe": spec.moe.model_copy(update={"router": router})})


SPECS = {
    "tiny-dense": load_model("tiny-dense"),
    "tiny-moe": load_model("tiny-moe"),
    "small-mixtral": SMALL_MIXTRAL,
    "small-deepseek-v3": SMALL_DEEPSEEK,
    "mla-full-rank-q": MLA_FULL_RANK_Q,
    "small-qwen3-moe": SMALL_QWEN,
    "noisy-topk": with_router(SMALL_MIXTRAL, "noisy_topk"),
    "hash": with_router(SMALL_MIXTRAL, "hash"),
    "expert-choice": with_router(SMALL_MIXTRAL, "expert_choice"),
}


def _sdpa_flops(q, k, v, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(q, k, v)


def _grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs):
    """(N, D) rows split by offsets over E (D, F) weights: 2·N·D·F, each row once."""
    return 2 * a_shape[0] * b_shape[-2] * b_shape[-1]


# torch's counter knows the CUDA SDPA kernels but not the CPU flash kernel autograd picks;
# count it with torch's own SDPA formula (which, like ours with causal=False, counts every
# query-key pair: no causal discount). Nor does it count torch._grouped_mm, the experts'
# kernel on this CPU: 2·N·D·F as for one (N, D)×(D, F) GEMM.
CPU_SDPA = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    aten._grouped_mm: _grouped_mm_flops,
}


def test_scaled_shapes_keep_their_kind():
    assert SMALL_DEEPSEEK.attention == "mla" and SMALL_DEEPSEEK.mtp_depth == 1
    assert SMALL_DEEPSEEK.moe.router == "sigmoid_topk" and SMALL_DEEPSEEK.moe.n_shared_experts
    assert SMALL_MIXTRAL.n_moe_layers == 2 and SMALL_QWEN.qk_norm


@pytest.mark.parametrize("name", list(SPECS))
def test_analytic_params_equal_module_params(name):
    spec = SPECS[name]
    model = Transformer(spec)
    assert count_params(spec).total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(SPECS))
def test_analytic_forward_flops_match_flop_counter(name):
    spec = SPECS[name]
    torch.manual_seed(0)
    model = Transformer(spec)  # train mode: noisy top-k's noise GEMM runs
    B, S = 2, 64
    ids = torch.randint(0, spec.vocab_size, (B, S))
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
        model(ids)
    measured = counter.get_total_flops() / (B * S)
    analytic = token_flops(spec, S, causal=False).forward
    assert measured == pytest.approx(analytic, rel=0.02)
    if not spec.mtp_depth:  # MTP sees S−k positions, the analytic count S: else exact
        assert measured == pytest.approx(analytic, rel=1e-9)


@pytest.mark.parametrize(
    "spans",
    [
        ((0, 8), (8, 9), (9, 10), (10, 11), (11, 12)),  # a prefill, then one-token decodes
        # chunks prefilled after cached keys must not see their own later keys: the causal
        # mask is offset by the cached length (without it the 2nd and 3rd chunks differ)
        ((0, 5), (5, 8), (8, 12)),
    ],
    ids=["decode", "chunked-prefill"],
)
@pytest.mark.parametrize("name", ["tiny-moe", "small-deepseek-v3", "small-qwen3-moe"])
def test_kv_cached_forward_equals_full_forward(name, spans):
    spec = SPECS[name]
    torch.manual_seed(0)
    model = Transformer(spec).eval()
    ids = torch.randint(0, spec.vocab_size, (2, 12))
    with torch.no_grad():
        full = model(ids).logits
        caches = model.new_kv_caches(2, 12)
        parts = [model(ids[:, a:b], caches=caches).logits for a, b in spans]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-5)


def test_offset_causal_mask_sees_the_cache_and_earlier_new_keys():
    from moesim.nn.attention import offset_causal_mask

    assert offset_causal_mask(2, 5, "cpu").tolist() == [
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]
    assert torch.equal(offset_causal_mask(4, 4, "cpu"), torch.ones(4, 4, dtype=torch.bool).tril())


def test_packed_documents_equal_separate_sequences():
    spec = SPECS["tiny-dense"]
    torch.manual_seed(0)
    model = Transformer(spec).eval()
    a, b = torch.randint(0, 256, (1, 7)), torch.randint(0, 256, (1, 9))
    packed = torch.cat([a, b], 1)
    doc_ids = torch.tensor([[0] * 7 + [1] * 9])
    with torch.no_grad():
        got = model(packed, doc_ids_BS=doc_ids).logits
        torch.testing.assert_close(got[:, :7], model(a).logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got[:, 7:], model(b).logits, rtol=1e-4, atol=1e-5)


def test_moe_outputs_aux_losses_and_stats_per_moe_layer():
    spec = SPECS["small-deepseek-v3"]
    model = Transformer(spec)
    out = model(torch.randint(0, 320, (2, 16)))
    # 2 MoE decoder layers (first is dense) + the MTP block
    assert len(out.moe_stats) == len(model.moe_layers()) == 3
    assert out.logits.shape == (2, 16, 320) and out.mtp_logits[0].shape == (2, 15, 320)
    assert set(out.aux_losses) == {"load_balance", "z_loss", "importance_cv2"}
    model.update_router_biases(out.moe_stats)  # rate 0: a no-op, but the wiring must hold


def test_encoder_decoder_specs_are_refused_clearly():
    with pytest.raises(ValueError, match="encoder-decoder"):
        Transformer(load_model("switch-base-128"))
