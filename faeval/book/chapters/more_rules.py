"""The "More rules under the protocol" chapter's claims and tables (notebook ``05_more_rules``).

Evidence, per head regime: ``table`` (:func:`rules_table`: one row per run of every rule but the frozen
baseline); shared: ``cnn`` (:func:`cnn_table`). The claims come from the rules' own papers where they give a
number (the values file's ``literature:`` entries), not from the paper the book reproduces.
"""
from __future__ import annotations

import math

import pandas as pd

from ...analysis import audit_rows, credit_quality
from .. import prose
from ..claims import Chapter, Check, paper
from ..head import FITTED, KEEP_TRAINED, TRAINED
from ..tables import table

CLAIMS = Chapter("more_rules")

#: the layer-wise family, block-level rules and the rest, in the order the tables list them before sorting
FAMILY = {"bp": "reference", "fa": "block-level", "dfa": "block-level", "ep": "block-level",
          "state_bridge": "block-level", "credit_bridge": "block-level", "drtp": "block-level",
          "fa_layer": "layer-wise", "usf": "layer-wise", "frsf": "layer-wise", "brsf": "layer-wise",
          "kp": "layer-wise", "wm": "layer-wise"}
SIGN_CONCORDANT = ("usf", "frsf", "brsf")


def regimes(runs) -> dict[str, dict]:
    """``{regime: {(method, seed): Run}}`` from the chapter's runs (``P.experiment("more_rules")``): ``head fitted``
    takes the fitted-head runs (the rules' and the matched frozen baseline's) and shares BP's (the new rules have
    every seed in the judged regime only, so the two regimes do not hold the same keys)."""
    kept = {k: r for k, r in runs["runs"].items() if k[0] in KEEP_TRAINED}
    return {TRAINED: dict(runs["runs"]), FITTED: {**kept, **runs.get("fitted_head_runs", {})}}


def _angles(run) -> dict[str, float]:
    """The last record's angle between each layer's B and W (layer-wise rules; empty for the others)."""
    rec = run.history[-1]
    return {k.removeprefix("angle/"): v for k, v in rec.stats.items() if k.startswith("angle/")}


def rules_table(regimes, order, frozen_acc, x_eval, y_eval) -> pd.DataFrame:
    """One row per run (``regimes``: ``{regime: {(method, seed): Run}}``, in ``order``; the frozen baseline is
    left out): the family, accuracy, margin over the frozen baseline of its seed and regime (``frozen_acc``
    ``{regime: {seed: accuracy}}``: the baseline's head at the regime's rate), growth, g_L, C (direction
    stability), deep Gamma (layers 1..L, the rule's own credit), the angle between B and W (mean over the
    layers, and the output layer's; NaN for rules without per-layer feedback) and the verdict under both
    verdict rules."""
    out = []
    for regime in order:
        runs = {k: r for k, r in regimes[regime].items() if k[0] != "frozen" and isinstance(k[1], int)}
        frozen = frozen_acc[regime]
        for row, ((m, s), run) in zip(audit_rows(runs, x_eval, y_eval, frozen), runs.items()):
            ang = _angles(run)
            out.append({"regime": regime, "method": m, "family": FAMILY.get(m, "user"), "seed": s, "acc": row["acc"],
                        "margin_pp": 100 * (row["acc"] - frozen[s]), "growth": row["growth"], "g_L": row["g_L"],
                        "C": row["stability"],
                        "deep Gamma": credit_quality(run, x_eval, y_eval, null_draws=0, rho_directions=0)["deep_gamma"],
                        "angle": sum(ang.values()) / len(ang) if ang else math.nan,
                        "head angle": ang.get("out_head", math.nan),
                        "verdict": row["verdict"], "Mode 1 or D3": row["verdict_mode1_or_d3"]})
    return pd.DataFrame(out)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per rule (and regime), with the verdicts as counts of PASS over seeds, sorted by
    verdict (every seed passing first) then accuracy."""
    g = table.groupby(["regime", "method"], sort=False)
    means = g[["acc", "margin_pp", "growth", "g_L", "C", "deep Gamma", "angle", "head angle"]].mean()
    n = g.size()
    passes = g["verdict"].apply(lambda v: (v == "PASS").sum())
    passes_m1 = g["Mode 1 or D3"].apply(lambda v: (v == "PASS").sum())
    means.insert(0, "family", g["family"].first())
    means["PASS"] = [f"{p}/{k}" for p, k in zip(passes, n)]
    means["PASS M1/D3"] = [f"{p}/{k}" for p, k in zip(passes_m1, n)]
    means["_pass"] = passes / n
    means = means.reset_index()
    means["_regime"] = means["regime"].map({r: i for i, r in enumerate(dict.fromkeys(table["regime"]))})
    return (means.sort_values(["_regime", "_pass", "acc"], ascending=[True, False, False])
            .drop(columns=["_pass", "_regime"]).set_index(["regime", "method"]))


#: the protocol's columns of :func:`summary` (its B-W angles are :func:`angle_table`'s)
PROTOCOL_COLUMNS = ["family", "acc", "margin_pp", "growth", "g_L", "C", "deep Gamma", "PASS", "PASS M1/D3"]


def protocol_table(summary: pd.DataFrame, regime: str, caption: str | None = None):
    """One head regime's rows of :func:`summary`, the protocol's columns, as a book table (one regime per table
    keeps it inside the content column)."""
    style = table(summary.loc[regime, PROTOCOL_COLUMNS])
    return style.set_caption(caption) if caption else style


def angle_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The angle between B and W (degrees; mean over layers and the output layer's) of every rule with per-layer
    feedback: one row per rule, the head regimes side by side."""
    t = summary[["angle", "head angle"]].dropna(how="all")
    order = dict.fromkeys(t.index.get_level_values("regime"))
    return pd.concat({regime: t.loc[regime] for regime in order}, axis=1)


