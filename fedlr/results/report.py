"""``fedlr report RUNS_DIR``: every run directory under RUNS_DIR in one table, figures, a page.

Every number comes from the run directories themselves:

- ``config.toml`` says what the run was (method, rank, codec, seed, anything else that varies);
- ``ledger.jsonl`` gives the accuracy per round (final = the last evaluated round, best = the
  highest, round 0 included as in ``summary.json``) and the bytes (sums of the per-round
  ``uplink_bytes`` / ``downlink_bytes``);
- ``summary.json`` marks the run complete and gives the wall time and ε, δ where the run had
  privacy (``epsilon``/``delta`` keys; the last ledger row's as a fallback); ε is ∞ for a run
  with ``privacy.target_epsilon = inf`` (the non-private column of a privacy study).

Runs that differ only in ``seed`` form a group; the table shows each group's mean ± sample
standard deviation over its seeds. Written to ``RUNS_DIR/report/`` (or ``--out``)::

    runs.csv                 one row per run (tidy)
    table.csv, table.md      one row per group: mean and std over seeds
    accuracy_vs_bytes.png    final accuracy against total MiB sent, log x, Pareto frontier
    accuracy_vs_epsilon.png  final accuracy against ε, Pareto frontier
    accuracy_per_round.png   central test accuracy per round, mean over seeds, ± std band
    report.html              all of the above in one self-contained page (images inline)
    tensorboard/<run>/       with --tensorboard: every ledger as TensorBoard scalars
"""

from __future__ import annotations

import csv
import io
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from fedlr.errors import ConfigError
from fedlr.config_paths import flatten
from fedlr.results.ledger import LedgerError, LedgerRow
from fedlr.results.pareto import mean_std
from fedlr.results.rundir import RunDir

MIB = 2**20
REPORT_DIR = "report"
# Fields that never distinguish groups: the seed is what a group averages over; output is where.
NOT_A_PARAMETER = ("seed",)
NOT_A_PARAMETER_SECTIONS = ("output",)
# The columns the table always has, by config field.
FIXED_FIELDS = {"method.name": "method", "method.rank": "rank", "compression.codec": "codec"}
METRICS = ("final_accuracy", "best_accuracy", "epsilon", "delta", "uplink_MiB", "downlink_MiB", "total_MiB",
           "wall_time_s")


class ReportError(ConfigError):
    """Nothing to report, or a run directory that cannot be read."""


# ----------------------------------------------------------------------------- reading runs
@dataclass
class RunRecord:
    """One run directory as read from disk."""

    path: Path
    name: str  # relative to the report's root
    config: dict
    config_text: str  # the config as written (shown beside TensorBoard's scalars)
    summary: dict | None  # None: the run is not complete
    ledger: list[LedgerRow] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.summary is not None


def read_run(run: RunDir, root: Path) -> RunRecord:
    try:
        config_text = run.config_path.read_text()
        config = tomllib.loads(config_text)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ReportError(f"{run.config_path}: cannot read: {e}") from None
    try:
        summary = run.summary()
    except ValueError as e:
        raise ReportError(f"{run.summary_path}: not JSON: {e}") from None
    if summary is not None and not run.ledger_path.is_file():
        raise ReportError(f"{run.ledger_path}: missing (the run has a {RunDir.SUMMARY} but no ledger)")
    try:
        ledger = run.ledger()
    except LedgerError as e:
        raise ReportError(str(e)) from None
    name = run.path.relative_to(root).as_posix() if run.path != root else run.path.name
    return RunRecord(path=run.path, name=name, config=config, config_text=config_text, summary=summary,
                     ledger=ledger)


