"""Run the real ``moesim`` entry point in a subprocess.

The error handling under test (user errors → message and exit code 2, never a traceback) lives
in ``moesim.cli.main``, around the typer app, so the tests go through the installed console
script rather than ``CliRunner(app)``, which would bypass it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

MOESIM = Path(sys.executable).parent / "moesim"


@dataclass(frozen=True)
class CLIResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_moesim(*args: str | Path, cwd: Path | None = None) -> CLIResult:
    """``moesim ARGS`` with a wide terminal, so that rich does not wrap messages mid-assertion."""
    env = os.environ | {"COLUMNS": "500", "NO_COLOR": "1", "TERM": "dumb"}
    proc = subprocess.run(
        [str(MOESIM), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    return CLIResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def moesim() -> Callable[..., CLIResult]:
    if not MOESIM.exists():
        pytest.skip(f"the moesim console script is not installed next to {sys.executable}")
    return run_moesim


def run_main(*args: str | Path) -> CLIResult:
    """``moesim ARGS`` in this process, through ``moesim.cli.main`` (its error handling
    included): a tenth of a subprocess's start-up, for tests that run many commands."""
    import contextlib
    import io

    from moesim.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["moesim", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return CLIResult(code, out.getvalue(), err.getvalue())