def cnn_table(runs) -> pd.DataFrame:
    """``runs``: ``{method: Run}`` on SmallCNN: test accuracy, top-1 error in % (BioTorch's measure), growth and
    the mean B-W angle."""
    rows = []
    for m, run in runs.items():
        ang = _angles(run)
        rows.append({"method": m, "acc": run.test_acc, "error %": 100 * (1 - run.test_acc),
                     "growth": run.history[-1]["diag"].max_block_growth,
                     "angle": sum(ang.values()) / len(ang) if ang else math.nan})
    return pd.DataFrame(rows).set_index("method")


def skip_path(table: pd.DataFrame) -> pd.DataFrame:
    """The seed's block-level FA beside ``fa_layer`` per regime (means over seeds): growth, g_L, deep Gamma and
    accuracy, the difference the exact skip path makes."""
    t = table[table.method.isin(["fa", "fa_layer"])]
    return t.groupby(["regime", "method"], sort=False)[["acc", "growth", "g_L", "deep Gamma"]].mean()


def _mean(ev, method, col):
    t = ev.table
    return float(t.loc[t.method == method, col].mean())


for _m in SIGN_CONCORDANT:
    @CLAIMS.claim(f"more_rules.sign_near_bp.{_m}",
                  f"{_m} is within 1 point of BP's accuracy (mean over seeds)", paper=f"more_rules.sign_near_bp.{_m}")
    def _(ev, m=_m):
        gap = 100 * (_mean(ev, "bp", "acc") - _mean(ev, m, "acc"))
        return Check(gap <= 1.0, f"BP {_mean(ev, 'bp', 'acc'):.4f}, {m} {_mean(ev, m, 'acc'):.4f}: {gap:+.2f} points")


for _m, _what in (("kp", "Kolen-Pollack"), ("wm", "weight mirroring")):
    @CLAIMS.claim(f"more_rules.{_m}_aligns",
                  f"{_what}'s output-layer B aligns with W to within 10 degrees (mean over seeds)",
                  paper=f"more_rules.{_m}_aligns")
    def _(ev, m=_m):
        a = _mean(ev, m, "head angle")
        return Check(a < 10.0, f"{a:.1f} degrees (mean over layers {_mean(ev, m, 'angle'):.1f})")


@CLAIMS.claim("more_rules.fa_layer_aligns",
              "Under layer-wise FA the output layer's W comes to align with its fixed B (angle below 60 degrees)",
              paper="more_rules.fa_layer_aligns")
def _(ev):
    a = _mean(ev, "fa_layer", "head angle")
    return Check(a < 60.0, f"{a:.1f} degrees")


def read_skip_path(skip: pd.DataFrame, order) -> str:
    """One sentence per regime, from :func:`skip_path`'s table: how layer-wise FA's growth and deep Gamma compare
    with the block-level FA's (the wording follows the measured values)."""
    out = []
    for regime in order:
        if (regime, "fa") not in skip.index or (regime, "fa_layer") not in skip.index:
            continue
        b, l = skip.loc[(regime, "fa")], skip.loc[(regime, "fa_layer")]
        ratio = b["growth"] / l["growth"]
        grows = (f"grows the stream {ratio:.3g}x more than layer-wise FA" if ratio > 1
                 else f"grows the stream {1 / ratio:.3g}x less than layer-wise FA")
        better = "higher" if b["deep Gamma"] > l["deep Gamma"] else "lower"
        out.append(f"{regime}: block-level FA {grows} (max per-block growth {b['growth']:.3g} against "
                   f"{l['growth']:.3g}), and its deep Gamma is {better} ({b['deep Gamma']:+.3f} against "
                   f"{l['deep Gamma']:+.3f}); accuracy {b['acc']:.4f} against {l['acc']:.4f}.")
    return "\n".join(f"- {line}" for line in out) or "FA and fa_layer are not both in this profile's runs."


