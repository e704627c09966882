"""The calibration appendix's claims (notebook ``07_calibration``).

Evidence: ``rows`` (:func:`faeval.book.calibration.summarise_all`: one row per candidate and seed),
``setting`` (the candidate the quick profile's setting is: the rule's pick, or ``"paper"``), ``chosen``
(the rule's pick, or None), ``follows`` (whether the quick profile's data and model settings are the
pick's), ``quick_data`` (the quick profile's data settings), ``decision`` (:func:`faeval.book.head.decide`) and
``dose`` (DFA's dose-response table: one row per head learning rate, with the final growth).
"""
from __future__ import annotations

from .. import head, prose
from ..calibration import CANDIDATES
from ..claims import Chapter, Check, PerSeed

CLAIMS = Chapter("calibration")


def seeds_of(ev, candidate: str, fn) -> dict:
    """``{seed: fn(row)}`` of one candidate's rows."""
    return {r["seed"]: fn(r) for r in ev.rows if r["candidate"] == candidate}


def d1_epoch(r):
    return r["D1"]["epoch"] if r["D1"] else None


def bp_fires(r) -> str:
    return ", ".join(r["bp_fires"]) or "nothing"


@CLAIMS.claim("calibration.paper_quiet", "With the paper's recipe on Fashion-MNIST, DFA fires neither D1 nor D2 "
              "within the horizon, on every seed")
def _(ev):
    return PerSeed(seeds_of(ev, "paper", lambda r: "quiet" if r["D1"] is None and r["D2"] is None else "fires"),
                   lambda v: v == "quiet")


for _c in ("label_noise", "synthetic", "augment"):
    @CLAIMS.claim(f"calibration.dfa_d1.{_c}", f"{CANDIDATES[_c].label}: DFA fires D1 within the horizon on every seed")
    def _(ev, c=_c):
        return PerSeed(seeds_of(ev, c, d1_epoch), lambda e: True, "epoch {:.0f}", missing="never")


@CLAIMS.claim("calibration.bp_quiet", "BP fires no diagnostic on the quick profile's setting (the rule's pick, or "
              "the paper's recipe when nothing qualifies), on every seed")
def _(ev):
    return PerSeed(seeds_of(ev, ev.setting, bp_fires), lambda v: v == "nothing")


@CLAIMS.claim("calibration.bp_passes_all", "BP passes on every candidate and seed (nothing fires)")
def _(ev):
    fails = ", ".join(f"{r['candidate']}/s{r['seed']}: {'+'.join(r['bp_fires'])}" for r in ev.rows if r["bp_fires"])
    return Check(not any(r["bp_fires"] for r in ev.rows),
                 f"{sum(not r['bp_fires'] for r in ev.rows)}/{len(ev.rows)} candidate-seeds; fails: "
                 + (fails or "none"))


@CLAIMS.claim("calibration.follows_rule", "The quick profile follows the rule: its data and model settings are the "
              "rule's pick, or the paper's recipe when nothing qualifies")
def _(ev):
    return Check(ev.follows, f"rule picks {ev.chosen}; the quick profile's data: {ev.quick_data}")


@CLAIMS.claim("calibration.head_fixed_matches_more",
              "With the head fixed, DFA matches more of the paper's DFA signatures than with the head trained")
def _(ev):
    counts = ev.decision.counts
    return Check(counts["head fixed"] > counts["head trained"],
                 ", ".join(f"{r}: {n} of {len(head.SIGNATURES)}" for r, n in counts.items()))


@CLAIMS.claim("calibration.head_dose", "DFA's growth at the end of the horizon rises as the head's learning rate "
              "falls (head_lr 1 to 0)")
def _(ev):
    by_lr = ev.dose.sort_values("head_lr", ascending=False)
    return Check(bool(by_lr["growth"].is_monotonic_increasing),
                 ", ".join(f"{h:g}: {g:.3g}" for h, g in zip(by_lr.head_lr, by_lr.growth)))


# ---------------------------------------------------------------------------------------------
# the chapter's readings of its tables (glued under each; see faeval.book.prose)
# ---------------------------------------------------------------------------------------------
def read_candidates(rows) -> str:
    """On which candidates DFA fires D1 or D2 within the horizon, on how many seeds, and where BP fires."""
    by: dict[str, list] = {}
    for r in rows:
        by.setdefault(r["candidate"], []).append(r)
    fires = {c: sum(bool(r["D1"] or r["D2"]) for r in rr) for c, rr in by.items()}
    bp = {c: sum(bool(r["bp_fires"]) for r in rr) for c, rr in by.items()}
    n = len(next(iter(by.values())))
    dfa = [f"{c} ({k} of {n} seeds)" for c, k in fires.items() if k]
    loud = [c for c, k in bp.items() if k]
    return (f"DFA fires D1 or D2 within the horizon on {prose.names(dfa, 'no candidate')}; BP fires on "
            f"{prose.names(loud, 'no candidate')}. A candidate qualifies only where DFA fires on every seed and BP "
            "stays quiet.")


def read_dose(dose) -> str:
    """Along the head's learning rate: the rates at which D1 and D2 fire, and the growth, g_L and accuracy at both
    ends."""
    d = dose.sort_values("head_lr", ascending=False)
    hi, lo = d.iloc[0], d.iloc[-1]
    fire = {k: d[d[f"{k} epoch"].notna()].head_lr for k in ("D1", "D2")}
    where = "; ".join(f"{k} fires at head_lr {prose.names(f'{h:g}' for h in f)}" if len(f)
                      else f"{k} fires at no head_lr" for k, f in fire.items())
    return (f"{where}. From head_lr {hi.head_lr:g} to {lo.head_lr:g}, the growth goes from {prose.times(hi.growth)} "
            f"to {prose.times(lo.growth)}, {prose.G_L} from {hi.g_L:.1e} to {lo.g_L:.1e}, and the accuracy from "
            f"{hi.acc:.3f} to {lo.acc:.3f}.")
