"""Helpers every report uses: numbers in words and scenario variants."""

from __future__ import annotations

from typing import Any

from moesim.specs import Scenario


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def money(x: float | None) -> str:
    return "–" if x is None else f"${x:,.0f}"


def num(x: float | None, fmt: str = ",.0f") -> str:
    return "–" if x is None else format(x, fmt)


def ms(x_s: float | None) -> str:
    """Seconds shown in milliseconds below one second: '13.1 ms', '1.47 s'."""
    if x_s is None:
        return "–"
    return f"{x_s * 1e3:.3g} ms" if x_s < 1 else f"{x_s:.3g} s"


def variant(s: Scenario, **updates: Any) -> Scenario | None:
    """``s`` with dotted-key updates (``parallel__ep=8``); None when the result is invalid."""
    d = s.model_dump(mode="python")
    for key, value in updates.items():
        node = d
        parts = key.split("__")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                return None
            node = child
        node[parts[-1]] = value
    try:
        return Scenario.model_validate(d)
    except ValueError:
        return None
