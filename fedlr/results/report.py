"""``fedlr report RUNS_DIR``: every run directory under RUNS_DIR in one table, figures, a page.

Every number comes from the run directories themselves:

- ``config.toml`` says what the run was (corpus, method, rank, codec, target ε, seed, anything
  else that varies);
- ``ledger.jsonl`` gives the central evaluation per round (final = the last evaluated round, best
  = the highest, round 0 included as in ``summary.json``), the test set's per-class counts and
  the bytes (sums of the per-round ``uplink_bytes`` / ``downlink_bytes``);
- ``summary.json`` marks the run complete and gives the wall time and ε, δ where the run had
  privacy (``epsilon``/``delta`` keys; the last ledger row's as a fallback); ε is ∞ for a run
  with ``privacy.target_epsilon = inf`` (the non-private column of a privacy study).

**The metric** (``--metric``; ``choose_metric``): one of ``stats.METRICS``. By default balanced
accuracy where a test set is imbalanced, i.e. its majority class holds at least
``IMBALANCED_SHARE`` = 0.6 of its examples (SMS spam: 0.87), else accuracy; accuracy for runs
recorded before balanced accuracy, macro-F1 and ROC AUC were (which can report nothing else).

Runs that differ only in ``seed`` form a group; each group's final metric is its mean over seeds
with a 95 % interval (``stats.interval``: Student t over seeds; one seed: Wilson for accuracy,
none for the others), beside the majority-class baseline (``stats.majority_baseline``). Written
to ``RUNS_DIR/report/`` (or ``--out``); ``M`` is the metric's name::

    runs.csv               one row per run (tidy)
    table.csv, table.md    one row per group: mean, 95 % interval, majority baseline, bytes
    M_vs_bytes.png         final metric against total MiB sent, log x, Pareto frontier
    M_vs_epsilon.png       final metric against ε, Pareto frontier
    M_per_round.png        the metric per round, mean over seeds, 95 % interval band
    report.html            all of the above in one self-contained page (images inline)
    tensorboard/<run>/     with --tensorboard: every ledger as TensorBoard scalars
"""

from __future__ import annotations

import json
import math
import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from fedlr.config import RESULT_NEUTRAL_FIELDS
from fedlr.errors import ConfigError
from fedlr.config_paths import flatten
from fedlr.results.ledger import LedgerError, LedgerRow
from fedlr.results.rundir import RunDir
from fedlr.results.stats import METRICS, Interval, interval, majority_baseline, majority_share, mean_std

MIB = 2**20
REPORT_DIR = "report"
# Fields that never distinguish groups: the seed is what a group averages over; output is where.
NOT_A_PARAMETER = ("seed", *RESULT_NEUTRAL_FIELDS)
NOT_A_PARAMETER_SECTIONS = ("output",)
# The columns the human table (and a group's label) always has, by config field.
FIXED_FIELDS = {"method.name": "method", "method.rank": "rank", "compression.codec": "codec"}
# The per-run figures a group averages (mean and standard deviation in table.csv's last columns).
RUN_STATS = ("final_accuracy", "best_accuracy", *(f"final_{m}" for m in METRICS[1:]), "epsilon", "delta",
             "uplink_MiB", "downlink_MiB", "total_MiB", "wall_time_s")
# A test set whose majority class holds at least this share of the examples is imbalanced: there
# the report defaults to balanced accuracy (a majority-class guess scores 0.5 on two classes, not 0.87).
IMBALANCED_SHARE = 0.6


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
    def error(self) -> str | None:
        """Why the run failed, where its summary says so (a run in which no round aggregated)."""
        return (self.summary or {}).get("error")

    @property
    def complete(self) -> bool:
        """Finished and not failed: a failed run's final figures are the untrained model's."""
        return self.summary is not None and self.error is None


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


def last_evaluated(ledger: list[LedgerRow]) -> LedgerRow | None:
    """The last row with a central evaluation (rows without one have no eval_* figures)."""
    return next((r for r in reversed(ledger) if r.eval_accuracy is not None), None)


def run_row(config: dict, summary: dict | None, ledger: list[LedgerRow]) -> dict:
    """One run's figures from its config, summary and ledger (pure)."""
    flat = flatten(config)
    method = flat.get("method.name")
    accs = [r.eval_accuracy for r in ledger if r.eval_accuracy is not None]
    evaluated = last_evaluated(ledger)
    support = evaluated.eval_class_support if evaluated is not None else None
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
        **{f"final_{m}": getattr(evaluated, f"eval_{m}", None) for m in METRICS[1:]},
        "test_examples": sum(support) if support else None,
        "class_support": support,
        "uplink_bytes": up,
        "downlink_bytes": down,
        "total_bytes": up + down,
        "uplink_MiB": up / MIB,
        "downlink_MiB": down / MIB,
        "total_MiB": (up + down) / MIB,
        "wall_time_s": _finite(wall),
    }


