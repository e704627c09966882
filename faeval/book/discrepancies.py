"""Why a claim does not hold: one probe experiment per kind of discrepancy, and the reasons it gives.

The appendix ``notebooks/08_discrepancies.ipynb`` reads the book's claims (the
ledger), and for every claim that does not hold at the profile's defaults runs the
probe registered for its id (:data:`PROBES`). A probe reads the runs of the
``discrepancies`` chapter (:func:`faeval.book.experiments.discrepancies`) and of the
chapters it refers to, and returns a :class:`Reason` of one of five :data:`KINDS`:

* ``horizon``: the effect appears with longer training;
* ``data``: it appears on another task at the same horizon;
* ``measurement convention``: the paper measured differently, and measured its way
  the claim holds;
* ``implementation choice``: a choice of ours differs from the paper's, and changing
  it changes the outcome;
* ``not explained``: none of the above was shown; the text says what was ruled out.

Where a chapter measures its claims in both regimes of the output head (:mod:`faeval.book.head`), only
the judged regime's claims are explained, and the first probe is the head itself
(:func:`head_probe`): where the other regime's same claim holds, the reason is the head
(``implementation choice``), with both regimes' numbers; where it does not, the reason says so
and goes on to the claim's own probe.

The reason's text is built from measured numbers only. :func:`save_reasons` writes
each into the claims file row it explains, and :func:`faeval.book.claims.ledger` shows it in
the ``reason_kind`` and ``reason`` columns.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from ..diagnostics import deep_mean, layer_mean, no_credit_layers
from ..methods import method_hparams
from ..protocol import TABLE, Monitor, Thresholds, diagnostic_of_column
from . import head
from .calibration import CANDIDATES, summarise_all
from .claims import REASON_KINDS, attach_reasons
from .experiments import CANDIDATE_TASKS

__all__ = ["KINDS", "Reason", "PROBES", "probe", "explain", "head_probe", "save_reasons", "crossing_epoch", "Context"]

KINDS = REASON_KINDS
PAPER_EPOCHS = 100      # the paper's training horizon (its CIFAR-10 recipe)


@dataclass(frozen=True)
class Reason:
    """Why a claim does not hold: one of :data:`KINDS`, the probe that decided it, and what it measured."""

    kind: str
    text: str
    probe: str = ""
    judged_regime: bool = False     # the probe's runs trained in the regime the claim is judged in

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"reason kind {self.kind!r}: must be one of {KINDS}")

    def __str__(self) -> str:
        return f"{self.kind}: {self.text}"


class Context:
    """What a probe can read: the profile, the runs of any chapter (loaded once), the claim rows of
    both head regimes, and ``regime``, the one the claims are judged in."""

    def __init__(self, profile, claims=None, regime: str = head.DEFAULT) -> None:
        self.P = profile
        self.claims = claims            # the ledger's rows at the profile's defaults (a DataFrame), or None
        self.regime = regime
        self._runs: dict[str, dict] = {}

    def runs(self, chapter: str) -> dict:
        if chapter not in self._runs:
            self._runs[chapter] = self.P.experiment(chapter)
        return self._runs[chapter]

    def judged_runs(self, chapter: str, part: str) -> dict:
        """Part ``part`` of a chapter's runs in the judged head regime (:func:`faeval.book.head.regime_view`)."""
        return head.regime_view(self.runs(chapter), part)[self.regime]

    def probe_runs(self, part: str) -> dict:
        return self.runs("discrepancies")[part]

    def _judged(self):
        c = self.claims
        return c if c is None or "judged" not in c.columns else c[c.judged.astype(bool)]

    def claim_held(self, id: str) -> bool | None:
        """Whether the judged claim ``id`` held; None if there is none."""
        claims = self._judged()
        if claims is None or "id" not in claims.columns:
            return None
        rows = claims[claims["id"] == id]
        return None if rows.empty else bool(rows.iloc[0]["status"] == "held")

    def other_regime(self, row: Mapping) -> dict | None:
        """The same claim measured in the other head regime (its row), or None."""
        c = self.claims
        if c is None or "judged" not in c.columns:
            return None
        key = (c["id"] == row["id"]) if row.get("id") and "id" in c.columns else (c.claim == row["claim"])
        same = c[(c.notebook == row["notebook"]) & key & ~c.judged.astype(bool)]
        return None if same.empty else same.iloc[0].to_dict()


#: claim id -> the probe that explains it when it does not hold
PROBES: dict[str, Callable] = {}


