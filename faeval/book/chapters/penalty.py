"""The penalty chapter's claims (notebook ``04_penalty``).

Evidence, per head regime: ``quality`` (one row per lambda and seed of the DFA sweep: accuracy, margin
over the frozen baseline, h_L, g_L, deep Gamma and its fresh-feedback null, deep rho), ``early`` (vanilla
DFA's epochs 1-3: g_L, whether the reference is valid, deep Gamma), ``d3`` (the mean margin per lambda and
whether D3 fires at 2 pp) and ``two_by_two`` (``{(method, lambda, seed): Run}``); shared: ``lam_on``, the
penalty the claims read.
"""
from __future__ import annotations

import pandas as pd

from ...analysis import credit_quality
from ...protocol import Thresholds
from .. import prose
from ..claims import Chapter, Check, PerSeed

CLAIMS = Chapter("penalty")


def on_off(ev):
    """The sweep's rows by seed, with the penalty (``lam_on``) and without."""
    q = ev.quality.set_index(["lambda", "seed"])
    return q.loc[ev.lam_on], q.loc[0.0]


@CLAIMS.claim("penalty.cuts_h_L", "The penalty (lambda={lam_on:g}) cuts ||h_L|| by at least 10x on every seed",
              paper=True)
def _(ev):
    on, off = on_off(ev)
    return PerSeed((off["h_L"] / on["h_L"]).to_dict(), lambda r: r >= 10, "{:.3g}x")


@CLAIMS.claim("penalty.keeps_g_L",
              "The penalty (lambda={lam_on:g}) keeps ||g_L|| above the D2 floor on every seed", paper=True)
def _(ev):
    on, _ = on_off(ev)
    return PerSeed(on["g_L"].to_dict(), lambda g: g > Thresholds().d2_floor, "{:.2e}")


@CLAIMS.claim("penalty.deep_gamma",
              "With the penalty (lambda={lam_on:g}), deep Gamma exceeds the fresh-feedback null by 3 null std "
              "on every seed", paper=True)
def _(ev):
    on, _ = on_off(ev)
    return PerSeed(((on["deep Gamma"] - on["null deep Gamma"]) / on["null std"]).to_dict(), lambda z: z > 3,
                   "{:.1f} null std")


@CLAIMS.claim("penalty.deep_rho", "With the penalty (lambda={lam_on:g}), deep rho is positive on every seed",
              paper=True)
def _(ev):
    on, _ = on_off(ev)
    return PerSeed(on["deep rho"].to_dict(), lambda r: r > 0, "{:+.3f}")


@CLAIMS.claim("penalty.vanilla_early_gamma",
              "Vanilla DFA's early deep Gamma is near zero (|Gamma| < 0.05) while the reference is valid",
              paper=True)
def _(ev):
    valid = ev.early[ev.early["reference valid"]]
    if valid.empty:
        return Check(None, "no early epoch had a valid reference")
    return Check(bool((valid["deep Gamma"].abs() < 0.05).all()),
                 f"{valid['deep Gamma'].mean():+.3f} over {len(valid)} epoch(s) with a valid reference")


@CLAIMS.claim("penalty.costs_bp", "The penalty costs BP accuracy (lambda={lam_on:g}) on every seed", paper=True)
def _(ev):
    runs = ev.two_by_two
    return PerSeed({s: 100 * (runs["bp", ev.lam_on, s].test_acc - runs["bp", 0.0, s].test_acc)
                    for s in ev.P.seeds}, lambda pp: pp < 0, "{:+.1f} pp")


@CLAIMS.claim("penalty.d3_changes", "The D3 verdict changes across the lambda sweep", paper=True)
def _(ev):
    d3 = ev.d3
    return Check(d3["D3 fires at 2.0 pp"].nunique() > 1,
                 ", ".join(f"{lam:g}: {m:+.2f} pp ({u:+.2f} of BP's headroom)"
                           for lam, m, u in zip(d3.index, d3["mean margin (pp)"], d3["in headroom"])))


