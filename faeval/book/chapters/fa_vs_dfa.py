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
from .. import prose
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
    from ..head import headroom_note
    fa = ev.compare.set_index(["method", "seed"]).loc["fa"]
    return PerSeed(fa["margin_pp"].to_dict(), lambda pp: pp >= Thresholds().d3_margin_pp, "{:+.1f} pp",
                   note=headroom_note(fa["margin_pp"].to_dict(), fa["headroom_pp"].to_dict()))


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
    of its seed, BP's headroom over frozen on that seed (``headroom_pp``, both head trained: the unit a margin is
    read in), deep Gamma and its fresh-feedback null (:func:`faeval.analysis.credit_quality`), and the
    final snapshot's growth, h_L and g_L."""
    from ..head import TRAINED
    compare = []
    trained = pairs[TRAINED]
    for regime in order:
        pair = pairs[regime]
        for (m, s), run in pair.items():
            if m in ("frozen", "bp"):
                continue
            q = credit_quality(run, x_eval, y_eval, rho_directions=0)
            last = run.history[-1]["diag"]
            compare.append({
                "regime": regime, "method": m, "seed": s, "acc": run.test_acc,
                "margin_pp": 100 * (run.test_acc - pair["frozen", s].test_acc),
                "headroom_pp": 100 * (trained["bp", s].test_acc - trained["frozen", s].test_acc),
                "deep Gamma": q["deep_gamma"],
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


# ---------------------------------------------------------------------------------------------
# the chapter's readings of its tables and figures (glued under each; see faeval.book.prose)
# ---------------------------------------------------------------------------------------------
def read_compare(compare, decision) -> str:
    """FA beside DFA, per head regime (means over seeds): accuracy, margin over frozen, deep Gamma beside its
    null, growth; which of the two is more accurate."""
    def says(regime):
        m = compare[compare.regime == regime].groupby("method")[
            ["acc", "margin_pp", "deep Gamma", "null deep Gamma", "growth"]].mean()
        if not {"fa", "dfa"} <= set(m.index):
            return None
        fa, dfa = m.loc["fa"], m.loc["dfa"]
        lead = "FA" if fa.acc > dfa.acc else "DFA"
        return "; ".join(
            f"{name} ends at accuracy {r.acc:.3f} ({prose.vs_frozen(r.margin_pp)}), deep Gamma "
            f"{r['deep Gamma']:+.3f} (null {r['null deep Gamma']:+.3f}), growth {prose.times(r.growth)}"
            for name, r in (("FA", fa), ("DFA", dfa))) + (
            f": {lead} is the more accurate by {abs(fa.acc - dfa.acc) * 100:.1f} pp")
    return prose.regime_sentence(decision, says)


def read_depth(depth_rows, decision) -> str:
    """From the shallowest to the deepest model, judged regime: each rule's deep Gamma and margin over frozen."""
    d = depth_rows[depth_rows.regime == decision.judged]
    lo, hi = d.depth.min(), d.depth.max()
    parts = []
    for m in ("fa", "dfa"):
        r = d[d.method == m].set_index("depth")
        parts.append(f"{m.upper()}'s deep Gamma goes from {r.loc[lo, 'deep Gamma']:+.3f} to "
                     f"{r.loc[hi, 'deep Gamma']:+.3f} and its margin over frozen from {r.loc[lo, 'margin_pp']:+.1f} "
                     f"to {r.loc[hi, 'margin_pp']:+.1f} pp")
    return (f"{prose.head(decision.judged).capitalize()} (judged), from depth {lo} to depth {hi}: "
            + "; ".join(parts) + ".")


def read_assay(assay, decision) -> str:
    """Under random targets, each rule's final ||h_L|| per head regime, and whether EP stays 10x below DFA
    and FA (the paper's reading)."""
    def says(regime):
        h = assay.loc[regime, "h_L"]
        text = ", ".join(f"{m.upper()} {h[m]:.3g}" for m in h.index)
        if "ep" in h.index and {"fa", "dfa"} <= set(h.index):
            below = h["ep"] * 10 < min(h["fa"], h["dfa"])
            text += f"; EP is {'' if below else 'not '}10x below both FA and DFA"
        return f"the final {prose.H_L} under random targets is {text}"
    return prose.regime_sentence(decision, says)
