"""``moesim reproduce --markdown``: the README's table of published cases."""

from __future__ import annotations

from moesim.reproduce.run import CaseResult, summary


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.1%}" if signed else f"{x:.1%}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[CaseResult], date: str, commit: str | None = None) -> str:
    """A header line (date and commit), a row per case, then median and max |error| per
    class and overall."""
    made = f"Made {date}" + (f" at commit `{commit}`" if commit else "")
    lines = [
        f"_{made} with `moesim reproduce --markdown`._",
        "",
        "| case | class | metric | published | predicted | error | within |",
        "|---|---|---|---:|---:|---:|:---:|",
    ]
    for r in rows:
        pred = f"{r.predicted:.4g}" if r.predicted is not None else f"– ({_cell(r.reason or '')})"
        within = "" if r.within is None else ("✓" if r.within else "✗")
        lines.append(
            f"| {r.id} | {r.case_class} | `{r.metric}` | {r.published:.4g} | {pred} | "
            f"{_pct(r.error, signed=True)} | {within} |"
        )
    s = summary(rows)
    lines += ["", "| class | cases | simulated | within | median \\|error\\| | max \\|error\\| |"]
    lines.append("|---|---:|---:|---:|---:|---:|")
    for name, st in [*s["by_class"].items(), ("**overall**", s["overall"])]:
        lines.append(
            f"| {name} | {st['n']} | {st['n_simulated']} | {st['n_within']} | "
            f"{_pct(st['median_abs_error'])} | {_pct(st['max_abs_error'])} |"
        )
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- reproduce:begin -->", "<!-- reproduce:end -->"


def replace_block(text: str, table: str) -> str:
    """``text`` with what lies between the reproduce markers replaced by ``table``."""
    if not table.strip():
        raise ValueError("no table to insert (did `moesim reproduce --markdown` fail?)")
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN} ... {END} are missing or out of order")
    return text[: start + len(BEGIN)] + "\n" + table.strip("\n") + "\n" + text[end:]


def main(argv: list[str] | None = None) -> None:
    """``moesim reproduce --markdown | python -m moesim.reproduce.markdown README.md``."""
    import sys
    from pathlib import Path

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: moesim reproduce --markdown | python -m moesim.reproduce.markdown FILE")
    path = Path(args[0])
    from moesim.file_io import OutputError, write_atomic

    try:
        write_atomic(path, replace_block(path.read_text(), sys.stdin.read()))
    except (OSError, ValueError, OutputError) as e:
        sys.exit(f"error: {path}: {e}")
    print(f"updated the published-runs table in {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
