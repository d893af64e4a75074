"""The report as one self-contained HTML page: the table, the figures (PNG inlined as base64
``data:`` URIs) and the per-run table; no script, no stylesheet or image fetched from anywhere."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from fedlr.results.plots import PIXELS, figure_names
from fedlr.results.report import Report
from fedlr.results.tables import run_records

CAPTIONS = {
    "fig_bytes": "Final {metric} against total MiB sent (uplink + downlink, log scale), error bars the 95 % "
                 "interval; the dark dashed step line is the Pareto frontier: no group is both cheaper and better "
                 "on average than a point on it; the grey dashed line is the majority-class baseline.",
    "fig_epsilon": "Final {metric} against the ε spent (the privacy loss at the run's δ), error bars the 95 % "
                   "interval; the dark dashed line is the Pareto frontier (least ε, highest mean), the grey "
                   "dashed line the majority-class baseline, dotted lines the non-private (ε = ∞) groups.",
    "fig_rounds": "Test {metric} per round, mean over seeds with its 95 % interval as a band; the grey dashed "
                  "line is the majority-class baseline.",
}
INTERVALS = ("mean ± 95 % confidence half-width, Student t over the n seeds (t<sub>0.975, n−1</sub>·s/√n); "
             "one seed: the Wilson 95 % interval of the test-set proportion for accuracy [low, high], no "
             "interval for the other metrics")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; line-height: 1.4; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; } td.text { text-align: left; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.85rem; color: #555; } code { background: #f4f4f4; padding: 0 0.2rem; }
.note { color: #555; font-size: 0.9rem; }
"""

TEXT_COLUMNS = ("method", "codec", "seeds", "run")


def _table(header: list[str], rows: list[list[str]]) -> str:
    cls = ['class="text"' if h in TEXT_COLUMNS else "" for h in header]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td {c}>{html.escape(str(v))}</td>" for c, v in zip(cls, row)) + "</tr>\n" for row in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    w, h = PIXELS
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" width="{w}" height="{h}">'


def render_html(report: Report, header: list[str], rows: list[list[str]], paths: dict[str, Path]) -> str:
    """The page as a string; ``paths`` holds the figures written by ``plots.write_figures``."""
    root = html.escape(str(report.root))
    n_runs = sum(len(g.runs) for g in report.groups)
    metric = html.escape(report.metric)
    figures = "\n".join(
        f"<figure>{_img(paths[key], name)}<figcaption>{html.escape(CAPTIONS[key].format(metric=report.metric))}"
        f"</figcaption></figure>"
        for key, name in figure_names(report.metric).items() if key in paths
    )
    per_run = run_records(report.groups, report.varying)
    run_header = list(per_run[0]) if per_run else []
    run_rows = [[_cell(rec[k]) for k in run_header] for rec in per_run]
    incomplete = ""
    if report.incomplete:
        items = "".join(f"<li><code>{html.escape(n)}</code></li>" for n in report.incomplete)
        incomplete = (f"<h2>Incomplete runs</h2><p class=\"note\">No <code>summary.json</code>, so left out "
                      f"of the table and figures:</p><ul>{items}</ul>")
    if report.failed:
        items = "".join(f"<li><code>{html.escape(n)}</code>: {html.escape(e)}</li>" for n, e in report.failed)
        incomplete += (f"<h2>Failed runs</h2><p class=\"note\">Their summary reports an error, so they are left out "
                       f"of the table and figures:</p><ul>{items}</ul>")
    varying = ", ".join(f"<code>{html.escape(k)}</code>" for k in report.varying) or "nothing"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>fedlr report: {root}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>fedlr report: <code>{root}</code></h1>
<p class="note">{n_runs} complete runs in {len(report.groups)} groups (runs that differ only in their seed);
varying: {varying}. Metric: <b>{metric}</b> ({html.escape(report.metric_reason)}); final {metric} is the
{INTERVALS}; majority is that metric's majority-class baseline. Bytes are summed from each run's ledger
(MiB = 2<sup>20</sup> bytes); ε and δ (mean ± standard deviation over seeds) are blank for runs without
differential privacy.
Made {html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))} by <code>fedlr report {root}</code>.</p>
<h2>Results</h2>
{_table(header, rows)}
<h2>Figures</h2>
{figures}
<h2>Every run</h2>
<details><summary>{n_runs} runs</summary>
{_table(run_header, run_rows)}
</details>
{incomplete}
</body>
</html>
"""


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
