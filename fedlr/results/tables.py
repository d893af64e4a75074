"""The report's tables: one row per group (``table.csv`` for machines, ``table.md`` and the HTML
page for people) and one row per run (``runs.csv``), from a built ``Report`` (pure formatting).

``table.csv`` starts with the columns a study's results are read by, in this order::

    study, corpus, method, epsilon, codec, n_seeds, metric, mean, ci95, majority, bytes_total

(``epsilon``: the config's ``privacy.target_epsilon``, ``inf`` for a study's non-private column,
empty where it sets none; ``mean``/``ci95``: the final metric over seeds and its 95 % half-width,
``stats.Interval``; ``majority``: that metric's majority-class baseline; ``bytes_total``: mean
uplink + downlink bytes over seeds), then every other config field that varies between groups
(so that two groups never share a row's keys), then the interval's ends and kind, the metric's
standard deviation, the seeds, each of ``RUN_STATS``' mean and standard deviation, and the runs.
"""

from __future__ import annotations

import csv
import io
import statistics
from typing import Any

from fedlr.results.report import FIXED_FIELDS, RUN_STATS, Group, Report, fmt_value
from fedlr.results.stats import Interval, mean_std

# table.csv's leading columns that come from the config, by config field
LEADING_FIELDS = {"data.dataset": "corpus", "method.name": "method", "privacy.target_epsilon": "epsilon",
                  "compression.codec": "codec"}


def _fmt(v: float | None, digits: str) -> str:
    return "" if v is None else format(v, digits)


def _pm(stat: tuple, digits: str) -> str:
    mean, std, _ = stat
    if mean is None:
        return ""
    if mean == float("inf"):
        return "∞"
    return format(mean, digits) + ("" if not std else f" ± {format(std, digits)}")


def ci_cell(value: Interval, digits: str = ".4f") -> str:
    """The final metric for people: ``mean ± ci95 (n=3)`` over seeds, ``mean [low, high] (n=1,
    Wilson)`` for one seed's accuracy, ``mean (n=1, no interval)`` otherwise."""
    if value.mean is None:
        return ""
    mean = format(value.mean, digits)
    if value.kind == "t":
        return f"{mean} ± {format(value.ci95, digits)} (n={value.n})"
    if value.kind == "wilson":
        return f"{mean} [{format(value.low, digits)}, {format(value.high, digits)}] (n=1, Wilson)"
    return f"{mean} (n={value.n}, no interval)"


def _mib(v: float | None) -> str:
    """MiB with four significant digits, without exponents below 10 000 MiB."""
    if v is None:
        return ""
    return f"{v:,.0f}" if v >= 1000 else f"{v:.4g}"


def extra_fields(varying: list[str], shown: dict[str, str] = FIXED_FIELDS) -> list[str]:
    """Varying fields shown as their own columns (the ``shown`` ones always are)."""
    return [k for k in varying if k not in shown]


def _seeds(g: Group) -> str:
    return " ".join(fmt_value(x["seed"]) for x in g.runs)


def group_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """The human table (Markdown / HTML): header and rows of strings; the final metric as mean ±
    95 % interval, ε and δ as mean ± std over seeds."""
    extra = extra_fields(report.varying)
    header = [*extra, "method", "rank", "codec", "ε", "δ", "seeds", f"final {report.metric}", "majority",
              "up MiB", "down MiB", "total MiB", "wall s"]
    rows = []
    for g in report.groups:
        r, s = g.runs[0], g.stats
        rows.append([
            *(fmt_value(g.params.get(k)) for k in extra), str(r["method"]), fmt_value(r["rank"]) or "-",
            str(r["codec"]), _pm(s["epsilon"], ".3g"), _pm(s["delta"], ".2g"), _seeds(g), ci_cell(g.final),
            _fmt(g.majority, ".4f"), _mib(s["uplink_MiB"][0]), _mib(s["downlink_MiB"][0]), _mib(s["total_MiB"][0]),
            _fmt(s["wall_time_s"][0], ".1f"),
        ])
    return header, rows


def group_records(report: Report) -> list[dict]:
    """``table.csv``: one row per group, numbers unformatted (columns in the module docstring)."""
    out = []
    for g in report.groups:
        r, final = g.runs[0], g.final
        rec: dict[str, Any] = {
            "study": report.study, "corpus": g.corpus, "method": r["method"], "epsilon": g.target_epsilon,
            "codec": r["codec"], "n_seeds": len(g.runs), "metric": report.metric, "mean": final.mean,
            "ci95": final.ci95, "majority": g.majority,
            "bytes_total": statistics.fmean(x["total_bytes"] for x in g.runs),
        }
        rec.update({k: fmt_value(g.params.get(k)) for k in extra_fields(report.varying, LEADING_FIELDS)})
        rec.update(ci_low=final.low, ci_high=final.high, interval=final.kind,
                   std=mean_std([x[f"final_{report.metric}"] for x in g.runs])[1], seeds=_seeds(g))
        for m in RUN_STATS:
            rec[f"{m}_mean"], rec[f"{m}_std"], _ = g.stats[m]
        rec["runs"] = " ".join(x["run"] for x in g.runs)
        out.append(rec)
    return out


def run_records(groups: list[Group], varying: list[str]) -> list[dict]:
    """``runs.csv``: one row per run; the test set's class counts space-separated by class id."""
    out = []
    for g in groups:
        for r in g.runs:
            support = r["class_support"]
            out.append({"run": r["run"], **{k: fmt_value(g.params.get(k)) for k in extra_fields(varying)},
                        **{k: v for k, v in r.items() if k not in ("run", "class_support")},
                        "class_support": " ".join(map(str, support)) if support else None})
    return out


def to_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    if records:
        writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        for rec in records:
            writer.writerow({k: "" if v is None else v for k, v in rec.items()})
    return buf.getvalue()


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    numeric = [h not in ("method", "codec", "seeds") for h in header]
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
