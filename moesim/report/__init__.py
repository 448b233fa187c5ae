"""Plotly figures and self-contained HTML reports of scenarios, comparisons, sweeps and plans."""
