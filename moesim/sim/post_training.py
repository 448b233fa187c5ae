"""Post-training steps: SFT, DPO, GRPO and PPO, composed from the pretraining pipeline passes
(forward-only and forward + backward, ``training_step.pipeline_pass``) and the serving engine
(``inference``) for rollouts. Each phase is its own SimPy run on the same layout; phases follow
one another (each needs the previous one's output), so the step is their sum and
``time_breakdown_s`` carries one key per phase besides the usual compute/comm/bubble split.

Per optimizer step (N sequences = ``global_batch``, × ``group_size`` for GRPO):

- **SFT**: one training pass (pretraining's), LoRA when given. Padding costs compute but is not
  a token: ``tokens_per_s`` counts real tokens (× ``packing_efficiency``), ``loss_tokens_per_s``
  the ones in the loss (× (1 − ``prompt_fraction``)).
- **DPO** (Rafailov et al. 2023; TRL): ``reference`` — a forward of the frozen reference on
  chosen and rejected (skipped when ``precomputed``), then ``training`` — the policy's forward
  and backward on both (a microbatch holds the pair, so 2 × seq_len tokens).
- **GRPO** (Shao et al. 2024; TRL/veRL): ``weight_sync`` (``rl_phases``), ``rollout`` (N =
  prompts × group sequences through the serving engine on the rollout layout, ``rl_rollout``),
  ``reward`` (``rule``: a CPU verifier,
  0 s; ``model``: a reward-model forward), ``old_logprobs`` (a policy forward, only when
  ``ppo_epochs`` > 1: otherwise the ratio's denominator is the detached current policy),
  ``reference`` (skipped when ``kl_coef`` is 0), ``training`` (``ppo_epochs`` training passes).
- **PPO** (Ouyang et al. 2022): as GRPO with N = prompts, plus ``values`` (the critic's forward),
  ``gae`` (advantages: element-wise over the N × response_len rewards and values) and
  ``critic_training`` (the critic's training passes); ``old_logprobs`` always runs.

The modules of a step: ``rl_rollout`` (the rollout: lengths drawn per response, the tail),
``rl_phases`` (passes, weight sync, GAE, colocated memory moves: sleep/wake and optimizer
offload), ``rl_schedule`` (synchronous or off-policy: how the phases add up),
``rl_utilization`` (MFU and MBU per phase, ``phase_utilization`` in the result), ``lora_step``.

Dynamic sampling (DAPO; ``oversample_ratio`` r): the rollout generates ⌈r · global_batch⌉
prompts' groups and the reward scores them all (groups whose rewards are all equal are dropped
after it, as verl's DAPO trainer filters on the reward); old log-probs, reference and training
run on the ``global_batch`` kept. With lengths from a distribution, training phases cost the
mean lengths: sequences are packed (NeMo RL's design doc "Sequence Packing and Dynamic
Batching": packing "concatenates multiple sequences into a single packed sequence, eliminating
most padding"), so a step trains N × (mean prompt + mean response) tokens, not N × the longest.
Reward and critic models keep the policy's layout (ep and etp fall to 1 for a dense one) and are
costed with their LM head (a scalar value head is smaller; the difference is 2·V·d per token).
MFU counts the policy's training passes only (model FLOPs: 3·F per token, 2·F + 3·F_adapters
with LoRA) over the whole step's GPU time; ``phase_utilization`` gives each phase's own.
"""

from __future__ import annotations

from pathlib import Path

from moesim.analytic.flops import token_flops
from moesim.analytic.goodput import reliability_fields
from moesim.analytic.lora import lora_counts, lora_forward_flops_per_token
from moesim.analytic.microbatches import n_microbatches, sequences_per_step
from moesim.analytic.params import count_params
from moesim.analytic.post_training import (
    critic_model_of,
    needs_reference_pass,
    post_training_memory,
    reward_model_of,
)
from moesim.analytic.rollout_memory import generated_prompts, rollout_gpu_memory
from moesim.sim.engine import Rank
from moesim.sim.rl_phases import (
    PART_KEYS,
    Phase,
    empty_parts,
    gae_phase,
    memory_move_phases,
    pipeline_phase,
    variant,
    weight_sync_phase,
)
from moesim.sim.rl_rollout import rollout_phase
from moesim.sim.rl_schedule import compose_step
from moesim.sim.rl_utilization import phase_utilization
from moesim.sim.run import build_context
from moesim.sim.trace import write_trace
from moesim.sim.utilization import utilization
from moesim.specs import (
    DPOWorkload,
    GRPOWorkload,
    PPOWorkload,
    Result,
    Scenario,
    SFTWorkload,
)


