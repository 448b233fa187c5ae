"""Which layers each pipeline rank holds under the layout options, and their memory."""

from __future__ import annotations

import pytest

from moesim.analytic.layout import pipeline_layout, stage_layouts
from moesim.analytic.memory import memory_per_gpu, memory_per_stage, stage_params
from moesim.catalog import load_model
from moesim.scenario_io import scenario_from_dict
from moesim.specs import ParallelSpec


def test_deepseek_v3_megatron_example_numbers_layers_in_order():
    """'Et*3|(tt|)*29,m|L' at pp 16, vp 2: rank 0's chunks hold layers 0–2 (the dense ones)
    and 33–34 (after 3 + 15·2 layers of the first round); the MTP layer sits alone on rank 14's
    last chunk, the head on rank 15's."""
    m = load_model("deepseek-v3")
    p = ParallelSpec(
        pp=16, virtual_stages=2, schedule="interleaved_1f1b", pipeline_layout="Et*3|(tt|)*29,m|L"
    )
    st = stage_layouts(m, p)
    assert st[0].chunks == [[0, 1, 2], [33, 34]] and st[0].moe_layers == [33, 34]
    assert st[0].has_embedding and not st[0].has_lm_head
    assert st[14].chunks[1] == [] and st[14].mtp_layers == 1 and not st[14].has_lm_head
    assert st[15].chunks[1] == [] and st[15].has_lm_head and not st[15].has_mtp
    assert sorted(i for s in st for i in s.layers) == list(range(61))
    assert st[0].layout == "E t t t | t t" and st[14].layout == "t t | m"


def test_default_split_is_the_even_one():
    m = load_model("deepseek-v3")
    even = pipeline_layout(m, 16)
    st = stage_layouts(m, ParallelSpec(pp=16))
    assert [s.chunks for s in st] == [s.chunks for s in even]
    assert st[15].has_mtp and st[15].has_lm_head  # where Megatron-Core builds them


def test_standalone_mtp_rank_holds_the_mtp_module_and_a_head_copy():
    m = load_model("deepseek-v3")
    p = ParallelSpec(pp=4, ep=1, dp=1, pipeline_layout="Et*20|t*20|t*21m|L")
    st = stage_layouts(m, p)
    mtp_rank, head_rank = stage_params(m, p, st[2]), stage_params(m, p, st[3])
    no_mtp = stage_params(m, p, stage_layouts(m, ParallelSpec(pp=4, ep=1, dp=1))[1])
    # rank 2: 21 layers + the MTP module (> 21 layers' worth); rank 3: only the head and norm
    assert mtp_rank.total > no_mtp.total * 21 / 16
    assert head_rank.total == pytest.approx(m.vocab_size * m.d_model + m.d_model)


def _llama_scenario(**parallel) -> object:
    return scenario_from_dict(
        {
            "name": "llama-layout",
            "model": "llama-3-8b",
            "cluster": {"gpu": "h100-sxm", "nodes": 1, "gpus_per_node": 8},
            "parallel": {"pp": 4, "zero_stage": 1, **parallel},
            "workload": {"stage": "pretrain", "seq_len": 1024, "global_batch": 16},
        }
    )


def test_memory_per_gpu_is_the_worst_stage_and_follows_the_layers():
    even, uneven = _llama_scenario(), _llama_scenario(first_stage_layers=4, last_stage_layers=12)
    per_even, per_uneven = memory_per_stage(even), memory_per_stage(uneven)
    assert memory_per_gpu(uneven).total == max(e.total for e in per_uneven)
    assert [e.stage for e in per_uneven] == [0, 1, 2, 3]
    # rank 0 sheds 4 layers' states, rank 3 gains 4: weights move with the layers
    assert per_uneven[0].weights < per_even[0].weights
    assert per_uneven[3].weights > per_even[3].weights
    assert per_uneven[1].weights == pytest.approx(per_even[1].weights)
