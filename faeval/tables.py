"""Tables for the book's content column (pandas Stylers); :func:`faeval.plots.table` is this one."""
from __future__ import annotations

from collections.abc import Mapping

__all__ = ["table"]


def table(frame, fmt: Mapping | str | None = None, na_rep: str = "-", index: bool | None = None):
    """A table for the book's content column: a pandas Styler with short number formats, long text
    columns that wrap (numbers never do), and the index hidden when it is only a row count (an unnamed
    integer index, as a filtered frame keeps).

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"method": ["bp", "dfa", "fa"], "acc": [0.88, 0.47, 0.72]})
    >>> "<th" in table(frame[frame.acc > 0.5]).to_html().split("<tbody>")[1]     # no index column
    False

    ``fmt`` maps columns to format strings (or is one format for every number); floats default
    to 3 significant figures. NaN shows as ``na_rep``.
    """
    import pandas as pd

    frame = frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(frame)
    formats = {}
    for col in frame.columns:
        if pd.api.types.is_float_dtype(frame[col]):
            formats[col] = "{:.3g}"
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
