"""Expert parallelism over gloo: EP ranks together compute what one process with every
expert computes, outputs and gradients (2 and 4 CPU processes, bounded time)."""

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


def _worker(rank: int, world: int, port: int, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        torch.manual_seed(0)
        full = MoELayer(SPEC)  # every rank builds the same reference
        x_all = torch.randn(world * TOKENS, 16)
        ep = MoELayer(SPEC, ep_group=dist.group.WORLD)
        L = 8 // world
        with torch.no_grad():
            for name, p in ep.named_parameters():
                src = dict(full.named_parameters())[name]
                p.copy_(src[rank * L : (rank + 1) * L] if name.startswith("experts.") else src)
        # reference: one process, all tokens, all experts
        ref = full(x_all)
        (ref.out**2).sum().backward()
        # expert parallel: my slice of the tokens
        x = x_all[rank * TOKENS : (rank + 1) * TOKENS].clone().requires_grad_(True)
        out = ep(x)
        (out.out**2).sum().backward()
        torch.testing.assert_close(out.out, ref.out[rank * TOKENS : (rank + 1) * TOKENS])
        full_grads = dict(full.named_parameters())
        for name, p in ep.named_parameters():
            g = p.grad.clone()
            if name.startswith("experts."):
                expected = full_grads[name].grad[rank * L : (rank + 1) * L]
            else:  # replicated weights: data parallelism would all-reduce these
                dist.all_reduce(g)
                expected = full_grads[name].grad
            torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-6)
        results[rank] = "ok"
    except Exception as e:  # report to the parent instead of hanging
        results[rank] = f"{type(e).__name__}: {e}"
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
        assert dict(results) == {r: "ok" for r in range(world)}
