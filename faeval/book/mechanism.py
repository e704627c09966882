"""Why a trained head stops the growth, what that predicts, and the seed's FA record beside ours (issue #40).

Every run's history records, per epoch, the output error e = softmax - onehot on the eval batch (its median
per-sample norm and its consistency), each block's branch norm, and every parameter's drift from its
initialisation (:class:`faeval.train.EpochRecord`). This module reads them for DFA and FA in both head regimes
(:mod:`faeval.book.head`), on clean labels (the audit's runs), on random targets (the FA-vs-DFA assay) and on the
prediction test's noisy labels (the ``head_mechanism`` runs).

The mechanism the calibration appendix measures: a local rule sends the output error to the blocks, and the
blocks keep moving their outputs along it for as long as it stays large. A trained head shrinks the error by
growing its own weights (the logits' scale); with the head fixed, the terminal LayerNorm caps the logits at the
fixed head's scale and only out_ln's gain can raise it, slowly under AdamW's bounded steps (the appendix gives
the measured rate), so the error stays large and the blocks keep growing.

:data:`PREDICTION` is what that says for a task whose training labels the head cannot fit. It was written down
(and committed) before the noisy runs were trained; :func:`prediction_rows` tests it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["HEAD", "OUT_LN", "PREDICTION", "SEED_FA", "later_growth", "mechanism_rows", "prediction_rows",
           "check_record", "cases", "relative_drift", "zero_initialised", "drift_convention", "seed_drift_convention",
           "seed_fa_epoch", "seed_fa_rows", "closer_count"]

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


#: the rules the mechanism is read for
RULES = ("dfa", "fa")
#: the two regimes the mechanism compares: the head trained (head_lr 1) and held at its initialisation (0)
REGIMES = ("head trained", "head fixed")


def cases(P, noisy: Mapping) -> dict[tuple, object]:
    """``{(task, rule, regime): run}`` at profile ``P``, first seed: clean labels (the head grid's ends), random
    targets (the FA-vs-DFA assay's, re-drawn every batch) and each noise level of ``noisy`` (``P.experiment(
    "head_mechanism")``), for :data:`RULES` with the head trained and fixed."""
    from . import head

    s0 = P.seeds[0]
    clean = head.ends(P)
    assay = head.regime_view(noisy, "assay", head.FIXED)
    bad = head.regime_view(noisy, "noisy", head.FIXED)
    out = {}
    for regime in REGIMES:
        for m in RULES:
            out["clean", m, regime] = clean[regime][m, s0]
            out["random targets", m, regime] = assay[regime][m]
            for (rule, p), run in bad[regime].items():
                if rule == m:
                    out[f"{p:.0%} noisy labels", m, regime] = run
    return dict(sorted(out.items(), key=lambda kv: (_task_order(kv[0][0]), RULES.index(kv[0][1]))))


def _task_order(task: str) -> tuple:
    """clean, then the noise levels in increasing order, then random targets."""
    return (0, 0) if task == "clean" else (2, 0) if task == "random targets" else (1, float(task.split("%")[0]))


def later_growth(run, start: int = FROM_EPOCH) -> float:
    """||h_L|| at the end over ||h_L|| at epoch ``start``: how much the stream still grows once a trained
    head has fitted what it can."""
    by_epoch = {rec["epoch"]: rec["diag"].h_L for rec in run.history}
    if start not in by_epoch:
        raise ValueError(f"the run has no record of epoch {start} (its epochs: {sorted(by_epoch)})")
    return run.history[-1]["diag"].h_L / by_epoch[start]


def relative_drift(rec, name: str) -> float:
    """Parameter ``name``'s relative drift in history record ``rec``; NaN where it has none (a zero-initialised
    tensor, an absent parameter, or a record stored before drifts were recorded)."""
    v = (rec.drift or {}).get("rel", {}).get(name)
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
                     "head drift": relative_drift(last, HEAD), "out_ln drift": relative_drift(last, OUT_LN),
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


# ---------------------------------------------------------------------------------------------
# the seed's FA record beside ours (issue #40, item 2)
# ---------------------------------------------------------------------------------------------
SEED_FA = "calibration.seed_fa_record"


def zero_initialised(model) -> list[str]:
    """The names of ``model``'s parameters that start at zero (no relative drift exists for them)."""
    return [n for n, p in model.named_parameters() if not p.detach().any()]


