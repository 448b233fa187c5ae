"""One self-contained HTML file: plotly.js inlined once, sections of prose and figures.

The page opens offline (no CDN), which is what a report mailed to whoever buys the GPUs needs.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from moesim.file_io import write_atomic

STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0;
       color: #222; background: #fafafa; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid
#ddd; padding-bottom: 4px; } .lead { color: #555; } table.kv { border-collapse: collapse; }
table.kv td, table.kv th { border-bottom: 1px solid #eee; padding: 4px 12px 4px 0;
text-align: left; vertical-align: top; } .note { color: #666; font-size: 0.9em; }
pre { background: #f4f4f4; padding: 12px; overflow-x: auto; font-size: 0.85em; }
.verdict { background: #eef6ee; border-left: 4px solid #54A24B; padding: 10px 14px; }
"""


@dataclass
class Section:
    title: str
    intro: str = ""  # HTML (already escaped where it holds user text)
    figures: list[go.Figure] = field(default_factory=list)
    after: str = ""


@dataclass
class Report:
    title: str
    lead: str
    sections: list[Section] = field(default_factory=list)

    def add(self, section: Section) -> Section:
        self.sections.append(section)
        return section

    def render(self) -> str:
        parts = [
            "<!DOCTYPE html><html><head><meta charset='utf-8'>",
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style>",
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body><main>",
            f"<h1>{html.escape(self.title)}</h1><p class='lead'>{self.lead}</p>",
        ]
        n = 0
        for s in self.sections:
            parts.append(f"<h2>{html.escape(s.title)}</h2>")
            if s.intro:
                parts.append(f"<div>{s.intro}</div>")
            for fig in s.figures:
                n += 1
                parts.append(
                    fig.to_html(
                        full_html=False,
                        include_plotlyjs=False,
                        div_id=f"fig{n}",
                        config={"displaylogo": False, "responsive": True},
                    )
                )
            if s.after:
                parts.append(f"<div>{s.after}</div>")
        parts.append("</main></body></html>")
        return "\n".join(parts)

    def write(self, path: str | Path) -> Path:
        """All or nothing, through symlinks and devices (moesim.file_io.write_atomic)."""
        return write_atomic(path, self.render(), make_parents=True)


def kv_table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table class='kv'>{body}</table>"


def pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"
