"""Conformance reports: the terminal matrix, JSON, Markdown, and a self-contained HTML page with a
heatmap of error / budget. Files are written atomically."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence

from attngraph.conformance.runner import Result, as_dicts, summary
from attngraph.fileio import atomic_write_text


def _matrix(results: Sequence[Result]):
    cases = list(dict.fromkeys(r.case for r in results))
    targets = list(dict.fromkeys(r.target for r in results))
    cell = {(r.case, r.target): r for r in results}
    return cases, targets, cell


def cell_text(r: Result | None) -> str:
    """'ok .12' (worst error / budget), 'FAIL 3e+02' or 'FAIL NaN', 'skip', or '' when not run."""
    if r is None:
        return ""
    if r.status == "skipped":
        return "skip"
    if r.ratio is None or not math.isfinite(r.ratio):
        return "FAIL" if r.status == "failed" else "ok"
    if r.status == "failed":
        return f"FAIL {r.ratio:.0e}"
    return f"ok {r.ratio:.2f}".replace("0.", ".")


def counts_line(results: Sequence[Result]) -> str:
    c = summary(results)
    return f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"


def terminal(results: Sequence[Result], *, details: bool = True) -> str:
    """Cases x targets; each cell the worst error as a fraction of its budget. Ends with the counts line."""
    cases, targets, cell = _matrix(results)
    width = max([len(c) for c in cases] + [4]) + 2
    colw = max([len(t) for t in targets] + [9]) + 2
    lines = ["case".ljust(width) + "".join(t.rjust(colw) for t in targets)]
    for c in cases:
        lines.append(c.ljust(width) + "".join(cell_text(cell.get((c, t))).rjust(colw) for t in targets))
    failed = [r for r in results if r.status == "failed"]
    if details and failed:
        lines += ["", "failures:"] + [f"  {r.case} on {r.target}: {r.detail}" for r in failed]
    skipped = {r.detail for r in results if r.status == "skipped"}
    if details and skipped:
        lines += ["", "skipped (known deviations and refusals, as data):"] + [f"  {d}" for d in sorted(skipped)]
    lines += ["", "cells: worst error / budget (<= 1 passes); budgets by dtype in attngraph.conformance.budgets",
              counts_line(results)]
    return "\n".join(lines)


def to_json(results: Sequence[Result], meta: dict | None = None) -> str:
    return json.dumps({"meta": meta or {}, "summary": summary(results), "results": as_dicts(results)}, indent=1)


def markdown(results: Sequence[Result], meta: dict | None = None) -> str:
    cases, targets, cell = _matrix(results)
    pins = {r.case: r.pins for r in results}
    out = ["# attngraph conformance", ""]
    if meta:
        out += [f"- {k}: {v}" for k, v in meta.items()] + [""]
    out += ["| case | " + " | ".join(targets) + " | pins |", "|---|" + "---|" * len(targets) + "---|"]
    for c in cases:
        out.append(f"| {c} | " + " | ".join(cell_text(cell.get((c, t))) for t in targets) + f" | {pins[c]} |")
    out += ["", counts_line(results), ""]
    return "\n".join(out)


def heatmap_png(results: Sequence[Result]) -> bytes | None:
    """log10(error / budget) per cell as a PNG (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return None
    cases, targets, cell = _matrix(results)
    grid = np.full((len(cases), len(targets)), np.nan)
    for i, c in enumerate(cases):
        for j, t in enumerate(targets):
            r = cell.get((c, t))
            if r is not None and r.status != "skipped":
                ratio = r.ratio if r.ratio is not None and math.isfinite(r.ratio) else 1e3
                grid[i, j] = math.log10(max(ratio, 1e-4))
    fig, ax = plt.subplots(figsize=(2 + 1.1 * len(targets), 1 + 0.16 * len(cases)))
    cmap = matplotlib.colormaps["RdYlGn_r"].with_extremes(bad="#cccccc")  # grey: skipped cells
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=-4, vmax=1, interpolation="nearest")
    ax.xaxis.tick_top()  # target names above the (long) matrix
    ax.set_xticks(range(len(targets)), targets, rotation=30, ha="left", fontsize=8)
    ax.set_yticks(range(len(cases)), cases, fontsize=5)
    fig.colorbar(im, ax=ax, label="log10(error / budget): > 0 fails; grey: skipped")
    ax.set_title("attngraph conformance: error / budget")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _color(r: Result | None) -> str:
    if r is None or r.status == "skipped":
        return "#ddd"
    if r.status == "failed":
        return "#e06060"
    ratio = r.ratio or 0.0
    return "#9fdf9f" if ratio < 0.1 else "#d8f0a0" if ratio < 0.5 else "#f5e08a"


def _td(r: Result | None) -> str:
    title = html.escape(r.detail) if r else ""
    return f'<td style="background:{_color(r)}" title="{title}">{html.escape(cell_text(r))}</td>'


def html_page(results: Sequence[Result], meta: dict | None = None) -> str:
    """One self-contained page: summary, heatmap image (inline), and the colored matrix with details on hover."""
    cases, targets, cell = _matrix(results)
    pins = {r.case: r.pins for r in results}
    png = heatmap_png(results)
    img = f'<img alt="heatmap of error / budget" src="data:image/png;base64,{base64.b64encode(png).decode()}">' \
        if png else "<p>(install matplotlib for the heatmap image)</p>"
    rows = []
    for c in cases:
        tds = "".join(_td(cell.get((c, t))) for t in targets)
        rows.append(f"<tr><th>{html.escape(c)}</th>{tds}<td class=pins>{html.escape(pins[c])}</td></tr>")
    meta_html = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in (meta or {}).items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>attngraph conformance</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #bbb;padding:2px 6px;text-align:right;white-space:nowrap}} th{{text-align:left}}
td.pins{{text-align:left;color:#555}}
.summary{{font-size:18px;font-weight:bold}}</style></head><body>
<h1>attngraph conformance</h1><p class=summary>{html.escape(counts_line(results))}</p><ul>{meta_html}</ul>
{img}
<h2>Matrix</h2><p>Each cell: worst error as a fraction of its budget (&le; 1 passes). Hover for details.</p>
<table><tr><th>case</th>{''.join(f'<th>{html.escape(t)}</th>' for t in targets)}<th>pins</th></tr>
{''.join(rows)}</table></body></html>
"""


def write(results: Sequence[Result], *, json_path=None, markdown_path=None, html_path=None, meta=None) -> list[str]:
    written = []
    for path, make in ((json_path, to_json), (markdown_path, markdown), (html_path, html_page)):
        if path:
            atomic_write_text(path, make(results, meta))
            written.append(str(path))
    return written
