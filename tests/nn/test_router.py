"""Routers: each kind's selection and gate rules, group limits, biases, uniform forcing."""

import pytest

torch = pytest.importorskip("torch")

from moesim.nn.router import Router, expert_choice_capacity, group_limited_mask  # noqa: E402
from moesim.specs import MoESpec  # noqa: E402

D = 32


def make_router(**moe) -> Router:
    base = {"n_routed_experts": 8, "top_k": 2, "expert_hidden": 16}
    torch.manual_seed(0)
    return Router(D, MoESpec(**(base | moe)), vocab_size=64)


def test_softmax_topk_picks_the_largest_probs_and_renormalises():
    r = make_router(router="softmax_topk")
    x = torch.randn(10, D)
    out = r(x)
    probs = torch.softmax(x @ r.weight_ED.T, -1)
    top = probs.topk(2, -1)
    assert torch.equal(out.expert_idx_A.view(10, 2).sort(-1).values, top.indices.sort(-1).values)
    w = out.weight_A.view(10, 2)
    torch.testing.assert_close(w.sum(-1), torch.ones(10))
    torch.testing.assert_close(w, top.values / top.values.sum(-1, keepdim=True))


def test_softmax_without_renormalisation_keeps_raw_probs():
    r = make_router(router="softmax_topk", norm_topk_prob=False)
    x = torch.randn(10, D)
    out = r(x)
    probs = torch.softmax(x @ r.weight_ED.T, -1)
    torch.testing.assert_close(out.weight_A.view(10, 2), probs.topk(2, -1).values)


def test_router_math_is_fp32_for_bf16_input():
    r = make_router().to(torch.bfloat16)
    out = r(torch.randn(6, D, dtype=torch.bfloat16))
    assert out.weight_A.dtype == torch.float32 and out.probs_TE.dtype == torch.float32


def test_sigmoid_gates_are_normalised_sigmoids():
    r = make_router(router="sigmoid_topk")
    x = torch.randn(12, D)
    out = r(x)
    s = torch.sigmoid(x @ r.weight_ED.T)
    idx = out.expert_idx_A.view(12, 2)
    g = s.gather(1, idx)
    torch.testing.assert_close(out.weight_A.view(12, 2), g / g.sum(-1, keepdim=True))


@pytest.mark.parametrize("kind", ["sigmoid_topk", "softmax_topk"])
def test_routed_scaling_factor_scales_the_gate_weights_not_the_choice(kind):
    """DeepSeek-V3's 2.5 (HF DeepseekV3TopkRouter multiplies after normalising)."""
    x = torch.randn(12, D)
    plain, scaled = (
        make_router(router=kind)(x),
        make_router(router=kind, routed_scaling_factor=2.5)(x),
    )
    assert torch.equal(plain.expert_idx_A, scaled.expert_idx_A)
    torch.testing.assert_close(scaled.weight_A, 2.5 * plain.weight_A)


def test_noisy_topk_adds_noise_only_in_training():
    r = make_router(router="noisy_topk")
    x = torch.randn(50, D)
    r.eval()
    a, b = r(x), r(x)
    assert torch.equal(a.expert_idx_A, b.expert_idx_A)
    r.train()
    torch.manual_seed(1)
    c = r(x)
    assert not torch.equal(a.expert_idx_A, c.expert_idx_A)  # softplus(0)≈0.69 noise reorders
    # the same draw by hand (Shazeer 2017 eq. 3-5): the noisy logits' top-2 are the choice,
    # best first, and the gates are a softmax over those two noisy logits
    torch.manual_seed(1)
    clean = x @ r.weight_ED.T
    noisy = clean + torch.randn(50, 8) * torch.nn.functional.softplus(x @ r.noise_weight_ED.T)
    top = noisy.topk(2, dim=-1)
    assert torch.equal(c.expert_idx_A.view(50, 2), top.indices)
    torch.testing.assert_close(c.weight_A.view(50, 2), torch.softmax(top.values, -1))
    torch.testing.assert_close(c.logits_TE, clean)  # what the z-loss sees: no noise


