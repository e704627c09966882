"""Why a trained head stops the growth, what that predicts, and the seed's FA record beside ours (issue #40).

Every run's history records, per epoch, the output error e = softmax - onehot on the eval batch (its median
per-sample norm and its consistency), each block's branch norm, and every parameter's drift from its
initialisation (:class:`faeval.train.EpochRecord`). This module reads them for DFA and FA in both head regimes
(:mod:`faeval.book.head`), on clean labels (the audit's runs), on random targets (the FA-vs-DFA assay) and on the
prediction test's noisy labels (the ``head_mechanism`` runs).

The mechanism the calibration appendix measures: a local rule sends the output error to the blocks, and the
blocks keep moving their outputs along it for as long as it stays large. A trained head shrinks the error by
growing its own weights (the logits' scale); with the head fixed, the terminal LayerNorm caps the logits at the
fixed head's scale and only out_ln's gain can raise it, a few tenths of its initial norm per epoch under AdamW's
bounded steps, so the error stays large and the blocks keep growing.

:data:`PREDICTION` is what that says for a task whose training labels the head cannot fit. It was written down
(and committed) before the noisy runs were trained; :func:`prediction_rows` tests it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["HEAD", "OUT_LN", "PREDICTION", "later_growth", "mechanism_rows", "prediction_rows", "check_record"]

HEAD, OUT_LN = "out_head.weight", "out_ln.weight"
#: the epoch the "later growth" is counted from: by then a trained head has fitted what it can (the clean runs'
#: error falls 12x in the first epoch)
FROM_EPOCH = 2

PREDICTION = (
    "Where a trained head cannot fit the training labels (a fraction of them replaced at random), it cannot "
    "drive the error down, so the blocks keep growing with the head trained too: for DFA and for FA, at every "
    "noise level, (a) the training loss at the end is higher than on clean labels, (b) ||h_L|| grows more from "
    f"epoch {FROM_EPOCH} to the end than on clean labels (same seed, head trained), and (c) the fixed head's "
    "excess growth (its final ||h_L|| over the trained head's) is smaller than on clean labels.")


def check_record(run, what: str = "run") -> None:
    """Raise if ``run``'s history predates the mechanism record (its fields are None), naming the fix."""
    rec = run.history[-1]
    if rec.drift is None or rec["diag"].error_norm is None:
        raise ValueError(f"{what} was stored before runs recorded the output error and the parameters' drift: "
                         "train it again (faeval.experiment(..., retrain=True), or delete its entry in the store)")


def later_growth(run, start: int = FROM_EPOCH) -> float:
    """||h_L|| at the end over ||h_L|| at epoch ``start``: how much the stream still grows once a trained
    head has fitted what it can."""
    by_epoch = {rec["epoch"]: rec["diag"].h_L for rec in run.history}
    if start not in by_epoch:
        raise ValueError(f"the run has no record of epoch {start} (its epochs: {sorted(by_epoch)})")
    return run.history[-1]["diag"].h_L / by_epoch[start]


def _rel(rec, name):
    v = rec.drift["rel"].get(name)
    return math.nan if v is None else v


def mechanism_rows(cases: Mapping[tuple, object]) -> list[dict]:
    """One row per ``(task, rule, regime)`` -> run: the mechanism's quantities after the first epoch and at
    the end (training loss, the eval batch's median ||e|| and its consistency, the relative drift of the head's
    and out_ln's weights, the largest branch norm, ||h_L||) and the later growth."""
    rows = []
    for (task, rule, regime), run in cases.items():
        check_record(run, f"{rule} ({task}, {regime})")
        first, last = run.history[1], run.history[-1]
        rows.append({"task": task, "rule": rule, "regime": regime,
                     "loss ep1": first["train_loss"], "loss end": last["train_loss"],
                     "|e| ep1": first["diag"].error_norm, "|e| end": last["diag"].error_norm,
                     "consistency": last["diag"].error_consistency,
                     "head drift": _rel(last, HEAD), "out_ln drift": _rel(last, OUT_LN),
                     "||h_L|| ep1": first["diag"].h_L, "||h_L|| end": last["diag"].h_L,
                     "later growth": later_growth(run), "acc": last["test_acc"]})
    return rows


def prediction_rows(clean: Mapping[tuple, object], noisy: Mapping[tuple, object]) -> list[dict]:
    """:data:`PREDICTION`, tested: one row per (rule, noise) of ``noisy`` ``{(rule, noise, regime): run}``
    against ``clean`` ``{(rule, regime): run}`` (same seed), with each part's reading and whether it holds."""
    rows = []
    for (rule, noise, regime), run in noisy.items():
        if regime != "head trained":
            continue
        fixed = noisy[rule, noise, "head fixed"]
        c_tr, c_fx = clean[rule, "head trained"], clean[rule, "head fixed"]
        for r in (run, fixed, c_tr, c_fx):
            check_record(r, f"{rule}")
        excess = fixed.history[-1]["diag"].h_L / run.history[-1]["diag"].h_L
        excess_clean = c_fx.history[-1]["diag"].h_L / c_tr.history[-1]["diag"].h_L
        parts = {"(a) loss": (run.history[-1]["train_loss"], c_tr.history[-1]["train_loss"]),
                 "(b) later growth": (later_growth(run), later_growth(c_tr)),
                 "(c) fixed-head excess": (excess_clean, excess)}     # (c) holds when noisy < clean
        ok = {k: a > b for k, (a, b) in parts.items()}
        rows.append({"rule": rule, "noise": noise,
                     "loss end (noisy / clean)": "{:.3f} / {:.3f}".format(*parts["(a) loss"]),
                     "later growth (noisy / clean)": "{:.3g} / {:.3g}".format(*parts["(b) later growth"]),
                     "fixed-head excess (noisy / clean)": f"{excess:.3g} / {excess_clean:.3g}",
                     "holds": "yes" if all(ok.values()) else "no: " + ", ".join(k for k, v in ok.items() if not v)})
    return rows
