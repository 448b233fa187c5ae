"""DualPipe (DeepSeek-V3 report §3.2.1, Fig. 4–5; deepseek-ai/DualPipe ``dualpipe.py``):
a bidirectional pipeline whose steady state runs a forward chunk and a backward chunk of
different microbatches at once, so that each one's all-to-all hides under the other's compute.

Layout: ``pp`` ranks (even), microbatches fed from both ends, half from each. Rank r, with
h = min(r, pp−1−r), holds two pipeline positions (two copies of the parameters, report Table 2):

- phase 0: position h of its own direction (rank r < pp/2: direction 0, entering at rank 0;
  r ≥ pp/2: direction 1, entering at rank pp−1), and
- phase 1: position pp−1−h of the other direction.

Position s holds the layers of ``ctx.stages[s]`` in either direction (the embedding at s = 0,
the LM head at s = pp−1); direction 0 places position s on rank s, direction 1 on rank pp−1−s.

The order of each rank's chunks is the reference implementation's eight steps (nF0, nF0F1,
nB1F1, nF0B1F1B0, nB1F1B0, nB1B0, nB0). Not modelled: the zero-bubble split of a backward into
input (B) and weight (W) gradients (steps 3, 6–8 of the reference); here W stays inside B, which
is the W = 0 case of the report's bubble (PP/2−1)(F&B+B−3W).

Overlap: the two chunks of a pair run as two processes on the rank. They share its compute
stream (one kernel at a time, so an overlapped pair is never faster than its compute), so the
forward's dispatch runs while the backward's experts compute and vice versa. Their all-to-alls
share one ``ep`` queue in issue order, as in Fig. 4 (one row of communication: the 20
communication SMs run one all-to-all at a time); their pipeline sends go on separate streams
(``pp``, ``pp_bwd``: opposite directions, different peers). Two concurrent all-to-alls sharing
the NICs instead hide less (each finishes late): 12.5 s against 12.0 s per step for
scenarios/deepseek-v3-pretrain-2048xh800.yaml when tried.

SM sharing: DeepSeek-V3 gives 20 of the H800's 132 SMs to communication (report §3.2.2: 20 SMs
saturate IB and NVLink), as DeepEP's normal kernels do by default. A kernel of an overlapped
pair that starts while any communication of the pair is in flight runs on the SMs left: its
time is stretched by SMs / (SMs − comm SMs) (``moesim.analytic.dispatch.comm_sm_slowdown``:
132/112 ≈ 1.18 with DeepEP on an H800; 1 for NCCL's dispatchers, whose SMs are not
modelled). Free communication (zero-time collectives) costs no SMs.

Symmetric fidelity simulates ranks 0 … pp/2−1 only: rank pp−1−r runs rank r's chunks with the
directions swapped (``moesim.sim.dualpipe_mirror``, where it checks that they time alike), and
the sends across the middle reach the mirror's other direction.

Gradients: each rank reduces the gradients of both its positions over data parallelism and
updates both copies; the sum of the two copies' gradients across the pipeline (one extra
exchange of one position's gradients) is not modelled.
"""

from __future__ import annotations

from typing import NamedTuple

import simpy

from moesim.analytic.layout import dualpipe_applies as supported
from moesim.sim.context import SimContext
from moesim.sim.dualpipe_mirror import mirror_applies, mirror_key, mirror_stage
from moesim.sim.engine import Rank, Stream
from moesim.sim.grad_sync import (
    GradBuckets,
    optimizer_time_s,
    param_all_gather,
    stage_params_on_rank,
)
from moesim.sim.layer_runner import LayerRunner
from moesim.sim.training_step import Pipeline
from moesim.sim.vector_engine import VectorRank


class ChunkTask(NamedTuple):
    kind: str  # "F" or "B"
    index: int  # microbatch within the phase, 0 … m/2−1
    phase: int  # 0 or 1 (see the module docstring)


Slot = tuple[ChunkTask, ...]  # one task, or a (forward, backward) pair run concurrently


def dualpipe_slots(pp: int, m: int, rank: int) -> list[Slot]:
    """Rank ``rank``'s chunks in order (the reference's steps 1–8 without the W split)."""
    if not supported(pp, m):
        raise ValueError(
            f"DualPipe needs an even pp and an even number of microbatches ≥ 2·pp "
            f"(pp {pp}, microbatches {m}): change pp, global_batch or microbatch_size"
        )
    half, hm = pp // 2, m // 2
    h = min(rank, pp - 1 - rank)
    middle = h == half - 1
    nxt = {("F", 0): 0, ("F", 1): 0, ("B", 0): 0, ("B", 1): 0}

    def t(kind: str, phase: int) -> ChunkTask:
        i = nxt[(kind, phase)]
        nxt[(kind, phase)] = i + 1
        return ChunkTask(kind, i, phase)

    slots: list[Slot] = []
    slots += [(t("F", 0),) for _ in range((half - h - 1) * 2)]  # 1: nF0
    for _ in range(h + 1):  # 2: nF0F1
        slots += [(t("F", 0),), (t("F", 1),)]
    for _ in range(half - h - 1):  # 3: nB1F1 (W fused into B)
        slots += [(t("B", 1),), (t("F", 1),)]
    for i in range(hm - pp + h + 1):  # 4: nF0B1F1B0
        if i == 0 and middle:  # the reference does not overlap this pair
            slots += [(t("F", 0),), (t("B", 1),)]
        else:
            slots.append((t("F", 0), t("B", 1)))
        slots.append((t("F", 1), t("B", 0)))
    for _ in range(half - h - 1):  # 5: nB1F1B0
        slots += [(t("B", 1),), (t("F", 1), t("B", 0))]
    for _ in range(h + 1):  # 6: nB1B0
        slots += [(t("B", 1),), (t("B", 0),)]
    slots += [(t("B", 0),) for _ in range(half - h - 1)]  # 7: nB0 (W fused into B)
    return slots


