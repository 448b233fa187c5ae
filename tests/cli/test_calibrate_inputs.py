"""``moesim calibrate`` on hostile inputs (issue 16): a profile that is ``{}``, truncated JSON,
YAML; measurements without ``op_class`` or binary; ``--report`` naming a folder: each a named
error, exit 2, with the profile and predictions untouched; ``run --only gemm`` on a CPU is
refused before benchmarking and leaves no file."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from tests.cli.conftest import run_main

CALIBRATION = Path(__file__).parents[2] / "calibration"


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    """A copy of the committed CPU profile and its measurements (validate writes into them)."""
    shutil.copy(CALIBRATION / "cpu.json", tmp_path / "cpu.json")
    shutil.copy(CALIBRATION / "cpu.device.yaml", tmp_path / "cpu.device.yaml")
    (tmp_path / "cpu").mkdir()
    shutil.copy(CALIBRATION / "cpu" / "measurements.csv", tmp_path / "cpu" / "measurements.csv")
    return tmp_path


def _refused(args, *fragments: str) -> None:
    r = run_main("calibrate", "validate", *args)
    assert r.returncode == 2, r.output
    assert "Traceback" not in r.output
    for fragment in fragments:
        assert fragment in r.stderr, r.stderr


def test_profiles_that_are_not_profiles_are_named(calib: Path) -> None:
    full = (calib / "cpu.json").read_text()
    cases = {
        "empty.json": ("{}", "not a moesim calibration profile (missing device"),
        "cut.json": (full[: len(full) // 2], "truncated?"),
        "y.json": ("device: cpu\nsource: x\n", "looks like YAML; profiles are JSON"),
        "bin.json": (b"\x89PNG\r\n\x1a\n\xff\xfe", "not UTF-8 text"),
    }
    for name, (content, fragment) in cases.items():
        path = calib / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        _refused([path], str(path), fragment)


def test_bad_measurements_or_report_leave_the_profile_untouched(calib: Path) -> None:
    profile = calib / "cpu.json"
    before = profile.read_bytes()
    (calib / "noop.csv").write_text("a,b\n1,2\n")
    (calib / "bin.csv").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(0x80, 0x100)))
    (calib / "folder").mkdir()
    _refused([profile, "--measurements", calib / "noop.csv"], "no column op_class")
    _refused([profile, "--measurements", calib / "bin.csv"], "not UTF-8 text")
    _refused([profile, "--report", calib / "folder"], "--report", "this is a folder")
    assert profile.read_bytes() == before
    assert not (calib / "cpu" / "predictions.csv").exists()
    assert list((calib / "folder").iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_run_only_gemm_on_a_cpu_is_refused_before_benchmarking(tmp_path: Path) -> None:
    out = tmp_path / "cal"
    r = run_main("calibrate", "run", "--quick", "--only", "gemm", "--no-validate", "--out", out)
    assert r.returncode == 2, r.output
    assert "--only gemm,copy" in r.stderr and "calibrating" not in r.output
    assert not out.exists() or not any(out.rglob("*"))
