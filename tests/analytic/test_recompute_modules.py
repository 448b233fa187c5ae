"""Selective recomputation by module (Megatron-Core's ``recompute_modules``): what each module
drops from memory and adds in FLOPs, against the default set and against each other."""

from __future__ import annotations

import itertools

import pytest

from moesim.analytic.activation_memory import activation_bytes_per_token
from moesim.analytic.flops import token_flops
from moesim.analytic.memory import memory_per_gpu
from moesim.catalog import load_model
from moesim.scenario_io import ScenarioError, scenario_from_dict
from moesim.specs import SELECTIVE_MODULES, ParallelSpec

MODULES = ("core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe", "shared_experts")
DSV3 = load_model("deepseek-v3")  # MLA, shared experts, dense first layers: every module bites


def _par(modules: tuple[str, ...] | None) -> ParallelSpec:
    return ParallelSpec(dp=1, recompute="selective", recompute_modules=modules)


def _act(modules: tuple[str, ...] | None, moe: bool) -> float:
    return activation_bytes_per_token(DSV3, moe, _par(modules), "selective")


def test_default_selective_is_the_deepseek_set() -> None:
    named = tuple(sorted(SELECTIVE_MODULES))
    for moe in (False, True):
        assert _act(None, moe) == _act(named, moe)
    fl = token_flops(DSV3, 4096)
    assert fl.recompute("selective") == fl.recompute("selective", named)


@pytest.mark.parametrize(("a", "b"), list(itertools.combinations(MODULES, 2)))
def test_recomputing_more_keeps_less_and_costs_more(a: str, b: str) -> None:
    """Adding a module never keeps more bytes and never costs fewer FLOPs."""
    fl = token_flops(DSV3, 4096)
    for moe in (False, True):
        assert _act((a, b), moe) <= _act((a,), moe)
    assert fl.recompute("selective", (a, b)) >= fl.recompute("selective", (a,))


def test_each_module_drops_what_it_names() -> None:
    none = activation_bytes_per_token(DSV3, True, ParallelSpec(dp=1), "none")
    dense_none = activation_bytes_per_token(DSV3, False, ParallelSpec(dp=1), "none")
    d, e = DSV3.d_model, DSV3.moe
    assert e is not None
    # layernorm: the two norms' outputs, bf16
    assert none - _act(("layernorm",), True) == pytest.approx(2 * d * 2)
    # core_attn: the fp32 log-sum-exp per head
    assert none - _act(("core_attn",), True) == pytest.approx(4 * DSV3.n_heads)
    # shared_experts: gate, up and product of the shared experts, bf16
    shared = 3 * e.n_shared_experts * e.shared_hidden * 2
    assert none - _act(("shared_experts",), True) == pytest.approx(shared)
    # mlp on a dense layer: its whole FFN inside; moe on an MoE layer: router, routed, shared
    assert dense_none - _act(("mlp",), False) == pytest.approx(3 * DSV3.ffn_hidden * 2)
    assert _act(("moe",), True) < _act(("shared_experts", "moe_act"), True)
    # moe does nothing to a dense layer, mlp nothing to an MoE layer
    assert _act(("moe",), False) == dense_none
    assert _act(("mlp",), True) == none


def test_recompute_flops_per_module() -> None:
    fl = token_flops(DSV3, 4096)
    moe = [x for x in fl.layers if x.routed_experts > 0]
    assert fl.recompute("selective", ("core_attn",)) == pytest.approx(
        sum(x.attention_core for x in fl.layers)
    )
    whole = sum(x.router + x.shared_experts + x.routed_experts + x.activation for x in moe)
    assert fl.recompute("selective", ("moe",)) == pytest.approx(whole)
    assert fl.recompute("selective", ("layernorm",)) == 0.0


def _scenario(parallel: dict, precision: dict | None = None):
    return scenario_from_dict(
        {
            "name": "t",
            "model": "mixtral-8x7b",
            "cluster": {"gpu": "h100-sxm", "nodes": 1, "gpus_per_node": 8},
            "parallel": {"tp": 1, "pp": 1, "ep": 8, **parallel},
            "precision": precision or {},
            "workload": {"stage": "pretrain", "seq_len": 1024, "global_batch": 16},
        }
    )


@pytest.mark.parametrize(
    ("parallel", "needle"),
    [
        ({"recompute": "full", "recompute_modules": ["moe"]}, "recompute: selective"),
        ({"recompute_modules": []}, "empty"),
        ({"recompute_modules": ["moe", "moe"]}, "twice"),
        ({"recompute_modules": ["attention"]}, "recompute_modules"),
    ],
)
def test_bad_recompute_modules_name_the_field(parallel: dict, needle: str) -> None:
    with pytest.raises(ScenarioError, match=needle):
        _scenario(parallel)


def test_activation_storage_sets_the_cached_gemm_inputs() -> None:
    base = memory_per_gpu(_scenario({})).activations
    fp8 = memory_per_gpu(_scenario({}, {"activation_storage": "fp8"})).activations
    assert fp8 < base
    # an fp8 recipe keeps fp8 by default (DeepSeek-V3 §3.3.2); bf16 storage keeps more
    fp8_default = memory_per_gpu(_scenario({}, {"compute": "fp8"})).activations
    fp8_bf16 = memory_per_gpu(
        _scenario({}, {"compute": "fp8", "activation_storage": "bf16"})
    ).activations
    assert fp8_default == pytest.approx(fp8)
    assert fp8_bf16 == pytest.approx(base)
