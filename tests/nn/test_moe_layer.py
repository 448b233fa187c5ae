"""The MoE layer: fast dispatch equals the loop reference; capacity, shared experts, stats."""

import json

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from moesim.nn import MoELayer, write_routing_histogram  # noqa: E402
from moesim.nn.experts import RoutedExperts  # noqa: E402
from moesim.nn.ffn import FeedForward  # noqa: E402
from moesim.nn.upcycle import upcycle_ffn  # noqa: E402
from moesim.specs import ModelSpec  # noqa: E402

ROUTERS = ["softmax_topk", "noisy_topk", "sigmoid_topk", "expert_choice", "hash"]


def grouped_mm_runs(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether ``torch._grouped_mm`` runs, forward and backward, on rows like ``x`` and expert
    weights like ``w``: asked of torch itself, not of moesim's ``grouped_mm_supported``."""
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    offs = torch.full((w.shape[0],), x.shape[0], dtype=torch.int32)
    offs[0] = 1  # expert 0 gets one row, the last the rest
    try:
        y = torch._grouped_mm(x, w, offs=offs)
        y.backward(torch.ones_like(y))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


# the layers below: d_model 32, expert hidden 24, fp32
GROUPED_MM_RUNS = grouped_mm_runs(torch.randn(5, 32), torch.randn(2, 32, 24))
NO_GROUPED_MM = pytest.mark.skipif(not GROUPED_MM_RUNS, reason="torch._grouped_mm does not run")
# the grouped kernels of RoutedExperts; torch._grouped_mm only where this torch runs it
KERNELS = [pytest.param("grouped_mm", marks=NO_GROUPED_MM), "padded", "loop"]


def spec(ffn_kind="swiglu", **moe) -> ModelSpec:
    base = {"n_routed_experts": 8, "top_k": 2, "expert_hidden": 24}
    return ModelSpec(
        name="t",
        vocab_size=64,
        n_layers=1,
        d_model=32,
        n_heads=4,
        ffn_hidden=64,
        ffn_kind=ffn_kind,
        moe=base | moe,
    )


def pair(s: ModelSpec, kernel: str | None = None) -> tuple[MoELayer, MoELayer]:
    torch.manual_seed(0)
    fast = MoELayer(s, dispatch="grouped")
    fast.experts.impl = kernel
    ref = MoELayer(s, dispatch="loop")
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def run(layer: MoELayer, x, ids, seed=3):
    torch.manual_seed(seed)  # same router noise for both
    out = layer(x, ids)
    loss = (out.out**2).sum() + sum(out.aux_losses.values())
    grads = torch.autograd.grad(loss, [x, *layer.parameters()], allow_unused=True)
    return out, grads


def assert_rel_close(a, b, tol=1e-5):
    scale = b.abs().max().clamp_min(1e-12)
    assert ((a - b).abs().max() / scale).item() <= tol


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("capacity_factor", [None, 1.0])
def test_grouped_dispatch_equals_loop_reference(router, capacity_factor, kernel):
    """Every grouped kernel against the loop (the default, ``impl=None``, runs one of them:
    ``test_the_default_kernel_...`` checks which)."""
    s = spec(router=router, capacity_factor=capacity_factor, n_shared_experts=1,
             n_groups=4, topk_groups=2)  # fmt: skip
    fast, ref = pair(s, kernel)
    x = torch.randn(3, 20, 32, requires_grad=True)
    ids = torch.randint(0, 64, (3, 20))
    a, ga = run(fast, x, ids)
    b, gb = run(ref, x, ids)
    assert_rel_close(a.out, b.out)
    for u, v in zip(ga, gb, strict=True):
        assert (u is None) == (v is None)
        if u is not None:
            assert_rel_close(u, v)
    assert a.stats.dropped == b.stats.dropped
    assert torch.equal(a.stats.kept_per_expert_E, b.stats.kept_per_expert_E)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("ffn_kind", ["geglu", "gelu", "relu"])
def test_grouped_equals_loop_for_other_ffn_kinds(ffn_kind, kernel):
    fast, ref = pair(spec(ffn_kind=ffn_kind), kernel)
    x = torch.randn(40, 32, requires_grad=True)
    a, ga = run(fast, x, None)
    b, gb = run(ref, x, None)
    assert_rel_close(a.out, b.out)
    for u, v in zip(ga, gb, strict=True):
        assert_rel_close(u, v)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("capacity", [None, 7])
def test_grouped_kernels_equal_the_per_expert_ffn(kernel, capacity):
    """RoutedExperts alone, skewed counts with an empty expert, against expert_forward on each
    slice: outputs and input/weight gradients to 1e-5 (``max_rows`` = the capacity)."""
    torch.manual_seed(0)
    experts = RoutedExperts(4, 32, 24)
    experts.impl = kernel
    counts = torch.tensor([7, 0, 2, 5]) if capacity else torch.tensor([11, 0, 2, 5])
    x = torch.randn(int(counts.sum()), 32, requires_grad=True)
    y = experts.grouped_forward(x, counts, capacity)
    slices = torch.split(x, counts.tolist())
    ref = torch.cat([experts.expert_forward(w, s) for w, s in
                     zip(experts.expert_weights(), slices, strict=True)])  # fmt: skip
    assert_rel_close(y, ref)
    params = [x, *experts.parameters()]
    g = torch.randn_like(y)
    for u, v in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g),
                    strict=True):  # fmt: skip
        assert_rel_close(u, v)


