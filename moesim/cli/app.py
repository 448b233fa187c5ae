"""The typer app and the one place that turns user errors into messages and exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

app = typer.Typer(
    name="moesim",
    help="Simulate and cost dense and Mixture-of-Experts LLMs on GPU clusters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


#: ``--set key=value`` (simulate, compare, report, plan): fields replaced before validation
SetOverrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="override a field: dotted key=value, repeatable (--set parallel.ep=16, "
        "--set constraints.deadline_days=20); typed as in a file, checked by the schema",
    ),
]


class UserError(Exception):
    """Bad input from the user: printed as a message, exit code 2, never a traceback."""


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def print_error(message: str) -> None:
    """``error: MESSAGE`` on stderr, the message as plain text: it quotes what users wrote
    (a key ``[red]bad``, a model ``[/]x``), which rich must not read as markup."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)


def refuse_overwriting_inputs(option: str, output: Path | None, *inputs: Path) -> None:
    """An output path that names one of the command's input files is a user error, raised
    before any work: ``simulate F --trace F`` would replace the scenario with its trace."""
    if output is None:
        return
    for given in inputs:
        try:
            same = output.resolve() == given.resolve() or (
                output.exists() and given.exists() and output.samefile(given)
            )
        except OSError:
            same = False
        if same:
            raise UserError(
                f"{option} {output} is the input file {given}: writing it would overwrite "
                "the input; choose another path"
            )


def write_output(path: Path, text: str) -> None:
    """Write a command's ``-o`` file; a path that cannot be written is a user error."""
    try:
        path.write_text(text)
    except OSError as e:
        fix = "create its folder first" if not path.parent.is_dir() else "choose another path"
        raise UserError(f"{path}: cannot write it ({e.strerror}): {fix}") from None


def main() -> None:
    """Entry point: run the app, turning known user errors into a clean message."""
    from moesim.catalog import CatalogError
    from moesim.scenario_io import ScenarioError

    try:
        app()
    except (UserError, CatalogError, ScenarioError) as e:
        print_error(str(e))
        sys.exit(2)
