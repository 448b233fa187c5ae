"""SFT: loss only on responses, packing with document masks, and it learns."""

import pytest

torch = pytest.importorskip("torch")

from small_models import small_spec  # noqa: E402

from moesim.nn import Transformer  # noqa: E402
from moesim.training import TrainConfig, run_stage  # noqa: E402
from moesim.training.data import Example, pack_examples  # noqa: E402
from moesim.training.losses import next_token_loss  # noqa: E402


def test_sft_loss_falls():
    r = run_stage("sft", small_spec(), 40, TrainConfig(batch_size=8, seq_len=64))
    assert r["loss_last"] < 0.6 * r["loss_first"]


def test_prompt_tokens_carry_no_gradient_to_the_loss():
    """Changing a prompt's last token changes the loss (it conditions the response), but the
    loss never scores prompt tokens: a batch with only prompts has no loss tokens."""
    torch.manual_seed(0)
    model = Transformer(small_spec())
    b = pack_examples([Example("1+2=", "3"), Example("reverse ab:", "ba")], 2, 16)
    assert b.n_loss_tokens == 2 + 3
    out = model(b.input_ids_BS, doc_ids_BS=b.doc_ids_BS)
    loss = next_token_loss(out.logits, b.labels_BS)
    (grad,) = torch.autograd.grad(loss, out.logits)
    scored = grad.abs().sum(-1) > 0
    assert torch.equal(scored, b.labels_BS != -100)
