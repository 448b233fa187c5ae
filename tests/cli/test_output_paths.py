"""Every command's outputs (issue 16): a folder, /dev/full, a full disk or a stdout that cannot
take the output is a named error with exit code 2 and no traceback; nothing partial is left and
an earlier output is not truncated; devices and symlinks are written through."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest

from moesim import file_io
from tests.cli.conftest import MOESIM, run_main

SCENARIO = """\
name: tiny
model: mixtral-8x7b
cluster: {gpu: h100-sxm, nodes: 1}
parallel: {ep: 8}
workload: {stage: pretrain, seq_len: 4096, global_batch: 64}
"""
SWEEP = "name: s\nbase: tiny.yaml\ngrid:\n  parallel.ep: [4, 8]\n"
HF = Path(__file__).parents[1] / "data" / "hf" / "mixtral-8x7b.json"
HAS_DEV_FULL = Path("/dev/full").exists()


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    (tmp_path / "tiny.yaml").write_text(SCENARIO)
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    return tmp_path / "tiny.yaml"


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes to ``earlier.out`` fail at fsync as on a full disk (a report's own temporary
    traces still go through)."""
    doomed: set[int] = set()
    mkstemp, fsync = file_io.tempfile.mkstemp, file_io.os.fsync

    def remembering_mkstemp(*args, **kwargs):
        fd, name = mkstemp(*args, **kwargs)
        if "earlier.out" in name:
            doomed.add(fd)
        return fd, name

    def enospc(fd: int) -> None:
        if fd in doomed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(file_io.tempfile, "mkstemp", remembering_mkstemp)
    monkeypatch.setattr(file_io.os, "fsync", enospc)


def assert_named_error(r, *fragments: str) -> None:
    assert r.returncode == 2, r.output
    assert "Traceback" not in r.output
    for fragment in fragments:
        assert fragment in r.stderr, r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("simulate", "{s}", "--trace", "{d}"),
        ("sweep", "{w}", "-o", "{d}"),
        ("sweep", "{w}", "--html", "{d}"),
        ("report", "{s}", "-o", "{d}"),
        ("compare", "{s}", "{s}", "--html", "{d}"),
        ("schema", "-o", "{d}"),
        ("import-hf", str(HF), "-o", "{d}"),
    ],
)
def test_a_folder_as_output_is_named_and_nothing_is_left(tiny: Path, args) -> None:
    d = tiny.parent / "outdir"
    d.mkdir()
    sub = {"s": tiny, "w": tiny.parent / "sweep.yaml", "d": d}
    r = run_main(*(a.format(**sub) for a in args))
    assert_named_error(r, "outdir", "folder")
    assert list(d.iterdir()) == []
    assert not list(tiny.parent.glob("*.tmp"))


@pytest.mark.parametrize(
    "args",
    [
        ("simulate", "{s}", "--trace", "{o}"),
        ("sweep", "{w}", "-o", "{o}"),
        ("report", "{s}", "--no-sensitivity", "-o", "{o}"),
        ("schema", "-o", "{o}"),
        ("import-hf", str(HF), "-o", "{o}"),
    ],
)
def test_full_disk_keeps_the_earlier_output_whole(tiny: Path, full_disk, args) -> None:
    out = tiny.parent / "earlier.out"
    out.write_text("the earlier output")
    sub = {"s": tiny, "w": tiny.parent / "sweep.yaml", "o": out}
    r = run_main(*(a.format(**sub) for a in args))
    assert_named_error(r, "earlier.out", "No space left on device", "unchanged")
    assert out.read_text() == "the earlier output"
    names = {p.name for p in tiny.parent.iterdir()}
    assert names <= {"tiny.yaml", "sweep.yaml", "earlier.out"}, names


@pytest.mark.skipif(not HAS_DEV_FULL, reason="no /dev/full")
def test_trace_to_dev_full_is_named_and_stays_a_device(tiny: Path) -> None:
    r = run_main("simulate", tiny, "--trace", "/dev/full")
    assert_named_error(r, "/dev/full", "No space left on device")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_trace_through_a_symlink_and_to_dev_null(tiny: Path) -> None:
    link = tiny.parent / "link.json"
    link.symlink_to(tiny.parent / "real.json")
    assert run_main("simulate", tiny, "--trace", link).returncode == 0
    assert link.is_symlink() and (tiny.parent / "real.json").stat().st_size > 1000
    if Path("/dev/null").exists():
        assert run_main("simulate", tiny, "--trace", "/dev/null").returncode == 0
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.skipif(not HAS_DEV_FULL or not MOESIM.exists(), reason="no /dev/full or script")
@pytest.mark.parametrize("json_flag", [["--json"], []])
def test_stdout_that_cannot_take_the_output_is_a_named_error(tiny: Path, json_flag) -> None:
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [str(MOESIM), "simulate", str(tiny), *json_flag],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert "cannot write to standard output (No space left on device)" in proc.stderr
