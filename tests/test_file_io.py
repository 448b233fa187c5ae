"""moesim.file_io: outputs all or nothing (a full disk leaves the old file and no temporary),
written through symlinks and devices; inputs that are not files named for what they are."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from moesim import file_io
from moesim.file_io import (
    InputPathError,
    OutputError,
    check_input_file,
    output_problem,
    write_atomic,
)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fsync fails as on a full disk (the data never reached it)."""

    def enospc(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(file_io.os, "fsync", enospc)


def test_writes_a_new_file_with_the_umask_permissions(tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    assert write_atomic(out, "{}") == out
    assert out.read_text() == "{}"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_replacing_keeps_the_permission_bits(tmp_path: Path) -> None:
    out = tmp_path / "a.csv"
    out.write_text("old")
    out.chmod(0o640)
    write_atomic(out, "new")
    assert out.read_text() == "new"
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def test_full_disk_leaves_the_old_file_and_no_temporary(tmp_path: Path, full_disk) -> None:
    out = tmp_path / "trace.json"
    out.write_text("the earlier trace")
    with pytest.raises(OutputError, match=r"trace\.json.*No space left.*earlier file is unchanged"):
        write_atomic(out, "x" * 100_000)
    assert out.read_text() == "the earlier trace"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.json"]


def test_full_disk_leaves_no_partial_new_file(tmp_path: Path, full_disk) -> None:
    with pytest.raises(OutputError, match="free some space"):
        write_atomic(tmp_path / "new.csv", "a,b\n1,2\n")
    assert list(tmp_path.iterdir()) == []


def test_a_symlink_stays_a_link_and_its_target_gets_the_content(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "t.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["t.json"]


def test_a_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "made.json")
    write_atomic(link, "x")
    assert link.is_symlink() and (tmp_path / "made.json").read_text() == "x"


def test_a_folder_or_a_symlink_loop_is_named(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="this is a folder"):
        write_atomic(tmp_path, "x")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(OutputError, match="symlink loop"):
        write_atomic(loop, "x")
    assert "folder" in (output_problem(tmp_path) or "")
    assert "symlink loop" in (output_problem(loop) or "")
    assert output_problem(tmp_path / "new.json") is None


def test_a_missing_folder_is_named_unless_asked_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"does not exist.*create its folder first"):
        write_atomic(tmp_path / "no" / "x.html", "x")
    write_atomic(tmp_path / "made" / "x.html", "x", make_parents=True)
    assert (tmp_path / "made" / "x.html").read_text() == "x"


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null")
def test_dev_null_stays_a_device() -> None:
    write_atomic("/dev/null", "x" * 1000)
    assert stat.S_ISCHR(Path("/dev/null").stat().st_mode)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_dev_full_is_a_named_error_and_stays_a_device() -> None:
    with pytest.raises(OutputError, match=r"/dev/full: cannot write it \(No space left"):
        write_atomic("/dev/full", "x" * 1000)
    assert stat.S_ISCHR(Path("/dev/full").stat().st_mode)


# -- inputs ----------------------------------------------------------------------------------
def test_inputs_that_are_not_files_say_what_they_are(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # opening it would block: it must only be stat-ed
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    broken = tmp_path / "broken.yaml"
    broken.symlink_to(tmp_path / "gone.yaml")
    for path, what in [
        (tmp_path, "a folder"),
        (fifo, "a FIFO"),
        (loop, "symlink loop"),
        (broken, "broken symlink"),
        (tmp_path / "none.yaml", "no such file"),
    ]:
        with pytest.raises(InputPathError, match=what):
            check_input_file(path)
    ok = tmp_path / "ok.yaml"
    ok.write_text("a: 1")
    assert check_input_file(ok) == ok
