"""Megatron-Core layout strings: parsed as Megatron-Core's parser parses them (hand-checked
against the examples of its docs and functional tests), checked by its rules, written back."""

from __future__ import annotations

import pytest

from moesim.specs.pipeline_layout import (
    check_layout,
    parse_layout,
    rank_string,
    split_layout,
    write_layout,
)


def by_rank(stages: list[list[str]], pp: int) -> list[list[str]]:
    """Megatron's 2-D layout: rank r holds virtual stages r, r+pp, … (one string per chunk)."""
    return [["".join(stages[c]) for c in range(r, len(stages), pp)] for r in range(pp)]


def test_the_deepseek_v3_example_of_megatron_docs():
    """docs/user-guide/features/pipeline_parallel_layout.md: 'Et*3|(tt|)*29,m|L' at PP16 VPP2
    puts E + 3 decoders then 2 on rank 0, 2 + 2 on ranks 1–13, 2 + mtp on rank 14, 2 + loss
    on rank 15."""
    stages = parse_layout("Et*3|(tt|)*29,m|L")
    assert len(stages) == 32
    ranks = by_rank(stages, 16)
    assert ranks[0] == ["Ettt", "tt"]
    assert all(ranks[r] == ["tt", "tt"] for r in range(1, 14))
    assert ranks[14] == ["tt", "m"] and ranks[15] == ["tt", "L"]
    check_layout(stages, pp=16, n_layers=61, mtp_layers=1, virtual_stages=2)


def test_the_transformer_config_example():
    """TransformerConfig's docstring example 'E|(tt|)*2,(t|)*4,mL' (its ranks 0–3, VPP 2)."""
    ranks = by_rank(parse_layout("E|(tt|)*2,(t|)*4,mL"), 4)
    assert ranks == [["E", "t"], ["tt", "t"], ["tt", "t"], ["t", "mL"]]


@pytest.mark.parametrize(
    ("layout", "pp", "expected"),
    [  # Megatron-LM tests/functional_tests model_config.yaml layouts
        ("Et*2|(tt|)*5t|tmL", 4, [["Ett", "tt"], ["tt", "tt"], ["tt", "t"], ["tt", "tmL"]]),
        ("Et*7|t*7mL", 2, [["Ettttttt"], ["tttttttmL"]]),
        ("Et|(tt|)*6mL", 2, [["Et", "tt", "tt", "tt"], ["tt", "tt", "tt", "mL"]]),
        ("E||t|L", 2, [["E", "t"], ["", "L"]]),  # empty stages are allowed
    ],
)
def test_functional_test_layouts(layout, pp, expected):
    assert by_rank(parse_layout(layout), pp) == expected


def test_repetition_is_unrolled_like_megatron():
    assert parse_layout("(t)*3") == [["t", "t", "t"]]
    assert parse_layout("(|t)*2,L") == [[], ["t"], ["t", "L"]]  # Megatron's own example
    assert parse_layout("t*12") == [["t"] * 12]
    assert parse_layout("E,t,t|L") == [["E", "t", "t"], ["L"]]  # commas are cosmetic


@pytest.mark.parametrize(
    ("layout", "where"),
    [
        ("Et*3|x", "position 5"),  # outside the grammar: its index in the input
        ("Et t|L", "position 2"),  # spaces are not allowed either
        ("E(tt|)L", "virtual stage 0"),  # parentheses without a count are left over
        ("Et*3*2|L", "virtual stage 0"),  # a repetition of a repetition
        ("E|((t)*2|)*3L", "virtual stage 1"),  # nesting does not unroll
    ],
)
def test_bad_strings_name_the_position(layout, where):
    with pytest.raises(ValueError, match="pipeline_layout") as e:
        parse_layout(layout)
    assert where in str(e.value)


@pytest.mark.parametrize(
    ("layout", "pp", "n", "mtp", "vp", "fix"),
    [
        ("Et*3|t*3L|t", 2, 6, 0, 1, "multiple of 2"),
        ("Et*3|t*3L", 2, 6, 0, 2, "virtual_stages: 1"),
        ("tEt*2|t*3L", 2, 6, 0, 1, "start with 'E'"),
        ("Et*3|t*3Lt", 2, 7, 0, 1, "end with 'L'"),
        ("Et*3|t*2L", 2, 6, 0, 1, "place 6"),
        ("Et*3|t*3L", 2, 6, 1, 1, "place 1"),
        ("Et*2m|t*4L", 2, 6, 1, 1, "after every 't'"),
        ("Et*6|m||L", 2, 6, 1, 2, "last chunk"),
        ("EL|t|t|t", 2, 3, 0, 2, "end with 'L'"),
    ],
)
def test_megatron_rules_with_the_fix(layout, pp, n, mtp, vp, fix):
    with pytest.raises(ValueError, match="pipeline_layout") as e:
        check_layout(parse_layout(layout), pp, n, mtp, vp)
    assert fix in str(e.value)


@pytest.mark.parametrize(
    "layout",
    ["Et*3|(tt|)*29,m|L", "E|(tt|)*2,(t|)*4,mL", "E||t|L", "Et*12|(t*12|)*6t*10L", "(|)*3EL"],
)
def test_written_layouts_read_back_the_same(layout):
    stages = parse_layout(layout)
    assert parse_layout(write_layout(stages)) == stages


def test_uneven_first_and_last_ranks_as_megatron_splits_them():
    # 32 layers, pp 4: 5 on the first rank, 9 on the last, (32 − 14) / 2 = 9 on each middle
    stages = split_layout(32, 0, 4, first=5, last=9)
    assert [st.count("t") for st in stages] == [5, 9, 9, 9]
    assert stages[0][0] == "E" and stages[-1][-1] == "L"
    # with 2 virtual stages each rank's layers split over its two chunks
    stages = split_layout(32, 0, 4, 2, first=6, last=2)
    assert [st.count("t") for st in stages] == [3, 6, 6, 1, 3, 6, 6, 1]
    with pytest.raises(ValueError, match="first_stage_layers/last_stage_layers") as e:
        split_layout(32, 0, 4, first=5, last=8)  # 19 layers over 2 middle ranks
    assert "divides the rest" in str(e.value)


def test_account_for_embedding_and_loss_make_94_plus_2_on_96_chunks():
    """Qwen3-235B's 94 layers on pp·vp = 96 chunks: the embedding and the loss take a chunk
    each; without them 96 chunks exceed the layers."""
    stages = split_layout(94, 0, 8, 12, account_for_embedding=True, account_for_loss=True)
    assert len(stages) == 96
    assert stages[0] == ["E"] and stages[-1] == ["L"]
    assert all(st == ["t"] for st in stages[1:-1])
    check_layout(stages, 8, 94, 0, 12)
    with pytest.raises(ValueError, match="exceeds"):
        split_layout(94, 0, 8, 12)
    with pytest.raises(ValueError, match="account_for"):
        split_layout(94, 0, 8, 12, account_for_embedding=True)  # 95 on 96


def test_rank_string():
    assert rank_string([["E", "t", "t", "t"], ["t", "t"]]) == "E t t t | t t"
