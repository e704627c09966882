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

from .protocol import DIAGNOSTICS, VERDICT_ON, Report, Thresholds, fires, verdict_from

__all__ = ["row_from_report", "audit_rows", "credit_quality", "verdicts", "threshold_sensitivity",
           "decision_utility_ablation", "STRATEGIES"]

_FIELD = {"D1": "growth", "D2": "g_L", "C": "stability", "D3": "acc"}
_TH_NAME = {"D1": "d1_growth", "D2": "d2_floor", "C": "c_stability", "D3": "d3_margin_pp"}


def row_from_report(report: Report, name: str, **extra) -> dict:
    """One analysis row from a protocol report (extra keys such as gamma are passed through)."""
    d = report["diagnostics"]
    c = d["C_direction_stability"]
    return {"name": name, "growth": d["D1_scale_growth"]["value"], "g_L": d["D2_ref_validity"]["value"],
            "stability": None if c is None else c["value"], "acc": report["headline_acc"],
            "frozen_acc": report["frozen_baseline_acc"], **extra}


def _fired(row: Mapping, th: Thresholds) -> dict[str, bool | None]:
    return {d: fires(d, row.get(_FIELD[d]), th, row.get("frozen_acc")) for d in DIAGNOSTICS}


def verdicts(rows: Sequence[Mapping], thresholds: Thresholds | Mapping | None = None,
             verdict_on: Sequence[str] = VERDICT_ON) -> dict[str, str]:
    """Verdict per run name at the given thresholds (judged on ``verdict_on``)."""
    th = Thresholds.from_any(thresholds)
    return {r["name"]: verdict_from(_fired(r, th), verdict_on) for r in rows}


def _healthy(rows: Sequence[Mapping], verdict_on: Sequence[str]) -> dict[str, bool]:
    default = verdicts(rows, verdict_on=verdict_on)
    return {r["name"]: bool(r["healthy"]) if "healthy" in r else default[r["name"]] == "PASS" for r in rows}


def _default_grid(diag: str, th: Thresholds) -> list[float]:
    base = getattr(th, _TH_NAME[diag])
    if diag in ("D1", "D2"):
        return [base * 10 ** (k / 2) for k in range(-6, 7)]        # 1e-3x .. 1e3x, half-decade steps
    if diag == "C":
        return [round(0.05 * k, 2) for k in range(1, 20)]          # 0.05 .. 0.95
    return [0.5 * k for k in range(0, 21)]                          # 0 .. 10 pp


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
    for diag in DIAGNOSTICS:
        for t in grids.get(diag, _default_grid(diag, th)):
            th_t = Thresholds.from_any({**th.__dict__, _TH_NAME[diag]: t})
            flagged = [r["name"] for r in rows if _fired(r, th_t)[diag]]
            now = verdicts(rows, th_t, verdict_on)
            table.append({"diagnostic": diag, "threshold": t, "n_flagged": len(flagged), "flagged": flagged,
                          "verdicts_unchanged": now == default})
    return {"table": table, "separation": {d: _separation(d, rows, healthy, th) for d in DIAGNOSTICS},
            "healthy": healthy}


def _separation(diag: str, rows: Sequence[Mapping], healthy: Mapping[str, bool], th: Thresholds) -> dict:
    field = _FIELD[diag]
    val = (lambda r: 100.0 * (r["acc"] - r["frozen_acc"])) if diag == "D3" else (lambda r: r[field])
    usable = [r for r in rows if r.get(field) is not None and (diag != "D3" or r.get("frozen_acc") is not None)]
    good = [val(r) for r in usable if healthy[r["name"]]]
    bad = [val(r) for r in usable if not healthy[r["name"]] and _fired(r, th)[diag]]
    out = {"n_healthy": len(good), "n_degenerate_flagged": len(bad)}
    if not good or not bad:
        return {**out, "healthy_worst": None, "degenerate_mildest": None, "gap": None, "equivalent_range": None}
    if diag == "D2":     # healthy is large, degenerate small
        hw, dm = min(good), max(bad)
        gap = hw / dm if dm > 0 else math.inf
        rng = (dm, hw) if dm < hw else None
    elif diag == "D3":   # healthy margin large, degenerate small
        hw, dm = min(good), max(bad)
        gap = hw - dm
        rng = (dm, hw) if dm < hw else None
    else:                # D1, C: healthy small, degenerate large
        hw, dm = max(good), min(bad)
        gap = dm / hw if diag == "D1" and hw > 0 else dm - hw
        rng = (hw, dm) if hw < dm else None
    return {**out, "healthy_worst": hw, "degenerate_mildest": dm, "gap": gap,
            "gap_kind": "ratio" if diag in ("D1", "D2") else "difference", "equivalent_range": rng}


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
            reasons += [d for d in DIAGNOSTICS if d in checks and f[d]]
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
    under the original artifact's rule (:data:`~faeval.protocol.VERDICT_RULES`).
    """
    from .protocol import FAProtocol

    rows = []
    for (method, seed), run in runs.items():
        frozen = (frozen_acc or {}).get(seed)
        report = FAProtocol(run.model, x, y, headline_acc=run.test_acc, thresholds=thresholds).run(frozen)
        snap = run.history[-1]["diag"]
        rows.append(row_from_report(report, f"{method}/s{seed}", method=method, seed=seed,
                                    num_classes=run.model.out_head.out_features,
                                    gamma=snap.layer_mean_gamma, gamma_layers=snap.gamma, no_credit=snap.no_credit,
                                    verdict=report.verdict, verdict_mode1_or_d3=report["verdicts"]["mode1_or_d3"],
                                    fired=report.fired, stopped=run.stopped))
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
    from . import diagnostics as D

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
