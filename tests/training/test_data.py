"""Synthetic data: packing masks prompts and separates documents; pairs and the task."""

import random

import pytest

torch = pytest.importorskip("torch")

from moesim.training import data  # noqa: E402
from moesim.training.data import EOS, IGNORE, Example  # noqa: E402


def test_packing_labels_only_responses_and_separates_documents():
    exs = [Example("ab:", "xy"), Example("c:", "z"), Example("long prompt:", "w")]
    b = data.pack_examples(exs, batch=2, seq_len=10)
    # row 0: 'ab:xy<eos>' (6) + 'c:z<eos>' (4) = 10 tokens; row 1: the third example
    ids, labels, docs = b.input_ids_BS, b.labels_BS, b.doc_ids_BS
    assert data.decode(ids[0, :6]) == "ab:xy"
    assert labels[0, :6].tolist() == [IGNORE, IGNORE, ord("x"), ord("y"), EOS, IGNORE]
    assert labels[0, 6:].tolist() == [IGNORE, ord("z"), EOS, IGNORE]
    assert docs[0].tolist() == [0] * 6 + [1] * 4
    assert b.n_loss_tokens == 3 + 2  # 'xy'+EOS, 'z'+EOS; the third did not fit in 10
    assert (labels[1] == IGNORE).all() and (ids[1] == EOS).all()
    assert len(set(docs[1].tolist()) & {0, 1}) == 0  # padding is its own document


def test_pretrain_batches_are_next_token_shifted_and_deterministic():
    a = data.PretrainData(4, 32, seed=1).batch_at(0)
    b = data.PretrainData(4, 32, seed=1).batch_at(0)
    assert torch.equal(a[0], b[0])
    x, y = a
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_preference_pairs_share_the_prompt_and_differ_in_the_answer():
    rng = random.Random(0)
    for _ in range(50):
        chosen, rejected = data.preference_pair(rng)
        assert chosen.prompt == rejected.prompt and chosen.response != rejected.response
    b = data.preference_batch(3, 24, seed=0)
    assert b.input_ids_BS.shape == (6, 24) and b.n_pairs == 3
    assert ((b.labels_BS != IGNORE).sum(1) > 0).all()


def test_addition_task_reward_is_exact_match():
    ex = Example("3+4=", "7")
    assert data.AdditionTask.reward(ex, [*data.encode("7"), EOS]) == 1.0
    assert data.AdditionTask.reward(ex, [*data.encode("8"), EOS]) == 0.0
    assert data.AdditionTask.reward(ex, data.encode("77")) == 0.0
