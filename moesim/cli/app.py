"""The typer app and the one place that turns user errors into messages and exit code 2."""

from __future__ import annotations

import errno
import json
import os
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
    """``obj`` as JSON on stdout, flushed here so a stdout that cannot take it (``> /dev/full``)
    fails in ``main``'s hands, not at interpreter exit."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def print_error(message: str) -> None:
    """``error: MESSAGE`` on stderr, the message as plain text: it quotes what users wrote
    (a key ``[red]bad``, a model ``[/]x``), which rich must not read as markup."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)


def refuse_overwriting_inputs(option: str, output: Path | None, *inputs: Path) -> None:
    """An output path that names one of the command's input files is a user error, raised
    before any work: ``simulate F --trace F`` would replace the scenario with its trace."""
    if output is None:
        return
    from moesim.file_io import output_problem

    problem = output_problem(output)
    if problem is not None:
        raise UserError(f"{option} {problem}")
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
    """Write a command's ``-o`` file all or nothing (moesim.file_io.write_atomic); a path that
    cannot be written is a user error naming it."""
    from moesim.file_io import OutputError, write_atomic

    try:
        write_atomic(path, text)
    except OutputError as e:
        raise UserError(str(e)) from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of what stdout could not take
    raises nothing more (the Python docs' recipe for a closed or full stdout)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _stdout_failed(e: OSError) -> bool:
    """An OSError with no file name raised while writing: stdout (``--json > /dev/full``, a
    closed pipe); any other write names its file."""
    return e.filename is None and e.errno in (
        errno.ENOSPC,
        errno.EPIPE,
        errno.EIO,
        errno.EDQUOT,
        errno.EBADF,
        errno.EFBIG,
    )


def main() -> None:
    """Entry point: run the app, turning known user errors into a clean message."""
    from moesim.catalog import CatalogError
    from moesim.file_io import InputPathError, OutputError
    from moesim.scenario_io import ScenarioError

    try:
        app()
        sys.stdout.flush()
    except (UserError, CatalogError, ScenarioError, OutputError, InputPathError) as e:
        print_error(str(e))
        sys.exit(2)
    except OSError as e:
        if not _stdout_failed(e):
            raise
        _silence_stdout()
        if e.errno != errno.EPIPE:  # `moesim schema | head` ends quietly
            print_error(f"cannot write to standard output ({e.strerror}): redirect it elsewhere")
        sys.exit(2)
