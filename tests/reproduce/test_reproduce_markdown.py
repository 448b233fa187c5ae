"""moesim.reproduce.markdown: the README table and the block it replaces."""

from __future__ import annotations

import pytest

from moesim.reproduce.markdown import BEGIN, END, markdown_table, replace_block
from moesim.reproduce.run import CaseResult

ROWS = [
    CaseResult("a", "dense_training", "step_time_s", 4.0, 0.15, "A", 4.6),
    CaseResult("b", "serving", "ttft_s_p50", 0.2, 0.15, "B", None, "unsupported: x | y"),
]


def test_table_rows_header_and_summary() -> None:
    md = markdown_table(ROWS, "2026-01-02", "abc1234")
    lines = md.splitlines()
    assert lines[0] == "_Made 2026-01-02 at commit `abc1234` with `moesim reproduce --markdown`._"
    assert "| a | dense_training | `step_time_s` | 4 | 4.6 | +15.0% | ✓ |" in lines
    assert "| b | serving | `ttft_s_p50` | 0.2 | – (unsupported: x \\| y) | – |  |" in lines
    assert "| **overall** | 2 | 1 | 1 | 15.0% | 15.0% |" in lines
    assert "at commit" not in markdown_table(ROWS, "2026-01-02")


def test_replace_block_keeps_what_is_around() -> None:
    text = f"intro\n{BEGIN}\nold table\n{END}\noutro\n"
    out = replace_block(text, "| new |\n")
    assert out == f"intro\n{BEGIN}\n| new |\n{END}\noutro\n"
    assert replace_block(out, "| newer |") == f"intro\n{BEGIN}\n| newer |\n{END}\noutro\n"


def test_replace_block_refuses_an_empty_table_or_missing_markers() -> None:
    with pytest.raises(ValueError, match="no table"):
        replace_block(f"{BEGIN}\n{END}", "  \n")
    with pytest.raises(ValueError, match="markers"):
        replace_block("no markers here", "| t |")
