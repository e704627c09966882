"""The discrepancies appendix's own claims (notebook ``08_discrepancies``).

Evidence: ``reasons`` (:func:`faeval.book.discrepancies.explain`: one per claim that does not hold), ``paper_ep``
(:func:`faeval.book.chapters.audit.paper_ep_rows` of the audit's runs at the paper's state scale), ``sweep``
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
    ruled_out = (f"ruled out EP's setting, {grid}: layer-mean Gamma spans {sweep['layer-mean Gamma'].min():+.2f} to "
                 f"{sweep['layer-mean Gamma'].max():+.2f} and the margin over frozen {sweep.margin_pp.min():+.1f} to "
                 f"{sweep.margin_pp.max():+.1f} pp")
    why = None if ev.like else _state_scale_reason(ev.paper_ep, ruled_out)
    return Check(bool(ev.like), ", ".join(f"beta {b:g}, {k} steps" for b, k in ev.like) or "none of the sweep", why)


def _state_scale_reason(paper_ep, ruled_out: str) -> str:
    """The reason the sweep does not resemble the paper's EP, from the audit's runs at the paper's state scale
    (:func:`faeval.book.chapters.audit.paper_ep_rows`): the state scale with float32, where float32 EP there reads
    like the paper's EP on every seed and EP with its credit resolved does not; else not explained."""
    from .audit import like_paper_ep, rows_by_seed

    ep, ep64 = (rows_by_seed(paper_ep, m) for m in ("ep", "ep64"))
    seeds = "; ".join(f"s{s} float32 Gamma {r['deep_gamma']:+.3f}, {r['margin_pp']:+.1f} pp, resolution "
                      f"{r['resolution']:.2g}; float64 Gamma {ep64[s]['deep_gamma']:+.3f}, "
                      f"{ep64[s]['margin_pp']:+.1f} pp" for s, r in ep.items() if s in ep64)
    if ep and all(map(like_paper_ep, ep.values())) and not any(map(like_paper_ep, ep64.values())):
        return (f"implementation choice: the state scale, with float32 arithmetic. Our states stay in the tens, the "
                f"paper's reach thousands; trained from the paper's scale, float32 EP reads like the paper's EP on "
                f"every seed, and the same rule with its phases in float64 does not ({seeds}): at that scale the "
                f"credit, a difference of two nearly equal states, is mostly rounding; {ruled_out}")
    return (f"not explained: {ruled_out}; ruled out the state scale with float32 as well "
            f"({seeds or 'no runs at the paper scale'})")


def read_resolution(table) -> str:
    """Where float32 keeps EP's credit: the cosine with the float64 credit above and below the resolution bar,
    and the deep Gamma of the two at the largest scale."""
    from ..ep_precision import RESOLVED

    hi, lo = table[table.R >= RESOLVED], table[table.R < 1]
    top = table[table.scale == table.scale.max()]
    return (f"Wherever the predicted resolution R is {RESOLVED:g} or more ({len(hi)} of the {len(table)} states), the "
            f"float32 credit keeps a cosine of at least {hi['cos(f32, f64)'].min():.4f} with the float64 one; below "
            f"R = 1 ({len(lo)} states) it keeps {prose.span(lo['cos(f32, f64)'], '{:.2f}')}. At the largest scale "
            f"({prose.H_L} {top.h.max():.2g}) EP's deep Gamma is {top['Gamma f32'].mean():+.3f} in float32 and "
            f"{top['Gamma f64'].mean():+.3f} in float64, before any training. The resolution the report measures "
            f"(R measured) is within {100 * (hi['R measured'] / hi.R - 1).abs().max():.2g}% of R where R is "
            f"{RESOLVED:g} or more, and at most R on {prose.count(int((lo['R measured'] <= lo.R).sum()), len(lo))} "
            "states below R = 1: where it errs, it errs towards warning.")


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