def test_group_limited_routing_stays_within_m_groups():
    r = make_router(router="sigmoid_topk", n_groups=4, topk_groups=2, top_k=4)
    out = r(torch.randn(200, D))
    groups = (out.expert_idx_A.view(200, 4) // 2).tolist()  # 8 experts / 4 groups
    assert max(len(set(g)) for g in groups) <= 2
    unlimited = make_router(router="sigmoid_topk", top_k=4)(torch.randn(200, D))
    assert max(len(set(g)) for g in (unlimited.expert_idx_A.view(200, 4) // 2).tolist()) > 2


@pytest.mark.parametrize(
    "kind, expected_group", [("softmax_topk", 0), ("noisy_topk", 0), ("sigmoid_topk", 1)]
)
def test_group_score_is_the_max_for_softmax_and_the_top2_sum_for_sigmoid(kind, expected_group):
    """Logits (2, −5 | 1.5, 1.5) in two groups: group 0 holds the single best expert (V2's max
    picks it), group 1 the larger pair (V3's top-2 sum picks it), for softmax and sigmoid."""
    r = make_router(router=kind, n_routed_experts=4, top_k=1, n_groups=2, topk_groups=1)
    r.eval()  # no noise
    with torch.no_grad():
        r.weight_ED.zero_()
        r.weight_ED[:, 0] = torch.tensor([2.0, -5.0, 1.5, 1.5])
    x = torch.zeros(1, D)
    x[0, 0] = 1.0
    assert int(r(x).expert_idx_A[0]) // 2 == expected_group


def test_group_limited_mask_scores():
    scores = torch.tensor([[0.5, 0.0, 0.3, 0.3]])
    assert group_limited_mask(scores, 2, 1, "max").tolist() == [[True, True, False, False]]
    assert group_limited_mask(scores, 2, 1, "top2_sum").tolist() == [[False, False, True, True]]


def test_z_loss_sees_the_clean_logits_not_the_exploration_noise():
    from moesim.nn import MoELayer
    from moesim.nn.balance import router_z_loss
    from moesim.specs import ModelSpec

    spec = ModelSpec(
        name="z", vocab_size=64, n_layers=1, d_model=D, n_heads=4, ffn_hidden=64,
        moe={"n_routed_experts": 8, "top_k": 2, "expert_hidden": 16, "router": "noisy_topk"},
    )  # fmt: skip
    torch.manual_seed(0)
    layer = MoELayer(spec).train()
    x = torch.randn(40, D)
    out = layer(x)
    clean = router_z_loss(x @ layer.router.weight_ED.T)
    torch.testing.assert_close(out.aux_losses["z_loss"], clean)


def test_expert_choice_gives_each_expert_c_tokens():
    r = make_router(router="expert_choice")
    out = r(torch.randn(40, D))
    C = expert_choice_capacity(40, 8, 2, None)
    assert C == 10
    assert torch.equal(torch.bincount(out.expert_idx_A, minlength=8), torch.full((8,), C))
    probs = out.probs_TE
    for e in range(8):
        picked = out.token_idx_A[out.expert_idx_A == e]
        assert set(picked.tolist()) == set(probs[:, e].topk(C).indices.tolist())


def test_hash_routing_is_a_fixed_balanced_function_of_the_token():
    r = make_router(router="hash")
    assert r.weight_ED is None  # nothing learned
    ids = torch.arange(64)
    a = r(torch.randn(64, D), ids)
    b = r(torch.randn(64, D), ids)
    assert torch.equal(a.expert_idx_A, b.expert_idx_A)
    assert torch.equal(torch.bincount(a.expert_idx_A, minlength=8), torch.full((8,), 16))
    assert (a.expert_idx_A.view(64, 2)[:, 0] != a.expert_idx_A.view(64, 2)[:, 1]).all()
    torch.testing.assert_close(a.weight_A, torch.full((128,), 0.5))
    with pytest.raises(ValueError, match="token ids"):
        r(torch.randn(4, D))


def test_bias_steers_selection_but_not_gates():
    r = make_router(router="sigmoid_topk")
    x = torch.randn(30, D)
    r.expert_bias_E[3] = 10.0  # everyone picks expert 3
    out = r(x)
    assert (out.expert_idx_A.view(30, 2) == 3).any(-1).all()
    s = torch.sigmoid(x @ r.weight_ED.T)
    g = s.gather(1, out.expert_idx_A.view(30, 2))
    torch.testing.assert_close(out.weight_A.view(30, 2), g / g.sum(-1, keepdim=True))


def test_update_bias_moves_by_gamma_towards_balance():
    torch.manual_seed(0)
    r = Router(D, MoESpec(n_routed_experts=4, top_k=1, expert_hidden=8), bias_update_rate=0.1)
    r.update_bias(torch.tensor([10, 0, 5, 5]))
    torch.testing.assert_close(r.expert_bias_E, torch.tensor([-0.1, 0.1, 0.0, 0.0]))
    off = Router(D, MoESpec(n_routed_experts=4, top_k=1, expert_hidden=8))
    off.update_bias(torch.tensor([10, 0, 5, 5]))
    assert (off.expert_bias_E == 0).all()


@pytest.mark.parametrize("kind", ["softmax_topk", "sigmoid_topk", "expert_choice", "hash"])
def test_force_uniform_routing_balances_exactly(kind):
    r = make_router(router=kind)
    r.force_uniform = True
    out = r(torch.randn(40, D), torch.zeros(40, dtype=torch.long))
    assert torch.equal(torch.bincount(out.expert_idx_A, minlength=8), torch.full((8,), 10))
