"""Analyses over many protocol results: threshold sensitivity and the decision-utility ablation.

Both work on *rows*, one per run: plain dicts with

* ``name`` (e.g. ``"dfa/s42"``), ``growth`` (D1 value), ``g_L`` (D2 value),
  ``stability`` (C value, may be None), ``acc`` and ``frozen_acc`` (D3, may be None);
* for the ablation also ``gamma`` (the headline Gamma the run would report) and
  ``num_classes``;
* optionally ``healthy`` (bool), the label that separation gaps are measured
  against; by default a run is healthy when the default-threshold verdict is PASS.

:func:`row_from_report` turns a :class:`~faeval.protocol.Report` into a row.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from . import diagnostics as D
from .protocol import TABLE, VERDICT_ON, FAProtocol, Report, Thresholds, verdict_from

__all__ = ["row_from_report", "audit_rows", "credit_quality", "verdicts", "threshold_sensitivity",
           "decision_utility_ablation", "STRATEGIES"]

def row_from_report(report: Report, name: str, **extra) -> dict:
    """One analysis row from a protocol report (extra keys such as gamma are passed through): each
    diagnostic's value under its ``field``; a diagnostic judged against the baseline reads the
    headline accuracy (also where no baseline was given), and ``frozen_acc`` holds the baseline."""
    res = report.results
    values = {d.field: report.headline_acc if d.needs_baseline else getattr(res.get(n), "value", None)
              for n, d in TABLE.items()}
    return {"name": name, **values, "frozen_acc": report.frozen_baseline_acc, **extra}


def _fired(row: Mapping, th: Thresholds) -> dict[str, bool | None]:
    return {n: d.fires(row.get(d.field), th, row.get("frozen_acc")) for n, d in TABLE.items()}


def verdicts(rows: Sequence[Mapping], thresholds: Thresholds | Mapping | None = None,
             verdict_on: Sequence[str] = VERDICT_ON) -> dict[str, str]:
    """Verdict per run name at the given thresholds (judged on ``verdict_on``)."""
    th = Thresholds.from_any(thresholds)
    return {r["name"]: verdict_from(_fired(r, th), verdict_on) for r in rows}


def _healthy(rows: Sequence[Mapping], verdict_on: Sequence[str]) -> dict[str, bool]:
    default = verdicts(rows, verdict_on=verdict_on)
    return {r["name"]: bool(r["healthy"]) if "healthy" in r else default[r["name"]] == "PASS" for r in rows}


def threshold_sensitivity(rows: Sequence[Mapping], grids: Mapping[str, Sequence[float]] | None = None,
                          thresholds: Thresholds | Mapping | None = None,
                          verdict_on: Sequence[str] = VERDICT_ON) -> dict:
    """Sweep each threshold alone; report verdicts and the healthy/degenerate separation.

    Returns ``{"table": [...], "separation": {...}}``. Each table row is one
    (diagnostic, threshold) with the runs that diagnostic flags and whether every
    run's overall verdict equals the default one. ``separation[diag]`` gives the
    healthy runs' worst value, the degenerate runs' mildest value, the gap between
    them (a ratio for D1/D2, a difference for C/D3) and the range of thresholds that
    leaves every verdict unchanged (None where the two groups overlap).
    """
    th = Thresholds.from_any(thresholds)
    grids = dict(grids or {})
    healthy = _healthy(rows, verdict_on)
    default = verdicts(rows, th, verdict_on)
    table = []
    for diag, d in TABLE.items():
        for t in grids.get(diag, d.grid(getattr(th, d.threshold))):
            th_t = th.replace(**{d.threshold: t})
            flagged = [r["name"] for r in rows if _fired(r, th_t)[diag]]
            now = verdicts(rows, th_t, verdict_on)
            table.append({"diagnostic": diag, "threshold": t, "n_flagged": len(flagged), "flagged": flagged,
                          "verdicts_unchanged": now == default})
    return {"table": table, "separation": {d: _separation(d, rows, healthy, th) for d in TABLE},
            "healthy": healthy}


def _separation(diag: str, rows: Sequence[Mapping], healthy: Mapping[str, bool], th: Thresholds) -> dict:
    d = TABLE[diag]
    field = d.field
    val = (lambda r: 100.0 * (r[field] - r["frozen_acc"])) if d.needs_baseline else (lambda r: r[field])
    usable = [r for r in rows if r.get(field) is not None and (not d.needs_baseline or r.get("frozen_acc") is not None)]
    good = [val(r) for r in usable if healthy[r["name"]]]
    bad = [val(r) for r in usable if not healthy[r["name"]] and _fired(r, th)[diag]]
    out = {"n_healthy": len(good), "n_degenerate_flagged": len(bad)}
    if not good or not bad:
        return {**out, "healthy_worst": None, "degenerate_mildest": None, "gap": None, "equivalent_range": None}
    if d.healthy == "high":      # healthy is large, degenerate small (D2, D3)
        hw, dm = min(good), max(bad)
        gap = (hw / dm if dm > 0 else math.inf) if d.gap == "ratio" else hw - dm
        rng = (dm, hw) if dm < hw else None
    else:                        # healthy small, degenerate large (D1, C)
        hw, dm = max(good), min(bad)
        gap = dm / hw if d.gap == "ratio" and hw > 0 else dm - hw
        rng = (hw, dm) if hw < dm else None
    return {**out, "healthy_worst": hw, "degenerate_mildest": dm, "gap": gap, "gap_kind": d.gap,
            "equivalent_range": rng}


STRATEGIES: dict[str, tuple[str, ...]] = {
    "S0": ("acc",),
    "S1": ("acc", "gamma"),
    "S2": ("acc", "gamma", "D1"),
    "S3": ("acc", "gamma", "D2"),
    "S4": ("acc", "gamma", "C"),
    "S5": ("acc", "gamma", "D3"),
    "S_full": ("acc", "gamma", "D1", "D2", "C", "D3"),
}


def decision_utility_ablation(rows: Sequence[Mapping], thresholds: Thresholds | Mapping | None = None,
                              chance_margin: float = 0.02) -> dict:
    """Which runs each reporting strategy would walk back (the audit chapter's decision-utility ablation).

    * S0, headline accuracy only: walk back if accuracy <= chance (1/C) + ``chance_margin``.
    * S1, accuracy + Gamma (the status quo): also walk back if the headline Gamma <= 0.
    * S2..S5: S1 plus one diagnostic (D1, D2, C, D3); S_full: S1 plus all four.
    """
    th = Thresholds.from_any(thresholds)
    out = {}
    for s, checks in STRATEGIES.items():
        back = []
        for r in rows:
            f = _fired(r, th)
            reasons = []
            if "acc" in checks and r["acc"] <= 1.0 / r["num_classes"] + chance_margin:
                reasons.append("acc")
            if "gamma" in checks and r.get("gamma") is not None and r["gamma"] <= 0:
                reasons.append("gamma")
            reasons += [d for d in TABLE if d in checks and f[d]]
            if reasons:
                back.append({"name": r["name"], "why": reasons})
        out[s] = {"checks": checks, "walked_back": back, "n_walked_back": len(back), "n_runs": len(rows)}
    return out


def audit_rows(runs: Mapping, x, y, frozen_acc: Mapping[int, float] | None = None,
               thresholds: Thresholds | Mapping | None = None) -> list[dict]:
    """Apply :class:`~faeval.protocol.FAProtocol` to trained runs; one analysis row each.

    ``runs`` maps ``(method, seed)`` to a Run; ``frozen_acc`` maps a seed to its
    frozen-blocks baseline accuracy. The headline accuracy is the run's test accuracy
    (whole test split); ``gamma`` is the layer mean of the final snapshot's per-layer
    Gamma (the status-quo headline) and ``gamma_layers`` the per-layer values (NaN at a
    layer that received no credit; ``no_credit`` lists those layers, which the mean leaves
    out). ``verdict`` is judged under the default rule ``"any"``, ``verdict_mode1_or_d3``
    under the original artifact's rule (:data:`~faeval.protocol.VERDICT_RULES`). The report reads the run's rule
    (``FAProtocol(rule=)``): ``resolution`` is the lowest credit resolution over h_1..h_L of a rule whose credit is
    a difference of states (EP; None for the others) and ``warnings`` the report's warnings.
    """
    rows = []
    for (method, seed), run in runs.items():
        frozen = (frozen_acc or {}).get(seed)
        report = FAProtocol(run.model, x, y, headline_acc=run.test_acc, thresholds=thresholds,
                            rule=run.method).run(frozen)
        snap = run.history[-1]["diag"]
        rows.append(row_from_report(report, f"{method}/s{seed}", method=method, seed=seed,
                                    num_classes=run.model.out_head.out_features,
                                    gamma=snap.layer_mean_gamma, gamma_layers=snap.gamma, no_credit=snap.no_credit,
                                    verdict=report.verdict, verdict_mode1_or_d3=report.verdicts["mode1_or_d3"],
                                    fired=report.fired, stopped=run.stopped, h_L=snap.h_L,
                                    resolution=report.lowest_credit_resolution, warnings=report.warnings))
    return rows


def credit_quality(run, x, y, *, null_draws: int = 10, rho_directions: int = 32, rho_n: int = 512,
                   seed: int = 12345) -> dict:
    """How well a trained rule's credit points along the BP gradient, against chance.

    * ``gamma``: per-layer Gamma with the rule's own training-time feedback (and
      ``deep_gamma``, the mean over layers 1..L), next to ``ref_norm``, the median
      per-sample norm of the BP gradient it was measured against;
    * ``null_gamma`` / ``null_deep`` / ``null_deep_std``: the same with freshly drawn
      feedback (rules with feedback matrices only; ``null_draws`` draws), the chance
      level a measured Gamma must beat;
    * ``rho`` / ``deep_rho``: the local perturbation correlation on the first ``rho_n``
      samples (``rho_directions=0`` skips it).
    """
    method, model = run.method, run.model
    _, grads, _ = D.bp_grads(model, x, y)
    gam = D.gamma_per_layer(method.credit(x, y), grads)
    out = {"gamma": gam.mean, "deep_gamma": gam.deep_mean(), "ref_norm": gam.ref_norm}
    if hasattr(method, "draw_feedback") and null_draws:
        null = D.null_calibration(grads, lambda g: method.credit(x, y, feedback=method.draw_feedback(g)),
                                  n_draws=null_draws, seed=seed)
        deep = [D.deep_mean(d) for d in null["draws"]]
        mean = sum(deep) / len(deep)
        out.update(null_gamma=null["mean"], null_deep=mean,
                   null_deep_std=(sum((v - mean) ** 2 for v in deep) / (len(deep) - 1)) ** 0.5)
    if rho_directions:
        xs, ys = x[:rho_n], y[:rho_n]
        rho = D.perturbation_rho(model, xs, ys, method.credit(xs, ys), n_directions=rho_directions, seed=seed)
        out.update(rho=rho, deep_rho=D.deep_mean(rho))
    return out
