"""The report's figures, drawn headless (matplotlib's Agg canvas; no display, no pyplot state).

Every figure is ``FIGSIZE`` inches at ``DPI``, saved without tight cropping, so every PNG is
exactly ``PIXELS`` (width, height). One colour and marker per method, the same in every figure.
Each shows the report's metric: points with their 95 % interval as error bars (``stats.interval``),
per-round curves with it as a band, and the majority-class baseline as a dashed grey line.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg  # the Agg canvas directly: no display, no pyplot
from matplotlib.figure import Figure

from fedlr.results.pareto import pareto_front

FIGSIZE = (8.0, 5.0)
DPI = 100
PIXELS = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
MARKERS = "osD^vP*Xh<>"
FIGURES = {"fig_bytes": "{metric}_vs_bytes.png", "fig_epsilon": "{metric}_vs_epsilon.png",
           "fig_rounds": "{metric}_per_round.png"}


def figure_names(metric: str) -> dict[str, str]:
    """{key: file name} of the figures of a report on ``metric``."""
    return {key: name.format(metric=metric) for key, name in FIGURES.items()}


def _panels(report, title: str) -> tuple[Figure, list[tuple[object, list, str]]]:
    """The figure and one panel per corpus, side by side: [(axes, its groups, panel title)]. A
    report on one corpus has one panel titled ``title``; on several, ``title`` heads the figure
    and each panel is titled by its corpus (a frontier or a baseline across corpora means nothing)."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    corpora = list(dict.fromkeys(g.corpus for g in report.groups))
    axes = fig.subplots(1, len(corpora), squeeze=False)[0]
    if len(corpora) == 1:
        return fig, [(axes[0], report.groups, title)]
    fig.suptitle(title, fontsize=11)
    return fig, [(ax, [g for g in report.groups if g.corpus == c], str(c)) for ax, c in zip(axes, corpora)]


def _label(report, group, *omit: str) -> str:
    """The group's legend label without the corpus (its panel says it) and the ``omit`` fields."""
    return group.label([k for k in report.varying if k not in ("data.dataset", *omit)])


def _styles(methods: list[str]) -> dict[str, dict]:
    colors = matplotlib.colormaps["tab10"].colors
    return {m: {"color": colors[i % len(colors)], "marker": MARKERS[i % len(MARKERS)]}
            for i, m in enumerate(sorted(set(methods), key=str))}


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _errors(value) -> tuple[float, float]:
    """(below, above) the mean: the 95 % interval's extent, 0 where there is none."""
    if value.kind is None:
        return 0.0, 0.0
    return value.mean - value.low, value.high - value.mean


def _majority_lines(ax, groups) -> None:
    """A dashed grey line at the groups' majority-class baseline (one per panel, usually; more
    where a group's seeds drew test splits of another balance)."""
    values = sorted({round(g.majority, 9) for g in groups if g.majority is not None})
    for i, value in enumerate(values):
        ax.axhline(value, color="0.45", linestyle="--", linewidth=1.0, label="majority class" if i == 0 else None)


def _ylabel(report, what: str) -> str:
    return f"{what} {report.metric.replace('_', ' ')} (mean, 95 % CI)"


