"""The ``moesim`` command. Each command group lives in its own module of this package and
registers itself on ``app``; the modules are imported below, explicitly."""

from __future__ import annotations

from moesim.cli import (
    calibrate_cmd,  # noqa: F401  (registers calibrate run|validate)
    inspect_cmd,  # noqa: F401  (registers inspect, validate, schema, import-hf)
    report_cmd,  # noqa: F401  (registers compare, report, sweep, plan)
    reproduce_cmd,  # noqa: F401  (registers reproduce)
    simulate_cmd,  # noqa: F401  (registers simulate)
    train_cmd,  # noqa: F401  (registers train)
)
from moesim.cli.app import app, main

__all__ = ["app", "main"]
