"""The report's figures, drawn headless (matplotlib's Agg canvas; no display, no pyplot state).

Every figure is ``FIGSIZE`` inches at ``DPI``, saved without tight cropping, so every PNG is
exactly ``PIXELS`` (width, height). One colour and marker per method, the same in every figure.
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
FIGURES = {
    "fig_bytes": "accuracy_vs_bytes.png",
    "fig_epsilon": "accuracy_vs_epsilon.png",
    "fig_rounds": "accuracy_per_round.png",
}


def _figure() -> tuple[Figure, object]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _styles(methods: list[str]) -> dict[str, dict]:
    colors = matplotlib.colormaps["tab10"].colors
    return {m: {"color": colors[i % len(colors)], "marker": MARKERS[i % len(MARKERS)]}
            for i, m in enumerate(sorted(set(methods), key=str))}


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _tradeoff(report, path: Path, x_metric: str, xlabel: str, title: str, log_x: bool, empty_text: str) -> Path:
    """Final accuracy (mean ± std over seeds) against a cost per group, one series per method,
    and the Pareto frontier (least cost, most accuracy) over all groups as a step line. Groups
    whose cost is ∞ (ε of a non-private run) are drawn as dotted horizontal reference lines."""
    fig, ax = _figure()
    groups, labels = report.groups, report.labels()
    styles = _styles([g.method for g in groups])
    pts = []
    references = []
    for g, label in zip(groups, labels):
        x, acc = g.stats[x_metric][0], g.stats["final_accuracy"]
        if x is not None and math.isinf(x) and acc[0] is not None:
            references.append((acc[0], label, g.method))
            pts.append(None)
            continue
        ok = x is not None and acc[0] is not None and (x > 0 or not log_x)
        pts.append((x, acc[0], acc[1], label, g.method) if ok else None)
    usable = [p for p in pts if p is not None]
    for acc, label, method in references:
        ax.axhline(acc, color=styles[method]["color"], linestyle=":", linewidth=1.2, label=f"{label}, ε = ∞")
    if not usable:
        _empty(ax, empty_text)
        if references:
            ax.legend(fontsize=8, loc="best")
    else:
        for method, style in styles.items():
            mine = [p for p in usable if p[4] == method]
            if not mine:
                continue
            ax.errorbar([p[0] for p in mine], [p[1] for p in mine], yerr=[p[2] or 0.0 for p in mine],
                        linestyle="none", capsize=3, markersize=7, label=str(method), **style)
            for p in mine:
                ax.annotate(p[3], (p[0], p[1]), textcoords="offset points", xytext=(6, 4), fontsize=7, color="0.3")
        front = [usable[i] for i in pareto_front([(p[0], p[1]) for p in usable])]
        if front:
            xs, ys = [p[0] for p in front], [p[1] for p in front]
            ax.step(xs, ys, where="post", color="0.2", linestyle="--", linewidth=1.2, label="Pareto frontier")
            ax.scatter(xs, ys, s=160, facecolors="none", edgecolors="0.2", linewidths=1.0)
        if log_x:
            ax.set_xscale("log")
        ax.margins(x=0.12, y=0.08)  # room for the point labels
        ax.legend(fontsize=8, loc="best")
        ax.grid(True, which="both", alpha=0.3)
        left_out = len(pts) - len(usable) - len(references)
        if left_out:
            title += f" ({left_out} of {len(pts)} without a value left out)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final test accuracy (mean ± std over seeds)")
    ax.set_title(title, fontsize=11)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def accuracy_vs_bytes(report, path: Path) -> Path:
    return _tradeoff(report, path, "total_MiB", "total MiB sent, uplink + downlink (log scale)",
                     "Accuracy against communication", log_x=True, empty_text="no run sent any bytes")


def accuracy_vs_epsilon(report, path: Path) -> Path:
    return _tradeoff(report, path, "epsilon", "ε (privacy loss; smaller is more private)",
                     "Accuracy against privacy", log_x=False,
                     empty_text="no run reports ε\n(differential privacy was off in every run)")


def accuracy_per_round(report, path: Path) -> Path:
    """Central test accuracy per round for every group: mean over seeds, ± std as a band."""
    fig, ax = _figure()
    styles = _styles([g.method for g in report.groups])
    drawn = 0
    for g, label in zip(report.groups, report.labels()):
        curve = [(r, m, s) for r, m, s in g.mean_curve() if m is not None]
        if not curve:
            continue
        rounds, means = [c[0] for c in curve], [c[1] for c in curve]
        line, = ax.plot(rounds, means, marker=styles[g.method]["marker"], markersize=4, label=label)
        stds = [c[2] or 0.0 for c in curve]
        if any(stds):
            ax.fill_between(rounds, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        drawn += 1
    if drawn:
        ax.legend(fontsize=7, loc="best", ncols=2 if drawn > 8 else 1)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    else:
        _empty(ax, "no run evaluated centrally (evaluation.central = false)")
    ax.set_xlabel("round (0 = before training)")
    ax.set_ylabel("central test accuracy")
    ax.set_title("Accuracy per round (mean over seeds, ± std)", fontsize=11)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def write_figures(report, out: Path) -> dict[str, Path]:
    """Draw the three figures into ``out``; returns {key: path}."""
    out = Path(out)
    return {
        "fig_bytes": accuracy_vs_bytes(report, out / FIGURES["fig_bytes"]),
        "fig_epsilon": accuracy_vs_epsilon(report, out / FIGURES["fig_epsilon"]),
        "fig_rounds": accuracy_per_round(report, out / FIGURES["fig_rounds"]),
    }
