"""The audit's claims (notebook ``01_audit``).

Evidence, per head regime: ``rows`` (one :func:`faeval.analysis.audit_rows` row per run), ``ablation``
(:func:`faeval.analysis.decision_utility_ablation`) and ``runs`` (``{(method, seed): Run}``); shared:
``frozen_acc`` and ``shallow_acc`` (``{seed: accuracy}`` of the two baselines) and ``random_init``
(``{seed: Report}`` of the untrained models).
"""
from __future__ import annotations

from ...protocol import Thresholds
from ..claims import Chapter, Check, PerSeed

CLAIMS = Chapter("audit")
TH = Thresholds()


def of(ev, method: str, key: str) -> dict:
    """``{seed: row[key]}`` of one rule's runs."""
    return {r["seed"]: r[key] for r in ev.rows if r["method"] == method}


def margins(ev, method: str) -> dict:
    """``{seed: accuracy - frozen baseline's, in points}`` of one rule's runs."""
    return {r["seed"]: 100 * (r["acc"] - r["frozen_acc"]) for r in ev.rows if r["method"] == method}


@CLAIMS.claim("audit.s1_walks_back_none", "S1 (accuracy + Gamma) walks back no run", paper=True)
def _(ev):
    s1 = ev.ablation["S1"]
    return Check(s1["n_walked_back"] == 0, f"{s1['n_walked_back']}/{s1['n_runs']} walked back")


@CLAIMS.claim("audit.walks_back.dfa", "The full protocol walks back DFA on every seed", paper=True)
def _(ev):
    return PerSeed(of(ev, "dfa", "verdict"), lambda v: v != "PASS")


@CLAIMS.claim("audit.dfa_d1", "DFA fires D1 (max per-block growth > 50) on every seed", paper=True)
def _(ev):
    return PerSeed(of(ev, "dfa", "growth"), lambda v: v > TH.d1_growth, "{:.3g}")


@CLAIMS.claim("audit.dfa_d2", "DFA fires D2 (||g_L|| < 1e-7) on every seed", paper=True)
def _(ev):
    return PerSeed(of(ev, "dfa", "g_L"), lambda v: v < TH.d2_floor, "{:.2e}")


@CLAIMS.claim("audit.dfa_d3", "DFA does not clear the frozen baseline by 2 pp (D3 fires) on every seed",
              paper=True)
def _(ev):
    return PerSeed(margins(ev, "dfa"), lambda v: v < TH.d3_margin_pp, "{:+.1f} pp")


@CLAIMS.claim("audit.bp_passes", "BP passes the protocol on every seed", paper=True)
def _(ev):
    return PerSeed(of(ev, "bp", "verdict"), lambda v: v == "PASS")


@CLAIMS.claim("audit.ep_passes", "EP passes the protocol on every seed", paper=True)
def _(ev):
    return PerSeed(of(ev, "ep", "verdict"), lambda v: v == "PASS")


@CLAIMS.claim("audit.fa_d3", "FA passes D3 (clears the frozen baseline by 2 pp) on every seed", paper=True)
def _(ev):
    return PerSeed(margins(ev, "fa"), lambda v: v >= TH.d3_margin_pp, "{:+.1f} pp")


for _m in ("state_bridge", "credit_bridge"):
    @CLAIMS.claim(f"audit.walks_back.{_m}", f"The full protocol walks back {_m} on every seed", paper=True)
    def _(ev, m=_m):
        return PerSeed(of(ev, m, "verdict"), lambda v: v != "PASS")


CLAIMS.stopped_runs("audit.trained", "runs", "{0}.s{1}", "{0} seed {1} trained to the end")


@CLAIMS.claim("audit.shallow_vs_frozen",
              "The DFA-shallow and frozen-blocks baselines agree within 1 pp on every seed", paper=True,
              per_regime=False)
def _(ev):
    if not ev.shallow_acc:
        return Check(None, "", "the DFA-shallow baseline is not defined for this architecture")
    return PerSeed({s: 100 * (ev.shallow_acc[s] - ev.frozen_acc[s]) for s in ev.shallow_acc},
                   lambda pp: abs(pp) < 1.0, "{:+.1f} pp")


@CLAIMS.claim("audit.random_init_passes", "A random-init model passes the protocol on every seed", paper=True,
              per_regime=False)
def _(ev):
    return PerSeed({s: r.verdict for s, r in ev.random_init.items()}, lambda v: v == "PASS")
