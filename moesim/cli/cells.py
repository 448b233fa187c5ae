"""Cells of the terminal tables: a number formatted, or '–' where it does not apply."""

from __future__ import annotations


def fmt(x: float | None, f: str) -> str:
    return "–" if x is None else format(x, f)


def ms(x_s: float | None) -> str:
    """Seconds shown in milliseconds."""
    return "–" if x_s is None else f"{x_s * 1e3:,.1f}"
