"""The typer app and the one place that turns user errors into messages and exit code 2."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(
    name="moesim",
    help="Simulate and cost dense and Mixture-of-Experts LLMs on GPU clusters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


class UserError(Exception):
    """Bad input from the user: printed as a message, exit code 2, never a traceback."""


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def main() -> None:
    """Entry point: run the app, turning known user errors into a clean message."""
    from moesim.catalog import CatalogError
    from moesim.scenario_io import ScenarioError

    try:
        app()
    except (UserError, CatalogError, ScenarioError) as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
