"""The simulator runs without PyTorch (DESIGN.md: nothing outside nn/, training/ and
calibrate/ imports torch): ``moesim inspect``, ``validate`` and ``simulate`` succeed in a
process where ``import torch`` fails, as it does where torch is not installed.

torch is installed in the test environment, so a ``sitecustomize`` on PYTHONPATH puts a
meta-path finder first that refuses ``torch`` and its submodules and logs every attempt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MOESIM = Path(sys.executable).parent / "moesim"
ROOT = Path(__file__).parents[1]
SCENARIO = ROOT / "scenarios" / "mixtral-8x7b-pretrain-256xh100.yaml"

SITECUSTOMIZE = '''\
import importlib.abc
import os
import sys


class _NoTorch(importlib.abc.MetaPathFinder):
    """Refuse torch as an interpreter without it would, and log who asked."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            with open(os.environ["NO_TORCH_LOG"], "a") as log:
                log.write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())
'''


@pytest.fixture
def no_torch_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "torch-imports.log"
    log.write_text("")
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return os.environ | {
        "PYTHONPATH": pythonpath,
        "NO_TORCH_LOG": str(log),
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }


def run(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


def test_the_block_works(no_torch_env: dict[str, str]) -> None:
    r = run(no_torch_env, sys.executable, "-c", "import torch")
    assert r.returncode != 0
    assert "blocked by the test" in r.stderr
    assert Path(no_torch_env["NO_TORCH_LOG"]).read_text() == "torch\n"
    if MOESIM.exists():  # and in the console script: the one command that needs torch says so
        r = run(no_torch_env, MOESIM, "train", "pretrain", "--model", "tiny-dense", "--steps", "1")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "needs PyTorch" in r.stderr


def test_inspect_validate_and_simulate_run_without_torch(no_torch_env: dict[str, str]) -> None:
    if not MOESIM.exists():
        pytest.skip(f"the moesim console script is not installed next to {sys.executable}")
    r = run(no_torch_env, MOESIM, "inspect", "mixtral-8x7b", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["params_total"] > 0

    r = run(no_torch_env, MOESIM, "validate", SCENARIO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok ")

    r = run(no_torch_env, MOESIM, "simulate", SCENARIO, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout)
    assert result["step_time_s"] > 0 and 0 < result["mfu"] < 1

    # not even a guarded attempt: the core never asks for torch
    assert Path(no_torch_env["NO_TORCH_LOG"]).read_text() == ""
