"""End to end on the CPU: ``moesim calibrate run --device cpu --quick`` into a temporary folder,
then ``moesim calibrate validate`` on what it wrote; the simulator reads the profile."""

import json

import pytest

pytest.importorskip("torch")

import pandas as pd
from typer.testing import CliRunner

from moesim.calibrate import bench_steps
from moesim.calibrate.records import COLUMNS
from moesim.cli import app
from moesim.sim.profile import load_profile, resolve_profile


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration")
    res = CliRunner().invoke(
        app,
        [
            "calibrate",
            "run",
            "--device",
            "cpu",
            "--quick",
            "--threads",
            "1",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout[res.stdout.index("{") :])


def test_measurements_cover_every_benchmark(quick_run):
    out, summary = quick_run
    assert summary["failures"] == []
    df = pd.read_csv(out / "cpu" / "measurements.csv")
    assert list(df.columns) == list(COLUMNS)
    classes = set(df["op_class"])
    assert classes >= {"gemm", "grouped_gemm", "moe_layer", "attention", "memory_bound", "copy",
                       "launch", "collective"}  # fmt: skip
    if bench_steps.available() is None:  # moesim.training is importable
        assert set(df[df["op_class"] == "step"]["op"]) == {
            "step_pretrain", "step_sft", "step_dpo", "step_grpo"
        }  # fmt: skip
    assert (df["time_s_median"] > 0).all()
    assert (df["time_s_p10"] <= df["time_s_median"]).all()
    assert (df["time_s_median"] <= df["time_s_p90"]).all()
    assert set(df[df["op"] == "moe_layer"]["note"].map(lambda n: json.loads(n)["routing"])) == {
        "uniform", "skewed"
    }  # fmt: skip
    assert set(df["pass"]) == {"fwd", "fwd_bwd"}


def test_profile_is_loadable_and_sourced(quick_run):
    out, _ = quick_run
    prof = load_profile(out / "cpu.json")
    assert prof.device == "cpu"
    for c in prof.compute.values():
        assert c.source.startswith("measured")
    assert prof.launch_overhead_us.source.startswith("measured")
    env = prof.measured["environment"]
    assert env["torch"] and env["date"] and env["device_name"]
    assert (out / "cpu.device.yaml").is_file()
    # the simulator takes it by id from the folder, as --profile cpu would
    assert resolve_profile("cpu", search_dirs=(out,)).device == "cpu"


def test_profile_source_names_the_folder_it_was_written_to(quick_run):
    """--out elsewhere: the source names that CSV, not calibration/<id>/measurements.csv."""
    out, _ = quick_run
    prof = load_profile(out / "cpu.json")
    csv = (out / "cpu" / "measurements.csv").resolve()
    assert f"fitted from {csv} by" in prof.source
    assert prof.validation["_split"]["measurements"] == str(csv)


def test_step_timer_gives_every_call_a_new_step():
    """A step's batch comes from its index: every timed call (warm-up and sizing included)
    must get a new one, with the step timer the calibration uses."""
    from moesim.calibrate.run import _timers

    for cuda in (False,):
        _, steps = _timers(cuda, quick=True)
        seen: list[int] = []
        t = bench_steps.time_steps(steps, seen.append)
        assert t.repeats >= 3
        assert len(seen) == len(set(seen)) == steps.warmup + 1 + t.repeats


def test_validation_block_and_report(quick_run):
    out, summary = quick_run
    val = load_profile(out / "cpu.json").validation
    assert val == json.loads(json.dumps(summary["validation"]))
    needed = ["gemm", "moe_layer", "attention"]
    if bench_steps.available() is None:
        needed.append("step")
        assert set(val["step"]["by_stage"]) >= {"step_pretrain", "step_sft"}
    for cls in needed:
        v = val[cls]
        assert v["n"] >= 1
        assert 0 <= v["median_abs_rel_error"] <= v["max_abs_rel_error"]
    report = (out / "cpu" / "report.html").read_text()
    assert "Plotly" in report and "cdn.plot.ly" not in report.split("<script")[1][:200]
    assert (out / "cpu" / "report.html").stat().st_size < 5e6
    pred = pd.read_csv(out / "cpu" / "predictions.csv")
    scored = pred[pred["skipped"].isna()]
    assert scored["predicted_s"].gt(0).all()


def test_validate_command_rewrites_the_errors(quick_run, tmp_path):
    out, _ = quick_run
    report = tmp_path / "r.html"
    res = CliRunner().invoke(
        app,
        [
            "calibrate",
            "validate",
            str(out / "cpu.json"),
            "--holdout",
            "0.5",
            "--seed",
            "3",
            "--report",
            str(report),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    val = load_profile(out / "cpu.json").validation
    assert val["_split"]["holdout_fraction"] == 0.5 and val["_split"]["seed"] == 3
    assert report.is_file()


def test_bad_arguments_are_user_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["calibrate", "run", "--device", "tpu", "--out", str(tmp_path)])
    assert res.exit_code != 0
    res = runner.invoke(app, ["calibrate", "validate", str(tmp_path / "none.json")])
    assert res.exit_code != 0


def test_append_replaces_only_the_benchmarks_run(tmp_path):
    from moesim.calibrate.run import run_calibration

    first = run_calibration(
        "cpu", quick=True, out_dir=tmp_path, only=("gemm", "copy"), validate=False, threads=1
    )
    before = pd.read_csv(first.measurements)
    second = run_calibration(
        "cpu", quick=True, out_dir=tmp_path, only=("attention", "copy"), validate=False,
        threads=1, append=True,
    )  # fmt: skip
    after = pd.read_csv(second.measurements)
    assert set(after["op_class"]) == {"gemm", "copy", "attention"}
    gemm_before = before[before["op_class"] == "gemm"].reset_index(drop=True)
    gemm_after = after[after["op_class"] == "gemm"].reset_index(drop=True)
    pd.testing.assert_frame_equal(gemm_before, gemm_after)  # kept as they were
    assert (after["op_class"] == "copy").sum() == (before["op_class"] == "copy").sum()


def test_append_writes_the_host_copy_class_over_an_old_csvs_copy_labels(tmp_path):
    """A CSV written before ``host_copy`` existed labelled h2d/d2h copies ``copy``: appending
    to it (the copy benchmark not rerun) writes them back as ``host_copy``, d2d stays ``copy``."""
    from moesim.calibrate.run import run_calibration

    first = run_calibration(
        "cpu", quick=True, out_dir=tmp_path, only=("gemm", "copy"), validate=False, threads=1
    )
    old = pd.read_csv(first.measurements)
    d2d = old[old["op"] == "d2d"]
    legacy = pd.concat([d2d.assign(op=op, op_class="copy") for op in ("h2d", "d2h")])
    pd.concat([old, legacy], ignore_index=True).to_csv(first.measurements, index=False)
    second = run_calibration(
        "cpu", quick=True, out_dir=tmp_path, only=("attention",), validate=False, threads=1,
        append=True,
    )  # fmt: skip
    after = pd.read_csv(second.measurements)
    by_op = after.groupby("op")["op_class"].agg(set).to_dict()
    assert by_op["h2d"] == by_op["d2h"] == {"host_copy"} and by_op["d2d"] == {"copy"}
    assert (after["op"] == "h2d").sum() == len(d2d)


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["--quick"], "out/calibration-quick"), ([], "calibration")],
)
def test_a_quick_run_writes_beside_the_committed_profile_never_over_it(
    monkeypatch, args: list[str], expected: str
):
    """The README tour's `--quick` run overwrote calibration/cpu.json and its measurements;
    without --out it now writes to out/calibration-quick/ and says it is a smoke test."""
    import moesim.calibrate.run as run_mod

    seen = {}

    def fake_run(device, **kw):
        seen["out_dir"] = kw["out_dir"]
        raise RuntimeError("stopped after choosing the folder")

    monkeypatch.setattr(run_mod, "run_calibration", fake_run)
    res = CliRunner().invoke(app, ["calibrate", "run", "--device", "cpu", *args])
    assert res.exit_code != 0  # the app turns the stop into a user error
    assert str(seen["out_dir"]) == expected
