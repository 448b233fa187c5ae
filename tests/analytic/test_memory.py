"""Memory per GPU against a worked example per ZeRO stage and per recompute mode."""

from __future__ import annotations

import pytest

from moesim.analytic.activation_memory import activation_bytes_per_token
from moesim.analytic.memory import memory_per_gpu
from moesim.analytic.microbatches import microbatches_in_flight
from moesim.catalog import load_gpu
from moesim.specs import ModelSpec, ParallelSpec, Scenario

# A model small enough to count by hand:
#   embedding 1000·64 = 64,000; lm_head 64,000; final norm 64
#   per layer: attention 4·64·64 = 16,384; norms 2·64 = 128; SwiGLU FFN 3·64·128 = 24,576
#   total = 128,064 + 2·41,088 = 210,240
HAND_MODEL = ModelSpec(
    name="hand",
    vocab_size=1000,
    n_layers=2,
    d_model=64,
    n_heads=4,
    attention="mha",
    ffn_hidden=128,
    max_seq_len=32,
)
N_PARAMS = 210_240


def _scenario(zero: int, recompute: str = "none", dp: int = 4) -> Scenario:
    return Scenario(
        name="hand",
        model=HAND_MODEL,
        cluster={"gpu": load_gpu("h100-sxm"), "nodes": 1, "gpus_per_node": dp},
        parallel={"zero_stage": zero, "recompute": recompute},
        workload={"stage": "pretrain", "seq_len": 32, "global_batch": dp},
    )


@pytest.mark.parametrize(
    ("zero", "weights", "grads", "optim"),
    [
        (0, 2 * N_PARAMS, 2 * N_PARAMS, 12 * N_PARAMS),
        (1, 2 * N_PARAMS, 2 * N_PARAMS, 12 * N_PARAMS / 4),
        (2, 2 * N_PARAMS, 2 * N_PARAMS / 4, 12 * N_PARAMS / 4),
        (3, 2 * N_PARAMS / 4, 2 * N_PARAMS / 4, 12 * N_PARAMS / 4),
    ],
)
def test_model_states_per_zero_stage(zero, weights, grads, optim):
    """ZeRO paper §3: 2 + 2 + 12 bytes per parameter, sharded stage by stage over dp = 4."""
    est = memory_per_gpu(_scenario(zero))
    assert est.weights == pytest.approx(weights)
    assert est.gradients == pytest.approx(grads)
    assert est.optimizer == pytest.approx(optim)


def test_activations_worked_example():
    """Per token per layer, bf16 (2 B):
    attention: norm in + normed (2·64) + q,k,v (3·64) + output (64) = 384 values → 768 B,
               plus the fp32 log-sum-exp of 4 heads = 16 B
    FFN:       norm in + normed (2·64) + gate, up, product (3·128) = 512 values → 1024 B
    = 1808 B; selective recomputes both norm outputs and the product (2·64 + 128 values):
    1296 B; full keeps the layer input: 128 B."""
    p = ParallelSpec(dp=1)
    assert activation_bytes_per_token(HAND_MODEL, False, p, "none") == 1808
    assert activation_bytes_per_token(HAND_MODEL, False, p, "selective") == 1296
    assert activation_bytes_per_token(HAND_MODEL, False, p, "full") == 128
    # one microbatch of 32 tokens, 2 layers, plus fp32 logits 32·1000·4 for the loss
    est = memory_per_gpu(_scenario(1, "none"))
    assert est.activations == pytest.approx(1808 * 32 * 2 + 32 * 1000 * 4)
    full = memory_per_gpu(_scenario(1, "full"))
    assert full.activations == pytest.approx(128 * 32 * 2 + 1808 * 32 + 32 * 1000 * 4)


def test_other_holds_reserve_and_gradient_buckets():
    est = memory_per_gpu(_scenario(1))
    assert est.other == pytest.approx(1.0e9 + 2 * 40e6)  # the default 1 GB reserve
    s = _scenario(1)
    more = s.model_copy(
        update={"cluster": s.cluster.model_copy(update={"gpu_memory_reserve_GB": 3.5})}
    )
    assert memory_per_gpu(more).other == pytest.approx(3.5e9 + 2 * 40e6)
    assert est.total == pytest.approx(
        est.weights + est.gradients + est.optimizer + est.activations + est.other
    )


