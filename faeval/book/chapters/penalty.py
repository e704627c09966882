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
    return Check(ev.d3["D3 fires at 2.0 pp"].nunique() > 1,
                 ", ".join(f"{lam:g}: {m:+.2f} pp" for lam, m in ev.d3["mean margin (pp)"].items()))


CLAIMS.stopped_runs("penalty.trained", "sweep", "{0:g}.s{1}", "DFA lambda={0:g} seed {1} trained to the end")


def quality_table(sweeps, order, frozen_acc, x_eval, y_eval) -> pd.DataFrame:
    """One row per DFA run of the lambda sweep in each head regime (``sweeps``: ``{regime: {(lambda, seed):
    Run}}``, in ``order``): accuracy, margin over the frozen baseline of its seed (``frozen_acc``), the final
    snapshot's h_L, g_L and growth, and the credit quality on the evaluation batch
    (:func:`faeval.analysis.credit_quality`: deep Gamma, its fresh-feedback null, deep rho)."""
    quality = []
    for regime in order:
        for (lam, s), run in sweeps[regime].items():
            last = run.history[-1]["diag"]
            q = credit_quality(run, x_eval, y_eval)
            quality.append({
                "regime": regime, "lambda": lam, "seed": s, "acc": run.test_acc,
                "margin_pp": 100 * (run.test_acc - frozen_acc[s]), "h_L": last.h_L, "g_L": last.g_L,
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