def probe(*ids: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(row, ctx) -> Reason`` for the claims with these ids
    (:meth:`faeval.book.claims.Claims.check`); an id has one probe."""
    def deco(fn: Callable) -> Callable:
        for i in ids:
            if i in PROBES:
                raise ValueError(f"claim {i!r} already has a probe ({PROBES[i].__name__})")
            PROBES[i] = fn
        return fn
    return deco


def explain(rows: Sequence[Mapping], ctx: Context) -> list[dict]:
    """A reason for every judged claim row that does not hold: ``{notebook, claim, kind, text, probe}``."""
    out = []
    for row in rows:
        if row["status"] != "not held" or not row.get("judged", True):
            continue
        other = ctx.other_regime(row) if ctx is not None else None
        reason = _head_reason(row, other, ctx.P if ctx is not None else None)
        if reason is None:
            reason = _own_probe(row, ctx)
            if other is not None:
                runs_note = ("; this probe's runs train the head" if ctx.regime != head.DEFAULT
                             and not reason.judged_regime else "")
                reason = Reason(reason.kind, f"with the {other['regime']} it does not hold either ({other['ours']})"
                                             f"{runs_note}; {reason.text}", f"output head, {reason.probe}")
        out.append({"notebook": row["notebook"], "id": row.get("id", ""), "claim": row["claim"], "kind": reason.kind,
                    "text": reason.text, "probe": reason.probe})
    return out


def _own_probe(row: Mapping, ctx: Context) -> Reason:
    fn = PROBES.get(row.get("id", ""))
    if fn is not None:
        return fn(row, ctx)
    return Reason("not explained", "no probe of this appendix addresses this claim, so no cause was "
                                   "tested or ruled out", "none")


def head_probe(row: Mapping, ctx: Context) -> Reason | None:
    """How the output head trains: where the same claim holds in the other head regime, that is the reason
    (``implementation choice``: the seed leaves the head's training open for ResMLP), with both regimes'
    numbers; None where it does not hold there either, or the chapter has one regime."""
    return _head_reason(row, ctx.other_regime(row) if ctx is not None else None, ctx.P if ctx is not None else None)


def _head_reason(row: Mapping, other: Mapping | None, P=None) -> Reason | None:
    """:func:`head_probe`'s reason, given the claim's row in the other regime (``other``, or None); ``P`` (the
    profile) gives each regime's head_lr."""
    if other is None or other["status"] != "held":
        return None

    def rate(regime):
        return f" (head_lr {head.head_lr(P, regime):g})" if P is not None else ""

    return Reason("implementation choice", f"how the output head trains: with the {other['regime']}"
                                           f"{rate(other['regime'])} the claim holds ({other['ours']}); with the "
                                           f"{row['regime']}{rate(row['regime'])} {row['ours']}", "output head")


def save_reasons(reasons: Sequence[Mapping], profile, results_dir=None) -> list:
    """Write the reasons into the claims they explain, in ``profile``'s claims files at its defaults
    (:func:`faeval.book.claims.attach_reasons`); returns the files rewritten."""
    return attach_reasons(reasons, profile.name, results_dir)


# ---------------------------------------------------------------------------------------
# measurements the probes share
# ---------------------------------------------------------------------------------------
def crossing_epoch(epochs: Sequence[float], values: Sequence[float], level: float, *,
                   tail: float = 0.5) -> float | None:
    """The epoch where a log-linear fit of ``values`` over the last ``tail`` of the epochs crosses ``level``.

    None when the fit does not move towards ``level``. Used to extrapolate a trend that
    has not crossed a threshold within the horizon (e.g. g_L falling towards the D2 floor).

    >>> round(crossing_epoch([0, 1, 2, 3], [1e-3, 1e-4, 1e-5, 1e-6], 1e-8), 6)
    5.0
    """
    pts = [(e, math.log10(v)) for e, v in zip(epochs, values) if v > 0 and math.isfinite(v)]
    pts = pts[int(len(pts) * (1 - tail)):] if len(pts) > 2 else pts
    if len(pts) < 2:
        return None
    n = len(pts)
    me, mv = sum(e for e, _ in pts) / n, sum(v for _, v in pts) / n
    var = sum((e - me) ** 2 for e, _ in pts)
    if var == 0:
        return None
    slope = sum((e - me) * (v - mv) for e, v in pts) / var
    target = math.log10(level)
    last_e, last_v = pts[-1]
    if slope == 0 or (target - last_v) / slope < 0:
        return None
    return last_e + (target - last_v) / slope


def _first(run, diag: str, **monitor_kw) -> int | None:
    return Monitor(**monitor_kw).replay(run.history)[diag]


def _series(run, key: str) -> tuple[list[int], list[float]]:
    """``(epochs, values)`` of a per-epoch diagnostic's ``field`` (``growth``, ``g_L``, ...) or of ``h_L``."""
    recs = run.history[1:]
    diag = diagnostic_of_column(key)
    get = (lambda s: s.h_L) if diag is None else diag.read
    return [r["epoch"] for r in recs], [get(r["diag"]) for r in recs]


def _horizon_reason(run, diag: str, epochs: int, name: str) -> Reason:
    """D1 or D2 of a probe run trained ``factor`` x longer: fires later, extrapolates to fire, or neither."""
    d = TABLE[diag]
    key, level = d.field, getattr(Thresholds(), d.threshold)
    horizon = run.history[-1]["epoch"]
    fired = _first(run, diag)
    e, v = _series(run, key)
    if fired is not None:
        return Reason("horizon", f"{name} trained {horizon} epochs instead of {epochs} fires {diag} at epoch "
                                 f"{fired}", "longer training")
    cross = crossing_epoch(e, v, level)
    last = f"{v[-1]:.3g}" if key == "growth" else f"{v[-1]:.2e}"
    if cross is not None and cross <= PAPER_EPOCHS:
        return Reason("horizon", f"{name} trained {horizon} epochs does not fire {diag} yet ({key} {last} at epoch "
                                 f"{horizon}); its log-linear trend over the second half crosses the threshold at "
                                 f"epoch {cross:.0f}, within the paper's {PAPER_EPOCHS}", "longer training")
    trend = "moves away from the threshold" if cross is None else f"crosses it only at epoch {cross:.0f}"
    return Reason("not explained", f"ruled out the horizon: {name} trained {horizon} epochs does not fire {diag} "
                                   f"({key} {last}) and its trend {trend}", "longer training")


# ---------------------------------------------------------------------------------------
# the probes
# ---------------------------------------------------------------------------------------
@probe("temporal.dfa_d2_audit_scale")
def d2_scale(row, ctx: Context) -> Reason:
    """D2 at batch 128 against the paper's per-epoch logs, which read g_L at ~1,024 samples per batch."""
    held = ctx.claim_held("temporal.dfa_d2_log_scale")
    if held:
        return Reason("measurement convention", "the paper's per-epoch logs measured g_L on about 1,024 samples "
                                                "per batch, 8x below our batch-128 reading; read at that scale, "
                                                "D2 fires on every seed (the claim above this one)", "D2 scale")
    return d2_horizon(row, ctx)


@probe("temporal.acc_at_stop")
def stop_accuracy(row, ctx: Context) -> Reason:
    """Where DFA fires in the judged regime: the stop's epoch and accuracy against the final accuracy (the
    paper's DFA was near its final accuracy when it fired). Where it never fires there is no stop, and the
    firing's reason is the reason."""
    runs = ctx.judged_runs("audit", "runs")
    seen = []
    for s in ctx.P.seeds:
        run = runs["dfa", s]
        first = Monitor().replay(run.history)
        fired = [e for e in (first["D1"], first["D2"]) if e is not None]
        if fired:
            acc = {rec["epoch"]: rec["test_acc"] for rec in run.history}
            seen.append(f"s{s} stops at epoch {min(fired)} of {run.history[-1]['epoch']} with accuracy "
                        f"{acc[min(fired)]:.3f}, final {run.test_acc:.3f}")
    if not seen:
        return d2_horizon(row, ctx)
    return Reason("not explained", "DFA fires early and keeps learning after the stop (" + "; ".join(seen) + "); the "
                                   "paper's DFA was within a few points of its final accuracy when it fired",
                  "accuracy after the stop")


@probe("audit.dfa_d2", "temporal.dfa_d2_log_scale")
def d2_horizon(row, ctx: Context) -> Reason:
    """Plain DFA at 3x the horizon: does g_L cross the D2 floor, or does its trend?"""
    run = ctx.probe_runs("long")["dfa"]
    reason = _horizon_reason(run, "D2", ctx.P.epochs, f"DFA (seed {run.config['seed']})")
    base = run.config["model"]["width"]
    wide = [r for (label, m), r in ctx.runs("cross_arch")["runs"].items()
            if m == "dfa" and r.config["arch"] == run.config["arch"] and r.config["model"]["width"] > base]
    if wide:           # the cross-architecture chapter's wider model of the same architecture
        f, w = _first(wide[0], "D2"), wide[0].config["model"]["width"]
        reason = Reason(reason.kind, reason.text + (f"; at width {w} D2 fires at epoch {f} of the same horizon"
                                                    if f is not None else f"; at width {w} it does not fire either"),
                        reason.probe)
    return reason


@probe("audit.dfa_d1", "temporal.dfa_d1")
def d1_horizon(row, ctx: Context) -> Reason:
    """Plain DFA at 3x the horizon: does the per-block growth cross the D1 threshold? If not, does DFA
    fire D1 at the same horizon on one of the calibration's other tasks, on every seed?"""
    run = ctx.probe_runs("long")["dfa"]
    long = _horizon_reason(run, "D1", ctx.P.epochs, f"DFA (seed {run.config['seed']})")
    if long.kind == "horizon":
        return long
    tasks = _d1_on_other_tasks(ctx)
    everywhere = [t for t in tasks if t["fired"] == t["seeds"] > 0]
    seen = "; ".join(f"{t['label']}: {t['fired']} of {t['seeds']} seeds{t['where']}" for t in tasks)
    if everywhere:
        return Reason("data", f"at the same horizon DFA fires D1 on every seed of another task ({seen}); "
                              f"{long.text}", "other tasks, longer training")
    return Reason("not explained", f"{long.text}; at the same horizon on the calibration's other tasks DFA fires "
                                   f"D1 on some seeds only ({seen})", "longer training, other tasks")


def _task(candidate: str) -> str:
    """A calibration candidate's label without its "(c) " prefix."""
    return CANDIDATES[candidate].label.split(") ", 1)[-1]


def _d1_on_other_tasks(ctx: Context) -> list[dict]:
    """Per calibration candidate that changes the task: on how many seeds DFA fires D1 within the horizon."""
    runs = ctx.runs("calibration")["runs"]
    out = []
    for c in CANDIDATE_TASKS:
        fired = {s: _first(r, "D1") for (name, s, m), r in runs.items() if name == c and m == "dfa"}
        hits = {s: e for s, e in fired.items() if e is not None}
        out.append({"candidate": c, "label": _task(c), "seeds": len(fired),
                    "fired": len(hits), "where": f" ({', '.join(f's{s} epoch {e}' for s, e in hits.items())})"
                    if hits else ""})
    return out


@probe(*(f"calibration.dfa_d1.{c}" for c in CANDIDATE_TASKS))
def candidate_horizon(row, ctx: Context) -> Reason:
    """A calibration candidate's DFA (first seed) at 3x the calibration horizon: does it fire D1?"""
    name = row["id"].rsplit(".", 1)[-1]        # calibration.dfa_d1.<candidate>
    run = ctx.probe_runs("long_candidates")[name]
    horizon = ctx.runs("calibration")["runs"][name, run.config["seed"], "dfa"].history[-1]["epoch"]
    return _horizon_reason(run, "D1", horizon, f"DFA on this task (seed {run.config['seed']})")


def no_ln(ctx: Context) -> Reason:
    """ResMLP DFA without the terminal LN, in the judged regime: 3x longer, and with input augmentation at the
    same horizon."""
    runs = ctx.probe_runs("no_ln")
    long = _horizon_reason(runs["long"], "D1", ctx.P.epochs, "DFA without terminal LN")
    if long.kind == "horizon":
        return replace(long, judged_regime=True)
    aug = runs["augment"]
    f = _first(aug, "D1")
    if f is not None:
        return Reason("data", f"with random crops and flips of the inputs, DFA without terminal LN fires D1 at epoch "
                              f"{f} of {ctx.P.epochs}; {long.text}", "augmentation", judged_regime=True)
    growth = aug.history[-1]["diag"].max_block_growth
    return Reason("not explained", f"{long.text}; with augmentation it does not fire either (growth {growth:.3g})",
                  "longer training, augmentation", judged_regime=True)


def _backbones(ctx: Context, diag: str, terminal_ln: bool) -> dict:
    """``{label: Run}``: the cross-architecture chapter's DFA runs in the judged regime, with (or without) a
    terminal LN, that do not fire ``diag``."""
    runs = ctx.judged_runs("cross_arch", "runs")
    return {label: r for (label, m), r in runs.items()
            if m == "dfa" and r.model.has_out_ln == terminal_ln and _first(r, diag) is None}


def _trend(run, diag: str, label: str) -> Reason:
    """The chapter's own run of a backbone (judged regime): does its trend cross ``diag``'s threshold within the
    paper's horizon?"""
    return replace(_horizon_reason(run, diag, run.history[-1]["epoch"], f"DFA on {label}"), judged_regime=True)


def _per_backbone(reasons: Mapping[str, Reason], diag: str) -> Reason:
    """One reason from each failing backbone's: explained only where every backbone is, with the kind most of
    them share (ties: the first backbone's, in the chapter's order), and every backbone's kind and text."""
    if not reasons:
        return Reason("not explained", f"every backbone of the claim fires {diag} in the judged regime; the claim "
                                       f"fails elsewhere", "none")
    kinds = [r.kind for r in reasons.values()]
    kind = "not explained" if "not explained" in kinds else max(kinds, key=kinds.count)
    text = "; ".join(f"{label} ({r.kind}): {r.text}" for label, r in reasons.items())
    probes = ", ".join(dict.fromkeys(r.probe for r in reasons.values()))
    return Reason(kind, text, probes, judged_regime=all(r.judged_regime for r in reasons.values()))


@probe("cross_arch.no_ln_dfa_d1")
def no_ln_backbones(row, ctx: Context) -> Reason:
    """Each backbone without a terminal LN that does not fire D1, probed in the regime the claim is judged in:
    ResMLP by :func:`no_ln` (3x longer, and with augmentation), SmallCNN by :func:`cnn` (its head trains in every
    regime), any other by its own run's trend."""
    out = {}
    for label, run in _backbones(ctx, "D1", terminal_ln=False).items():
        arch = run.config["arch"]
        out[label] = no_ln(ctx) if arch == "resmlp" else cnn(row, ctx) if arch == "cnn" else _trend(run, "D1", label)
    return _per_backbone(out, "D1")


@probe("cross_arch.ln_dfa_d2")
def ln_backbones(row, ctx: Context) -> Reason:
    """Each backbone with a terminal LN that does not fire D2, probed in the regime the claim is judged in: the
    base ResMLP by :func:`d2_horizon` (3x longer), any other by its own run's trend."""
    base = ctx.probe_runs("long")["dfa"].config
    out = {}
    for label, run in _backbones(ctx, "D2", terminal_ln=True).items():
        same = run.config["arch"] == base["arch"] and run.config["model"]["width"] == base["model"]["width"]
        out[label] = d2_horizon(row, ctx) if same else _trend(run, "D2", label)
    return _per_backbone(out, "D2")


@probe("fa_vs_dfa.random_targets")
def random_targets(row, ctx: Context) -> Reason:
    """Fresh random labels every batch (ours) against fixed random labels per sample, and 3x longer."""
    runs = ctx.probe_runs("random_targets")
    assay = ctx.runs("fa_vs_dfa")["assay"]

    def h(run):
        return run.history[-1]["diag"].h_L

    def verdict(dfa, fa, ep):
        return ep * 10 < min(dfa, fa)

    iid = {m: h(assay[m]) for m in ("dfa", "fa", "ep") if m in assay}
    fixed = {m: h(runs["fixed", m]) for m in ("dfa", "fa", "ep")}
    long = {m: h(runs["long", m]) for m in ("dfa", "fa")}
    fmt = ", ".join
    text_fixed = fmt(f"{m} {v:.3g}" for m, v in fixed.items())
    if verdict(fixed["dfa"], fixed["fa"], fixed["ep"]):
        return Reason("implementation choice", f"with fixed random labels per sample instead of fresh labels every "
                                               f"batch, ||h_L|| reads {text_fixed}: EP stays 10x below both",
                      "random-target protocol")
    ep_run = assay.get("ep")
    ep_flat = ep_run is not None and _series(ep_run, "h_L")[1][-1] <= 1.5 * _series(ep_run, "h_L")[1][0]
    k = ctx.P.sizes["discrepancies"]["horizon_factor"]
    if "ep" in iid and ep_flat and verdict(long["dfa"], long["fa"], iid["ep"]):
        return Reason("horizon", f"{k}x longer, DFA and FA reach ||h_L|| {long['dfa']:.3g} and {long['fa']:.3g}, over "
                                 f"10x EP's {iid['ep']:.3g}, which stays flat over its run", "longer training")
    return Reason("not explained", f"ruled out the random-target protocol (fixed labels: {text_fixed}) and {k}x the "
                                   f"horizon (DFA {long['dfa']:.3g}, FA {long['fa']:.3g} vs EP "
                                   f"{iid.get('ep', float('nan')):.3g})", "random-target protocol, longer training")


@probe("penalty.vanilla_early_gamma")
def pairing(row, ctx: Context) -> Reason:
    """Which credit pairing (block l on a_{l+1}, ours, or on a_l) gives the paper's early per-layer Gamma."""
    pattern = pairing_patterns(ctx)
    ours, other = pattern["output"], pattern["input"]
    if other["deep"] is not None and abs(other["deep"]) < 0.05 <= abs(ours["deep"] or 0.0):
        return Reason("implementation choice", f"training block l on the credit of its input state (a_l) instead of "
                                               f"its output's (a_l+1) gives early deep Gamma {other['deep']:+.3f} "
                                               f"(ours {ours['deep']:+.3f}), with Gamma at h_0 "
                                               f"{other['h0']:+.3f}", "credit pairing")
    return Reason("not explained", f"ruled out the credit pairing: early deep Gamma {ours['deep']:+.3f} (block l on "
                                   f"a_l+1) and {other['deep']:+.3f} (on a_l)", "credit pairing")


def pairing_patterns(ctx: Context) -> dict[str, dict]:
    """Per pairing, the per-layer Gamma of epochs 1..k with a valid reference, averaged over the probe's seeds."""
    floor = Thresholds().d2_floor
    k = ctx.P.sizes["discrepancies"]["pairing_epochs"]
    probe_runs = ctx.probe_runs("pairing")
    audit = ctx.runs("audit")["runs"]
    out = {}
    for pairing, runs in (("output", [audit["dfa", s] for _, s in probe_runs]),
                          ("input", list(probe_runs.values()))):
        layers = [r["diag"].gamma for run in runs for r in run.history[1:k + 1] if r["diag"].g_L > floor]
        if not layers:
            out[pairing] = {"layers": None, "deep": None, "h0": None, "n": 0}
            continue
        per_layer = [layer_mean([g[l] for g in layers]) for l in range(len(layers[0]))]
        out[pairing] = {"layers": per_layer, "deep": deep_mean(per_layer), "h0": per_layer[0], "n": len(layers)}
    return out


def scaled_bar(room: float) -> float:
    """D3's bar (in points) scaled from the paper's headroom to ``room``, this task's (BP over frozen, points):
    the bar a D3 claim is read against when the kind ``data`` is in question."""
    return Thresholds().d3_margin_pp * room / head.paper_headroom()


@probe("audit.fa_d3", "fa_vs_dfa.fa_clears_frozen")
def fa_headroom(row, ctx: Context) -> Reason:
    """FA's D3 margins (judged regime, over the matched frozen baseline) against the bar scaled to this task's
    headroom: the kind is ``data`` only where FA clears the scaled bar on every seed and misses the absolute one.
    Beside it, FA on clean labels (where the profile's labels are noisy) and the headroom BP gets from one
    trainable block."""
    bar, s0 = Thresholds().d3_margin_pp, ctx.P.seeds[0]
    judged, trained = ctx.judged_runs("audit", "runs"), ctx.runs("audit")["runs"]
    margin = {s: 100 * (judged["fa", s].test_acc - judged["frozen", s].test_acc) for s in ctx.P.seeds}
    room = {s: 100 * (trained["bp", s].test_acc - trained["frozen", s].test_acc) for s in ctx.P.seeds}
    scaled = {s: scaled_bar(r) for s, r in room.items()}
    seen = ", ".join(f"s{s} {m:+.2f} pp against {scaled[s]:.2f} (headroom {room[s]:.1f} pp)" for s, m in margin.items())
    runs = ctx.probe_runs("headroom")
    noisy = ctx.P.base.get("label_noise", 0) > 0
    fa_clean = 100 * (runs["fa_clean"].test_acc - runs["frozen_clean"].test_acc)
    bp_one = 100 * (runs["bp_last_block"].test_acc - trained["frozen", s0].test_acc)
    also = (f"FA on clean labels {fa_clean:+.1f} pp, " if noisy else "") + \
        f"BP with one trainable block {bp_one:+.1f} pp (seed {s0})"
    if all(m >= scaled[s] for s, m in margin.items()) and not all(m >= bar for m in margin.values()):
        return Reason("data", f"FA clears the paper's {bar:g} pp bar, scaled from its {head.paper_headroom():.1f} pp "
                              f"headroom to this task's, on every seed ({seen}), and misses the absolute one; {also}",
                      "headroom-scaled bar")
    return Reason("not explained", f"ruled out the task's headroom: on the bar scaled to it FA's margins read {seen}; "
                                   f"{also}", "headroom-scaled bar, one-block headroom")


@probe("audit.shallow_vs_frozen")
def shallow(row, ctx: Context) -> Reason:
    """The shallow model (no residual blocks) with its embedding trained by the true gradient instead of
    its DFA credit: does that agree with the frozen-blocks baseline, as the paper's DFA-shallow does?"""
    bp = ctx.probe_runs("shallow_bp")
    audit = ctx.runs("audit")["runs"]
    gap_bp = {s: 100 * (r.test_acc - audit["frozen", s].test_acc) for s, r in bp.items()}
    gap_dfa = {s: 100 * (audit["shallow", s].test_acc - audit["frozen", s].test_acc) for s in bp}
    fmt = ", ".join
    text = (f"trained by the true gradient, the shallow model's accuracy minus the frozen baseline's is "
            f"{fmt(f's{s} {g:+.1f} pp' for s, g in gap_bp.items())}; with its DFA credit "
            f"{fmt(f's{s} {g:+.1f} pp' for s, g in gap_dfa.items())}")
    if all(abs(g) <= 1.0 for g in gap_bp.values()):
        return Reason("implementation choice", f"the paper does not say how its DFA-shallow trains the embedding: "
                                               f"{text}", "shallow model's embedding")
    return Reason("not explained", f"ruled out the shallow model's training signal: {text}",
                  "shallow model's embedding")


@probe("cross_arch.cnn_dfa_d1")
def cnn(row, ctx: Context) -> Reason:
    """SmallCNN DFA without batch norm, and 2x longer on the same subset (head trained: SmallCNN's head trains in
    every regime, so this is the regime its claims are judged in)."""
    runs = ctx.probe_runs("cnn")
    f = _first(runs["no_bn"], "D1")
    if f is not None:
        return Reason("implementation choice", f"without batch norm, SmallCNN DFA fires D1 at epoch {f}: batch norm "
                                               f"re-normalises every stage, so the stream cannot grow",
                      "batch norm", judged_regime=True)
    long = _horizon_reason(runs["long"], "D1", runs["no_bn"].history[-1]["epoch"], "SmallCNN DFA")
    if long.kind == "horizon":
        return replace(long, judged_regime=True)
    growth = runs["no_bn"].history[-1]["diag"].max_block_growth
    return Reason("not explained", f"ruled out batch norm (growth {growth:.3g} without it) and {long.text}",
                  "batch norm, longer training", judged_regime=True)


@probe("temporal.stop_saves")
def saving(row, ctx: Context) -> Reason:
    """The largest saving an early stop can give at this horizon is 1 - t_fire / T."""
    runs = ctx.judged_runs("temporal", "runs")
    T = ctx.P.epochs
    fired = {}
    for (m, s), run in runs.items():
        if m == "dfa":
            es = [e for e in (_first(run, "D1"), _first(run, "D2")) if e is not None]
            fired[s] = min(es) if es else None
    firing = [t for t in fired.values() if t is not None]
    if not firing:
        return d2_horizon(row, ctx)
    t = max(firing)
    epochs = ", ".join(f"s{s}: {'never' if v is None else v}" for s, v in fired.items())
    return Reason("horizon", f"DFA first fires at epoch ({epochs}) of {T}: a stop "
                             f"at epoch {t} can save at most {1 - t / T:.0%} of {T} epochs, and "
                             f"{1 - t / PAPER_EPOCHS:.0%} of the paper's {PAPER_EPOCHS}", "saving bound")


@probe("audit.ep_passes")
def ep_setting(row, ctx: Context) -> Reason:
    """EP fails the protocol: does another beta x relaxation-steps setting of the sweep clear the frozen
    baseline (D3), where BP at the sweep's size does?"""
    bar = Thresholds().d3_margin_pp
    table = ep_sweep_table(ctx)
    ref = ctx.probe_runs("ep_reference")
    bp_margin = 100 * (ref["bp"].test_acc - ref["frozen"].test_acc)
    best = table.loc[table["margin_pp"].idxmax()]
    hp = method_hparams("ep")
    size = ctx.P.sizes["discrepancies"]["ep_sweep"]
    where = f"on {size['subset']} images for {size['epochs']} epochs"
    ours = table[(table["beta"] == hp["beta"]) & (table["steps"] == hp["steps"])]
    ours_text = f"; ours (beta {hp['beta']:g}, {hp['steps']} steps) {ours['margin_pp'].iloc[0]:+.1f} pp" \
        if len(ours) else ""
    best_text = (f"beta {best['beta']:g} with {int(best['steps'])} steps does best, {best['margin_pp']:+.1f} pp "
                 f"over the frozen baseline{ours_text}")
    if best["margin_pp"] >= bar and bp_margin >= bar:
        return Reason("implementation choice", f"EP's verdict ({row.get('ours', '')}) depends on its setting: "
                                               f"{where}, {best_text} (BP {bp_margin:+.1f} pp)", "EP setting")
    if bp_margin < bar:
        return Reason("not explained", f"the EP sweep cannot tell its settings apart on D3: {where} BP itself gains "
                                       f"only {bp_margin:+.1f} pp over the frozen baseline ({best_text})", "EP setting")
    return Reason("not explained", f"ruled out EP's setting {where}: the best, {best_text}, is under the "
                                   f"{bar:g} pp D3 asks for, where BP gains {bp_margin:+.1f} pp", "EP setting")


@probe("audit.walks_back.state_bridge")
def state_bridge_horizon(row, ctx: Context) -> Reason:
    """State Bridge at 3x the horizon: does a diagnostic fire, or does its trend cross a threshold?"""
    run = ctx.probe_runs("long")["state_bridge"]
    name = f"State Bridge (seed {run.config['seed']})"
    reasons = [_horizon_reason(run, d, ctx.P.epochs, name) for d in ("D1", "D2")]
    found = [r for r in reasons if r.kind == "horizon"]
    if found:
        return found[0]
    return Reason("not explained", "; ".join(r.text for r in reasons) + f"; its accuracy is {run.test_acc:.3f} "
                                                                        f"after {run.history[-1]['epoch']} epochs",
                  "longer training")


def _dfa_fires_d1_somewhere(ctx: Context) -> bool:
    runs = ctx.judged_runs("audit", "runs")
    return any(_first(runs["dfa", s], "D1") is not None for s in ctx.P.seeds)


@probe("fa_vs_dfa.fa_more_accurate")
def dfa_accuracy(row, ctx: Context) -> Reason:
    """The paper's DFA loses its accuracy with its scale failure (D1); where DFA fires D1 on no seed here,
    the claim's reason is that of the D1 claim."""
    if _dfa_fires_d1_somewhere(ctx):
        return Reason("not explained", "DFA fires D1 here too, and no probe of this appendix tells why FA is not "
                                       "more accurate", "none")
    d1 = d1_horizon(row, ctx)
    return Reason(d1.kind, f"the paper's DFA loses its accuracy as its residual stream blows up, and here DFA fires "
                           f"D1 on no seed, for this reason: {d1.text}", d1.probe)


@probe("penalty.d3_changes")
def penalty_d3(row, ctx: Context) -> Reason:
    """The paper's penalty lifts DFA over the frozen baseline by stopping its scale failure; without that failure
    at lambda=0 there is little for the penalty to lift."""
    from .chapters.penalty import headroom
    frozen = {g: {s: r.test_acc for s, r in runs.items()}
              for g, runs in head.regime_view(ctx.runs("penalty"), "frozen").items()}
    by_lam: dict[float, list[float]] = {}
    for (lam, s), r in ctx.judged_runs("penalty", "sweep").items():        # over the matched baseline
        by_lam.setdefault(lam, []).append(100 * (r.test_acc - frozen[ctx.regime][s]))
    means = {lam: sum(v) / len(v) for lam, v in sorted(by_lam.items())}
    bar = Thresholds().d3_margin_pp
    margins = ", ".join(f"{lam:g}: {m:+.1f} pp" for lam, m in means.items())
    room = headroom(head.regime_view(ctx.runs("penalty"), "two_by_two"), frozen)
    scaled = scaled_bar(sum(room.values()) / len(room))
    if len({m < scaled for m in means.values()}) > 1 and len({m < bar for m in means.values()}) == 1:
        return Reason("data", f"on the {bar:g} pp bar scaled from the paper's {head.paper_headroom():.1f} pp "
                              f"headroom to this task's ({scaled:.2f} pp), D3's verdict changes along the sweep "
                              f"({margins}); on the absolute one it does not", "headroom-scaled bar")
    if _dfa_fires_d1_somewhere(ctx) or max(means.values()) >= bar:
        return Reason("not explained", f"the mean margins over the frozen baseline ({margins}) and DFA's D1 do not "
                                       f"tell why the verdict does not change", "penalty sweep")
    d1 = d1_horizon(row, ctx)
    return Reason(d1.kind, f"every lambda leaves DFA under the {bar:g} pp bar ({margins}); the paper's penalty lifts "
                           f"DFA by stopping its scale failure, and here DFA fires D1 on no seed, for this reason: "
                           f"{d1.text}", d1.probe)


@probe("calibration.bp_passes_all")
def bp_on_candidates(row, ctx: Context) -> Reason:
    """On which candidate tasks BP fails, and whether it passes on all the others."""
    rows = summarise_all(ctx.runs("calibration")["runs"])
    bad = {r["candidate"] for r in rows if r.get("bp_fires")}
    fails = "; ".join(f"{r['candidate']} s{r['seed']}: {'+'.join(r['bp_fires'])} (BP {r['bp_acc']:.3f}, frozen "
                      f"{r['frozen_acc']:.3f})" for r in rows if r.get("bp_fires"))
    ok = [c for c in CANDIDATES if c not in bad and any(r["candidate"] == c for r in rows)]
    if len(bad) == 1:
        (c,) = bad
        return Reason("data", f"BP passes on every seed run of every other candidate ({', '.join(ok)}); it fails only "
                              f"on {_task(c)}: {fails}", "the candidates' tasks")
    return Reason("not explained", f"BP fails on several candidates: {fails}", "the candidates' tasks")


@probe("more_rules.wm_aligns")
def mirror_noise(row, ctx: Context) -> Reason:
    """Weight mirroring's angle floor. Its mirror phase estimates W from ``mirror_batch`` noise samples a step,
    so even at a W that no longer moves its B settles at an angle set by the rate and the batch. This replays
    the output layer's mirror phase on the trained run's final weights (judged regime, first seed), from B = W,
    for five time constants: at the run's rate and at a ten times slower one (the paper's mirror phase moves
    B far more slowly: learning rate 0.01 on noise of variance 0.01/12)."""
    import torch

    from .chapters.more_rules import regimes

    s0 = ctx.P.seeds[0]
    run = regimes(ctx.runs("more_rules"))[ctx.regime][("wm", s0)]
    rule = run.method
    W = run.model.out_head.weight.detach().double()
    bar = 10.0
    floors = {}
    for rate in (rule.decay, rule.decay / 10):
        g = torch.Generator().manual_seed(0)
        B = W.clone()
        for _ in range(int(5 / rate)):
            x = torch.randn(rule.mirror_batch, W.shape[1], generator=g, dtype=W.dtype)
            B = (1 - rate) * B + rate * (x @ W.T).T @ x / rule.mirror_batch
        floors[rate] = math.degrees(math.acos(float((B * W).sum() / (B.norm() * W.norm()))))
    fast, slow = floors[rule.decay], floors[rule.decay / 10]
    text = (f"the mirror phase's sampling noise: replayed on the trained output layer with W held still, B settles "
            f"at {fast:.1f} degrees at the run's rate ({rule.decay:g} a step, {rule.mirror_batch} noise samples) and "
            f"at {slow:.1f} degrees at a ten times slower rate; the trained run reads {row['ours']}")
    if slow < bar <= fast:
        return Reason("implementation choice", text, "mirror-phase replay at a fixed W")
    return Reason("not explained", text + "; the rate does not account for it", "mirror-phase replay at a fixed W")


# ---------------------------------------------------------------------------------------
# the EP sweep
# ---------------------------------------------------------------------------------------
def ep_sweep_table(ctx: Context):
    """One row per (beta, steps): accuracy, margin over frozen, per-layer and deep Gamma, layers without credit."""
    import pandas as pd

    runs = ctx.probe_runs("ep_sweep")
    frozen = ctx.probe_runs("ep_reference")["frozen"].test_acc
    rows = []
    for (beta, steps), run in runs.items():
        g = run.history[-1]["diag"].gamma
        rows.append({"beta": beta, "steps": steps, "acc": run.test_acc, "margin_pp": 100 * (run.test_acc - frozen),
                     "layer-mean Gamma": layer_mean(g), "deep Gamma": deep_mean(g),
                     "no credit": len(no_credit_layers(g)), "relax_ratio": run.history[-1].get("relax_ratio")})
    return pd.DataFrame(rows)


def paper_like_ep(table, margin_pp: float | None = None) -> list[tuple[float, int]]:
    """The sweep's settings that resemble the paper's EP: |layer-mean Gamma| < 0.05 over the layers that got
    credit, and accuracy within the D3 margin of the frozen baseline (the paper: Gamma ~0.008, 0.29-0.36)."""
    bar = Thresholds().d3_margin_pp if margin_pp is None else margin_pp
    ok = table[(table["layer-mean Gamma"].abs() < 0.05) & (table["margin_pp"] < bar)]
    return [(float(b), int(s)) for b, s in zip(ok["beta"], ok["steps"])]