def test_tensor_parallel_divides_activations():
    m = HAND_MODEL
    one = activation_bytes_per_token(m, False, ParallelSpec(dp=1), "selective")
    two = activation_bytes_per_token(m, False, ParallelSpec(tp=2, dp=1), "selective")
    assert two == pytest.approx(one / 2)


@pytest.mark.parametrize(
    ("schedule", "vs", "m", "expected"),
    [
        ("1f1b", 1, 32, 4.0),
        ("1f1b", 1, 2, 2.0),
        ("gpipe", 1, 32, 32.0),
        ("interleaved_1f1b", 2, 32, 4 + 3 / 2),
        ("dualpipe", 1, 32, 5.0),
    ],
)
def test_microbatches_in_flight(schedule, vs, m, expected):
    p = ParallelSpec(pp=4, dp=1, schedule=schedule, virtual_stages=vs)
    assert microbatches_in_flight(p, m) == expected


def test_moe_experts_shard_over_expert_data_parallel():
    """Mixtral on 16 GPUs, ep 8: experts are held 1/8 per GPU and their optimizer states are
    sharded over edp = 16/8 = 2; the dense part over dp = 16."""
    from moesim.analytic.params import count_params
    from moesim.catalog import load_model

    m = load_model("mixtral-8x7b")
    s = Scenario(
        name="x",
        model=m,
        cluster={"gpu": load_gpu("h100-sxm"), "nodes": 2},
        parallel={"ep": 8, "zero_stage": 1},
        workload={"stage": "pretrain", "seq_len": 4096, "global_batch": 16},
    )
    c = count_params(m)
    expert = sum(x.routed_experts for x in c.decoder_layers)
    non_expert = c.total - expert
    est = memory_per_gpu(s)
    assert est.weights == pytest.approx(2 * (non_expert + expert / 8))
    assert est.optimizer == pytest.approx(12 * (non_expert / 16 + expert / 8 / 2))


def test_oversized_model_reports_not_fitting():
    from moesim.analytic.memory import fits
    from moesim.catalog import load_model

    s = Scenario(
        name="405b-on-8",
        model=load_model("llama-3.1-405b"),
        cluster={"gpu": load_gpu("h100-sxm"), "nodes": 1},
        parallel={"zero_stage": 0},
        workload={"stage": "pretrain", "seq_len": 4096, "global_batch": 8},
    )
    assert not fits(s)
    assert memory_per_gpu(s).as_GB()["total"] > 80


def test_inference_kv_cache_mla_is_compressed():
    """DeepSeek-V3 caches 512 + 64 values per token per layer; a GQA model 2·kv_heads·head_dim."""
    from moesim.analytic.memory import kv_cache_bytes_per_token
    from moesim.catalog import load_model
    from moesim.specs import Precision

    p, prec = ParallelSpec(dp=1), Precision()
    v3 = load_model("deepseek-v3")
    assert kv_cache_bytes_per_token(v3, p, prec) == 61 * 576 * 2
    llama = load_model("llama-3-8b")
    assert kv_cache_bytes_per_token(llama, p, prec) == 32 * 2 * 8 * 128 * 2


def test_fp8_caching_and_mla_up_projection_recompute():
    """DeepSeek-V3 §3.2.3 and §3.3.2: selective recompute drops MLA's up-projected Q/K/V, and
    FP8 training caches the expert inputs in one byte instead of two."""
    from moesim.catalog import load_model

    v3 = load_model("deepseek-v3")
    p = ParallelSpec(dp=1, ep=1)
    none = activation_bytes_per_token(v3, True, p, "none")
    sel = activation_bytes_per_token(v3, True, p, "selective")
    up = v3.q_dim + 128 * (128 + 64) + 128 * 128  # Q, K and V after the up-projections
    assert none - sel >= up * 2
    fp8 = activation_bytes_per_token(v3, True, p, "selective", 2.0, 1.0)
    # per routed copy: dispatched input (7168) and SwiGLU inputs (2·2048) at 1 B instead of 2
    assert sel - fp8 == pytest.approx(8 * (7168 + 2 * 2048) + v3.attn_out_dim)


