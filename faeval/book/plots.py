"""Figures of the book, drawn from measured tables (matplotlib + seaborn).

Each function takes a pandas DataFrame built by :func:`history_frame` or by a
notebook from protocol reports, and returns the matplotlib figure. Threshold
lines come from :class:`~faeval.protocol.Thresholds`, so a figure always shows
the thresholds the verdicts used; where the paper gives a value, it is drawn as
a labelled black cross from ``faeval/book/reference/paper_values.json``.

Every figure is laid out for the book's content column: :data:`WIDTH` inches wide
(panels in 2 columns where there are four), text of 9-10 pt at that size. The
book renders them as SVG (``scripts/run_notebooks.py`` starts its kernels with
``InlineBackend.figure_formats=svg``), so they stay sharp at any zoom.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

from ..protocol import CREDIT_RESOLUTION_WARN, TABLE, Thresholds, diagnostic_of_column
from .claims import paper
from .mechanism import HEAD, OUT_LN, relative_drift
from .tables import table

#: figure width in inches: the book's content column (about 700 CSS pixels at 96 per inch)
WIDTH = 7.0
_RC = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
       "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.dpi": 100}
PAPER_STYLE = {"marker": "x", "color": "black", "s": 40, "zorder": 5, "label": "paper (CIFAR-10)"}


def book_figure(fn):
    """Draw ``fn``'s figure with the book's font sizes (text sizes are fixed when the text is made);
    ``title=`` (every figure takes it) is set above the panels, e.g. the head regime a figure shows."""
    @functools.wraps(fn)
    def wrapper(*args, title: str | None = None, **kw):
        import matplotlib.pyplot as plt

        # only these keys are set and restored: plt.rc_context would also restore the backend
        # setting, and resetting it after the inline backend resolved drops every later figure
        old = {k: plt.rcParams[k] for k in _RC}
        plt.rcParams.update(_RC)
        try:
            fig = fn(*args, **kw)
            if title:
                fig.suptitle(title, y=1.0, va="bottom", fontweight="bold")
            return fig
        finally:
            plt.rcParams.update(old)
    return wrapper


def paper_value(key: str):
    """The paper's value of ``key`` (:func:`faeval.book.claims.paper`)."""
    return paper(key)["value"]

__all__ = ["history_frame", "audit_figure", "trajectory_figure", "ep_sweep_figure", "ep_resolution_figure",
           "penalty_figure", "depth_figure", "dial_figure",
           "cosine_clamp_figure", "claims_figure", "rules_figure", "table",
           "METRIC_LABELS", "PAPER_LOG_BATCH", "WIDTH"]

#: the batch size of the paper's per-epoch logs, at which its g_L reads about 8x below batch 128
PAPER_LOG_BATCH = 1024

METRIC_LABELS = {"h_L": "median ‖h_L‖", "g_L": "median ‖g_L‖ (batch 128)",
                 "g_L_1024": "median ‖g_L‖ (batch 1,024)", "growth": "max per-block growth (x)",
                 "test_acc": "test accuracy", "deep_gamma": "deep-layer Γ", "stability": "C stability",
                 "train_loss": "training loss (epoch mean)", "error_norm": "median ‖e‖ (eval batch)",
                 "error_consistency": "‖mean e‖ / mean ‖e‖", "head_drift": "out_head weight: relative drift",
                 "out_ln_drift": "out_ln gain: relative drift", "max_branch": "largest branch norm"}


