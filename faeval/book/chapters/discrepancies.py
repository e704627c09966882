"""The discrepancies appendix's own claims (notebook ``08_discrepancies``).

Evidence: ``reasons`` (:func:`faeval.book.discrepancies.explain`: one per claim that does not hold), ``sweep``
(:func:`faeval.book.discrepancies.ep_sweep_table`), ``like`` (the EP settings of the sweep that resemble the
paper's EP) and ``patterns`` (:func:`faeval.book.discrepancies.pairing_patterns`).
"""
from __future__ import annotations

import pandas as pd

from ...protocol import Monitor
from .. import prose
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


# ---------------------------------------------------------------------------------------------
# the appendix's readings of its tables and figures (glued under each; see faeval.book.prose)
# ---------------------------------------------------------------------------------------------
def read_reasons(reasons) -> str:
    """How many claims do not hold, by reason kind; the "not explained" ones named by chapter."""
    if not reasons:
        return "Every judged claim holds: there is nothing to explain."
    kinds = pd.Series([r["kind"] for r in reasons]).value_counts()
    open_ = [r for r in reasons if r["kind"] == "not explained"]
    text = (f"{len(reasons)} claims do not hold: "
            + ", ".join(f"{n} of kind {k}" for k, n in kinds.items()) + ".")
    if open_:
        by = pd.Series([r["notebook"] for r in open_]).value_counts()
        text += (" The ones no probe explains come from "
                 + prose.names(f"{nb} ({n})" for nb, n in by.items()) + ": the open questions of this build.")
    return text


def read_other(other, decision) -> str:
    """How many of the judged regime's failing claims hold in the other regime."""
    if not len(other):
        return f"No failing claim was also measured with the {decision.other}."
    held = int((other[f"status ({decision.other})"] == "held").sum())
    return (f"{held} of these {len(other)} claims hold with the {decision.other}: for those, the head's regime and "
            "not the rule decides the claim.")


def read_long(long) -> str:
    """Where plain DFA's D1 and D2 first fire in the longer runs (``long``: ``{(rule, label): Run}``)."""
    parts = []
    for (_, label), run in long.items():
        first = Monitor().replay(run.history)
        fired = [f"{d} fires at epoch {first[d]}" for d in ("D1", "D2") if first[d] is not None]
        parts.append(f"{label}: {prose.names(fired, 'neither D1 nor D2 fires')} (of {run.history[-1]['epoch']} "
                     "epochs)")
    return "Plain DFA, " + "; ".join(parts) + "."


def read_pairing(patterns) -> str:
    """Each pairing's early h0 and deep Gamma, beside the paper's pattern (+0.42 at h0, about 0 deeper)."""
    parts = [f"block l on {'a_l+1' if p == 'output' else 'a_l'}: h0 {v['h0']:+.3f}, deep {v['deep']:+.3f} "
             f"({v['n']} epoch records)" for p, v in patterns.items() if v["deep"] is not None]
    return ("Early per-layer Gamma, " + ("; ".join(parts) if parts else "no epoch with a valid reference")
            + ". The paper's pattern is about +0.42 at h0 and about 0 deeper.")


def read_ep_sweep(sweep, like) -> str:
    """The range of EP's Gamma and margin over the sweep, and whether any setting resembles the paper's EP."""
    gamma = prose.span(sweep["layer-mean Gamma"], "{:+.3f}")
    margin = prose.span(sweep.margin_pp, "{:+.1f}")
    return (f"Over the {len(sweep)} settings, the layer-mean Gamma spans {gamma} and the margin over frozen "
            f"{margin} pp; "
            + (f"{len(like)} setting(s) resemble the paper's EP." if like else
               "no setting resembles the paper's EP (Gamma about 0.008, accuracy near frozen)."))