@pytest.mark.parametrize(
    "d_model, dtype",
    [(32, torch.float32), (32, torch.bfloat16), (32, torch.float64), (30, torch.float32)],
    ids=["fp32", "bf16", "fp64", "rows-not-16-byte"],
)
def test_the_default_kernel_on_the_cpu_is_torch_grouped_mm_where_it_runs(d_model, dtype):
    """With or without a capacity: ``torch._grouped_mm`` where torch runs it on these very
    tensors (fp32/bf16 in torch 2.13), else the loop (fp64 has no kernel; 30 fp32 are 120-byte
    rows, not a multiple of 16)."""
    experts = RoutedExperts(4, d_model, 24).to(dtype)
    x = torch.randn(5, d_model, dtype=dtype)
    expected = "grouped_mm" if grouped_mm_runs(x, experts.w_up_EDF) else "loop"
    if dtype == torch.float64 or d_model == 30:
        assert expected == "loop"  # the probe's verdict, a fact of torch
    assert experts.kernel(x) == expected and experts.kernel(x, bounded=True) == expected
    for impl in ("grouped_mm", "padded", "loop"):  # impl forces a kernel
        experts.impl = impl
        assert experts.kernel(x) == impl and experts.kernel(x, bounded=True) == impl


def test_cuda_without_grouped_mm_runs_the_loop_even_under_a_capacity(monkeypatch):
    """Where ``_grouped_mm`` is not the kernel on CUDA (A100 bf16, fp32 anywhere), the default
    is the loop with or without a capacity: the padded kernel, faster in no CPU measurement
    under a capacity, is not measured on a GPU yet (``impl="padded"`` still runs it)."""
    from types import SimpleNamespace

    from moesim.nn import experts as experts_module

    monkeypatch.setattr(experts_module, "grouped_mm_supported", lambda x, *dims: False)
    cuda_rows = SimpleNamespace(is_cuda=True, device=SimpleNamespace(type="cuda"))
    for bounded in (False, True):
        assert experts_module.grouped_kernel(cuda_rows, 32, 24, bounded) == "loop"


@NO_GROUPED_MM
def test_grouped_mm_backward_takes_a_broadcast_gradient():
    experts = RoutedExperts(4, 32, 24)
    experts.impl = "grouped_mm"
    x = torch.randn(9, 32, requires_grad=True)
    experts.grouped_forward(x, torch.tensor([2, 3, 0, 4])).sum().backward()  # strides-0 grad
    assert x.grad is not None and experts.w_up_EDF.grad is not None


class HostSyncOps(TorchDispatchMode):
    """Records the ops that, on a CUDA tensor, copy a value back to the host and so make the
    CPU wait for the GPU: ``.item()``/``int()``/``float()``, ``nonzero``, ``bincount`` (it
    reads min and max to size its output), boolean-mask indexing, ``unique``."""

    SYNCING = ("_local_scalar_dense", "nonzero", "bincount", "masked_select", "unique", "equal")

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        bool_index = name == "index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None
        )
        if bool_index or any(s in name for s in self.SYNCING):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


@NO_GROUPED_MM
def _step_host_syncs(layer) -> tuple[object, list, list]:
    """(output, host-syncing ops of the forward, of the backward) of one step on 50 tokens."""
    x = torch.randn(50, 32, requires_grad=True)
    with HostSyncOps() as fwd:
        out = layer(x)
    with HostSyncOps() as bwd:
        (out.out.square().sum() + sum(out.aux_losses.values())).backward()
    return out, fwd.ops, bwd.ops


@pytest.mark.parametrize("router", ["softmax_topk", "sigmoid_topk"])
def test_dropless_fast_path_never_waits_for_the_device(router):
    """Forward (router, stats, aux losses included) and backward of the grouped-GEMM path
    issue no host-syncing op; traced on the CPU, where torch._grouped_mm runs in new torch."""
    fast, _ = pair(spec(router=router, n_shared_experts=1, n_groups=4, topk_groups=2), "grouped_mm")
    out, fwd_ops, bwd_ops = _step_host_syncs(fast)
    assert fwd_ops == [] and bwd_ops == []
    assert out.stats.dropped == 0 and out.stats.entropy > 0  # read lazily, after the step