# -- the step ------------------------------------------------------------------------------------
def phases_of(s: Scenario, fidelity: str | None, base_dir: Path | None) -> list[Phase]:
    w = s.workload
    lora = getattr(w, "lora", None)
    if isinstance(w, SFTWorkload):
        return [pipeline_phase(s, "training", True, fidelity, base_dir, lora)]
    out: list[Phase] = []
    if isinstance(w, DPOWorkload):
        if needs_reference_pass(s):
            out.append(pipeline_phase(s, "reference", False, fidelity, base_dir))
        out.append(pipeline_phase(s, "training", True, fidelity, base_dir, lora))
        return out
    assert isinstance(w, GRPOWorkload | PPOWorkload)
    probe = build_context(s, fidelity, base_dir)  # cost model, grid and counts of the policy
    moves = memory_move_phases(s, probe)
    out += [moves[k] for k in ("optimizer_offload", "engine_wake") if k in moves]
    out.append(weight_sync_phase(s, probe))
    out.append(rollout_phase(s, base_dir, fidelity))
    out += [moves[k] for k in ("engine_sleep",) if k in moves]
    rm = reward_model_of(s)
    if rm is None:
        out.append(Phase("reward", 0.0, empty_parts()))  # rule-based verifier
    else:  # every generated group is scored (dynamic sampling drops some after)
        scored = variant(s, rm, global_batch=generated_prompts(s))
        out.append(pipeline_phase(scored, "reward", False, fidelity, base_dir))
    if isinstance(w, PPOWorkload) or w.ppo_epochs > 1:
        out.append(pipeline_phase(s, "old_logprobs", False, fidelity, base_dir, lora))
    if needs_reference_pass(s):
        out.append(pipeline_phase(s, "reference", False, fidelity, base_dir))
    critic = critic_model_of(s)
    if critic is not None:
        out.append(pipeline_phase(variant(s, critic), "values", False, fidelity, base_dir))
        out.append(gae_phase(s, probe))
    out += [moves[k] for k in ("optimizer_reload",) if k in moves]
    out.append(pipeline_phase(s, "training", True, fidelity, base_dir, lora, w.ppo_epochs))
    if critic is not None:
        cs = variant(s, critic)
        out.append(
            pipeline_phase(cs, "critic_training", True, fidelity, base_dir, None, w.ppo_epochs)
        )
    return out


