"""The cross-architecture chapter's claims (notebook ``03_cross_arch``).

Evidence, per head regime: ``rows``, the summary table (one row per architecture label and method: the
final growth and g_L, the first epoch each diagnostic fired, ``terminal LN``) and ``runs``
(``{(label, method): Run}``); shared: ``archs``, the architecture labels in the profile's order.
"""
from __future__ import annotations

import pandas as pd

from ...protocol import Monitor
from .. import prose
from ..claims import Chapter, Check

CLAIMS = Chapter("cross_arch")


def row(ev, label: str, method: str = "dfa") -> pd.Series:
    return ev.rows[(ev.rows.architecture == label) & (ev.rows.method == method)].iloc[0]


def fired(ev, label: str, diag: str, method: str = "dfa") -> bool:
    return not pd.isna(row(ev, label, method)[f"{diag} epoch"])


def no_ln(ev) -> list[str]:
    """The labels whose model has no terminal LayerNorm (the model says so: ``has_out_ln``)."""
    return [label for label in ev.archs if not row(ev, label)["terminal LN"]]


def of_arch(ev, arch: str) -> list[str]:
    """The labels of one architecture (``"vit"``, ``"cnn"``...), read from the runs' configs."""
    return [label for label in ev.archs if ev.runs[label, "dfa"].config["arch"] == arch]


@CLAIMS.claim("cross_arch.bp_never_fires", "BP fires neither D1 nor D2 on any architecture",
              paper="temporal.bp_never_fires")
def _(ev):
    fires = {label: fired(ev, label, "D1", "bp") or fired(ev, label, "D2", "bp") for label in ev.archs}
    return Check(not any(fires.values()),
                 ", ".join(f"{label}: {'fires' if f else 'quiet'}" for label, f in fires.items()))


@CLAIMS.claim("cross_arch.no_ln_no_d2", "Without a terminal LN, DFA never fires D2", paper=True)
def _(ev):
    return Check(not any(fired(ev, label, "D2") for label in no_ln(ev)),
                 ", ".join(f"{label}: g_L {row(ev, label).g_L:.1e}" for label in no_ln(ev)))


@CLAIMS.claim("cross_arch.no_ln_dfa_d1", "Without a terminal LN, DFA still fires D1 (the stream grows)",
              paper="cross_arch.no_ln_no_d2")
def _(ev):
    return Check(all(fired(ev, label, "D1") for label in no_ln(ev)),
                 ", ".join(f"{label}: growth {row(ev, label).growth:.3g}" for label in no_ln(ev)))


@CLAIMS.claim("cross_arch.ln_dfa_d2", "With a terminal LN, DFA fires D2", paper="cross_arch.vit_dfa_d1")
def _(ev):
    with_ln = [label for label in ev.archs if label not in no_ln(ev)]
    return Check(all(fired(ev, label, "D2") for label in with_ln),
                 ", ".join(f"{label}: g_L {row(ev, label).g_L:.1e}" for label in with_ln))


@CLAIMS.claim("cross_arch.vit_dfa_d1", "DFA fires D1 on ViT-Mini", paper=True)
def _(ev):
    vit = of_arch(ev, "vit")
    return Check(any(fired(ev, label, "D1") for label in vit),
                 ", ".join(f"growth {row(ev, label).growth:.3g}" for label in vit))


@CLAIMS.claim("cross_arch.cnn_dfa_d1", "DFA fires D1 on SmallCNN", paper=True)
def _(ev):
    cnn = of_arch(ev, "cnn")
    return Check(any(fired(ev, label, "D1") for label in cnn),
                 ", ".join(f"growth {row(ev, label).growth:.3g}" for label in cnn))


CLAIMS.stopped_runs("cross_arch.trained", "runs", "{1}.{0}", "{1} on {0} trained to the end")


def summary_table(regimes, order, log_batch: int) -> pd.DataFrame:
    """One row per run of each head regime (``regimes``: ``{regime: {(label, method): Run}}``, in ``order``):
    whether the model has a terminal LN, the accuracy, the final snapshot's growth, h_L and g_L (also read
    at batch ``log_batch``), and the first epoch D1 and D2 fired, replayed from the epoch records."""
    summary = []
    for regime in order:
        for (label, method), run in regimes[regime].items():
            first = Monitor().replay(run.history)
            first_log = Monitor(d2_batch=log_batch).replay(run.history)
            last = run.history[-1]["diag"]
            summary.append({
                "regime": regime, "architecture": label, "method": method, "terminal LN": run.model.has_out_ln,
                "acc": run.test_acc, "growth": last.max_block_growth, "h_L": last.h_L, "g_L": last.g_L,
                f"g_L (batch {log_batch})": last.g_L_at(log_batch), "D1 epoch": first["D1"], "D2 epoch": first["D2"],
                f"D2 epoch (batch {log_batch})": first_log["D2"], "stopped": run.stopped or ""})
    return pd.DataFrame(summary)


# ---------------------------------------------------------------------------------------------
# the chapter's readings of its table and figure (glued under each; see faeval.book.prose)
# ---------------------------------------------------------------------------------------------
def read_summary(summary, decision) -> str:
    """On which backbones DFA fires D1, D2, both or neither, and whether BP fires anywhere, per head regime."""
    def says(regime):
        s = summary[summary.regime == regime]
        dfa = s[s.method == "dfa"].set_index("architecture")
        d1, d2 = dfa["D1 epoch"].notna(), dfa["D2 epoch"].notna()
        groups = {"both D1 and D2": d1 & d2, "D1 only": d1 & ~d2, "D2 only": ~d1 & d2, "neither": ~d1 & ~d2}
        parts = [f"{what} on {prose.names(f'*{a}*' for a in mask[mask].index)}"
                 for what, mask in groups.items() if mask.any()]
        return f"DFA fires {'; '.join(parts)}"
    bp = summary[(summary.method == "bp") & (summary.regime == decision.judged)]    # the same runs in both
    loud = [f"*{a}*" for a in bp[bp["D1 epoch"].notna() | bp["D2 epoch"].notna()].architecture]
    return (prose.regime_sentence(decision, says)
            + f" BP (head trained) fires D1 or D2 on {prose.names(loud, 'no backbone')}.")


def read_trajectories(runs, labels) -> str:
    """DFA's final ||h_L|| over BP's, and the two accuracies, on each backbone shown (``runs``:
    ``{(label, method): Run}`` of the judged regime)."""
    parts = []
    for label in labels:
        dfa, bp = runs[label, "dfa"], runs[label, "bp"]
        ratio = dfa.history[-1]["diag"].h_L / bp.history[-1]["diag"].h_L
        parts.append(f"on *{label}*, DFA's final {prose.H_L} is {prose.times(ratio)} BP's (accuracy "
                     f"{dfa.test_acc:.3f} against {bp.test_acc:.3f})")
    return ("Compare each row's two lines: " + "; ".join(parts) + ". A ratio near 1 means DFA's stream grew no more "
            "than BP's on that backbone.")