def history_frame(runs: Mapping):
    """A pandas DataFrame, one row per (run, epoch record).

    ``runs`` maps a label (or a tuple whose first item is the label) to a Run.

    Columns: label, method, seed and head_lr (from the run's config), epoch, step, seconds
    (cumulative training time), h_L, g_L, g_L_1024 (g_L read at the gradient scale of
    batches of 1,024, the paper's per-epoch logs: :meth:`~faeval.snapshot.Snapshot.g_L_at`),
    growth, stability, test_acc, deep_gamma (:attr:`~faeval.snapshot.Snapshot.deep_gamma`), stopped; and the
    head mechanism's record (NaN in runs stored before it): train_loss, error_norm, error_consistency,
    max_branch (the largest block branch norm), head_drift and out_ln_drift (the relative drift of
    ``out_head.weight`` and ``out_ln.weight``).
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
                         "head_lr": run.config.get("hparams", {}).get("head_lr", 1.0),
                         "epoch": rec["epoch"], "step": rec["step"], "seconds": total, "h_L": d.h_L, "g_L": d.g_L,
                         "g_L_1024": d.g_L_at(PAPER_LOG_BATCH), "growth": d.max_block_growth,
                         "stability": d.stability, "test_acc": rec["test_acc"],
                         "deep_gamma": d.deep_gamma, "stopped": rec.get("stopped"), **_mechanism(rec)})
    return pd.DataFrame(rows)


def _mechanism(rec) -> dict:
    """The head mechanism's columns of one history record (NaN where the record predates them)."""
    d = rec["diag"]
    branches = [b for b in d.branch_norms or [] if b is not None]

    def num(v):
        return math.nan if v is None else v
    return {"train_loss": num(rec["train_loss"]), "error_norm": num(d.error_norm),
            "error_consistency": num(d.error_consistency), "max_branch": max(branches, default=math.nan),
            "head_drift": relative_drift(rec, HEAD), "out_ln_drift": relative_drift(rec, OUT_LN)}


def _threshold(ax, y: float, label: str) -> None:
    ax.axhline(y, color="crimson", ls="--", lw=1)
    ax.annotate(label, (0.01, y), xycoords=("axes fraction", "data"), color="crimson", fontsize=9,
                va="bottom")


def _legend_below(fig, ax, ncol: int = 4, title: str | None = None) -> None:
    """One legend for the figure, below the panels (a legend beside them would widen the figure)."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(ncol, len(labels)), frameon=False, title=title,
                   bbox_to_anchor=(0.5, 0.0))


def _grid(n: int, ncols: int, height: float):
    import matplotlib.pyplot as plt

    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH, height * nrows + 0.6), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


@book_figure
def audit_figure(df, thresholds: Thresholds | None = None, frozen_acc: float | None = None,
                 order: Sequence[str] | None = None, paper: bool = True):
    """The audit figure, 2 x 2: D1 growth, D2 ||g_L||, C stability, D3 accuracy; one dot per seed.

    ``df`` has columns method, seed, growth, g_L, stability, acc. With ``paper``, the
    paper's per-method values (where it gives one) are black crosses.
    """
    import seaborn as sns

    th = thresholds or Thresholds()
    order = list(order or dict.fromkeys(df["method"]))
    diags = [d for d in TABLE.values() if d.field in df.columns]
    fig, axes = _grid(len(diags), 2, 2.6)
    panels = [(d.field, f"{d.name}: {d.label}", d.log_scale,
               None if d.needs_baseline else getattr(th, d.threshold), d.note(th)) for d in diags]
    for ax, (col, title, log, line, note) in zip(axes, panels):
        sns.stripplot(data=df, x="method", y=col, hue="seed", order=order, ax=ax, size=6, jitter=0.15,
                      palette="deep", legend=ax is axes[0])
        ax.set_title(title)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", rotation=30)
        for t in ax.get_xticklabels():
            t.set_ha("right")
        if log:
            ax.set_yscale("log")
        if line is not None:
            _threshold(ax, line, note)
        if paper:
            marks = [(i, _paper_number(AUDIT_MARKS[col, m])) for i, m in enumerate(order) if (col, m) in AUDIT_MARKS]
            marks = [(i, v) for i, v in marks if v is not None]
            if marks:
                ax.scatter([i for i, _ in marks], [v for _, v in marks], **PAPER_STYLE)
    for ax, d in zip(axes, diags):
        if d.needs_baseline and frozen_acc is not None:
            margin = getattr(th, d.threshold)
            _threshold(ax, frozen_acc + margin / 100, f"frozen + {margin:g} pp")
            ax.axhline(frozen_acc, color="grey", ls=":", lw=1)
    _seed_and_paper_legend(fig, axes)
    return fig


def _seed_and_paper_legend(fig, axes) -> None:
    """One legend below the panels: the seeds (from the first panel) and, once, the paper's mark."""
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    seen = set(labels)
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab.startswith("paper") and lab not in seen:
                handles.append(h)
                labels.append(lab)
                seen.add(lab)
    labels = [lab if lab.startswith(("paper", "fresh")) or not lab.isdigit() else f"seed {lab}" for lab in labels]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))