def drift_convention(seed_drift: Mapping[str, float], model) -> str:
    """Which drift convention the seed's record follows, read from what it lists: a relative drift
    ||theta - theta_0|| / ||theta_0|| cannot be computed for a tensor that starts at zero, an absolute one can."""
    ours, listed = [n for n, _ in model.named_parameters()], set(seed_drift)
    missing = [n for n in ours if n not in listed]
    zero = zero_initialised(model)
    if listed - set(ours):
        return f"not ours: the seed lists parameters this model has not ({', '.join(sorted(listed - set(ours)))})"
    if sorted(missing) == sorted(zero):
        return (f"relative: the seed lists {len(listed)} of the model's {len(ours)} parameter tensors and leaves "
                f"out exactly the {len(zero)} that start at zero ({', '.join(zero)}): a relative drift is undefined "
                "for those, an absolute one is not")
    return f"undecided: the seed leaves out {', '.join(missing) or 'nothing'}; the zero-initialised ones are {zero}"


def _distance(kind: str, ours: float, seed: float) -> float:
    if kind == "log":
        return abs(math.log10(ours / seed)) if ours > 0 and seed > 0 else math.inf
    return abs(ours - seed)


def seed_fa_epoch(runs: Mapping[str, object], seed: Mapping | None = None) -> int:
    """The epoch :func:`seed_fa_rows` reads: the seed record's (3), or the runs' last where they are shorter."""
    from .claims import paper

    seed = seed or paper(SEED_FA)["value"]
    return min(seed["epoch"], *(run.history[-1]["epoch"] for run in runs.values()))


def seed_drift_convention() -> str:
    """:func:`drift_convention` of the seed's record, read against the seed's model (ResMLP d=256, L=4, CIFAR-10
    input)."""
    from .. import build_model
    from .claims import paper

    return drift_convention(paper(SEED_FA)["value"]["drift"], build_model("resmlp", (3, 32, 32), 10, seed=0,
                                                                          width=256, depth=4))


def seed_fa_rows(runs: Mapping[str, object], seed: Mapping | None = None) -> list[dict]:
    """The seed's FA record (:data:`SEED_FA`, CIFAR-10, 3 epochs) beside our FA at the same epoch in each regime
    (``runs`` ``{regime: run}``; :func:`seed_fa_epoch`): the per-layer hidden and BP-gradient norms as profiles
    (each over layer 0's, since the two datasets' inputs differ in size and scale), the per-block cosine (block b's
    output is h_b: our per-layer Gamma there) and every parameter's relative drift. The accuracy is left out: the
    datasets differ. ``closer`` names the regime nearer the seed's value (log10 ratio for norms and drifts,
    absolute difference for cosines)."""
    from .claims import paper

    seed = seed or paper(SEED_FA)["value"]
    e = seed_fa_epoch(runs, seed)
    recs = {}
    for regime, run in runs.items():
        check_record(run, f"FA ({regime})")
        recs[regime] = next(rec for rec in run.history if rec["epoch"] == e)
    h, g = seed["hidden_norms"], seed["bp_grad_norms"]
    quantities = [(f"||h_{l}|| / ||h_0||", "log", h[l] / h[0],
                   lambda r, l=l: r["diag"].hidden_norms[l] / r["diag"].hidden_norms[0]) for l in range(1, len(h))]
    quantities += [(f"||g_{l}|| / ||g_0||", "log", g[l] / g[0],
                    lambda r, l=l: r["diag"].bp_grad_norms[l] / r["diag"].bp_grad_norms[0]) for l in range(1, len(g))]
    quantities += [(f"cos block {b + 1} (h_{b + 1})", "abs", v, lambda r, b=b: r["diag"].gamma[b + 1])
                   for b, v in enumerate(seed["bp_cosine"])]
    quantities += [(f"drift {n}", "log", v, lambda r, n=n: r.drift["rel"].get(n) or 0.0)
                   for n, v in seed["drift"].items()]
    rows = []
    for name, kind, sv, read in quantities:
        ours = {regime: read(rec) for regime, rec in recs.items()}
        dist = {regime: _distance(kind, v, sv) for regime, v in ours.items()}
        best = min(dist.values())
        rows.append({"quantity": name, "seed (CIFAR-10)": sv, **ours,
                     "closer": " and ".join(r for r, d in dist.items() if d == best)})
    return rows


def closer_count(rows) -> dict[str, int]:
    """How many of :func:`seed_fa_rows`' quantities each regime is closer to the seed's value on."""
    out: dict[str, int] = {}
    for r in rows:
        for regime in r["closer"].split(" and "):
            out[regime] = out.get(regime, 0) + 1
    return out
