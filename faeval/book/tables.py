"""Tables for the book's content column (pandas Stylers); :func:`faeval.book.plots.table` is this one."""
from __future__ import annotations

from collections.abc import Mapping

__all__ = ["table", "COLUMN_FORMATS"]

#: how the book shows its recurring quantities, by column name (a column of a pivot by its first level);
#: a caller's ``fmt`` overrides them. Columns starting ``g_L`` show in e-notation and ``... epoch`` columns
#: as whole epochs; any other float shows 3 significant figures.
COLUMN_FORMATS = {"acc": "{:.4f}", "margin_pp": "{:+.1f}", "gamma": "{:+.3f}", "deep Gamma": "{:+.3f}",
                  "null deep Gamma": "{:+.4f}", "null std": "{:.4f}", "deep rho": "{:+.3f}"}


def column_format(col) -> str:
    """The format of a float column named ``col`` (:data:`COLUMN_FORMATS`)."""
    name = str(col[0] if isinstance(col, tuple) else col)
    if name in COLUMN_FORMATS:
        return COLUMN_FORMATS[name]
    if name.startswith("g_L"):
        return "{:.2e}"
    return "{:.0f}" if name.endswith("epoch") or name.startswith(("D1 epoch", "D2 epoch")) else "{:.3g}"


def table(frame, fmt: Mapping | str | None = None, na_rep: str = "-", index: bool | None = None):
    """A table for the book's content column: a pandas Styler with short number formats, long text
    columns that wrap (numbers never do), and the index hidden when it is only a row count (an unnamed
    integer index, as a filtered frame keeps).

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"method": ["bp", "dfa", "fa"], "acc": [0.88, 0.47, 0.72]})
    >>> "<th" in table(frame[frame.acc > 0.5]).to_html().split("<tbody>")[1]     # no index column
    False

    ``fmt`` maps columns to format strings (or is one format for every number); floats default
    to :func:`column_format` (the book's format of a quantity it names, else 3 significant figures).
    NaN shows as ``na_rep``.
    """
    import pandas as pd

    frame = frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(frame)
    formats = {}
    for col in frame.columns:
        if pd.api.types.is_float_dtype(frame[col]):
            formats[col] = column_format(col)
    if isinstance(fmt, str):
        formats = {c: fmt for c in formats}
    elif fmt:
        formats.update({c: f for c, f in fmt.items() if c in frame.columns})
    style = frame.style.format(formats, na_rep=na_rep)
    counts_rows = isinstance(frame.index, pd.RangeIndex) or (frame.index.name is None and frame.index.nlevels == 1
                                                             and pd.api.types.is_integer_dtype(frame.index))
    if index is False or (index is None and counts_rows):      # a row count, also of a filtered frame
        style = style.hide(axis="index")
    text = [c for c in frame.columns if (frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c]))
            and len(frame) and frame[c].map(lambda v: len(str(v))).max() > 12]
    if text:
        style = style.set_properties(subset=text, **{"white-space": "normal", "overflow-wrap": "anywhere",
                                                     "min-width": "5em"})
    return style