#: the paper's per-rule values the audit figure marks, by (column, rule): entries of ``paper_values.json``,
#: keyed by the id of the claim that shows the same number where there is one
AUDIT_MARKS = {("growth", "bp"): "audit.growth.bp", ("growth", "dfa"): "audit.dfa_d1",
               ("g_L", "bp"): "audit.g_L.bp", ("g_L", "dfa"): "audit.dfa_d2", ("acc", "dfa"): "audit.dfa_d3",
               **{("acc", m): f"audit.acc.{m}" for m in ("bp", "fa", "ep", "state_bridge", "credit_bridge", "frozen")}}


def _paper_number(key: str):
    v = paper_value(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@book_figure
def trajectory_figure(df, metrics: Sequence[str] = ("h_L", "g_L", "test_acc"), row: str = "label",
                      hue: str = "method", thresholds: Thresholds | None = None, x: str = "epoch",
                      ncols: int | None = None):
    """Per-epoch trajectories: one panel per (``row`` value, metric), ``ncols`` panels a row.

    ``df`` comes from :func:`history_frame`; ``hue`` names the column that colours the
    lines. A panel of a per-epoch diagnostic's value (growth, g_L, stability: the protocol's
    ``TABLE``) shows that diagnostic's threshold. By default
    the metrics of one ``row`` value fill a row of the grid when there are at most three,
    else they wrap two a row.
    """
    import seaborn as sns

    th = thresholds or Thresholds()
    rows = list(dict.fromkeys(df[row]))
    ncols = ncols or (len(metrics) if len(metrics) <= 3 else 2)
    panels = [(r, m) for r in rows for m in metrics]
    fig, axes = _grid(len(panels), ncols, 2.3 if ncols <= 2 else 2.0)
    for k, (ax, (r, m)) in enumerate(zip(axes, panels)):
        sub = df[df[row] == r]
        sns.lineplot(data=sub, x=x, y=m, hue=hue, units="seed", estimator=None, ax=ax, marker="o",
                     markersize=3, legend=k == 0)
        diag = diagnostic_of_column(m)
        if m in ("h_L", "max_branch") or (diag is not None and diag.log_scale):
            ax.set_yscale("log")
        if diag is not None and diag.per_epoch:
            _threshold(ax, getattr(th, diag.threshold), diag.name)
        ax.set_title(f"{r}\n{METRIC_LABELS.get(m, m)}" if len(rows) > 1 else METRIC_LABELS.get(m, m))
        ax.set_ylabel("")
    title = None if hue == "label" else hue        # a column named "label" names nothing a reader needs
    _legend_below(fig, axes[0], ncol=5, title=title)
    bottom = (0.08 if len(panels) <= 3 else 0.05) + (0.05 if title and len(panels) <= 3 else 0.0)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


@book_figure
def penalty_figure(quality, frozen_acc: float | None = None, thresholds: Thresholds | None = None,
                   paper: bool = True):
    """The penalty rescue, 2 x 2 against lambda: ||h_L||, ||g_L|| (with the D2 floor), deep Gamma
    (with the fresh-feedback null) and accuracy (with the D3 bar); one dot per seed, the paper's
    values (30 epochs, seed 42) as crosses."""
    import seaborn as sns

    th = thresholds or Thresholds()
    q = quality.assign(lam=[f"{v:g}" for v in quality["lambda"]])
    lams = list(dict.fromkeys(q["lam"]))
    fig, axes = _grid(4, 2, 2.5)
    panels = [("h_L", "median ‖h_L‖", True, "penalty.cuts_h_L"), ("g_L", "median ‖g_L‖", True, "penalty.keeps_g_L"),
              ("deep Gamma", "deep-layer Γ", False, "penalty.deep_gamma"), ("acc", "test accuracy", False,
                                                                         "penalty.acc")]
    for ax, (col, title, log, key) in zip(axes, panels):
        sns.stripplot(data=q, x="lam", y=col, hue="seed", order=lams, ax=ax, size=6, palette="deep",
                      legend=ax is axes[0])
        ax.set_title(title)
        ax.set_xlabel("penalty λ")
        ax.set_ylabel("")
        if log:
            ax.set_yscale("log")
        if paper:
            ref = paper_value(key)
            marks = [(i, ref[lam]) for i, lam in enumerate(lams) if lam in ref]
            if marks:
                ax.scatter([i for i, _ in marks], [v for _, v in marks], **PAPER_STYLE)
    _threshold(axes[1], th.d2_floor, "D2 floor")
    if "null deep Gamma" in q:
        sns.pointplot(data=q, x="lam", y="null deep Gamma", order=lams, ax=axes[2], color="grey", markers="_",
                      linestyles="none", label="fresh-feedback null")
        axes[2].set_ylabel("")
    if frozen_acc is not None:
        _threshold(axes[3], frozen_acc + th.d3_margin_pp / 100, f"frozen + {th.d3_margin_pp:g} pp")
    _seed_and_paper_legend(fig, axes)
    return fig


@book_figure
def depth_figure(depth_rows, thresholds: Thresholds | None = None, paper: bool = True):
    """FA and DFA against depth, 2 x 2: accuracy, margin over the frozen baseline, deep Gamma, growth;
    the paper's FA values (d=512, seed 42) as crosses."""
    import seaborn as sns

    th = thresholds or Thresholds()
    fig, axes = _grid(4, 2, 2.4)
    panels = [("acc", "test accuracy", False, "fa_vs_dfa.depth_acc"),
              ("margin_pp", "accuracy - frozen (pp)", False, None),
              ("deep Gamma", "deep-layer Γ", False, "fa_vs_dfa.fa_gamma_falls_with_depth"),
              ("growth", "max per-block growth (x)", True, None)]
    for ax, (col, title, log, key) in zip(axes, panels):
        sns.lineplot(data=depth_rows, x="depth", y=col, hue="method", marker="o", ax=ax, legend=ax is axes[0])
        ax.set_title(title)
        ax.set_xlabel("blocks L")
        ax.set_ylabel("")
        if log:
            ax.set_yscale("log")
        if paper and key:
            ref = paper_value(key)
            ax.scatter([int(k) for k in ref], list(ref.values()), **{**PAPER_STYLE, "label": "paper FA (d=512)"})
    _threshold(axes[1], th.d3_margin_pp, f"D3 bar {th.d3_margin_pp:g} pp")
    _threshold(axes[3], th.d1_growth, "D1")
    _seed_and_paper_legend(fig, axes)
    return fig


@book_figure
def dial_figure(rows, fitted: float):
    """Each signature of :data:`faeval.book.head.DISTANCES` against the head's learning rate (``rows``:
    :func:`faeval.book.head.grid_rows`), one panel each: the first seed as a line, the other seeds as dots, the
    paper's value as a grey band (a line for a point) and the fitted value as a dotted vertical line. The x axis is
    logarithmic, head_lr 0 drawn at its left end."""
    import pandas as pd

    from .head import DISTANCES, GRID

    df = pd.DataFrame(rows)
    zero_at = min(h for h in GRID if h > 0) / 3
    df["x"] = df.head_lr.where(df.head_lr > 0, zero_at)
    fig, axes = _grid(len(DISTANCES), 3, 1.9)
    s0 = df.seed.min()
    for ax, d in zip(axes, DISTANCES):
        sub = df[df.signature == d.name]
        per_layer = d.kind == "gamma" and d.rule == "dfa"
        lines = ({"layer 0": sub.ours.map(lambda g: g[0]), "deeper mean": sub.ours.map(lambda g: sum(g[1:]) /
                                                                                           max(len(g) - 1, 1))}
                 if per_layer else {"": sub.ours})
        for (label, y), color in zip(lines.items(), ("C0", "C1")):
            first = sub.seed == s0
            ax.plot(sub.x[first], y[first], marker="o", ms=3, color=color, label=label or None)
            ax.scatter(sub.x[~first], y[~first], s=10, color=color, alpha=0.6)
        lo, hi = d.band
        for v in ((lo, hi) if per_layer else ((lo,) if lo == hi else ())):
            ax.axhline(v, color="0.5", lw=4, alpha=0.4)
        if not per_layer and lo != hi:
            ax.axhspan(lo, hi, color="0.5", alpha=0.3)
        ax.axvline(fitted if fitted > 0 else zero_at, color="black", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xticks([h if h > 0 else zero_at for h in GRID])
        ax.set_xticklabels([f"{h:g}" for h in GRID], fontsize=7)
        ax.minorticks_off()
        if d.kind == "log10":
            ax.set_yscale("log")
        ax.set_title(d.name, fontsize=9)
        if per_layer:
            ax.legend(fontsize=7, frameon=False)
    fig.supxlabel("head_lr (the output head's learning rate / lr)", fontsize=9)
    fig.tight_layout()
    return fig


@book_figure
def cosine_clamp_figure(sweep):
    """Pitfall 2: the mean cosine against the reference-gradient norm, for ``F.cosine_similarity``
    (clamped at eps=1e-8) and the unclamped per-sample cosine. ``sweep`` has columns grad_norm,
    clamped, unclamped (:func:`faeval.book.pitfalls.cosine_clamp_sweep`)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(WIDTH, 3.2))
    ax.plot(sweep["grad_norm"], sweep["unclamped"], marker="o", label="per-sample cosine, no clamp (faeval)")
    ax.plot(sweep["grad_norm"], sweep["clamped"], marker="s", label="F.cosine_similarity (eps = 1e-8)")
    ax.axvline(1e-8, color="grey", ls=":", lw=1)
    ax.axvline(Thresholds().d2_floor, color="crimson", ls="--", lw=1)
    ax.annotate("eps", (1e-8, 0.02), xycoords=("data", "axes fraction"), color="grey", fontsize=9)
    ax.annotate("D2 floor", (Thresholds().d2_floor, 0.02), xycoords=("data", "axes fraction"), color="crimson",
                fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("median ‖g‖ of the reference gradient")
    ax.set_ylabel("mean cosine (true: 0.5)")
    ax.legend(loc="center right", frameon=False)
    fig.tight_layout()
    return fig


@book_figure
def claims_figure(ledger):
    """The claims ledger at a glance: per chapter, how many claims held, did not hold (by the kind of
    reason the discrepancies appendix measured) or could not be evaluated."""
    import matplotlib.pyplot as plt

    status = ledger["status"].where(ledger["status"] != "not held",
                                    "not held: " + ledger["reason_kind"].replace("", "no reason"))
    counts = ledger.assign(kind=status).groupby(["notebook", "kind"]).size().unstack(fill_value=0)
    order = ["held"] + sorted(c for c in counts.columns if c.startswith("not held")) + \
        [c for c in counts.columns if c == "not evaluated"]
    counts = counts[[c for c in order if c in counts.columns]].iloc[::-1]
    fig, ax = plt.subplots(figsize=(WIDTH, 0.35 * len(counts) + 1.6))
    colours = {"held": "#1a7f37", "not evaluated": "#9a6700"}
    palette = iter(["#cf222e", "#fb8f44", "#8250df", "#0969da", "#57606a", "#bf3989"])
    left = [0] * len(counts)
    for col in counts.columns:
        c = colours.get(col) or next(palette)
        ax.barh(counts.index, counts[col], left=left, color=c, label=col)
        left = [a + b for a, b in zip(left, counts[col])]
    ax.set_xlabel("claims")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3 if len(counts) < 6 else -0.15), ncol=3, frameon=False)
    fig.tight_layout()
    return fig


@book_figure
def ep_sweep_figure(table):
    """The EP sweep (discrepancies appendix): deep Gamma and the margin over the frozen baseline
    for every beta x relaxation-steps setting, as two annotated heatmaps (one row)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.0))
    for ax, (col, title, fmt, cmap) in zip(axes, [("deep Gamma", "deep Γ (layers with credit)", "+.2f",
                                                   "vlag"),
                                                  ("margin_pp", "accuracy - frozen (pp)", "+.1f", "crest")]):
        grid = table.pivot(index="beta", columns="steps", values=col)
        sns.heatmap(grid, annot=True, fmt=fmt, cmap=cmap, cbar=False, ax=ax, annot_kws={"fontsize": 9})
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("relaxation steps")
        ax.set_ylabel("beta")
    fig.tight_layout()
    return fig


