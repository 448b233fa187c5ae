"""``moesim reproduce``: simulate every published case and report how far moesim is from it.

Errors outside tolerance are results, not failures: the command exits 0 when it ran, 2 on bad
input (no cases, a broken case file).
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from moesim.cli.app import app, console, err_console, print_json

DEFAULT_DIR = Path("scenarios/published")


@app.command()
def reproduce(
    directory: Annotated[
        Path, typer.Argument(help="a folder of published cases (recursive) or one case file")
    ] = DEFAULT_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="print cases and summary as JSON")] = (
        False
    ),
    html: Annotated[
        Path | None, typer.Option("--html", help="write a self-contained HTML report here")
    ] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="print a markdown table (for the README)")
    ] = False,
    write_baseline: Annotated[
        bool,
        typer.Option(
            "--write-baseline",
            help="(re)write DIR/baseline.json from this run (the regression guard's reference)",
        ),
    ] = False,
) -> None:
    """Simulate every published case under DIR and compare with the published figure:
    signed error, within tolerance, median and max |error| per class."""
    from moesim.reproduce.run import load_cases, run_cases, to_json

    cases = load_cases(directory)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("simulating published cases", total=len(cases))
        rows = run_cases(cases, on_case=lambda _: bar.advance(task))
    if write_baseline:
        from moesim.reproduce.baseline import BASELINE_NAME
        from moesim.reproduce.baseline import write_baseline as write

        folder = directory if directory.is_dir() else directory.parent
        path = write(rows, folder / BASELINE_NAME)
        err_console.print(f"wrote {escape(str(path))}", highlight=False)
    if html is not None:
        from moesim.report.reproduce import reproduce_report

        reproduce_report(rows).write(html)  # a failed write: file_io.OutputError, named
        err_console.print(f"wrote {escape(str(html))}", highlight=False)
    if as_json:
        print_json(to_json(rows))
    elif markdown:
        from moesim.reproduce.markdown import markdown_table

        today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        typer.echo(markdown_table(rows, today, _git_commit()), nl=False)
    else:
        _print_tables(rows)


def _git_commit() -> str | None:
    """The short commit of the checkout we run in, '+dirty' when it has changes; None outside
    a git checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.1%}" if signed else f"{x:.1%}"


def _print_tables(rows: list) -> None:
    from moesim.reproduce.run import summary

    # piped into a file or a CI log, rich would assume 80 columns and fold every case id
    out = console if console.is_terminal else Console(width=200)

    t = Table(title="published cases: moesim against the source")
    for col, justify in (("case", "left"), ("class", "left"), ("metric", "left"),
                         ("published", "right"), ("predicted", "right"), ("error", "right"),
                         ("within", "center")):  # fmt: skip
        numeric = justify != "left"  # figures are never cut; long ids fold instead
        t.add_column(
            col,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=numeric,
            min_width=9 if numeric else None,
            overflow="ellipsis" if numeric else "fold",
        )
    notes = []
    for r in rows:
        if r.predicted is None:
            notes.append(f"[bold]{escape(r.id)}[/]: {escape(r.reason or 'no prediction')}")
            pred, within = f"[dim]– ({len(notes)})[/]", ""
        else:
            pred = f"{r.predicted:.4g}"
            within = "[green]✓[/]" if r.within else "[red]✗[/]"
        t.add_row(
            escape(r.id), r.case_class, escape(r.metric), f"{r.published:.4g}", pred,
            _pct(r.error, signed=True), within,
        )  # fmt: skip
    out.print(t)
    for i, note in enumerate(notes, 1):
        out.print(f"[dim]({i})[/] {note}", highlight=False)
    s = summary(rows)
    st = Table(title="|error| per class")
    for col in ("class", "cases", "simulated", "within", "median |error|", "max |error|"):
        st.add_column(col, justify="left" if col == "class" else "right")
    for name, v in [*s["by_class"].items(), ("overall", s["overall"])]:
        st.add_row(
            f"[bold]{name}[/]" if name == "overall" else name,
            str(v["n"]), str(v["n_simulated"]), str(v["n_within"]),
            _pct(v["median_abs_error"]), _pct(v["max_abs_error"]),
        )  # fmt: skip
    out.print(st)