def test_bf16_adam_moments_take_8_bytes_per_parameter():
    """DeepSeek-V3 §3.3.3: fp32 master weights (4 B) and bf16 moments (2 + 2 B)."""
    s = _scenario(0)
    bf16 = s.model_copy(
        update={"precision": s.precision.model_copy(update={"optimizer_states": "bf16"})}
    )
    assert memory_per_gpu(bf16).optimizer == pytest.approx(8 * N_PARAMS)
    assert memory_per_gpu(s).optimizer == pytest.approx(12 * N_PARAMS)


def _llama_pipeline(schedule: str, global_batch: int) -> Scenario:
    from moesim.catalog import load_model

    return Scenario(
        name="pp4",
        model=load_model("llama-3-8b"),
        cluster={"gpu": load_gpu("h100-sxm"), "nodes": 1, "gpus_per_node": 4},
        parallel={"pp": 4, "zero_stage": 0, "recompute": "selective", "schedule": schedule},
        workload={"stage": "pretrain", "seq_len": 1024, "global_batch": global_batch},
    )


def test_dualpipe_ranks_hold_two_stages_and_pp_plus_one_microbatches():
    """DeepSeek-V3 Table 2: DualPipe keeps 2x parameters and pp+1 microbatches of activations.
    Rank r holds positions r and pp-1-r: with pp 4, rank 0 holds stages 0 and 3 (embedding and
    head: the worst rank), rank 1 stages 1 and 2."""
    from moesim.analytic.activation_memory import stage_activation_bytes
    from moesim.analytic.layout import pipeline_layout
    from moesim.analytic.memory import model_state_bytes, stage_params

    dual, one_f_one_b = _llama_pipeline("dualpipe", 16), _llama_pipeline("1f1b", 16)
    p = dual.parallel
    st = pipeline_layout(dual.model, 4)
    pair = [stage_params(dual.model, p, st[i]) for i in (0, 3)]
    states = [model_state_bytes(q, p, dual.precision) for q in pair]
    w, g, o = (a + b for a, b in zip(*states, strict=True))
    est = memory_per_gpu(dual)
    assert (est.weights, est.gradients, est.optimizer) == pytest.approx((w, g, o))
    assert est.weights > 1.9 * memory_per_gpu(one_f_one_b).weights / 2  # two stages, not one
    # 1F1B: the first stage holds pp = 4 microbatches, the last one (and its logits)
    logits = 1024 * dual.model.vocab_size * 4.0
    first = stage_activation_bytes(one_f_one_b, st[0], 1024) / 4
    last = stage_activation_bytes(one_f_one_b, st[3], 1024) - logits
    assert est.activations == pytest.approx(5 * (first + last) / 2 + logits)
    # too few microbatches for DualPipe's layout: it runs as 1F1B, one stage per rank
    assert memory_per_gpu(_llama_pipeline("dualpipe", 4)).weights == pytest.approx(
        memory_per_gpu(_llama_pipeline("1f1b", 4)).weights
    )


def test_a_layout_that_does_not_fit_says_its_largest_part_and_the_knobs():
    from moesim.analytic.memory import memory_note

    s = _scenario(0, "none", dp=1)
    est = memory_per_gpu(s)
    assert memory_note(s, est) is None  # the hand model fits an H100
    tiny = s.model_copy(
        update={
            "cluster": s.cluster.model_copy(
                update={"gpu": s.cluster.gpu.model_copy(update={"hbm_GB": 1e-3})}
            )
        }
    )
    note = memory_note(tiny, memory_per_gpu(tiny))
    parts = {k: getattr(est, k) for k in ("weights", "gradients", "optimizer", "activations")}
    worst = max(parts, key=parts.__getitem__)
    assert note is not None and f"largest part is {worst}" in note