def test_padded_kernel_syncs_once_dropless_and_never_with_a_capacity():
    """Padding to the capacity needs no host sync; dropless, the largest count is read once."""
    fast, _ = pair(spec(capacity_factor=1.25), "padded")
    _, fwd_ops, bwd_ops = _step_host_syncs(fast)
    assert fwd_ops == [] and bwd_ops == []
    fast, _ = pair(spec(), "padded")
    _, fwd_ops, _ = _step_host_syncs(fast)
    assert fwd_ops == ["_local_scalar_dense"]


def test_capacity_drops_later_tokens_and_they_get_no_routed_output():
    s = spec(n_routed_experts=4, top_k=1, capacity_factor=1.0)
    layer, _ = pair(s)
    layer.router.expert_bias_E[2] = 100.0  # every token wants expert 2
    x = torch.randn(16, 32)
    out = layer(x)
    C = 4  # ceil(1.0 * 16 * 1 / 4)
    assert out.stats.dropped == 16 - C
    assert out.stats.kept_per_expert_E.tolist() == [0, 0, C, 0]
    assert out.stats.tokens_per_expert_E.tolist() == [0, 0, 16, 0]
    assert out.stats.drop_fraction == pytest.approx(12 / 16)
    assert (out.out[:C] != 0).any(-1).all()  # the first C tokens won the capacity
    assert (out.out[C:] == 0).all()  # dropped: only the residual will carry them


def test_capacity_serves_every_top1_choice_before_any_top2_choice():
    """GShard/Switch priority. Tokens 0 and 1 pick expert 0 second, tokens 2 and 3 pick it
    first; with room for 2, tokens 2 and 3 keep expert 0 (token order would keep 0 and 1)."""
    from moesim.nn.dispatch import dispatch_grouped, dispatch_loop, sort_by_expert
    from moesim.nn.router import RouterOutput

    layer, _ = pair(spec(n_routed_experts=4, top_k=2))
    # (token, choice) -> expert: t0 (1, 0), t1 (2, 0), t2 (0, 3), t3 (0, 1)
    expert_TK = torch.tensor([[1, 0], [2, 0], [0, 3], [0, 1]])
    r = RouterOutput(
        token_idx_A=torch.arange(4).repeat_interleave(2),
        expert_idx_A=expert_TK.reshape(-1),
        weight_A=torch.full((8,), 0.5),
        logits_TE=None,
        probs_TE=None,
        n_tokens=4,
        top_k=2,
    )
    order_N, kept_E, dropped = sort_by_expert(r, 4, capacity=2)
    kept = {(int(r.token_idx_A[a]), int(r.expert_idx_A[a])) for a in order_N}
    assert (2, 0) in kept and (3, 0) in kept  # top-1 choices win expert 0
    assert (0, 0) not in kept and (1, 0) not in kept  # the top-2 choices are dropped
    assert kept_E.tolist() == [2, 2, 1, 1] and int(dropped) == 2
    x = torch.randn(4, 32)
    fast = dispatch_grouped(x, r, layer.experts, 2)
    loop = dispatch_loop(x, r, layer.experts, 2)
    assert_rel_close(fast.out_TD, loop.out_TD)
    assert torch.equal(fast.kept_per_expert_E, loop.kept_per_expert_E)
    # token 0 keeps only expert 1 (its top-1): its output is expert 1's alone, at weight 0.5
    w = layer.experts.expert_weights()[1]
    assert_rel_close(fast.out_TD[0], 0.5 * layer.experts.expert_forward(w, x[:1])[0])


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_dropped_assignment_adds_nothing_even_beside_an_inf(kernel):
    """Tokens 1 and 2 both pick expert 1, which has room for one: token 2 is dropped. Token
    1's expert output overflows to inf (relu FFN, expert 1's weights all 1e20), and it holds
    the slot a dropped row was once read from and multiplied by weight 0: inf·0 = NaN in token
    2's output. Dropped, token 2 must get exactly 0; token 0 (expert 0) its expert's output."""
    from moesim.nn.dispatch import dispatch_grouped
    from moesim.nn.router import RouterOutput

    torch.manual_seed(0)
    experts = RoutedExperts(2, 16, 16, kind="relu")
    experts.impl = kernel
    with torch.no_grad():
        experts.w_up_EDF[1] = 1e20
        experts.w_down_EFD[1] = 1e20
    r = RouterOutput(
        token_idx_A=torch.arange(3),
        expert_idx_A=torch.tensor([0, 1, 1]),
        weight_A=torch.full((3,), 0.5),
        logits_TE=None,
        probs_TE=None,
        n_tokens=3,
        top_k=1,
    )
    x = torch.rand(3, 16)
    with torch.no_grad():
        d = dispatch_grouped(x, r, experts, capacity=1)
        ref_0 = 0.5 * experts.expert_forward(experts.expert_weights()[0], x[:1])[0]
    assert int(d.dropped) == 1 and d.kept_per_expert_E.tolist() == [1, 1]
    assert torch.isinf(d.out_TD[1]).all()  # the overflow is really there
    assert torch.equal(d.out_TD[2], torch.zeros(16))
    assert_rel_close(d.out_TD[0], ref_0)


