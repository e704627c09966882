"""Figures of the book, drawn from measured tables (matplotlib + seaborn).

Each function takes a pandas DataFrame built by :func:`history_frame` or by a
notebook from protocol reports, and returns the matplotlib figure. Threshold
lines come from :class:`~faeval.protocol.Thresholds`, so a figure always shows
the thresholds the verdicts used.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from .protocol import Thresholds

__all__ = ["history_frame", "audit_figure", "trajectory_figure", "ep_sweep_figure", "METRIC_LABELS",
           "PAPER_LOG_BATCH"]

#: the batch size of the paper's per-epoch logs, at which its g_L reads about 8x below batch 128
PAPER_LOG_BATCH = 1024

METRIC_LABELS = {"h_L": "median ||h_L||", "g_L": "median ||g_L|| (BP, batch 128)",
                 "g_L_1024": "median ||g_L|| at batch 1,024 (the paper's logs)", "growth": "max per-block growth",
                 "test_acc": "test accuracy", "deep_gamma": "deep-layer Gamma", "stability": "C stability"}


def history_frame(runs: Mapping):
    """A pandas DataFrame, one row per (run, epoch record).

    ``runs`` maps a label (or a tuple whose first item is the label) to a Run.

    Columns: label, method and seed (from the run's config), epoch, step, seconds
    (cumulative training time), h_L, g_L, g_L_1024 (g_L read at the gradient scale of
    batches of 1,024, the paper's per-epoch logs: :meth:`~faeval.diagnostics.Snapshot.g_L_at`),
    growth, stability, test_acc, deep_gamma (:attr:`~faeval.diagnostics.Snapshot.deep_gamma`), stopped.
    """
    import pandas as pd

    rows = []
    for key, run in runs.items():
        label = key[0] if isinstance(key, tuple) else key
        total = 0.0
        for rec in run.history:
            d = rec["diag"]
            total += rec["seconds"]
            rows.append({"label": label, "method": run.config.get("method"), "seed": run.config.get("seed"),
                         "epoch": rec["epoch"], "step": rec["step"], "seconds": total, "h_L": d.h_L, "g_L": d.g_L,
                         "g_L_1024": d.g_L_at(PAPER_LOG_BATCH), "growth": d.max_block_growth,
                         "stability": d.stability, "test_acc": rec["test_acc"],
                         "deep_gamma": d.deep_gamma, "stopped": rec.get("stopped")})
    return pd.DataFrame(rows)


def _log_threshold(ax, y: float, label: str) -> None:
    ax.axhline(y, color="crimson", ls="--", lw=1)
    ax.annotate(label, (0.01, y), xycoords=("axes fraction", "data"), color="crimson", fontsize=8,
                va="bottom")


def audit_figure(df, thresholds: Thresholds | None = None, frozen_acc: float | None = None,
                 order: Sequence[str] | None = None):
    """The 4-panel audit figure: D1 growth, D2 ||g_L||, C stability, D3 accuracy, one dot per seed.

    ``df`` has columns method, seed, growth, g_L, stability, acc.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    th = thresholds or Thresholds()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    panels = [("growth", "D1: max per-block growth", True, th.d1_growth, f"fires above {th.d1_growth:g}"),
              ("g_L", "D2: median ||g_L||", True, th.d2_floor, f"fires below {th.d2_floor:g}"),
              ("stability", "C: direction stability", False, th.c_stability, f"flag above {th.c_stability:g}"),
              ("acc", "D3: test accuracy", False, None, "")]
    for ax, (col, title, log, line, note) in zip(axes, panels):
        sns.stripplot(data=df, x="method", y=col, hue="seed", order=order, ax=ax, size=7, jitter=0.15,
                      palette="deep", legend=ax is axes[-1])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=45)
        if log:
            ax.set_yscale("log")
        if line is not None:
            _log_threshold(ax, line, note)
    if frozen_acc is not None:
        _log_threshold(axes[3], frozen_acc + th.d3_margin_pp / 100, f"frozen + {th.d3_margin_pp:g} pp")
        axes[3].axhline(frozen_acc, color="grey", ls=":", lw=1)
    if axes[3].get_legend() is not None:
        sns.move_legend(axes[3], "upper left", bbox_to_anchor=(1, 1), title="seed")
    fig.tight_layout()
    return fig


def trajectory_figure(df, metrics: Sequence[str] = ("h_L", "g_L", "test_acc"), row: str = "label",
                      hue: str = "method", thresholds: Thresholds | None = None, x: str = "epoch"):
    """A grid of per-epoch trajectories: one row per ``row`` value, one column per metric.

    ``df`` comes from :func:`history_frame`; ``hue`` names the column that colours the lines.
    ||g_L|| panels show the D2 floor, growth panels the D1 threshold.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    th = thresholds or Thresholds()
    rows = list(dict.fromkeys(df[row]))
    fig, axes = plt.subplots(len(rows), len(metrics), figsize=(4.2 * len(metrics), 2.8 * len(rows)), squeeze=False)
    for i, r in enumerate(rows):
        sub = df[df[row] == r]
        for j, m in enumerate(metrics):
            ax = axes[i][j]
            sns.lineplot(data=sub, x=x, y=m, hue=hue, units="seed", estimator=None, ax=ax, marker="o",
                         markersize=3, legend=(i == 0 and j == len(metrics) - 1))
            if m in ("h_L", "g_L", "g_L_1024", "growth"):
                ax.set_yscale("log")
            if m in ("g_L", "g_L_1024"):
                _log_threshold(ax, th.d2_floor, "D2 floor")
            if m == "growth":
                _log_threshold(ax, th.d1_growth, "D1 threshold")
            ax.set_title(f"{r}: {METRIC_LABELS.get(m, m)}", fontsize=9)
            ax.set_ylabel("")
    leg = axes[0][-1].get_legend()
    if leg is not None:
        sns.move_legend(axes[0][-1], "upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def ep_sweep_figure(table):
    """The EP sweep (discrepancies appendix): deep Gamma and the margin over the frozen baseline
    for every beta x relaxation-steps setting, as two annotated heatmaps (one row)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.0))
    for ax, (col, title, fmt, cmap) in zip(axes, [("deep Gamma", "deep Gamma (layers 1..L with credit)", "+.2f",
                                                   "vlag"),
                                                  ("margin_pp", "accuracy - frozen (pp)", "+.1f", "crest")]):
        grid = table.pivot(index="beta", columns="steps", values=col)
        sns.heatmap(grid, annot=True, fmt=fmt, cmap=cmap, cbar=False, ax=ax, annot_kws={"fontsize": 9})
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("relaxation steps")
        ax.set_ylabel("beta")
    fig.tight_layout()
    return fig
