"""Balance losses equal their published formulas on hand-made inputs."""

import math

import pytest

torch = pytest.importorskip("torch")

from moesim.nn import balance  # noqa: E402


def test_switch_load_balance_loss_by_hand():
    # 4 tokens, 2 experts, top-1: tokens 0,1,2 -> expert 0; token 3 -> expert 1
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    idx = torch.tensor([0, 0, 0, 1])
    f = [3 / 4, 1 / 4]
    P = [(0.9 + 0.8 + 0.6 + 0.3) / 4, (0.1 + 0.2 + 0.4 + 0.7) / 4]
    expected = 2 * (f[0] * P[0] + f[1] * P[1])
    assert balance.load_balance_loss(probs, idx, 2).item() == pytest.approx(expected, rel=1e-6)


def test_switch_loss_is_one_when_uniform_and_gradient_flows_through_probs_only():
    logits = torch.zeros(8, 4, requires_grad=True)
    probs = torch.softmax(logits, -1)
    idx = torch.arange(8) % 4
    loss = balance.load_balance_loss(probs, idx, 4)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert logits.grad is not None


def test_importance_cv2_by_hand():
    weights = torch.tensor([0.5, 0.5, 1.0, 1.0])
    idx = torch.tensor([0, 1, 0, 0])  # importance = [2.5, 0.5, 0]
    imp = [2.5, 0.5, 0.0]
    mean = sum(imp) / 3
    var = sum((v - mean) ** 2 for v in imp) / 3
    got = balance.importance_cv2_loss(weights, idx, 3).item()
    assert got == pytest.approx(var / mean**2, rel=1e-5)


def test_router_z_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    lse = [math.log(2.0), math.log(math.e + math.e**2)]
    expected = (lse[0] ** 2 + lse[1] ** 2) / 2
    assert balance.router_z_loss(logits).item() == pytest.approx(expected, rel=1e-6)


def test_entropy_and_load_cv():
    assert balance.router_entropy(torch.full((3, 4), 0.25)).item() == pytest.approx(math.log(4))
    assert balance.load_cv(torch.tensor([5, 5, 5, 5])) == 0.0
    assert balance.load_cv(torch.tensor([8, 0, 0, 0])) == pytest.approx(math.sqrt(3))


def test_aux_weight_schedule_ramps_linearly():
    cfg = balance.BalanceConfig(aux_loss_weight=0.01, aux_warmup_steps=10, aux_warmup_start=5.0)
    assert cfg.weights(0)["load_balance"] == pytest.approx(0.05)
    assert cfg.weights(5)["load_balance"] == pytest.approx(0.03)
    assert cfg.weights(10)["load_balance"] == pytest.approx(0.01)
    assert cfg.weights(99)["load_balance"] == pytest.approx(0.01)
    assert balance.aux_weight_schedule(3, 0, 9.0) == 1.0
