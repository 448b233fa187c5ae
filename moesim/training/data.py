"""Small synthetic data made here (no downloads): byte-level text for pretraining, prompt and
response pairs for SFT (packed), preference pairs for DPO, and a verifiable task for GRPO.

Shape legend: B batch, S sequence.

Tokens are bytes (ids 0–255; the tiny catalog models have a 256-entry vocabulary); id 0 (NUL,
absent from the text) is end-of-sequence and padding. Every generator takes a seed, so the
same seed gives the same data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

EOS = 0
IGNORE = -100  # label of positions that carry no loss (prompt tokens, padding)

_NOUNS = ["cat", "dog", "bird", "fish", "fox", "owl", "bee", "ant", "cow", "pig", "hen", "yak"]
_VERBS = ["sees", "likes", "chases", "finds", "helps", "feeds", "follows", "meets"]
_ADJS = ["red", "big", "small", "old", "new", "quick", "calm", "shy"]


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(ids) -> str:
    """Bytes up to the first EOS, as text."""
    out = []
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        out.append(i)
    return bytes(out).decode("utf-8", errors="replace")


def _sentence(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.sample(_NOUNS, 2)
        return f"the {rng.choice(_ADJS)} {a} {rng.choice(_VERBS)} the {b}. "
    if kind == 1:
        x, y = rng.randrange(10), rng.randrange(10)
        return f"{x} plus {y} is {x + y}. "
    start = rng.randrange(10)
    return "count " + " ".join(str(start + i) for i in range(5)) + ". "


def pretrain_corpus(n_chars: int, seed: int = 0) -> list[int]:
    """Template sentences (animals, sums, counting): structured enough that a tiny model's
    loss falls well below the 5.5 nats of uniform bytes within tens of steps."""
    rng = random.Random(seed)
    parts, n = [], 0
    while n < n_chars:
        s = _sentence(rng)
        parts.append(s)
        n += len(s)
    return encode("".join(parts))[:n_chars]


class PretrainData:
    """Random windows of the corpus: inputs (B, S) and next-token labels (B, S)."""

    def __init__(self, batch: int, seq_len: int, seed: int = 0, n_chars: int = 200_000):
        self.batch, self.seq_len = batch, seq_len
        self.tokens = torch.tensor(pretrain_corpus(n_chars, seed), dtype=torch.long)
        self.gen = torch.Generator().manual_seed(seed)

    def batch_at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(
            0, len(self.tokens) - self.seq_len - 1, (self.batch,), generator=self.gen
        )
        window = torch.stack([self.tokens[s : s + self.seq_len + 1] for s in starts.tolist()])
        return window[:, :-1], window[:, 1:]


# -- prompt/response tasks ---------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    prompt: str
    response: str


def addition_example(rng: random.Random) -> Example:
    """'a+b=' -> the sum: the verifiable task of GRPO (and part of SFT/DPO data)."""
    a, b = rng.randrange(10), rng.randrange(10)
    return Example(f"{a}+{b}=", str(a + b))


def sft_example(rng: random.Random) -> Example:
    kind = rng.randrange(3)
    if kind == 0:
        return addition_example(rng)
    word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
    if kind == 1:
        return Example(f"reverse {word}:", word[::-1])
    return Example(f"upper {word}:", word.upper())


@dataclass
class PackedBatch:
    """Examples packed back to back: ``doc_ids_BS`` keeps attention within each example,
    ``labels_BS`` is the next token on response positions and IGNORE elsewhere."""

    input_ids_BS: torch.Tensor
    labels_BS: torch.Tensor
    doc_ids_BS: torch.Tensor

    @property
    def n_loss_tokens(self) -> int:
        return int((self.labels_BS != IGNORE).sum())


def pack_examples(examples: list[Example], batch: int, seq_len: int) -> PackedBatch:
    """Greedy packing (each example = prompt + response + EOS) into ``batch`` rows of
    ``seq_len``; an example that does not fit starts the next row; leftovers are dropped.
    Loss only on response tokens and the closing EOS (prompt tokens masked out)."""
    ids = torch.full((batch, seq_len), EOS, dtype=torch.long)
    labels = torch.full((batch, seq_len), IGNORE, dtype=torch.long)
    docs = torch.full((batch, seq_len), -1, dtype=torch.long)
    row, col, doc = 0, 0, 0
    for ex in examples:
        p, r = encode(ex.prompt), [*encode(ex.response), EOS]
        toks = p + r
        if len(toks) > seq_len:
            continue
        if col + len(toks) > seq_len:
            row, col = row + 1, 0
            if row == batch:
                break
        n = len(toks)
        ids[row, col : col + n] = torch.tensor(toks)
        docs[row, col : col + n] = doc
        # position t predicts token t+1: label the positions whose next token is a response one
        tgt = torch.full((n,), IGNORE, dtype=torch.long)
        tgt[len(p) - 1 : n - 1] = torch.tensor(r)
        labels[row, col : col + n] = tgt
        col, doc = col + n, doc + 1
    # padding: its own document per row, so it never attends to real tokens
    docs[docs == -1] = doc + 1
    return PackedBatch(ids, labels, docs)


class SFTData:
    def __init__(self, batch: int, seq_len: int, seed: int = 0):
        self.batch, self.seq_len = batch, seq_len
        self.rng = random.Random(seed)

    def batch_at(self, step: int) -> PackedBatch:
        # enough examples to fill every row (the shortest example is 6 tokens)
        n = self.batch * (self.seq_len // 6 + 1)
        return pack_examples([sft_example(self.rng) for _ in range(n)], self.batch, self.seq_len)


# -- preference pairs (DPO) ---------------------------------------------------------------------
@dataclass
class PreferenceBatch:
    """``[chosen; rejected]`` stacked on the batch dimension (TRL's layout): ids (2B, S) and
    labels (2B, S) with IGNORE outside the completion."""

    input_ids_BS: torch.Tensor
    labels_BS: torch.Tensor

    @property
    def n_pairs(self) -> int:
        return self.input_ids_BS.shape[0] // 2


def preference_pair(rng: random.Random) -> tuple[Example, Example]:
    """The correct answer is chosen; a wrong one (off by 1–3, or the reverse un-reversed) is
    rejected."""
    ex = sft_example(rng)
    if ex.response.isdigit():
        n, d = int(ex.response), rng.choice([1, 2, 3])
        wrong = str(n + d if n < d or rng.random() < 0.5 else n - d)
    else:
        wrong = ex.response[::-1] if ex.response[::-1] != ex.response else ex.response + "a"
    return ex, Example(ex.prompt, wrong)


def _completion_rows(examples: list[Example], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(examples), seq_len), EOS, dtype=torch.long)
    labels = torch.full((len(examples), seq_len), IGNORE, dtype=torch.long)
    for i, ex in enumerate(examples):
        p, r = encode(ex.prompt), [*encode(ex.response), EOS]
        toks = (p + r)[:seq_len]
        ids[i, : len(toks)] = torch.tensor(toks)
        end = min(len(toks), seq_len) - 1
        labels[i, len(p) - 1 : end] = torch.tensor(toks[len(p) : end + 1])
    return ids, labels


def preference_batch(n_pairs: int, seq_len: int, seed: int) -> PreferenceBatch:
    rng = random.Random(seed)
    pairs = [preference_pair(rng) for _ in range(n_pairs)]
    ids, labels = _completion_rows([c for c, _ in pairs] + [r for _, r in pairs], seq_len)
    return PreferenceBatch(ids, labels)


# -- the GRPO task --------------------------------------------------------------------------------
class AdditionTask:
    """Single-digit addition 'a+b=' (a verifiable reward: 1 when the completion, up to EOS, is
    exactly the sum, else 0)."""

    max_new_tokens = 3  # two digits and EOS

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def sample(self, n: int) -> list[Example]:
        return [addition_example(self.rng) for _ in range(n)]

    @staticmethod
    def reward(example: Example, completion_ids) -> float:
        return 1.0 if decode(completion_ids).strip() == example.response else 0.0