@book_figure
def ep_resolution_figure(table, resolved: float = CREDIT_RESOLUTION_WARN):
    """EP's credit in float32 against its resolution (:func:`faeval.book.ep_precision.scale_sweep` rows): left,
    the float32 credit's cosine with the float64 one against the resolution R the formula predicts (log x, one
    colour per layer, ``resolved`` dashed); right, Gamma of the float32 and float64 credits against ||h_L||."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDTH, 3.0))
    for layer, g in table.groupby("layer"):
        left.scatter(g["R"], g["cos(f32, f64)"], s=18, label=f"h{layer}")
    left.axvline(resolved, color="crimson", ls="--", lw=1)
    left.set(xscale="log", xlabel="predicted resolution R", ylabel="cos(float32 credit, float64 credit)",
             title="the credit float32 keeps")
    left.legend(loc="lower right")
    deep = table.groupby("scale").agg(h=("h", "max"), f32=("Gamma f32", "mean"), f64=("Gamma f64", "mean"))
    right.plot(deep["h"], deep["f32"], "o-", label="float32 phases (ep)")
    right.plot(deep["h"], deep["f64"], "s--", label="float64 phases (ep64)")
    right.set(xscale="log", xlabel="‖h_L‖ (untrained, scaled embedding)", ylabel="deep Γ (mean over h1..hL)",
              title="EP's Γ at initialisation")
    right.legend(loc="lower left")
    fig.tight_layout()
    return fig


@book_figure
def rules_figure(summary, thresholds: Thresholds | None = None):
    """Every rule of one head regime (``summary``: :func:`faeval.book.chapters.more_rules.summary` rows of that
    regime, in its order: by verdict, then accuracy), three panels of horizontal bars: the margin over the frozen
    baseline with D3's bar, deep Gamma, and the max per-block growth (log) with D1's threshold. A bar is green
    where every seed passed the protocol (rule "any"), red otherwise."""
    import matplotlib.pyplot as plt

    th = thresholds or Thresholds()
    rows = summary.reset_index()
    names = list(rows["method"])
    colours = ["#1a7f37" if p.split("/")[0] == p.split("/")[1] else "#b42318" for p in rows["PASS"]]
    fig, axes = plt.subplots(1, 3, figsize=(WIDTH, 0.28 * len(names) + 1.4), sharey=True)
    panels = [("margin_pp", "accuracy - frozen (pp)", th.d3_margin_pp, "D3"), ("deep Gamma", "deep-layer Γ", None, ""),
              ("growth", "max per-block growth (x)", th.d1_growth, "D1")]
    y = range(len(names))
    for ax, (col, label, bar, what) in zip(axes, panels):
        ax.barh(list(y), rows[col], color=colours)
        ax.set_title(label)
        if bar is not None:
            ax.axvline(bar, color="crimson", ls="--", lw=1)
            ax.annotate(f" {what}", (bar, 0.01), xycoords=("data", "axes fraction"), color="crimson", fontsize=9,
                        ha="left", va="bottom")
    axes[2].set_xscale("log")
    axes[0].set_yticks(list(y), names)
    axes[0].invert_yaxis()
    from matplotlib.patches import Patch
    fig.legend([Patch(color="#1a7f37"), Patch(color="#b42318")], ["PASS on every seed", "FAIL on a seed"],
               loc="lower center", ncol=2, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