def metric_curve(ledger: list[LedgerRow], metric: str = "accuracy") -> dict[int, float]:
    """The central evaluation's ``metric`` by round (rounds without one left out)."""
    values = {r.round: getattr(r, f"eval_{metric}") for r in ledger}
    return {rnd: float(v) for rnd, v in values.items() if v is not None}


def predates_metrics(ledger: list[LedgerRow]) -> bool:
    """Whether the run was evaluated before balanced accuracy, macro-F1 and ROC AUC were recorded
    (an evaluated row without a balanced accuracy, which every evaluation since has)."""
    return any(r.eval_accuracy is not None and r.eval_balanced_accuracy is None for r in ledger)


def choose_metric(requested: str | None, ledgers: list[list[LedgerRow]]) -> tuple[str, str]:
    """(the metric the report uses, why), from ``--metric`` and the runs' ledgers (pure).

    A name not in ``METRICS`` is an error listing them; so is any metric but accuracy asked of runs
    that predate the others. Unasked: accuracy for such runs; otherwise balanced accuracy where a
    test set's majority class holds at least ``IMBALANCED_SHARE`` of it, else accuracy."""
    if requested is not None and requested not in METRICS:
        raise ReportError(f"--metric {requested!r}: not a metric; choose one of {', '.join(METRICS)}")
    old = sum(predates_metrics(ledger) for ledger in ledgers)
    if old and requested not in (None, "accuracy"):
        raise ReportError(f"--metric {requested}: {old} of {len(ledgers)} runs were recorded before fedlr recorded "
                          "balanced accuracy, macro-F1 and ROC AUC; they have only accuracy (--metric accuracy)")
    if requested is not None:
        return requested, "asked for with --metric"
    if old:
        return "accuracy", f"{old} of {len(ledgers)} runs predate the other metrics: accuracy is all they have"
    supports = [r.eval_class_support for ledger in ledgers if (r := last_evaluated(ledger)) and r.eval_class_support]
    if not supports:
        return "accuracy", "no run recorded its test set's class counts"
    share = max(majority_share(s) for s in supports)
    if share >= IMBALANCED_SHARE:
        return "balanced_accuracy", (f"imbalanced test set: its majority class is {share:.1%} of it "
                                     f"(≥ {IMBALANCED_SHARE:.0%}), where always guessing it scores {share:.4f} accuracy")
    return "accuracy", f"balanced test sets: no majority class above {share:.1%} (< {IMBALANCED_SHARE:.0%})"


def group_majority(supports: list[list[int] | None], metric: str) -> float | None:
    """The majority-class baseline of ``metric``, mean over the seeds whose test set's class counts
    are known (a seed may draw its own test split); None where none is."""
    values = [majority_baseline(s)[metric] for s in supports if s]
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


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
    """Runs that differ only in their seed, and their figures for the report's ``metric``."""

    config: dict[str, Any]  # the (normalized, dotted) config the runs share but for the seed
    params: dict[str, Any]  # the varying fields' values (dotted key -> value)
    metric: str
    runs: list[dict] = field(default_factory=list)  # run rows
    curves: list[dict[int, float]] = field(default_factory=list)  # the metric by round, one per run
    stats: dict[str, tuple[float | None, float | None, int]] = field(default_factory=dict)  # RUN_STATS
    final: Interval = Interval(mean=None, n=0)  # the final metric over seeds, with its 95 % interval
    majority: float | None = None  # the majority-class baseline of the metric

    @property
    def method(self):
        return self.runs[0]["method"]

    @property
    def corpus(self):
        return self.config.get("data.dataset")

    @property
    def target_epsilon(self) -> float | None:
        return self.config.get("privacy.target_epsilon")

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
                parts.append(f"{key.split('.')[-1]}={fmt_value(self.params.get(key))}")
        return " ".join(parts)

    def mean_curve(self) -> list[tuple[int, Interval]]:
        """(round, the metric's mean and 95 % interval over the seeds that evaluated that round)."""
        rounds = sorted({k for c in self.curves for k in c})
        return [(rnd, interval([c.get(rnd) for c in self.curves], self.metric, self.runs[0]["test_examples"]))
                for rnd in rounds]

    def summarize(self) -> None:
        """Sort the runs by seed and compute the group's figures from them."""
        self.runs.sort(key=lambda r: (_sort_value(r["seed"]), r["run"]))
        self.stats = {m: _stat([r[m] for r in self.runs]) for m in RUN_STATS}
        self.final = interval([r[f"final_{self.metric}"] for r in self.runs], self.metric,
                              self.runs[0]["test_examples"])
        self.majority = group_majority([r["class_support"] for r in self.runs], self.metric)


