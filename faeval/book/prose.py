"""Measured numbers written into sentences: the small helpers behind every chapter's reading of its tables.

A chapter's ``read_*`` functions (in :mod:`faeval.book.chapters`) turn a table or figure's data into a few
sentences of MyST that say what to look at in it, with this run's numbers; the notebook glues the text
(:func:`faeval.book.findings.glue_md`) and a ``{glue:md}`` directive right under the table shows it. A sentence
that would be false at another profile is chosen here from the values, never typed.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from statistics import fmean

#: the norms as the book's prose writes them (MyST math)
H_L, G_L = r"$\lVert h_L\rVert$", r"$\lVert g_L\rVert$"

__all__ = ["H_L", "G_L", "names", "span", "times", "mean", "head", "per_method", "count", "vs_frozen", "decades",
           "regime_sentence"]


def names(items: Iterable[str], empty: str = "none") -> str:
    """``a``, ``a and b``, ``a, b and c``; ``empty`` for no item."""
    items = [str(i) for i in items]
    if not items:
        return empty
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def span(values: Iterable[float], fmt: str = "{:.3g}") -> str:
    """The range of ``values`` as ``lo to hi`` (one value where both format alike); ``-`` for none."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "-"
    lo, hi = fmt.format(min(vals)), fmt.format(max(vals))
    return lo if lo == hi else f"{lo} to {hi}"


def times(v: float) -> str:
    """A growth factor: a whole number with thousands separators from 100 up, three significant digits below,
    then ``x``."""
    return f"{v:,.0f}x" if v >= 100 else f"{v:.3g}x"


def mean(values: Iterable[float]) -> float:
    """The mean of the values that are not None or NaN (NaN where none are)."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return fmean(vals) if vals else math.nan


def head(regime: str) -> str:
    """``"head fixed"`` -> ``"with the head fixed"``."""
    return f"with the {regime}"


def per_method(frame, col: str, fmt: str, methods: Iterable[str] | None = None) -> str:
    """``dfa 1.2e-9, fa 3e-7``: the mean of ``col`` over each method's rows of ``frame``."""
    means = frame.groupby("method", sort=False)[col].mean()
    keep = list(methods) if methods is not None else list(means.index)
    return ", ".join(f"{m} {fmt.format(means[m])}" for m in keep if m in means.index)


def count(n: int, total: int) -> str:
    """``all 3``, ``none of the 3``, ``2 of the 3``."""
    if n == 0:
        return f"none of the {total}"
    return f"all {total}" if n == total and total > 1 else f"{n} of the {total}"


def vs_frozen(pp: float) -> str:
    """A margin in points: ``2.1 pp over the frozen baseline``, ``15.7 pp under the frozen baseline``."""
    return f"{abs(pp):.1f} pp {'over' if pp >= 0 else 'under'} the frozen baseline"


def decades(ratio: float) -> str:
    """A ratio above 1 in decades: ``1.8 decades``; under a tenth of a decade, ``a hair``."""
    d = math.log10(ratio)
    return f"{d:.1f} decades" if d >= 0.1 else "a hair"


def regime_sentence(decision, says) -> str:
    """One sentence per head regime, the judged first: ``says(regime)`` gives its clause (``None`` skips it),
    each introduced as ``With the head fixed (judged), ...``."""
    out = []
    for regime in decision.order:
        clause = says(regime)
        if clause:
            tag = "judged" if regime == decision.judged else "not judged"
            out.append(f"With the {regime} ({tag}), {clause}.")
    return " ".join(out)
