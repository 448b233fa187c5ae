"""How a post-training step's phases add up to its time: one after another (synchronous), or
with the rollout of the next step running beside this step's training (off-policy).

**Synchronous** (``off_policy_steps`` 0, and every colocated placement): each phase needs the
previous one's output, so the step is their sum.

**Off-policy** (``off_policy_steps`` ≥ 1 with ``rollout: disaggregated``): the rollout GPUs
generate batch n+1 while the training GPUs score and train on batch n (verl's
one-step-off-policy recipe, docs/advance/one_step_off.md: "Samples for the next batch are
asynchronously generated while the current batch is being trained", with an NCCL weight sync
before each generation; NeMo RL's async GRPO, ``max_trajectory_age_steps``). Its driver loop
waits for the previous generation, syncs the weights, launches the next generation and trains,
so in steady state

    step = weight_sync + max(rollout, training side)

(the training side: reward, old log-probs, reference, values, GAE, training, critic training)
and the step's ``rollout`` phase is only the part the training side did not hide
(verl's ``wait_prev_gen``). A rollout allowed further ahead (``off_policy_steps`` ≥ 2) has the
same steady state here: the extra staleness absorbs step-to-step variation, which a
deterministic simulator does not have.

**Colocated** engines share the GPUs with training: the rollout cannot run beside it on the
same GPUs (NeMo RL's guide: "Disable colocated inference (required for async mode with the vLLM
backend)"), so ``off_policy_steps`` leaves a colocated step synchronous and the result says so;
splitting the GPUs between the two is ``rollout: disaggregated``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from moesim.sim.rl_phases import Phase
from moesim.specs import GRPOWorkload, PPOWorkload, Scenario

#: phases that run on the rollout GPUs (or on both sides: the weight sync) under off-policy
ROLLOUT_SIDE = ("weight_sync", "rollout")

COLOCATED_NOTE = (
    "off_policy_steps: a colocated rollout engine shares the training GPUs, so the rollout "
    "cannot overlap training and the step is synchronous (use rollout: disaggregated to split "
    "the GPUs)"
)


@dataclass
class Step:
    """The step's time and its phases as shown (their times sum to it)."""

    time_s: float
    phases: list[Phase]
    extra: dict[str, object] = field(default_factory=dict)


def compose_step(s: Scenario, phases: list[Phase]) -> Step:
    """The step of ``phases`` under the scenario's schedule (see the module docstring)."""
    w = s.workload
    rl = isinstance(w, GRPOWorkload | PPOWorkload)
    k = w.off_policy_steps if rl else 0
    total_s = sum(ph.time_s for ph in phases)
    rollout = next((ph for ph in phases if ph.name == "rollout"), None)
    if rollout is None:
        return Step(total_s, phases)
    extra: dict[str, object] = {"rollout_time_s": rollout.time_s}
    if k == 0:
        return Step(total_s, phases, extra)
    extra["off_policy_steps"] = k
    if w.rollout == "colocated":
        extra["off_policy_note"] = COLOCATED_NOTE
        return Step(total_s, phases, extra)
    sync_s = sum(ph.time_s for ph in phases if ph.name == "weight_sync")
    train_s = sum(ph.time_s for ph in phases if ph.name not in ROLLOUT_SIDE)
    exposed_s = max(0.0, rollout.time_s - train_s)
    scale = exposed_s / rollout.time_s if rollout.time_s > 0 else 0.0
    shown = replace(
        rollout, time_s=exposed_s, parts={k_: v * scale for k_, v in rollout.parts.items()}
    )
    extra["rollout_exposed_s"] = exposed_s
    extra["rollout_overlapped_s"] = rollout.time_s - exposed_s
    out = [shown if ph is rollout else ph for ph in phases]
    return Step(sync_s + max(rollout.time_s, train_s), out, extra)