CLAIMS.stopped_runs("penalty.trained", "sweep", "{0:g}.s{1}", "DFA lambda={0:g} seed {1} trained to the end")


def quality_table(sweeps, order, frozen_acc, x_eval, y_eval) -> pd.DataFrame:
    """One row per DFA run of the lambda sweep in each head regime (``sweeps``: ``{regime: {(lambda, seed):
    Run}}``, in ``order``): accuracy, margin over the frozen baseline of its seed and regime (``frozen_acc``
    ``{regime: {seed: accuracy}}``: the baseline's head at the regime's rate), the final
    snapshot's h_L, g_L and growth, and the credit quality on the evaluation batch
    (:func:`faeval.analysis.credit_quality`: deep Gamma, its fresh-feedback null, deep rho)."""
    quality = []
    for regime in order:
        for (lam, s), run in sweeps[regime].items():
            last = run.history[-1]["diag"]
            q = credit_quality(run, x_eval, y_eval)
            quality.append({
                "regime": regime, "lambda": lam, "seed": s, "acc": run.test_acc,
                "margin_pp": 100 * (run.test_acc - frozen_acc[regime][s]), "h_L": last.h_L, "g_L": last.g_L,
                "growth": last.max_block_growth, "deep Gamma": q["deep_gamma"], "null deep Gamma": q["null_deep"],
                "null std": q["null_deep_std"], "deep rho": q["deep_rho"], "stopped": run.stopped or ""})
    return pd.DataFrame(quality)


def early_table(sweeps, order, seeds) -> pd.DataFrame:
    """Vanilla DFA's (lambda 0) epochs 1 to 3 in each head regime: g_L, whether the reference is valid
    (above the D2 floor) and deep Gamma."""
    early = []
    for regime in order:
        for s in seeds:
            for rec in sweeps[regime][0.0, s].history[1:4]:
                snap = rec["diag"]
                early.append({"regime": regime, "seed": s, "epoch": rec["epoch"], "g_L": snap.g_L,
                              "reference valid": snap.g_L > Thresholds().d2_floor, "deep Gamma": snap.deep_gamma})
    return pd.DataFrame(early)


# ---------------------------------------------------------------------------------------------
# the chapter's readings of its tables and figures (glued under each; see faeval.book.prose)
# ---------------------------------------------------------------------------------------------
def _quiet_lambdas(q) -> list[float]:
    """The lambdas of ``q`` (quality rows of one regime) at which neither D1 nor D2 fires on any seed."""
    th = Thresholds()
    return [lam for lam, g in q.groupby("lambda") if (g.growth <= th.d1_growth).all() and (g.g_L >= th.d2_floor).all()]


def read_quality(quality, decision) -> str:
    """Along the sweep, judged regime: vanilla DFA's scale and reference, the smallest lambda that keeps D1 and
    D2 quiet on every seed, its deep Gamma against the null and the margin over frozen; one sentence on the
    other regime."""
    q = quality[quality.regime == decision.judged]
    m = q.groupby("lambda")[["growth", "g_L", "deep Gamma", "null deep Gamma", "null std", "margin_pp"]].mean()
    quiet = _quiet_lambdas(q)
    v = m.loc[0.0]
    out = [f"{prose.head(decision.judged).capitalize()} (judged), vanilla DFA (lambda 0) ends with growth "
           f"{prose.times(v.growth)}, {prose.G_L} {v.g_L:.1e} and deep Gamma {v['deep Gamma']:+.3f} (means over "
           "seeds)."]
    if quiet:
        lam = min(quiet)
        w = m.loc[lam]
        out.append(f"The smallest lambda that keeps D1 and D2 quiet on every seed is {lam:g}: "
                   f"growth {prose.times(w.growth)}, {prose.G_L} {w.g_L:.1e}, deep Gamma {w['deep Gamma']:+.3f} "
                   "against the fresh-feedback null's "
                   f"{w['null deep Gamma']:+.3f} ± {w['null std']:.3f}, and a margin over frozen of "
                   f"{w.margin_pp:+.1f} pp (vanilla: {v.margin_pp:+.1f} pp).")
    else:
        out.append("No lambda of the sweep keeps both D1 and D2 quiet on every seed.")
    o = quality[quality.regime == decision.other]
    o_quiet = _quiet_lambdas(o)
    out.append(f"With the {decision.other} (not judged), D1 and D2 stay quiet on every seed at "
               f"{'every lambda' if len(o_quiet) == o['lambda'].nunique() else prose.names(f'{x:g}' for x in o_quiet)}"
               f"; the best mean margin there is {o.groupby('lambda').margin_pp.mean().max():+.1f} pp.")
    return " ".join(out)


