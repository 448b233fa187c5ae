"""Inputs that are not files (issue 16): a folder, a FIFO or a symlink loop given to any
command is an error that says what it is, not "no such file"; a FIFO is never opened (it would
block until a writer came)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli.conftest import run_main


@pytest.fixture
def odd_paths(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    return {"a folder": folder, "a FIFO": fifo, "a symlink loop": loop}


@pytest.mark.parametrize(
    "command", [["validate"], ["simulate"], ["inspect"], ["import-hf"], ["report"], ["sweep"]]
)
def test_an_input_that_is_not_a_file_says_what_it_is(odd_paths, command) -> None:
    for what, path in odd_paths.items():
        r = run_main(*command, path)
        assert r.returncode == 2, (what, r.output)
        assert "Traceback" not in r.output
        assert what in r.stderr and str(path) in r.stderr, r.stderr
        assert "no such file" not in r.stderr


def test_a_profile_that_is_a_fifo_is_named(odd_paths) -> None:
    r = run_main("calibrate", "validate", odd_paths["a FIFO"])
    assert r.returncode == 2 and "a FIFO" in r.stderr, r.output