def _tradeoff(report, path: Path, x_metric: str, xlabel: str, title: str, log_x: bool, empty_text: str) -> Path:
    """The final metric (mean over seeds, 95 % interval as error bars) against a cost per group,
    one series per method, one panel per corpus (``_panels``), each with its Pareto frontier
    (least cost, highest mean) as a step line and its majority-class baseline dashed. Groups whose
    cost is ∞ (ε of a non-private run) are drawn as dotted horizontal reference lines."""
    fig, panels = _panels(report, title)
    styles = _styles([g.method for g in report.groups])
    omit = ("privacy.target_epsilon",) if x_metric == "epsilon" else ()
    for ax, groups, panel_title in panels:
        left_out = _tradeoff_panel(ax, [(g, _label(report, g, *omit)) for g in groups], styles, x_metric, log_x,
                                   empty_text)
        if left_out:
            panel_title += f" ({left_out} of {len(groups)} without a value left out)"
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_ylabel(report, "final"))
        ax.set_title(panel_title, fontsize=11 if len(panels) == 1 else 10)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _tradeoff_panel(ax, labelled: list, styles: dict, x_metric: str, log_x: bool, empty_text: str) -> int:
    """One panel of ``_tradeoff`` for [(group, label)]; returns how many groups had no value."""
    pts = []
    references = []
    for g, label in labelled:
        x, y = g.stats[x_metric][0], g.final
        if x is not None and math.isinf(x) and y.mean is not None:
            references.append((y.mean, label, g.method))
            continue
        if x is not None and y.mean is not None and (x > 0 or not log_x):
            pts.append((x, y.mean, _errors(y), label, g.method))
    for y, label, method in references:
        ax.axhline(y, color=styles[method]["color"], linestyle=":", linewidth=1.2, label=f"{label}, ε = ∞")
    _majority_lines(ax, [g for g, _ in labelled])
    if not pts:
        _empty(ax, empty_text)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
        return 0
    for method, style in styles.items():
        mine = [p for p in pts if p[4] == method]
        if not mine:
            continue
        ax.errorbar([p[0] for p in mine], [p[1] for p in mine], yerr=[[p[2][0] for p in mine], [p[2][1] for p in mine]],
                    linestyle="none", capsize=3, markersize=7, label=str(method), **style)
        for p in mine:
            ax.annotate(p[3], (p[0], p[1]), textcoords="offset points", xytext=(6, 4), fontsize=7, color="0.3")
    front = [pts[i] for i in pareto_front([(p[0], p[1]) for p in pts])]
    if front:
        xs, ys = [p[0] for p in front], [p[1] for p in front]
        ax.step(xs, ys, where="post", color="0.2", linestyle="--", linewidth=1.2, label="Pareto frontier")
        ax.scatter(xs, ys, s=160, facecolors="none", edgecolors="0.2", linewidths=1.0)
    if log_x:
        ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)  # room for the point labels
    ax.legend(fontsize=7, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    return len(labelled) - len(pts) - len(references)


def metric_vs_bytes(report, path: Path) -> Path:
    return _tradeoff(report, path, "total_MiB", "total MiB sent, uplink + downlink (log scale)",
                     f"{report.metric} against communication", log_x=True, empty_text="no run sent any bytes")


def metric_vs_epsilon(report, path: Path) -> Path:
    return _tradeoff(report, path, "epsilon", "ε spent (privacy loss; smaller is more private)",
                     f"{report.metric} against privacy", log_x=False,
                     empty_text="no run reports ε\n(differential privacy was off in every run)")


def metric_per_round(report, path: Path) -> Path:
    """The central evaluation's metric per round for every group: mean over seeds, the 95 %
    interval as a band (where a round has one), the majority-class baseline dashed; one panel
    per corpus."""
    fig, panels = _panels(report, f"{report.metric} per round (mean over seeds, 95 % CI band)")
    styles = _styles([g.method for g in report.groups])
    for ax, groups, panel_title in panels:
        drawn = 0
        for g in groups:
            curve = [(rnd, v) for rnd, v in g.mean_curve() if v.mean is not None]
            if not curve:
                continue
            rounds, means = [c[0] for c in curve], [c[1].mean for c in curve]
            line, = ax.plot(rounds, means, marker=styles[g.method]["marker"], markersize=4, label=_label(report, g))
            banded = [(rnd, v) for rnd, v in curve if v.kind is not None]
            if banded:
                ax.fill_between([c[0] for c in banded], [c[1].low for c in banded], [c[1].high for c in banded],
                                color=line.get_color(), alpha=0.15, linewidth=0)
            drawn += 1
        if drawn:
            _majority_lines(ax, groups)
            ax.legend(fontsize=7 if len(panels) == 1 else 6, loc="best", ncols=2 if drawn > 8 else 1)
            ax.grid(True, alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
        else:
            _empty(ax, "no run evaluated centrally (evaluation.central = false)")
        ax.set_xlabel("round (0 = before training)")
        ax.set_ylabel(_ylabel(report, "test"))
        ax.set_title(panel_title, fontsize=11 if len(panels) == 1 else 10)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def write_figures(report, out: Path) -> dict[str, Path]:
    """Draw the three figures into ``out``; returns {key: path}."""
    names = figure_names(report.metric)
    draw = {"fig_bytes": metric_vs_bytes, "fig_epsilon": metric_vs_epsilon, "fig_rounds": metric_per_round}
    return {key: draw[key](report, Path(out) / names[key]) for key in FIGURES}