def bubble_s(pp: int, f_s: float, b_s: float, fb_s: float, w_s: float = 0.0) -> float:
    """DualPipe's bubble per rank, (PP/2−1)(F&B + B − 3W) (DeepSeek-V3 report, Table 2)."""
    return (pp / 2 - 1) * (fb_s + b_s - 3 * w_s)


class ChunkView:
    """The rank as one chunk of an overlapped pair sees it: its own compute stream and links,
    communication streams renamed by ``alias`` (the backward chunk's ``pp`` is ``pp_bwd``), and
    compute stretched by the rank's ``comm_sm_slowdown`` while a collective of the pair is in flight
    (``busy``, shared by the pair's two views, counts them)."""

    def __init__(self, rank: Rank, alias: dict[str, str], busy: list[int]):
        self.rank, self.alias, self.busy = rank, alias, busy
        self.env, self.gpu, self.label = rank.env, rank.gpu, rank.label
        for name in alias.values():
            if name not in rank.streams:
                rank.streams[name] = Stream(rank.env)

    def start(self, gen) -> simpy.Process:
        return self.env.process(gen)

    def issue(self, gen) -> simpy.Event:
        return self.rank.issue(gen)

    def notify(self, ev: simpy.Event) -> None:
        ev.succeed()

    # plain functions returning the rank's generators: one generator frame less per op
    def compute(self, name: str, duration_s: float, category: str = "compute"):
        return self.rank.compute_ops([(name, duration_s)], category, self.busy)

    def compute_ops(self, ops: list[tuple[str, float]], category: str = "compute",
                    total_s: float | None = None):  # fmt: skip
        return self.rank.compute_ops(ops, category, self.busy, total_s)

    def comm(self, stream: str, name: str, category: str, alone_s: float, link: str,
             group_key: tuple | None = None, group_size: int = 1):  # fmt: skip
        s = self.alias.get(stream, stream)
        return self.rank.comm(s, name, category, alone_s, link, group_key, group_size, self.busy)


def pair_views(rank: Rank) -> tuple[ChunkView, ChunkView]:
    """(forward view, backward view) of ``rank`` for one overlapped pair."""
    if isinstance(rank, VectorRank):
        return rank.pair_views()  # type: ignore[return-value]
    busy = [0]
    return ChunkView(rank, {}, busy), ChunkView(rank, {"pp": "pp_bwd"}, busy)


class _DualRunner(LayerRunner):
    """Layers of a position other than the rank's own stage draw their routing load from the
    table of the stage that owns them (indexed by the global microbatch)."""

    def __init__(self, ctx: SimContext):
        super().__init__(ctx)
        self.home = {layer: st.rank for st in ctx.stages for c in st.chunks for layer in c}

    def _draw(self, rank, layer: int, mb: int):
        home = self.home[layer]
        j, n = self.moe_pos[(home, layer)]
        q = self.ctx.grid.coords(rank.gpu)[1]
        return self.ctx.moe_draw(self.ctx.grid.gpu(home, q), j, mb, n)