def simulate_post_training(
    scenario: Scenario,
    fidelity: str | None = None,
    trace_path: str | Path | None = None,
    base_dir: Path | None = None,
) -> Result:
    s = scenario
    w = s.workload
    measured = phases_of(s, fidelity, base_dir)
    step = compose_step(s, measured)
    phases, step_s = step.phases, step.time_s
    breakdown = {k: sum(ph.parts[k] for ph in phases) for k in PART_KEYS}
    for ph in phases:
        breakdown[ph.name] = breakdown.get(ph.name, 0.0) + ph.time_s
    mem = post_training_memory(s)
    pc = count_params(s.model)
    fl = token_flops(s.model, w.seq_len)
    lora = getattr(w, "lora", None)
    if lora is not None:
        adapter = lora_forward_flops_per_token(s.model, lora)
        flops_per_token = 2.0 * fl.forward + 3.0 * adapter
    else:
        flops_per_token = fl.model_flops
    gpus = s.gpus
    disaggregated = isinstance(w, GRPOWorkload | PPOWorkload) and w.rollout == "disaggregated"
    if disaggregated:
        gpus += w.rollout_gpus or s.gpus
    tokens = sequences_per_step(s) * w.seq_len  # trained tokens (pairs count twice)
    hbm = s.cluster.gpu.hbm_GB * 1e9
    fit_parts = {"training": mem.estimate.total <= hbm}
    notes: list[str] = []
    if not fit_parts["training"]:
        notes.append(
            f"the training GPUs need {mem.estimate.total / 1e9:,.1f} GB of {hbm / 1e9:g} GB"
        )
    colocated = isinstance(w, GRPOWorkload | PPOWorkload) and w.rollout == "colocated"
    if colocated and mem.rollout_kv_capacity < 1:  # then the one timed sequence overflows HBM
        notes.append(
            "no rollout sequence's KV cache fits beside the training states (timed as one "
            "per replica)"
        )
    if isinstance(w, GRPOWorkload | PPOWorkload):
        note = longest_sequence_note(s)
        if note:
            notes.append(note)
        roll = next(ph for ph in measured if ph.name == "rollout")
        if "rollout_memory_note" in roll.extra:  # a drawn sequence the pool cannot hold
            notes.append(str(roll.extra["rollout_memory_note"]))
            fit_parts["rollout_kv_pool"] = False
    res = Result(
        name=s.name,
        stage=w.stage,
        gpus=gpus,
        params_total=float(pc.total_main),
        params_active=float(pc.active_main),
        model_flops_per_token=flops_per_token,
        step_time_s=step_s,
        memory_per_gpu_GB=mem.estimate.as_GB(),
        fits_in_memory=fit_parts["training"],
        time_breakdown_s=breakdown,
    )
    extra: dict[str, object] = {
        "memory_per_model_GB": mem.copies_GB(),
        "fidelity": fidelity or s.simulation.fidelity,
        "network": s.simulation.network,
        "microbatches": n_microbatches(s),
    }
    if lora is not None:
        extra["trainable_params"] = float(lora_counts(s.model, lora).total)
    extra.update(step.extra)
    if isinstance(w, GRPOWorkload | PPOWorkload):
        extra["phase_utilization"] = phase_utilization(s, measured)
        if w.oversample_ratio > 1:
            extra["generated_prompts"] = generated_prompts(s)
        if mem.phase_totals is not None:
            extra["memory_phases_GB"] = {k: v / 1e9 for k, v in mem.phase_totals.items()}
        moved = {ph.name: ph.extra["host_copy_GB_per_gpu"] for ph in measured
                 if "host_copy_GB_per_gpu" in ph.extra}  # fmt: skip
        if moved:
            extra["host_copy_GB_per_gpu"] = moved
    useful = tokens
    if isinstance(w, SFTWorkload):
        useful = tokens * w.packing_efficiency
        if step_s > 0:
            extra["loss_tokens_per_s"] = useful * (1 - w.prompt_fraction) / step_s
    for ph in phases:
        extra.update(ph.extra if ph.name in ("rollout", "weight_sync") else {})
    dropped = sum(float(ph.extra.get("dropped", 0.0)) for ph in phases)
    offered = sum(float(ph.extra.get("offered", 0.0)) for ph in phases)
    if offered:
        extra["tokens_dropped_fraction"] = dropped / offered
    if disaggregated:
        roll = rollout_gpu_memory(s)
        extra["training_gpus"] = s.gpus
        extra["rollout_gpus"] = gpus - s.gpus
        extra["rollout_memory_per_gpu_GB"] = roll.estimate.as_GB()
        extra["rollout_fits_in_memory"] = fit_parts["rollout"] = roll.fits
        if not roll.fits:  # the KV pool holds what fits, so only zero sequences does not
            notes.append(
                f"the rollout GPUs hold {roll.estimate.weights / 1e9:,.1f} GB of weights and "
                f"no sequence's KV cache fits in {hbm / 1e9:g} GB (timed as one per replica)"
            )
    res.fits_in_memory = all(fit_parts.values())
    if len(fit_parts) > 1 or not res.fits_in_memory:
        extra["fits_in_memory_parts"] = fit_parts
    if notes:
        extra["memory_note"] = "; ".join(notes)
    if step_s > 0:
        res.tokens_per_s = useful / step_s
        res.tokens_per_s_per_gpu = res.tokens_per_s / gpus
        trained = useful * getattr(w, "ppo_epochs", 1) / step_s / gpus  # tokens/s/GPU trained
        recompute = fl.recompute(s.parallel.recompute, s.parallel.recompute_modules)
        for k, v in utilization(s, flops_per_token, recompute, trained).items():
            setattr(res, k, v)
        if w.total_tokens:
            res.gpu_hours = w.total_tokens / res.tokens_per_s * gpus / 3600.0
            res.cost_usd = res.gpu_hours * s.cost.usd_per_gpu_hour
        extra |= reliability_fields(s, res.tokens_per_s, w.total_tokens)
    for k, v in extra.items():
        setattr(res, k, v)
    if trace_path is not None:
        write_trace(_concatenated(phases), trace_path)
    return res


def longest_sequence_note(s: Scenario) -> str | None:
    """A word when the rollout's KV pool cannot hold the longest sequence a length
    distribution allows (such a sequence could never finish: timed as drawn, as if it fitted)."""
    w = s.workload
    if w.max_seq_tokens <= w.seq_len:
        return None
    if w.rollout == "colocated":
        tokens = post_training_memory(s).rollout_kv_pool_tokens
    else:
        tokens = rollout_gpu_memory(s).pool_tokens
    if tokens >= w.max_seq_tokens:
        return None
    return (
        f"the rollout KV pool holds {tokens:,} tokens, less than the longest sequence of "
        f"{w.max_seq_tokens} tokens the lengths allow (timed as drawn, as if it fitted)"
    )


def _concatenated(phases: list[Phase]) -> list[Rank]:
    """The phases' ranks on one time axis (each phase shifted to start where the last ended)."""
    merged: dict[int, Rank] = {}
    offset = 0.0
    for ph in phases:
        for r in ph.ranks:
            into = merged.get(r.gpu)
            mirror_of = getattr(r, "mirror_of", None)  # DualPipe's mirror: training passes only
            if into is None:
                into = merged[r.gpu] = Rank(r.env, r.gpu, r.label, mirror_of=mirror_of)
            elif mirror_of is None:  # simulated in this phase
                into.mirror_of = None
            into.intervals += [
                (st, f"{ph.name}:{n}", c, a + offset, b + offset) for st, n, c, a, b in r.intervals
            ]
        offset += ph.time_s
    return [merged[g] for g in sorted(merged)]
