"""Each training loss equals its formula on hand-made inputs."""

import math

import pytest

torch = pytest.importorskip("torch")

from moesim.training import losses  # noqa: E402
from moesim.training.data import IGNORE  # noqa: E402


def test_next_token_loss_ignores_masked_positions():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[0, 1, IGNORE]])
    expected = (-math.log(math.e**2 / (math.e**2 + 1)) + math.log(2)) / 2
    assert losses.next_token_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_sequence_logprobs_sum_completion_tokens_only():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]]))
    labels = torch.tensor([[IGNORE, 1, 0]])
    got = losses.sequence_logprobs(logits, labels).item()
    assert got == pytest.approx(math.log(0.75) + math.log(0.9), rel=1e-6)


def test_dpo_loss_by_hand():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])
    beta = 0.5
    margins = [beta * ((-1 + 2) - (-3 + 2)), beta * ((-2 + 2) - (-1 + 2))]  # [1.0, -0.5]
    expected = sum(-math.log(1 / (1 + math.exp(-m))) for m in margins) / 2
    loss, m = losses.dpo_loss(pc, pr, rc, rr, beta)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["margin"] == pytest.approx(0.25)
    assert m["reward_chosen"] == pytest.approx(beta * (1 + 0) / 2)
    assert m["reward_rejected"] == pytest.approx(beta * (-1 + 1) / 2)
    assert m["accuracy"] == 0.5


def test_dpo_loss_is_log2_when_policy_equals_reference():
    lp = torch.randn(4)
    lr = torch.randn(4)
    loss, m = losses.dpo_loss(lp, lr, lp.clone(), lr.clone(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert m["margin"] == 0.0


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    adv = losses.group_advantages(r, eps=0.0 + 1e-8)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()  # unbiased, as torch.std
    torch.testing.assert_close(adv[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std)
    torch.testing.assert_close(adv[1], torch.zeros(4))  # equal rewards: no signal


def test_k3_kl_by_hand_and_nonnegative():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    d = -0.5
    torch.testing.assert_close(losses.k3_kl(lp, ref), torch.tensor([math.exp(d) - d - 1, 0.0]))
    assert (losses.k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_grpo_loss_by_hand_with_clipping():
    # two completions, two tokens each (second of the second one masked)
    logp = torch.log(torch.tensor([[0.6, 0.5], [0.2, 0.9]]))
    old = torch.log(torch.tensor([[0.4, 0.5], [0.4, 0.9]]))
    ref = logp.clone()  # KL term zero
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    # ratios: 1.5 (clipped to 1.2 for A>0), 1.0; 0.5 (A<0: min(-0.5, -0.8) = -0.8)
    seq0 = -(1.2 + 1.0) / 2
    seq1 = 0.8 / 1  # minus the clipped objective -0.8
    loss, m = losses.grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, kl_beta=0.04)
    assert loss.item() == pytest.approx((seq0 + seq1) / 2, rel=1e-5)
    assert m["kl"] == pytest.approx(0.0, abs=1e-7)
    assert m["clip_fraction"] == pytest.approx(2 / 3)


def test_grpo_loss_kl_term_pulls_towards_reference():
    logp = torch.zeros(1, 3, requires_grad=True)
    ref = torch.full((1, 3), -1.0)
    loss, m = losses.grpo_loss(
        logp, logp.detach(), ref, torch.zeros(1), torch.ones(1, 3), kl_beta=1.0
    )
    assert m["kl"] == pytest.approx(math.exp(-1) + 1 - 1)
    loss.backward()
    assert (logp.grad > 0).all()  # lowering log π (towards the reference) lowers the loss
