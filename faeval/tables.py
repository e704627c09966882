"""Tables for the book's content column (pandas Stylers); :func:`faeval.plots.table` is this one."""
from __future__ import annotations

from collections.abc import Mapping

__all__ = ["table"]


def table(frame, fmt: Mapping | str | None = None, na_rep: str = "-", index: bool | None = None):
    """A table for the book's content column: a pandas Styler with short number formats, long text
    columns that wrap (numbers never do), and the index hidden when it is only a row count.

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
    if index is False or (index is None and isinstance(frame.index, pd.RangeIndex)):
        style = style.hide(axis="index")
    text = [c for c in frame.columns if (frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c]))
            and len(frame) and frame[c].map(lambda v: len(str(v))).max() > 16]
    if text:
        style = style.set_properties(subset=text, **{"white-space": "normal", "overflow-wrap": "anywhere",
                                                     "min-width": "5em"})
    return style
