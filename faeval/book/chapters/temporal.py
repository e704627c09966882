"""The temporal chapter's claims (notebook ``02_temporal``).

Evidence, per head regime: ``firing``, one row per run (method, seed, epochs, the first firing epoch of
each diagnostic, the stop epoch, the accuracy there and at the end, the share of time saved); shared:
``log_batch``, the batch size of the paper's per-epoch logs.
"""
from __future__ import annotations

import pandas as pd

from ...protocol import Monitor
from .. import prose
from ..claims import Chapter, PerSeed

CLAIMS = Chapter("temporal")


def of(ev, method: str) -> pd.DataFrame:
    """One rule's rows of the firing table, by seed."""
    return ev.firing[ev.firing.method == method].set_index("seed")


def seeds_of(frame: pd.DataFrame, col: str) -> dict:
    """``{seed: value}`` of one column, a missing value (never fired) as None."""
    return {s: (None if pd.isna(v) else v) for s, v in frame[col].items()}


@CLAIMS.claim("temporal.dfa_d1",
              lambda ev: f"DFA fires D1 before the end of training ({int(of(ev, 'dfa').epochs.max())} epochs) "
                         "on every seed", paper=True)
def _(ev):
    return PerSeed(seeds_of(of(ev, "dfa"), "D1 epoch"), lambda e: True, "epoch {:.0f}", missing="never")


@CLAIMS.claim("temporal.dfa_d2_log_scale",
              "DFA fires D2, read at the paper's logging scale (batch {log_batch}), before the end of training "
              "on every seed", paper=True)
def _(ev):
    return PerSeed(seeds_of(of(ev, "dfa"), f"D2 epoch (batch {ev.log_batch})"), lambda e: True, "epoch {:.0f}",
                   missing="never")


@CLAIMS.claim("temporal.dfa_d2_audit_scale",
              "DFA fires D2 at the audit's scale (batch 128) before the end of training on every seed")
def _(ev):
    return PerSeed(seeds_of(of(ev, "dfa"), "D2 epoch"), lambda e: True, "epoch {:.0f}", missing="never")


@CLAIMS.claim("temporal.bp_never_fires", "BP never fires D1 or D2, on any seed", paper=True)
def _(ev):
    bp = of(ev, "bp")
    return PerSeed({s: int(bp.loc[s, ["D1 epoch", "D2 epoch"]].notna().sum()) for s in bp.index},
                   lambda n: n == 0, "{:.0f} firings")


@CLAIMS.claim("temporal.stop_saves",
              "Stopping DFA at the first firing saves most of the training (> 50%) on every seed", paper=True)
def _(ev):
    return PerSeed(seeds_of(of(ev, "dfa"), "saved share"), lambda v: v > 0.5, "{:.0%}")


@CLAIMS.claim("temporal.acc_at_stop",
              "DFA's accuracy at the stop is within 5 points of its final accuracy on every seed", paper=True)
def _(ev):
    return PerSeed({s: None if pd.isna(r["acc at stop"]) else r["final acc"] - r["acc at stop"]
                    for s, r in of(ev, "dfa").iterrows()}, lambda d: abs(d) < 0.05, "{:+.3f}")


def firing_table(regimes, order, log_batch: int) -> pd.DataFrame:
    """One row per run of each head regime (``regimes``: ``{regime: {(method, seed): Run}}``, in ``order``):
    the first epoch each diagnostic fired, replayed from the stored epoch records (:meth:`Monitor.replay`;
    D2 also read at batch ``log_batch``), the stop epoch (D1's or D2's first firing), the accuracy there
    and at the end, and the share of the training time after the stop."""
    firing = []
    for regime in order:
        for (method, seed), run in regimes[regime].items():
            first = Monitor().replay(run.history)
            first_log = Monitor(d2_batch=log_batch).replay(run.history)
            hist = {rec["epoch"]: rec for rec in run.history}
            fired = [e for e in (first["D1"], first["D2"]) if e is not None]
            stop = min(fired) if fired else None
            total = sum(rec["seconds"] for rec in run.history)
            after = sum(rec["seconds"] for rec in run.history if stop is not None and rec["epoch"] > stop)
            firing.append({
                "regime": regime, "method": method, "seed": seed, "epochs": run.history[-1]["epoch"],
                "D1 epoch": first["D1"], "D2 epoch": first["D2"], f"D2 epoch (batch {log_batch})": first_log["D2"],
                "C epoch": first["C"], "stop epoch": stop,
                "acc at stop": hist[stop]["test_acc"] if stop is not None else None,
                "final acc": run.test_acc, "saved share": after / total if stop is not None else 0.0})
    return pd.DataFrame(firing)


# ---------------------------------------------------------------------------------------------
# the chapter's readings of its figure and table (glued under each; see faeval.book.prose)
# ---------------------------------------------------------------------------------------------
def read_trajectories(regimes, decision) -> str:
    """DFA's and BP's ||h_L|| at the first and the last epoch record (means over seeds), per head regime."""
    def h(runs, method, at):
        return prose.mean(r.history[at]["diag"].h_L for (m, _), r in runs.items() if m == method)

    def says(regime):
        rr = regimes[regime]
        first, last = (rr[next(iter(rr))].history[i]["epoch"] for i in (0, -1))
        grow = h(rr, "dfa", -1) / h(rr, "dfa", 0)
        return (f"DFA's {prose.H_L} goes from {h(rr, 'dfa', 0):.3g} at epoch {first} to {h(rr, 'dfa', -1):.3g} "
                f"at epoch {last} ({prose.times(grow)}; means over seeds), BP's from {h(rr, 'bp', 0):.3g} to "
                f"{h(rr, 'bp', -1):.3g}")
    return ("Compare DFA's rows with BP's: the growth and g_L panels show where each crosses its threshold. "
            + prose.regime_sentence(decision, says))


def read_firing(firing, decision) -> str:
    """DFA's first D1 and D2 epochs, the share of training a stop there saves and the accuracy it gives up, and
    whether BP ever fires, per head regime."""
    def says(regime):
        f = firing[firing.regime == regime]
        dfa, bp = f[f.method == "dfa"], f[f.method == "bp"]
        bp_fires = int(bp[["D1 epoch", "D2 epoch"]].notna().any(axis=1).sum())
        bp_text = "BP never fires" if bp_fires == 0 else f"BP fires on {prose.count(bp_fires, len(bp))} seeds"
        if dfa["stop epoch"].isna().all():
            return f"DFA fires neither D1 nor D2 within {int(dfa.epochs.max())} epochs, and {bp_text}"
        lost = 100 * (dfa["final acc"] - dfa["acc at stop"])
        never = {d: int(dfa[f"{d} epoch"].isna().sum()) for d in ("D1", "D2")}
        never = [f"{d} never fires on {prose.count(n, len(dfa))} seeds" for d, n in never.items() if n]
        return (f"DFA fires D1 at epoch {prose.span(dfa['D1 epoch'], '{:.0f}')} and D2 at epoch "
                f"{prose.span(dfa['D2 epoch'], '{:.0f}')}{' (' + '; '.join(never) + ')' if never else ''}; "
                "stopping at the first firing saves "
                f"{prose.mean(dfa['saved share']):.0%} of the training time on average, and the run would have gained "
                f"{prose.span(lost, '{:+.1f}')} points of accuracy by the end; {bp_text}")
    return prose.regime_sentence(decision, says)
