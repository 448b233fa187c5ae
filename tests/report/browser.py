"""Open an HTML report in headless Chromium and read back JavaScript errors and rendered plots.

A probe script is added to a copy of the page: it records every error event and unhandled
promise rejection (plotly draws asynchronously) and, after the
plots have had time to draw, writes {errors, plots, rendered} into a body attribute that
``--dump-dom`` prints. No WebDriver needed: Debian's ``chromium`` package is enough.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

PROBE_HEAD = (
    "<script>window.__errors=[];"
    "window.addEventListener('error',function(e){window.__errors.push(String(e.message))});"
    "window.addEventListener('unhandledrejection',function(e){"
    "window.__errors.push('unhandled rejection: '+String(e.reason))});"
    "</script>"
)
PROBE_TAIL = (
    "<script>setTimeout(function(){var p=document.querySelectorAll('.plotly-graph-div');"
    "var r=0;p.forEach(function(d){if(d.querySelector('.main-svg'))r++;});"
    "document.body.setAttribute('data-check',JSON.stringify({errors:window.__errors,"
    "plots:p.length,rendered:r}));},2000);</script>"
)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def check_in_browser(html_path: Path, timeout_s: float = 120) -> dict:
    """{errors: [...], plots: n, rendered: n} for the page at ``html_path``."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    text = html_path.read_text(encoding="utf-8")
    text = text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace(
        "</body>", PROBE_TAIL + "</body>", 1
    )
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(text, encoding="utf-8")
        out = subprocess.run(
            [
                exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={tmp}/profile", "--virtual-time-budget=20000",
                "--dump-dom", page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )  # fmt: skip
    m = re.search(r"data-check=\"([^\"]*)\"", out.stdout)
    if m is None:
        raise RuntimeError(f"the probe did not report; chromium said: {out.stderr[-2000:]}")
    return json.loads(m.group(1).replace("&quot;", '"'))