def beside_biotorch(cnn: pd.DataFrame) -> pd.DataFrame:
    """:func:`cnn_table` with BioTorch's own Fashion-MNIST error beside ours (their model and recipe, labelled)."""
    theirs = paper("more_rules.biotorch_benchmark")["value"]
    out = cnn[["error %", "growth", "angle"]].rename(columns={"error %": "error % (ours, SmallCNN)"})
    out["error % (BioTorch's, their model)"] = [theirs.get(m, math.nan) for m in out.index]
    return out


def _seeds_passing(row) -> tuple[int, int]:
    """A summary row's ``PASS`` column, ``"k/n"``, as (seeds that pass, seeds run)."""
    k, n = row["PASS"].split("/")
    return int(k), int(n)


def _acc_angle(row) -> str:
    angle = "" if math.isnan(row["head angle"]) else f", output layer's B-W angle {row['head angle']:.1f} degrees"
    return f"accuracy {row['acc']:.4f}{angle}"


def read_regimes(summary: pd.DataFrame, order) -> str:
    """One line per rule whose verdict (rule "any") differs between the head regimes, with its accuracy in each;
    the wording follows the measured values."""
    if len(order) < 2:
        return "This profile has one head regime."
    a, b = order[0], order[1]
    lines = []
    for m in summary.loc[a].index.intersection(summary.loc[b].index):
        ra, rb = summary.loc[(a, m)], summary.loc[(b, m)]
        passes_a, passes_b = (k == n for k, n in map(_seeds_passing, (ra, rb)))
        if passes_a != passes_b:
            lines.append(f"{m}: {'passes' if passes_a else 'fails'} with the {a} ({_acc_angle(ra)}), "
                         f"{'passes' if passes_b else 'fails'} with the {b} ({_acc_angle(rb)})")
    if not lines:
        return f"Every rule's verdict is the same with the {a} and with the {b}."
    return "The rules whose verdict changes between the head regimes:\n\n" + "\n".join(f"- {x}" for x in lines)


# ---------------------------------------------------------------------------------------------
# the chapter's readings of its tables (glued under each; see faeval.book.prose)
# ---------------------------------------------------------------------------------------------
def _passes(summary, regime) -> tuple[list[str], list[str], list[str]]:
    """The rules that pass on every seed, on some and on none, in ``regime``."""
    every, some, none = [], [], []
    for m, r in summary.loc[regime].iterrows():
        k, n = _seeds_passing(r)
        (every if k == n else none if k == 0 else some).append(m)
    return every, some, none


def read_rules(summary: pd.DataFrame, decision) -> str:
    """Which rules the protocol passes on every seed, on some and on none, and the largest margin over frozen,
    per head regime."""
    def says(regime):
        every, some, none = _passes(summary, regime)
        s = summary.loc[regime]
        best = s.margin_pp.idxmax()
        out = f"{prose.names(every)} pass on every seed, {prose.names(none)} on none"
        if some:
            out += f", {prose.names(some)} on some"
        return out + f"; the largest margin over frozen is {best}'s ({s.margin_pp[best]:+.1f} pp)"
    return prose.regime_sentence(decision, says)


def read_cnn(cnn: pd.DataFrame) -> str:
    """Ours against BioTorch's error, rule by rule where both exist, and whether the rules rank alike."""
    ours, theirs = "error % (ours, SmallCNN)", "error % (BioTorch's, their model)"
    both = cnn.dropna(subset=[theirs])
    if both.empty:
        return "BioTorch reports none of these rules on Fashion-MNIST."
    diff = both[ours] - both[theirs]
    rank = {who: " < ".join(both[col].sort_values().index) for who, col in (("ours", ours), ("theirs", theirs))}
    same = "the same order" if rank["ours"] == rank["theirs"] else "a different order"
    return (f"Our error minus BioTorch's is {prose.span(diff, '{:+.1f}')} points over the {len(both)} rules both "
            "report. The model and the recipe differ, so read the order of the rules rather than the level: by "
            f"error the rules rank in {same} (ours: {rank['ours']}; BioTorch's: {rank['theirs']}).")