def test_dropless_mode_drops_nothing():
    layer, _ = pair(spec(n_routed_experts=4, top_k=1))
    layer.router.expert_bias_E[2] = 100.0
    out = layer(torch.randn(16, 32))
    assert out.stats.dropped == 0 and (out.out != 0).any(-1).all()


def test_one_expert_top1_equals_the_dense_ffn():
    s = spec(n_routed_experts=1, top_k=1, expert_hidden=64)
    torch.manual_seed(0)
    moe, dense = MoELayer(s), FeedForward(32, 64)
    upcycle_ffn(dense, moe)
    x = torch.randn(10, 32)
    torch.testing.assert_close(moe(x).out, dense(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("router", ["softmax_topk", "sigmoid_topk"])
def test_upcycled_layer_computes_the_dense_ffn(router):
    s = spec(router=router, expert_hidden=64)
    torch.manual_seed(0)
    moe, dense = MoELayer(s), FeedForward(32, 64)
    upcycle_ffn(dense, moe)
    x = torch.randn(30, 32)
    torch.testing.assert_close(moe(x).out, dense(x), rtol=1e-5, atol=1e-6)
    upcycle_ffn(dense, moe, noise_std=1e-2)
    assert not torch.allclose(moe.experts.w_up_EDF[0], moe.experts.w_up_EDF[1])


def test_fine_grained_upcycling_splits_the_dense_hidden_units():
    s = spec(n_routed_experts=4, top_k=4, expert_hidden=16, norm_topk_prob=False)
    torch.manual_seed(0)
    moe, dense = MoELayer(s), FeedForward(32, 64)
    upcycle_ffn(dense, moe)
    # with every expert chosen at weight 1 the four slices add up to the dense FFN
    moe.router.force_uniform = True
    x = torch.randn(5, 32)
    r = moe.router(x)
    r.weight_A = torch.ones_like(r.weight_A)
    from moesim.nn.dispatch import dispatch_grouped

    got = dispatch_grouped(x, r, moe.experts, None).out_TD
    torch.testing.assert_close(got, dense(x), rtol=1e-5, atol=1e-6)


def test_shared_experts_and_their_gate_see_every_token():
    s = spec(n_shared_experts=2, shared_expert_hidden=8, shared_expert_gate=True)
    torch.manual_seed(0)
    layer = MoELayer(s)
    assert layer.shared.w_up.weight.shape == (16, 32)  # 2 experts × 8 fused
    x = torch.randn(6, 32)
    r = layer.router(x)
    from moesim.nn.dispatch import dispatch_grouped

    routed = dispatch_grouped(x, r, layer.experts, None).out_TD
    expected = routed + torch.sigmoid(layer.shared_gate(x)) * layer.shared(x)
    torch.testing.assert_close(layer(x).out, expected)


def test_stats_and_force_uniform_switch():
    layer, _ = pair(spec())
    layer.force_uniform_routing = True
    out = layer(torch.randn(4, 10, 32))
    assert out.out.shape == (4, 10, 32)
    assert out.stats.tokens_per_expert_E.tolist() == [10] * 8
    assert out.stats.load_cv == 0.0
    assert out.stats.n_tokens == 40
    assert 0 < out.stats.entropy <= torch.log(torch.tensor(8.0)).item() + 1e-6
    assert set(out.aux_losses) == {"load_balance", "z_loss", "importance_cv2"}
    d = out.stats.to_dict()
    assert d["dropped"] == 0 and len(d["tokens_per_expert"]) == 8


def test_routing_histogram_file_is_what_the_simulator_reads(tmp_path):
    layer, _ = pair(spec())
    out = layer(torch.randn(40, 32))
    p = write_routing_histogram(tmp_path / "hist.json", out.stats.tokens_per_expert_E)
    data = json.loads(p.read_text())
    assert data == {"tokens_per_expert": out.stats.tokens_per_expert_E.tolist()}
    assert sum(data["tokens_per_expert"]) == 80
    from moesim.specs import Routing

    Routing(distribution="histogram", histogram=data["tokens_per_expert"])  # validates


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="dispatch"):
        MoELayer(spec(), dispatch="fast")
    dense = spec().model_copy(update={"moe": None})
    with pytest.raises(ValueError, match="no moe block"):
        MoELayer(dense)
