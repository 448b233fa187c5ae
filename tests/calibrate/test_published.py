"""Published kernel profiles (``calibration/published/``): every point is sourced, the stored
in-sample errors are what the cost model gives on the points, fp8 GEMMs sit between half and
all of the bf16 time, and each of the five GPUs has a loadable published profile."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from moesim.calibrate.published import GPUS, read_points, write_all
from moesim.catalog import load_gpu
from moesim.sim.costmodel import CostModel, OpWork
from moesim.sim.profile import (
    PUBLISHED_SUBDIR,
    default_profile,
    load_profile,
    profile_kind,
    repo_calibration_dir,
    resolve_profile,
)

CAL = repo_calibration_dir()
pytestmark = pytest.mark.skipif(
    CAL is None or not (CAL / PUBLISHED_SUBDIR / "kernels.csv").is_file(),
    reason="not running from a source checkout with calibration/published/",
)
PUB = CAL / PUBLISHED_SUBDIR if CAL is not None else None


def test_every_published_point_names_its_source_and_a_missing_one_is_an_error(tmp_path):
    with open(PUB / "kernels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 50
    assert all(r["source"].strip() for r in rows)
    assert all(float(r["measured_TFLOPS"]) > 0 for r in rows)
    bad = tmp_path / "k.csv"
    with open(bad, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerow({**rows[0], "source": " "})
    with pytest.raises(ValueError, match="line 2: every point needs a source"):
        read_points(bad)


def test_the_committed_profiles_are_what_the_point_table_gives(tmp_path):
    """Regenerated from kernels.csv they come out as committed: no profile is edited by hand
    or left behind a change of its points."""
    for path in write_all(PUB / "kernels.csv", tmp_path):
        assert json.loads(path.read_text()) == json.loads((PUB / path.name).read_text()), (
            f"{path.name} is stale: run python -m moesim.calibrate.published"
        )


@pytest.mark.parametrize("gpu", GPUS)
def test_a_published_profile_exists_loads_and_is_what_the_gpu_resolves_to(gpu):
    p = load_profile(PUB / f"{gpu}.json")
    assert (p.device, p.kind, p.schema_version) == (gpu, "published", 2)
    assert p.compute_fp8 is None or set(p.compute_fp8) <= {"gemm", "grouped_gemm"}
    if not (CAL / f"{gpu}.json").is_file():  # no measured profile of this GPU in the repo
        r = resolve_profile(None, gpu)
        assert (r.device, profile_kind(r)) == (gpu, "published")


@pytest.mark.parametrize("gpu", GPUS)
def test_the_stored_in_sample_errors_are_the_cost_models_errors_on_the_points(gpu):
    """Recomputed here point by point: time = published FLOPs / published throughput (2·m·n·k
    for a GEMM; FlashAttention's 4·b·s²·h·d, backward 2.5×), predicted by the cost model."""
    p = load_profile(PUB / f"{gpu}.json")
    spec = load_gpu(gpu)
    used = set(p.measured["points_from"]) if p.measured else set()
    errs: dict[str, list[float]] = {}
    with open(PUB / "kernels.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["gpu"] not in used:
                continue
            tf = float(r["measured_TFLOPS"]) * 1e12
            if r["op_class"] == "attention":
                b, s, h, d = (int(r[c]) for c in ("batch", "seqlen", "heads", "head_dim"))
                causal = r["causal"] in ("1", "true", "True")
                paper = 4.0 * b * s * s * h * d / (2 if causal else 1)  # FlashAttention's count
                fwd = 4.0 * b * s * h * d * ((s + 1) / 2 if causal else s)  # the simulator's
                io = 8.0 * b * s * h * d
                if r["direction"] == "bwd":
                    op = OpWork("a", "attention", 2 * fwd, 2 * io, 2, backward=True)
                    t, key = 2.5 * paper / tf, "attention_bwd_bf16"
                else:
                    op, t, key = OpWork("a", "attention", fwd, io), paper / tf, "attention_bf16"
                if d < 128:  # fitted on head dim >= 128 only; the others are scored apart
                    key += f"_headdim{d}_held_out"
            else:
                m, n, k, g = (int(r[c]) for c in ("m", "n", "k", "groups"))
                eb = 1 if r["dtype"] == "fp8" else 2
                nbytes = g * ((m + n) * k * eb + 2 * m * n)
                op = OpWork("g", r["op_class"], 2.0 * m * n * k * g, nbytes, groups=g)
                t, key = 2.0 * m * n * k * g / tf, f"{r['op_class']}_{r['dtype']}"
            pred = CostModel(spec, p, r["dtype"]).time_s(op)
            errs.setdefault(key, []).append(abs(pred - t) / t)
    stored = p.validation or {}
    assert set(stored) == set(errs)
    for key, e in errs.items():
        assert stored[key]["n"] == len(e)
        assert stored[key]["median_abs_rel_error"] == pytest.approx(statistics.median(e), rel=1e-9)
        assert stored[key]["max_abs_rel_error"] == pytest.approx(max(e), rel=1e-9)
    if gpu == "h100-sxm":  # the GPU the most points are of: the fit is not a loose one
        assert stored["gemm_bf16"]["median_abs_rel_error"] < 0.15
        assert stored["attention_bf16"]["median_abs_rel_error"] < 0.15
        # FLOPs alone is a poor key across head dims: the held-out head dim 64 runs slower
        held = stored["attention_bf16_headdim64_held_out"]["median_abs_rel_error"]
        assert held > 2 * stored["attention_bf16"]["median_abs_rel_error"]


@pytest.mark.parametrize("gpu", ["h100-sxm", "h800-sxm", "h200-sxm", "b200"])
@pytest.mark.parametrize("mnk", [(4096, 7168, 16384), (16384, 4096, 14336), (8192, 8192, 8192)])
def test_fp8_gemm_takes_between_half_and_all_of_the_bf16_time_for_large_shapes(gpu, mnk):
    m, n, k = mnk
    p = load_profile(PUB / f"{gpu}.json")
    spec = load_gpu(gpu)
    gemm = OpWork("ffn", "gemm", 2.0 * m * n * k, (m * k + k * n) * 1 + 2 * m * n)
    bf16 = CostModel(spec, p, "bf16").time_s(gemm)
    fp8 = CostModel(spec, p, "fp8").time_s(gemm)
    assert 0.5 * bf16 <= fp8 < bf16
    # the fp8 curve is what keeps it above half: read on the bf16 curve (version 1) it is half
    v1 = default_profile()
    half = CostModel(spec, v1, "fp8").time_s(gemm) - CostModel(spec, v1, "fp8").launch_s
    whole = CostModel(spec, v1, "bf16").time_s(gemm) - CostModel(spec, v1, "bf16").launch_s
    assert half == pytest.approx(whole / 2, rel=1e-3)  # datasheet peaks: 1978.9 vs 989.4


def test_the_attention_backward_reads_its_own_curve():
    p = load_profile(PUB / "h100-sxm.json")
    spec = load_gpu("h100-sxm")
    cm = CostModel(spec, p, "bf16")
    flops = 2e11
    fwd = cm.time_s(OpWork("a", "attention", flops, 0.0))
    bwd = cm.time_s(OpWork("a", "attention", flops, 0.0, backward=True))
    eff_f, eff_b = p.compute["attention"](flops), p.compute["attention_bwd"](flops)
    assert eff_b < eff_f  # FlashAttention-3's backward runs at a lower fraction of peak
    assert bwd - cm.launch_s == pytest.approx(flops / (989.4e12 * eff_b))
    assert fwd - cm.launch_s == pytest.approx(flops / (989.4e12 * eff_f))


def test_a100_has_its_own_gemm_and_attention_and_inherits_only_the_backward():
    """A100 points (MAMF GEMMs, FlashAttention-2 forward) make its own curves; only the
    attention backward, with no A100 point, comes from Hopper."""
    a100 = load_profile(PUB / "a100-sxm-80gb.json")
    assert a100.measured["points_from"] == ["a100-sxm-80gb"]
    assert a100.measured["inherited"] == {"attention_bwd_bf16": "h100-sxm"}
    h100 = load_profile(PUB / "h100-sxm.json")
    assert a100.compute["attention"].points != h100.compute["attention"].points
    assert a100.compute["attention_bwd"].points == h100.compute["attention_bwd"].points
    # the MAMF best shape, 1024 x 10240 x 5120 at 271.2 TFLOPS, is predicted within 2%
    m, n, k = 1024, 10240, 5120
    op = OpWork("g", "gemm", 2.0 * m * n * k, 2 * ((m + n) * k + m * n))
    t = CostModel(load_gpu("a100-sxm-80gb"), a100, "bf16").time_s(op)
    assert 2.0 * m * n * k / t / 1e12 == pytest.approx(271.2, rel=0.02)


def test_below_its_smallest_own_point_a100_gemm_follows_hopper_capped_and_non_decreasing():
    a100 = load_profile(PUB / "a100-sxm-80gb.json").compute["gemm"]
    h100 = load_profile(PUB / "h100-sxm.json").compute["gemm"]
    assert load_profile(PUB / "a100-sxm-80gb.json").measured["extended_below_from"] == {
        "gemm_bf16": "h100-sxm"
    }
    smallest_own = 2.0 * 1024 * 10240 * 5120  # the smaller MAMF shape's FLOPs
    first_own = a100(smallest_own)
    for x in (1e8, 1e9, 4e9):  # below the own points: Hopper's fall-off, not the 87% plateau
        assert a100(x) == pytest.approx(min(h100(x), first_own), rel=1e-9)
        assert a100(x) < 0.6 * first_own
    effs = [q[1] for q in a100.points]
    assert effs == sorted(effs)
    assert a100(1e12) == pytest.approx(first_own, rel=0.01)
