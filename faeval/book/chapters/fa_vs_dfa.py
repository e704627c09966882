"""The FA-versus-DFA chapter's claims (notebook ``05_fa_vs_dfa``).

Evidence, per head regime: ``compare`` (one row per local rule and seed of the audit's runs: accuracy,
margin over the frozen baseline, deep Gamma, growth, h_L, g_L), ``depth_rows`` (the depth sweep: one row
per depth and rule), ``assay`` (the random-target runs' last record, by method) and ``pair``
(``{(method, seed): Run}``, the audit's runs, BP's among them).
"""
from __future__ import annotations

import pandas as pd

from ...analysis import credit_quality
from ...protocol import Thresholds
from ..claims import Chapter, Check, PerSeed

CLAIMS = Chapter("fa_vs_dfa")


def mean(ev):
    """The rules' means over seeds."""
    return ev.compare.groupby("method").mean(numeric_only=True)


@CLAIMS.claim("fa_vs_dfa.fa_more_accurate", "FA is more accurate than DFA (mean over seeds)", paper=True)
def _(ev):
    m = mean(ev)
    return Check(m.loc["fa", "acc"] > m.loc["dfa", "acc"],
                 f"FA {m.loc['fa', 'acc']:.4f} vs DFA {m.loc['dfa', 'acc']:.4f}")


@CLAIMS.claim("fa_vs_dfa.fa_gamma_higher", "FA's deep Gamma exceeds DFA's", paper=True)
def _(ev):
    m = mean(ev)
    return Check(m.loc["fa", "deep Gamma"] > m.loc["dfa", "deep Gamma"],
                 f"FA {m.loc['fa', 'deep Gamma']:+.3f} vs DFA {m.loc['dfa', 'deep Gamma']:+.3f}")


@CLAIMS.claim("fa_vs_dfa.fa_clears_frozen", "FA clears the frozen baseline by 2 pp on every seed (D3 passes)",
              paper=True)
def _(ev):
    return PerSeed(ev.compare.set_index(["method", "seed"]).loc["fa", "margin_pp"].to_dict(),
                   lambda pp: pp >= Thresholds().d3_margin_pp, "{:+.1f} pp")


@CLAIMS.claim("fa_vs_dfa.both_grow",
              "Both FA and DFA grow the residual stream to 10x BP's ||h_L|| or more, on every seed (the smaller "
              "of FA's and DFA's growth over BP's ||h_L||)", paper=True)
def _(ev):
    by_seed = ev.compare.set_index(["method", "seed"])
    bp_h_L = {s: ev.pair["bp", s].history[-1]["diag"].h_L for s in ev.P.seeds}
    return PerSeed({s: min(by_seed.loc[(m, s), "h_L"] for m in ("fa", "dfa")) / bp_h_L[s] for s in ev.P.seeds},
                   lambda r: r >= 10, "{:.3g}x")


@CLAIMS.claim("fa_vs_dfa.fa_gamma_falls_with_depth", "FA's deep Gamma falls as depth grows", paper=True)
def _(ev):
    fa = ev.depth_rows[ev.depth_rows.method == "fa"].set_index("depth")["deep Gamma"]
    return Check(fa.iloc[0] > fa.iloc[-1], ", ".join(f"L={L}: {g:+.3f}" for L, g in fa.items()))


@CLAIMS.claim("fa_vs_dfa.random_targets",
              "DFA and FA explode under random targets while EP stays bounded (10x below both)", paper=True)
def _(ev):
    h = ev.assay["h_L"]
    return Check("ep" in h.index and h["ep"] * 10 < min(h["dfa"], h["fa"]),
                 ", ".join(f"{m} {h[m]:.3g}" for m in h.index))


def compare_table(pairs, order, x_eval, y_eval) -> pd.DataFrame:
    """One row per local rule's run of the audit in each head regime (``pairs``: ``{regime: {(method, seed):
    Run}}``, in ``order``; BP and the frozen baseline are left out): accuracy, margin over the frozen baseline
    of its seed, deep Gamma and its fresh-feedback null (:func:`faeval.analysis.credit_quality`), and the
    final snapshot's growth, h_L and g_L."""
    compare = []
    for regime in order:
        pair = pairs[regime]
        for (m, s), run in pair.items():
            if m in ("frozen", "bp"):
                continue
            q = credit_quality(run, x_eval, y_eval, rho_directions=0)
            last = run.history[-1]["diag"]
            compare.append({
                "regime": regime, "method": m, "seed": s, "acc": run.test_acc,
                "margin_pp": 100 * (run.test_acc - pair["frozen", s].test_acc), "deep Gamma": q["deep_gamma"],
                "null deep Gamma": q["null_deep"], "growth": last.max_block_growth, "h_L": last.h_L, "g_L": last.g_L})
    return pd.DataFrame(compare)


def depth_table(ladders, order, depths, x_eval, y_eval) -> pd.DataFrame:
    """FA and DFA at each depth (``ladders``: ``{regime: {(method, depth): Run}}``, first seed): accuracy,
    margin over the frozen baseline trained at the same depth, deep Gamma and the final growth."""
    rows = []
    for regime in order:
        ladder = ladders[regime]
        for L in depths:
            frozen = ladder["frozen", L].test_acc
            for m in ("fa", "dfa"):
                run = ladder[m, L]
                q = credit_quality(run, x_eval, y_eval, null_draws=0, rho_directions=0)
                rows.append({"regime": regime, "depth": L, "method": m, "acc": run.test_acc,
                             "margin_pp": 100 * (run.test_acc - frozen), "deep Gamma": q["deep_gamma"],
                             "growth": run.history[-1]["diag"].max_block_growth})
    return pd.DataFrame(rows)