def discover_runs(root: Path | str) -> list[RunRecord]:
    """Every run directory (``RunDir.below``) at or below ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root}: not a directory")
    return [read_run(run, root) for run in RunDir.below(root)]


# ----------------------------------------------------------------------------- pure tables


def _is_parameter(key: str) -> bool:
    return key not in NOT_A_PARAMETER and key.split(".")[0] not in NOT_A_PARAMETER_SECTIONS


def _defaults() -> dict[str, Any]:
    from fedlr.config import Experiment

    return {k: v for k, v in flatten(Experiment().to_dict()).items() if v is not None}


def normalized(config: dict, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's config as dotted fields, a field it lacks filled with today's default (a run made
    before a config section existed ran as that section's defaults do), None values dropped
    (``config.toml`` leaves out a None that is the default; ``"none"`` stands for any other)."""
    flat = {k: v for k, v in flatten(config).items() if v is not None}
    defaults = _defaults() if defaults is None else defaults
    return {**{k: v for k, v in defaults.items() if k not in flat}, **flat}


def group_key(config: dict, defaults: dict[str, Any] | None = None) -> str:
    """What makes two runs the same experiment up to the seed (and where they were written)."""
    flat = {k: v for k, v in normalized(config, defaults).items() if _is_parameter(k)}
    return json.dumps(flat, sort_keys=True)