class DualPipe:
    """Runs every simulated rank's DualPipe chunks with sends in both directions."""

    def __init__(self, ctx: SimContext, pipe: Pipeline | None = None):
        self.ctx = ctx
        self.pipe = pipe or Pipeline(ctx)
        self.runner = _DualRunner(ctx)
        self.pp = ctx.parallel.pp
        self.hm = ctx.microbatches // 2
        # symmetric fidelity: ranks pp/2 … pp−1 run their mirrors' programs (dualpipe_mirror)
        if mirror_applies(ctx):
            assert not ctx._draws, "the mirror sets the draw tables' rows before any draw"
            ctx.draw_microbatches = self.hm
            for g in ctx.simulated_gpus():
                stage, q = ctx.grid.coords(g)
                if stage >= self.pp // 2:
                    ctx.mirrored[g] = ctx.grid.gpu(mirror_stage(self.pp, stage), q)

    def gpus(self) -> list[int]:
        """The GPUs whose programs run (not the mirrored ones)."""
        return [g for g in self.ctx.simulated_gpus() if g not in self.ctx.mirrored]

    def _deliver(self, dst: int, key: tuple) -> tuple:
        """The inbox key of a send to ``dst``: its mirror's where ``dst`` is not simulated."""
        return mirror_key(key, self.hm) if dst in self.ctx.mirrored else key

    def rank_of(self, direction: int, pos: int) -> int:
        return pos if direction == 0 else self.pp - 1 - pos

    def place(self, stage: int, phase: int) -> tuple[int, int]:
        """(direction, position) of ``phase`` on pipeline rank ``stage``."""
        h = min(stage, self.pp - 1 - stage)
        own = 0 if stage < self.pp // 2 else 1
        return (own, h) if phase == 0 else (1 - own, self.pp - 1 - h)

    def run_task(self, view, task: ChunkTask, buckets: GradBuckets | None, ready: dict):
        ctx, pipe, runner = self.ctx, self.pipe, self.runner
        stage, q = ctx.grid.coords(view.gpu)
        d, pos = self.place(stage, task.phase)
        layers = ctx.stages[pos].chunks[0]
        mb = d * self.hm + task.index
        if task.kind == "F":
            if task.phase in ready:
                yield ready.pop(task.phase)
            if pos > 0:
                yield pipe._box(("F", d, q, mb, pos))
            yield from pipe.extras.forward(view, pos, 0, first=True)
            for layer in layers:
                yield from runner.forward(view, layer, mb)
            yield from pipe.extras.forward(view, pos, 0, first=False)
            if pos < self.pp - 1:
                dst = ctx.grid.gpu(self.rank_of(d, pos + 1), q)
                key = self._deliver(dst, ("F", d, q, mb, pos + 1))
                view.start(pipe._send(view, dst, "send_activation", key))
            return
        if pos < self.pp - 1:
            yield pipe._box(("B", d, q, mb, pos))
        yield from pipe.extras.backward(view, pos, 0, first=True)
        last = task.index == self.hm - 1
        for layer in reversed(layers):
            yield from runner.backward(view, layer, mb)
            if last and buckets is not None:
                lc = ctx.layers[layer]
                buckets.add(lc.non_expert_params, lc.expert_params)
        yield from pipe.extras.backward(view, pos, 0, first=False)
        if last and buckets is not None:
            dense, _ = stage_params_on_rank(ctx, pos, 0)
            dense -= sum(ctx.layers[i].non_expert_params for i in layers)
            buckets.add(dense, 0.0)  # embedding / head / final norm
            buckets.flush()
        if pos > 0:
            dst = ctx.grid.gpu(self.rank_of(d, pos - 1), q)
            key = self._deliver(dst, ("B", d, q, mb, pos - 1))
            view.start(pipe._send(view, dst, "send_gradient", key))

    def program(self, gpu: int, optimizer: bool):
        ctx = self.ctx
        rank = ctx.rank(gpu)
        stage, _ = ctx.grid.coords(gpu)
        p, sim = ctx.parallel, ctx.scenario.simulation
        positions = [self.place(stage, ph)[1] for ph in (0, 1)]
        zero = p.zero_stage in (1, 2) and optimizer  # ZeRO-3 gathers per layer (zero3.py)
        ready: dict[int, simpy.Process] = {}
        if zero and sim.overlap_dp:
            for ph, pos in enumerate(positions):
                dense, expert = stage_params_on_rank(ctx, pos, 0)
                ready[ph] = rank.start(param_all_gather(ctx, rank, dense, expert, ("pre", ph)))
        buckets = GradBuckets(ctx, rank) if optimizer and sim.overlap_dp else None
        for slot in dualpipe_slots(self.pp, ctx.microbatches, stage):
            if len(slot) == 1:
                yield from self.run_task(rank, slot[0], buckets, ready)
                continue
            fview, bview = pair_views(rank)
            a = rank.start(self.run_task(fview, slot[0], buckets, ready))
            b = rank.start(self.run_task(bview, slot[1], buckets, ready))
            yield simpy.AllOf(ctx.env, [a, b])
        if not optimizer:
            return
        if buckets is None:
            buckets = GradBuckets(ctx, rank)
            for pos in positions:
                buckets.add(*stage_params_on_rank(ctx, pos, 0))
            buckets.flush()
        if buckets.procs:
            yield simpy.AllOf(ctx.env, buckets.procs)
        opt_s = sum(optimizer_time_s(ctx, pos) for pos in positions)
        yield from rank.compute("optimizer", opt_s, "optimizer")
        if zero and not sim.overlap_dp:
            for ph, pos in enumerate(positions):
                dense, expert = stage_params_on_rank(ctx, pos, 0)
                yield from param_all_gather(ctx, rank, dense, expert, ("post", ph))


def start_dualpipe(
    ctx: SimContext, optimizer: bool = True, pipeline: Pipeline | None = None
) -> dict[int, simpy.Process]:
    """Start every simulated rank's DualPipe program for one training step."""
    dp = DualPipe(ctx, pipeline)
    return {g: ctx.rank(g).start(dp.program(g, optimizer)) for g in dp.gpus()}