def group_runs(records: list[RunRecord], metric: str = "accuracy") -> tuple[list[Group], list[str]]:
    """Group complete runs by everything but the seed; returns (groups sorted by corpus, method,
    rank, codec and the other varying fields; the varying fields)."""
    complete = [r for r in records if r.complete]
    defaults = _defaults()
    varying = varying_fields((r.config for r in complete), defaults)
    groups: dict[str, Group] = {}
    for rec in complete:
        flat = normalized(rec.config, defaults)
        group = groups.setdefault(group_key(rec.config, defaults),
                                  Group(config=flat, params={k: flat.get(k) for k in varying}, metric=metric))
        group.runs.append({"run": rec.name, **run_row(rec.config, rec.summary, rec.ledger)})
        group.curves.append(metric_curve(rec.ledger, metric))
    for g in groups.values():
        g.summarize()

    def order(g: Group) -> tuple:
        r = g.runs[0]
        return (_sort_value(g.corpus), _sort_value(r["method"]), _sort_value(r["rank"]), _sort_value(r["codec"]),
                *(_sort_value(g.params.get(k)) for k in varying if k not in FIXED_FIELDS))

    return sorted(groups.values(), key=order), varying


def fmt_value(v) -> str:
    """A config value as a table cell: None blank, booleans lower case, lists joined by '+'."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "+".join(fmt_value(x) for x in v)
    return str(v)


# ----------------------------------------------------------------------------- the report
@dataclass
class Report:
    root: Path
    study: str  # --study, or the folder's name
    metric: str  # what the tables and figures show (stats.METRICS)
    metric_reason: str  # why that one (choose_metric)
    groups: list[Group]
    varying: list[str]
    incomplete: list[str]  # no summary yet
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run, the error its summary gives)
    records: list[RunRecord] = field(default_factory=list)

    def labels(self) -> list[str]:
        return [g.label(self.varying) for g in self.groups]


def build_report(root: Path | str, metric: str | None = None, study: str | None = None) -> Report:
    """Read, choose the metric (``choose_metric``) and group the runs under ``root``."""
    root = Path(root)
    records = discover_runs(root)
    if not records:
        raise ReportError(f"{root}: no run directories (folders with a {RunDir.CONFIG}) found")
    complete = [r for r in records if r.complete]
    if not complete:
        raise ReportError(f"{root}: {len(records)} run directories, none complete (no {RunDir.SUMMARY}, or one "
                          f"that reports an error)")
    metric, reason = choose_metric(metric, [r.ledger for r in complete])
    groups, varying = group_runs(records, metric)
    return Report(root=root, study=study or root.resolve().name, metric=metric, metric_reason=reason, groups=groups,
                  varying=varying, incomplete=[r.name for r in records if r.summary is None],
                  failed=[(r.name, r.error) for r in records if r.error is not None], records=records)


def write_report(root: Path | str, out: Path | str | None = None, figures: bool = True, html: bool = True,
                 tensorboard: bool = False, metric: str | None = None, study: str | None = None) -> dict[str, Path]:
    """Read the runs under ``root`` and write the tables, figures and page (and, with
    ``tensorboard``, every ledger as TensorBoard scalars under ``tensorboard/``); returns the paths.
    ``metric``: one of ``stats.METRICS`` (default: ``choose_metric``'s); ``study``: the table's
    ``study`` column (default: the folder's name)."""
    return write_outputs(build_report(root, metric, study), out, figures, html, tensorboard)


def write_outputs(report: Report, out: Path | str | None = None, figures: bool = True, html: bool = True,
                  tensorboard: bool = False) -> dict[str, Path]:
    """``write_report``'s files from a built ``report`` (default ``out``: RUNS_DIR/report)."""
    from fedlr.results.tables import group_records, group_table, run_records, to_csv, to_markdown

    out = Path(out) if out is not None else report.root / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    header, rows = group_table(report)
    files = {
        "runs_csv": ("runs.csv", to_csv(run_records(report.groups, report.varying))),
        "table_csv": ("table.csv", to_csv(group_records(report))),
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