def varying_fields(configs: Iterable[dict], defaults: dict[str, Any] | None = None) -> list[str]:
    """Dotted config fields (other than seed and output.*) whose value differs between runs,
    in the order they first appear in the configs (see ``normalized`` for missing fields)."""
    configs = list(configs)
    defaults = _defaults() if defaults is None else defaults
    flats = [normalized(c, defaults) for c in configs]
    order: list[str] = []
    for c in configs:
        order += [k for k in flatten(c) if k not in order]
    order += [k for k in defaults if k not in order]
    keys = [k for k in order if _is_parameter(k)]
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def _finite(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _method_has_rank(method: str | None) -> bool:
    try:
        from fedlr.methods import get_method

        return get_method(method).adapter is not None
    except Exception:  # a method this version does not know: show its rank as recorded
        return True


def run_row(config: dict, summary: dict | None, ledger: list[LedgerRow]) -> dict:
    """One run's figures from its config, summary and ledger (pure)."""
    flat = flatten(config)
    method = flat.get("method.name")
    accs = [r.eval_accuracy for r in ledger if r.eval_accuracy is not None]
    up = sum(r.uplink_bytes for r in ledger)
    down = sum(r.downlink_bytes for r in ledger)
    last = ledger[-1] if ledger else None
    summary = summary or {}

    def privacy(key):
        value = summary.get(key) if summary.get(key) is not None else getattr(last, key, None)
        if key == "epsilon":
            target = flat.get("privacy.target_epsilon")
            if value is None and isinstance(target, float) and math.isinf(target):
                value = math.inf  # privacy.target_epsilon = inf: the non-private column of a privacy study
            if isinstance(value, (int, float)) and math.isinf(value) and value > 0:
                return math.inf
        return _finite(value)

    wall = summary.get("wall_time_s", getattr(last, "wall_time_s", None))
    return {
        "method": method,
        "rank": flat.get("method.rank") if _method_has_rank(method) else None,
        "codec": flat.get("compression.codec") or "none",
        "seed": flat.get("seed"),
        "epsilon": privacy("epsilon"),
        "delta": privacy("delta"),
        "rounds": max((r.round for r in ledger), default=0),
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "uplink_bytes": up,
        "downlink_bytes": down,
        "total_bytes": up + down,
        "uplink_MiB": up / MIB,
        "downlink_MiB": down / MIB,
        "total_MiB": (up + down) / MIB,
        "wall_time_s": _finite(wall),
    }


def accuracy_curve(ledger: list[LedgerRow]) -> dict[int, float]:
    """Central test accuracy by round (rounds without an evaluation left out)."""
    return {r.round: float(r.eval_accuracy) for r in ledger if r.eval_accuracy is not None}


def _stat(values: list) -> tuple[float | None, float | None, int]:
    """``mean_std``, except that a group whose values include ∞ (ε of a non-private run) has mean
    ∞ and no standard deviation."""
    if any(isinstance(v, float) and math.isinf(v) for v in values):
        return math.inf, None, sum(v is not None for v in values)
    return mean_std(values)


def _sort_value(v) -> tuple:
    if v is None:
        return (0, 0.0, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (1, float(v), "")
    return (2, 0.0, json.dumps(v, sort_keys=True))


@dataclass
class Group:
    """Runs that differ only in their seed."""

    params: dict[str, Any]  # the varying fields' values (dotted key -> value)
    runs: list[dict]  # run rows
    curves: list[dict[int, float]]
    stats: dict[str, tuple[float | None, float | None, int]] = field(default_factory=dict)

    @property
    def method(self):
        return self.runs[0]["method"]

    def label(self, varying: list[str]) -> str:
        """A short legend label: method, rank, codec, then the other varying fields."""
        r = self.runs[0]
        parts = [str(r["method"])]
        if r["rank"] is not None:
            parts.append(f"r{r['rank']}")
        if r["codec"] != "none":
            parts.append(str(r["codec"]))
        for key in varying:
            if key not in FIXED_FIELDS:
                parts.append(f"{key.split('.')[-1]}={_fmt_value(self.params.get(key))}")
        return " ".join(parts)

    def mean_curve(self) -> list[tuple[int, float, float | None]]:
        """(round, mean, std) over the seeds that evaluated that round."""
        rounds = sorted({k for c in self.curves for k in c})
        out = []
        for rnd in rounds:
            m, s, _ = mean_std([c.get(rnd) for c in self.curves])
            out.append((rnd, m, s))
        return out


def group_runs(records: list[RunRecord]) -> tuple[list[Group], list[str]]:
    """Group complete runs by everything but the seed; returns (groups sorted by method, rank,
    codec and the other varying fields; the varying fields)."""
    complete = [r for r in records if r.complete]
    defaults = _defaults()
    varying = varying_fields((r.config for r in complete), defaults)
    groups: dict[str, Group] = {}
    for rec in complete:
        row = {"run": rec.name, **run_row(rec.config, rec.summary, rec.ledger)}
        flat = normalized(rec.config, defaults)
        key = group_key(rec.config, defaults)
        if key not in groups:
            groups[key] = Group(params={k: flat.get(k) for k in varying}, runs=[], curves=[])
        groups[key].runs.append(row)
        groups[key].curves.append(accuracy_curve(rec.ledger))
    for g in groups.values():
        g.runs.sort(key=lambda r: (_sort_value(r["seed"]), r["run"]))
        g.stats = {m: _stat([r[m] for r in g.runs]) for m in METRICS}

    def order(g: Group) -> tuple:
        r = g.runs[0]
        return (_sort_value(r["method"]), _sort_value(r["rank"]), _sort_value(r["codec"]),
                *(_sort_value(g.params.get(k)) for k in varying if k not in FIXED_FIELDS))

    return sorted(groups.values(), key=order), varying


def _fmt_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "+".join(_fmt_value(x) for x in v)
    return str(v)


def _fmt(v: float | None, digits: str) -> str:
    return "" if v is None else format(v, digits)


def _pm(stat: tuple, digits: str) -> str:
    mean, std, _ = stat
    if mean is None:
        return ""
    if math.isinf(mean):
        return "∞"
    return format(mean, digits) + ("" if not std else f" ± {format(std, digits)}")


def _mib(v: float | None) -> str:
    """MiB with four significant digits, without exponents below 10 000 MiB."""
    if v is None:
        return ""
    return f"{v:,.0f}" if v >= 1000 else f"{v:.4g}"


def extra_fields(varying: list[str]) -> list[str]:
    """Varying fields shown as their own columns (method, rank and codec always are)."""
    return [k for k in varying if k not in FIXED_FIELDS]


def group_table(groups: list[Group], varying: list[str]) -> tuple[list[str], list[list[str]]]:
    """The human table (Markdown / HTML): header and rows of strings, mean ± std over seeds."""
    extra = extra_fields(varying)
    header = [*extra, "method", "rank", "codec", "ε", "δ", "seeds", "final acc", "best acc",
              "up MiB", "down MiB", "total MiB", "wall s"]
    rows = []
    for g in groups:
        r, s = g.runs[0], g.stats
        rows.append([
            *(_fmt_value(g.params.get(k)) for k in extra), str(r["method"]), _fmt_value(r["rank"]) or "-",
            str(r["codec"]), _pm(s["epsilon"], ".3g"), _pm(s["delta"], ".2g"),
            " ".join(_fmt_value(x["seed"]) for x in g.runs),
            _pm(s["final_accuracy"], ".4f"), _pm(s["best_accuracy"], ".4f"),
            _mib(s["uplink_MiB"][0]), _mib(s["downlink_MiB"][0]), _mib(s["total_MiB"][0]),
            _fmt(s["wall_time_s"][0], ".1f"),
        ])
    return header, rows


def group_records(groups: list[Group], varying: list[str]) -> list[dict]:
    """The tidy per-group table (CSV): one column per statistic, numbers unformatted."""
    out = []
    for g in groups:
        r = g.runs[0]
        rec: dict[str, Any] = {k: _fmt_value(g.params.get(k)) for k in extra_fields(varying)}
        rec.update(method=r["method"], rank=r["rank"], codec=r["codec"], n_seeds=len(g.runs),
                   seeds=" ".join(_fmt_value(x["seed"]) for x in g.runs))
        for m in METRICS:
            mean, std, _ = g.stats[m]
            rec[f"{m}_mean"], rec[f"{m}_std"] = mean, std
        rec["runs"] = " ".join(x["run"] for x in g.runs)
        out.append(rec)
    return out


def run_records(groups: list[Group], varying: list[str]) -> list[dict]:
    """The tidy per-run table (CSV)."""
    out = []
    for g in groups:
        for r in g.runs:
            out.append({"run": r["run"], **{k: _fmt_value(g.params.get(k)) for k in extra_fields(varying)},
                        **{k: v for k, v in r.items() if k != "run"}})
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


# ----------------------------------------------------------------------------- the report
@dataclass
class Report:
    root: Path
    groups: list[Group]
    varying: list[str]
    incomplete: list[str]
    records: list[RunRecord] = field(default_factory=list)

    def labels(self) -> list[str]:
        return [g.label(self.varying) for g in self.groups]


def build_report(root: Path | str) -> Report:
    root = Path(root)
    records = discover_runs(root)
    if not records:
        raise ReportError(f"{root}: no run directories (folders with a {RunDir.CONFIG}) found")
    if not any(r.complete for r in records):
        raise ReportError(f"{root}: {len(records)} run directories, none complete (no {RunDir.SUMMARY})")
    groups, varying = group_runs(records)
    return Report(root=root, groups=groups, varying=varying, incomplete=[r.name for r in records if not r.complete],
                  records=records)


def write_report(root: Path | str, out: Path | str | None = None, figures: bool = True,
                 html: bool = True, tensorboard: bool = False) -> dict[str, Path]:
    """Read the runs under ``root`` and write the tables, figures and page (and, with
    ``tensorboard``, every ledger as TensorBoard scalars under ``tensorboard/``); returns the paths."""
    report = build_report(root)
    out = Path(out) if out is not None else report.root / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    header, rows = group_table(report.groups, report.varying)
    files = {
        "runs_csv": ("runs.csv", to_csv(run_records(report.groups, report.varying))),
        "table_csv": ("table.csv", to_csv(group_records(report.groups, report.varying))),
        "table_md": ("table.md", to_markdown(header, rows)),
    }
    for key, (name, text) in files.items():
        paths[key] = out / name
        paths[key].write_text(text)
    if figures or html:
        from fedlr.results import plots

        paths.update(plots.write_figures(report, out))
    if html:
        from fedlr.results.html import render_html

        paths["html"] = out / "report.html"
        paths["html"].write_text(render_html(report, header, rows, paths))
    if tensorboard:
        from fedlr.results.tensorboard import TensorBoardUnavailable, export_ledgers

        try:
            export_ledgers(report.records, out / "tensorboard")
        except TensorBoardUnavailable as e:
            raise ReportError(str(e)) from None
        paths["tensorboard"] = out / "tensorboard"
    return paths
