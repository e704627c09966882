"""The discrepancies appendix's own claims (notebook ``08_discrepancies``).

Evidence: ``reasons`` (:func:`faeval.book.discrepancies.explain`: one per claim that does not hold), ``sweep``
(:func:`faeval.book.discrepancies.ep_sweep_table`), ``like`` (the EP settings of the sweep that resemble the
paper's EP) and ``patterns`` (:func:`faeval.book.discrepancies.pairing_patterns`).
"""
from __future__ import annotations

import pandas as pd

from ..claims import REASON_KINDS, Chapter, Check

CLAIMS = Chapter("discrepancies")


@CLAIMS.claim("discrepancies.every_reason_has_a_kind",
              "Every claim that does not hold has a reason of one of the five kinds")
def _(ev):
    kinds = pd.Series([r["kind"] for r in ev.reasons]).value_counts()
    return Check(all(k in REASON_KINDS for k in kinds.index),
                 ", ".join(f"{k}: {n}" for k, n in kinds.items()) or "every claim holds")


@CLAIMS.claim("discrepancies.ep_sweep_resembles",
              "Some EP setting of the sweep resembles the paper's EP (Gamma ~0, accuracy near frozen)")
def _(ev):
    sweep = ev.sweep
    grid = f"beta {sorted(set(sweep.beta))} x steps {sorted(set(sweep.steps))}"
    why = None if ev.like else (
        f"not explained: ruled out {grid}; layer-mean Gamma spans {sweep['layer-mean Gamma'].min():+.2f} to "
        f"{sweep['layer-mean Gamma'].max():+.2f} and the margin over frozen {sweep.margin_pp.min():+.1f} to "
        f"{sweep.margin_pp.max():+.1f} pp")
    return Check(bool(ev.like), ", ".join(f"beta {b:g}, {k} steps" for b, k in ev.like) or "none of the sweep", why)


@CLAIMS.claim("discrepancies.credit_pairing",
              "One of the two credit pairings gives the paper's early pattern (deep |Gamma| < 0.05)")
def _(ev):
    out, inp = ev.patterns["output"], ev.patterns["input"]
    if None in (out["deep"], inp["deep"]):
        return Check(None, "no epoch with a valid reference")
    return Check(abs(out["deep"]) < 0.05 or abs(inp["deep"]) < 0.05,
                 f"block l on a_l+1: {out['deep']:+.3f}; on a_l: {inp['deep']:+.3f}",
                 "not explained: ruled out both credit pairings (block l on a_l+1 and on a_l)")
