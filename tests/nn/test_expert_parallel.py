"""Expert parallelism over gloo: EP ranks together compute what one process with every
expert computes, outputs and gradients (2 and 4 CPU processes, bounded time).

Semantics under capacity: each rank routes its own T tokens and cuts at C = ⌈cf·T·K/E⌉ before
sending (GShard's per-group capacity), so an EP rank's result equals the single-process layer
applied to that rank's tokens alone (its capacity computed from T, not from W·T), drops
included. Dropless, that is also the layer on all W·T tokens at once."""

import socket

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from moesim.nn import MoELayer  # noqa: E402
from moesim.specs import ModelSpec  # noqa: E402

SPEC = ModelSpec(
    name="ep",
    vocab_size=64,
    n_layers=1,
    d_model=16,
    n_heads=2,
    ffn_hidden=32,
    moe={"n_routed_experts": 8, "top_k": 2, "expert_hidden": 12, "n_shared_experts": 1},
)
TOKENS = 24  # per rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = {  # name: moe changes, router bias
    "softmax-dropless": ({}, False),
    "softmax-capacity": ({"capacity_factor": 1.0}, False),
    "sigmoid-bias-capacity": ({"router": "sigmoid_topk", "capacity_factor": 1.0}, True),
}


def _check_case(rank: int, world: int, moe: dict, bias: bool) -> None:
    spec = SPEC.model_copy(update={"moe": SPEC.moe.model_copy(update=moe)})
    torch.manual_seed(0)
    full = MoELayer(spec)  # every rank builds the same reference
    if bias:  # aux-loss-free balancing state, large enough to change selections
        full.router.expert_bias_E.copy_(torch.randn(8) * 0.05)
    x_all = torch.randn(world * TOKENS, 16)
    ep = MoELayer(spec, ep_group=dist.group.WORLD)
    L = 8 // world
    with torch.no_grad():
        for name, p in ep.named_parameters():
            src = dict(full.named_parameters())[name]
            p.copy_(src[rank * L : (rank + 1) * L] if name.startswith("experts.") else src)
        for name, b in ep.named_buffers():
            b.copy_(dict(full.named_buffers())[name])
    # reference: one process, all experts, each rank's tokens as their own batch
    slices = [full(x_all[w * TOKENS : (w + 1) * TOKENS]) for w in range(world)]
    sum((s.out**2).sum() for s in slices).backward()
    ref = slices[rank]
    if moe.get("capacity_factor") is None:  # dropless: also the layer on all tokens at once
        torch.testing.assert_close(torch.cat([s.out for s in slices]), full(x_all).out)
    # expert parallel: my slice of the tokens
    x = x_all[rank * TOKENS : (rank + 1) * TOKENS].clone().requires_grad_(True)
    out = ep(x)
    (out.out**2).sum().backward()
    torch.testing.assert_close(out.out, ref.out)
    assert out.stats.dropped == ref.stats.dropped
    assert torch.equal(out.stats.kept_per_expert_E, ref.stats.kept_per_expert_E)
    dropped = torch.tensor(out.stats.dropped)
    dist.all_reduce(dropped)
    if moe.get("capacity_factor") is not None:
        assert int(dropped) > 0, "capacity dropped nothing: the case tests nothing"
    full_grads = dict(full.named_parameters())
    for name, p in ep.named_parameters():
        g = p.grad.clone()
        if name.startswith("experts."):
            expected = full_grads[name].grad[rank * L : (rank + 1) * L]
        else:  # replicated weights: data parallelism would all-reduce these
            dist.all_reduce(g)
            expected = full_grads[name].grad
        torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-6)


def _worker(rank: int, world: int, port: int, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        for name, (moe, bias) in CASES.items():
            try:
                _check_case(rank, world, moe, bias)
                results[(rank, name)] = "ok"
            except Exception as e:  # report to the parent instead of hanging
                results[(rank, name)] = f"{type(e).__name__}: {e}"
                raise
    except Exception:
        pass
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_expert_parallel_matches_single_process(world):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        port = _free_port()
        procs = [ctx.Process(target=_worker, args=(r, world, port, results)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        for p in procs:
            if p.is_alive():
                p.kill()
        assert dict(results) == {(r, c): "ok" for r in range(world) for c in CASES}