def read_early(early, decision) -> str:
    """Vanilla DFA's first epochs, judged regime: how many records have a valid reference, and their deep Gamma
    beside the |Gamma| < 0.05 band."""
    e = early[early.regime == decision.judged]
    valid = e[e["reference valid"]]
    if valid.empty:
        return (f"{prose.head(decision.judged).capitalize()} (judged), none of the {len(e)} early records has a "
                "valid reference: the early deep Gamma cannot be read.")
    near = bool((valid["deep Gamma"].abs() < 0.05).all())
    return (f"{prose.head(decision.judged).capitalize()} (judged), {prose.count(len(valid), len(e))} early records "
            f"have a valid reference, and their deep Gamma is {prose.span(valid['deep Gamma'], '{:+.3f}')}: "
            + ("within 0.05 of zero, chance level while the reference can still be read." if near else
               "not all within 0.05 of zero."))


def read_two_by_two(two_by_two, lam_on, decision) -> str:
    """What the penalty changes in BP's and DFA's accuracy, per head regime (means over seeds, points)."""
    def says(regime):
        t = two_by_two.loc[regime]
        d = {m: 100 * (t.loc[m, lam_on] - t.loc[m, 0.0]) for m in ("bp", "dfa")}
        return f"lambda {lam_on:g} changes BP's accuracy by {d['bp']:+.1f} pp and DFA's by {d['dfa']:+.1f} pp"
    return prose.regime_sentence(decision, says)


def headroom(two_by_twos, frozen_acc) -> dict:
    """BP's headroom over the frozen baseline, ``{seed: points}``: BP at lambda 0 over the head-trained baseline
    (``two_by_twos`` and ``frozen_acc`` by regime, as the notebook holds them), the unit D3's margins are also
    read in."""
    from ..head import TRAINED
    bp = {s: r.test_acc for (m, lam, s), r in two_by_twos[TRAINED].items() if m == "bp" and lam == 0}
    return {s: 100 * (acc - frozen_acc[TRAINED][s]) for s, acc in bp.items()}


def d3_table(quality, headroom) -> pd.DataFrame:
    """Per head regime and lambda (``quality``: :func:`quality_table`): the mean margin over the matched frozen
    baseline, the same in units of BP's mean headroom (``headroom`` ``{seed: points}``, :func:`headroom`), and
    whether D3 fires at a bar of 1, 2 and 3 points."""
    margins = quality.groupby(["regime", "lambda"])["margin_pp"].mean()
    unit = sum(headroom.values()) / len(headroom)
    return pd.DataFrame({"mean margin (pp)": margins, "in headroom": margins / unit,
                         **{f"D3 fires at {m} pp": margins < m for m in (1.0, 2.0, 3.0)}})


def read_d3(d3, decision) -> str:
    """Where along the sweep the mean margin crosses D3's 2 pp bar, per head regime."""
    def says(regime):
        fires = d3.loc[regime, "D3 fires at 2.0 pp"]
        margin = d3.loc[regime, "mean margin (pp)"]
        clear = [f"{lam:g}" for lam, f in fires.items() if not f]
        if not clear:
            return f"D3 fires at every lambda (the best mean margin is {margin.max():+.1f} pp)"
        if len(clear) == len(fires):
            return f"D3 is quiet at every lambda (the smallest mean margin is {margin.min():+.1f} pp)"
        return f"the mean margin clears the 2 pp bar at lambda {prose.names(clear)} only, so D3's verdict changes"
    return prose.regime_sentence(decision, says)
