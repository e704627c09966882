"""The evaluation protocol: thresholds, FAProtocol, Report and the in-training Monitor (the book's protocol chapter).

Four diagnostics:

* **D1 scale growth**: max per-block growth of the median per-sample L2 norm of
  the hidden state; fires above 50x.
* **D2 reference validity**: median per-sample L2 norm of the BP gradient at the
  deepest hidden state; fires below 1e-7 (= 10 x the 1e-8 epsilon of
  ``F.cosine_similarity``), where a gradient cosine stops being interpretable.
* **C direction stability**: mean pairwise cosine of the batch-mean BP gradient
  direction over disjoint batches; fires above 0.30 (drift-dominated reference).
* **D3 depth utility**: headline accuracy must clear a frozen-random-blocks
  baseline by 2 percentage points; fires otherwise (None without a baseline).

The verdict is ``'PASS'`` when none of the verdict diagnostics fires, else
``'FAIL(D1+D2+...)'`` naming every one that fired. By default the verdict is
judged on D1, D2 and D3, the three diagnostics of the paper's protocol; C is
measured and flagged in the report as a supplementary signal (drift-dominated
reference) but does not decide the verdict, because it is not a clean
discriminator: healthy BP runs can exceed the ceiling and degenerate runs can
stay below it. Pass ``verdict_on=("D1", "D2", "C", "D3")`` for the
four-diagnostic variant. *Mode 1* (measurement degeneracy) is D1 and D2 together.

Two verdict rules (``verdict_rule=``, :data:`VERDICT_RULES`): ``"any"`` (the default)
fails a run when any verdict diagnostic fires, as the paper's ``FAIL(D1)`` example
and its CNN walk-back do; ``"mode1_or_d3"`` fails it only on Mode 1 (D1 and D2
together) or D3, the rule the original artifact's README states. Every report
carries both verdicts (``report["verdicts"]``).
Passing does not certify a rule; it rules out this class of silent failure.
"""
from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn as nn

from . import diagnostics as D

__all__ = ["Thresholds", "FAProtocol", "Report", "Monitor", "verdict_from", "DIAGNOSTICS", "VERDICT_ON",
           "VERDICT_RULES"]

DIAGNOSTICS = ("D1", "D2", "C", "D3")
VERDICT_ON = ("D1", "D2", "D3")        # the paper's three-diagnostic verdict; C is supplementary
#: how the fired verdict diagnostics become a verdict
VERDICT_RULES = {
    "any": "fails when any verdict diagnostic fires (the paper's FAIL(D1) example and CNN walk-back)",
    "mode1_or_d3": "fails only on Mode 1 (D1 and D2 together) or D3 (the original artifact's README)",
}
_KEYS = {"D1": "D1_scale_growth", "D2": "D2_ref_validity", "C": "C_direction_stability", "D3": "D3_depth_utility"}


@dataclass(frozen=True)
class Thresholds:
    """Protocol thresholds (the protocol chapter): override any of them by name."""

    d1_growth: float = 50.0        # D1 fires if max per-block growth > this
    d2_floor: float = 1e-7         # D2 fires if ||g_L|| < this (10 x the 1e-8 cosine eps)
    c_stability: float = 0.30      # C fires if cross-batch stability > this
    d3_margin_pp: float = 2.0      # D3 fires if acc < frozen_acc + this many percentage points

    @classmethod
    def from_any(cls, t: Thresholds | Mapping[str, float] | None) -> Thresholds:
        if t is None:
            return cls()
        if isinstance(t, Thresholds):
            return t
        valid = {f.name for f in fields(cls)}
        unknown = set(t) - valid
        if unknown:
            raise ValueError(f"unknown threshold(s) {sorted(unknown)}; valid names: {sorted(valid)}")
        bad = [k for k, v in t.items() if not (isinstance(v, (int, float)) and math.isfinite(v))]
        if bad:
            raise ValueError(f"threshold(s) {bad} must be finite numbers")
        return replace(cls(), **{k: float(v) for k, v in t.items()})


def fires(diag: str, value: float | None, th: Thresholds, frozen_acc: float | None = None) -> bool | None:
    """Whether one diagnostic fires for a measured value (None: not evaluated).

    A non-finite D1 value (a hidden state overflowed) fires; a non-finite D2 value
    (the reference gradient itself is NaN/inf) fires, since the reference is then
    unusable; a NaN stability is reported as not evaluated.
    """
    if value is None:
        return None
    if diag == "D1":
        return not (value <= th.d1_growth)          # NaN/inf -> fires
    if diag == "D2":
        return not (math.isfinite(value) and value >= th.d2_floor)
    if diag == "C":
        return None if math.isnan(value) else value > th.c_stability
    if diag == "D3":
        if frozen_acc is None:
            return None
        return value < frozen_acc + th.d3_margin_pp / 100.0
    raise ValueError(f"unknown diagnostic {diag!r}; valid: {DIAGNOSTICS}")


def check_verdict_rule(rule: str) -> str:
    if rule not in VERDICT_RULES:
        raise ValueError(f"verdict_rule={rule!r}: choose one of {', '.join(map(repr, VERDICT_RULES))} "
                         f"({'; '.join(f'{k}: {v}' for k, v in VERDICT_RULES.items())})")
    return rule


def verdict_from(fired: Mapping[str, bool | None], on: Sequence[str] = VERDICT_ON, rule: str = "any") -> str:
    """'PASS' or 'FAIL(D1+D2...)' from which of the verdict diagnostics ``on`` fired, in protocol order.

    Under ``rule="mode1_or_d3"`` a run fails only when D1 and D2 both fired (Mode 1) or D3
    fired; the FAIL names every verdict diagnostic that fired.

    >>> verdict_from({"D1": True, "D2": False, "D3": False})
    'FAIL(D1)'
    >>> verdict_from({"D1": True, "D2": False, "D3": False}, rule="mode1_or_d3")
    'PASS'
    >>> verdict_from({"D1": True, "D2": True, "D3": False}, rule="mode1_or_d3")
    'FAIL(D1+D2)'
    """
    names = [d for d in DIAGNOSTICS if d in on and fired.get(d)]
    if check_verdict_rule(rule) == "mode1_or_d3":
        mode1 = "D1" in names and "D2" in names
        fails = mode1 or "D3" in names
    else:
        fails = bool(names)
    return f"FAIL({'+'.join(names)})" if fails else "PASS"


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
class Report(Mapping):
    """Result of :meth:`FAProtocol.run`.

    Reads like a dict (``report['verdict']``, ``report['diagnostics']``) and renders
    as text (``str``), HTML in a notebook, JSON (:meth:`to_json`) and the filled-in
    reporting template (:meth:`to_markdown`).
    """

    def __init__(self, data: dict) -> None:
        self._data = data

    # Mapping protocol
    def __getitem__(self, k: str) -> Any:
        return self._data[k]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def verdict(self) -> str:
        return self._data["verdict"]

    @property
    def fired(self) -> list[str]:
        return list(self._data["fired"])

    @property
    def mode1(self) -> bool:
        return bool(self._data["mode1"])

    def as_dict(self) -> dict:
        """The report as plain JSON types (non-finite numbers as the strings 'inf', '-inf', 'nan')."""
        return json.loads(self.to_json())

    def to_json(self, **kw) -> str:
        """Strict JSON (no NaN/Infinity literals): a non-finite number is written as 'inf', '-inf' or 'nan'."""
        return json.dumps(_finite(self._data), allow_nan=False, **kw)

    # -- renderers ------------------------------------------------------------------------
    # Every renderer draws the same two tables, each with one header cell per column:
    # the diagnostics (diagnostic, value, fires if, state) and the per-layer norms.
    def _rows(self) -> list[tuple[str, str, str, str]]:
        d, th = self._data["diagnostics"], self._data["thresholds"]
        rows = []
        for name, key, rule in (("D1", "D1_scale_growth", f"> {th['d1_growth']:g}x"),
                                ("D2", "D2_ref_validity", f"< {th['d2_floor']:.0e}"),
                                ("C", "C_direction_stability", f"> {th['c_stability']:g}"),
                                ("D3", "D3_depth_utility", f"< frozen + {th['d3_margin_pp']:g} pp")):
            v = d[key]
            if v is None:
                rows.append((_NAMES[name], "not evaluated", rule, "-"))
                continue
            state = "n/a" if v["fired"] is None else ("FIRES" if v["fired"] else "ok")
            if name not in self._data["verdict_on"]:
                state += " (not in verdict)"
            rows.append((_NAMES[name], _fmt(v["value"]), rule, state))
        return rows

    DIAG_HEADER = ("diagnostic", "value", "fires if", "state")

    def _layer_rows(self) -> tuple[list[str], list[list[str]]]:
        pl = self._data["per_layer"]
        header = ["median per sample", *pl["layers"]]
        return header, [["‖h_l‖", *(_fmt(v) for v in pl["hidden_norms"])],
                        ["‖g_l‖ (BP)", *(_fmt(v) for v in pl["bp_grad_norms"])]]

    def _verdict_note(self) -> str:
        rule = self._data.get("verdict_rule", "any")
        other = {r: v for r, v in self._data.get("verdicts", {}).items() if r != rule}
        return (f"verdict judged on {'+'.join(self._data['verdict_on'])}, rule {rule!r}"
                + "".join(f"; under {r!r}: {v}" for r, v in other.items()))

    def __str__(self) -> str:
        mode1 = "   [Mode 1: D1+D2 measurement degeneracy]" if self.mode1 else ""
        lines = [f"FAProtocol verdict: {self.verdict}{mode1}"]
        lines += _text_table(self.DIAG_HEADER, self._rows())
        lines.append(f"  ({self._verdict_note()})")
        lines += _text_table(*self._layer_rows())
        pl = self._data["per_layer"]
        lines.append(f"  ({pl['aggregate']}; {self._data['n_eval']} eval samples)")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.verdict == "PASS" else "#b42318"
        mode1 = " &middot; Mode 1 (D1+D2)" if self.mode1 else ""
        pl = self._data["per_layer"]
        return (f"<div><p><b>FAProtocol verdict: <span style='color:{colour}'>{self.verdict}</span></b>{mode1}</p>"
                + _html_table(self.DIAG_HEADER, self._rows(), bold_last=True)
                + f"<p><small>{html.escape(self._verdict_note())}</small></p>"
                + _html_table(*self._layer_rows())
                + f"<p><small>{html.escape(pl['aggregate'])}; {self._data['n_eval']} eval samples</small></p></div>")

    def to_markdown(self, method: str = "(method)", arch: str = "(architecture)", dataset: str = "(dataset)",
                    seeds: str = "(seeds)", notes: str = "") -> str:
        """The reporting template, filled in with this report's numbers."""
        d = self._data["diagnostics"]
        acc = self._data.get("headline_acc")
        frozen = self._data.get("frozen_baseline_acc")
        lines = [
            f"## Protocol report: {method}", "",
            "| field | value |", "|---|---|",
            f"| method | {method} |", f"| architecture | {arch} |", f"| dataset | {dataset} |", f"| seeds | {seeds} |",
            f"| headline accuracy | {_fmt(acc)} ({self._data.get('headline_acc_source', '')}) |",
            f"| frozen-blocks baseline accuracy | {_fmt(frozen)} |",
            f"| eval samples | {self._data['n_eval']} |",
            f"| verdict | **{self.verdict}** |", f"| Mode 1 (D1 and D2) | {'yes' if self.mode1 else 'no'} |", "",
            *_markdown_table(self.DIAG_HEADER, self._rows()), "", f"({self._verdict_note()})", "",
            *_markdown_table(*self._layer_rows()),
        ]
        if d["C_direction_stability"] is not None:
            lines.append(f"\nDirection stability over {d['C_direction_stability']['n_batches']} disjoint batches.")
        if notes:
            lines += ["", notes]
        return "\n".join(lines) + "\n"


_NAMES = {"D1": "D1 scale growth", "D2": "D2 reference validity", "C": "C direction stability",
          "D3": "D3 depth utility"}


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned plain-text columns: the first left-aligned, the others right-aligned."""
    cols = list(zip(header, *rows))
    widths = [max(len(str(c)) for c in col) for col in cols]

    def line(cells):
        return "  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(header), *(line(r) for r in rows)]


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], bold_last: bool = False) -> str:
    """One header cell per column, one data cell per column in every row; numbers right-aligned."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = ""
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            text = html.escape(str(c))
            if bold_last and i == len(r) - 1:
                text = f"<b>{text}</b>"
            align = " style='text-align:right'" if i > 0 and _numeric(str(c)) else ""
            cells.append(f"<td{align}>{text}</td>")
        body += "<tr>" + "".join(cells) + "</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)]


def _numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{v:.2e}"
    return str(v)


def _finite(o):
    """A copy of o with tensors as lists and non-finite floats as strings, for strict JSON."""
    if isinstance(o, float):
        return o if math.isfinite(o) else ("nan" if math.isnan(o) else ("inf" if o > 0 else "-inf"))
    if isinstance(o, torch.Tensor):
        return _finite(o.tolist())
    if isinstance(o, Mapping):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


# ---------------------------------------------------------------------------------------
# FAProtocol
# ---------------------------------------------------------------------------------------
class FAProtocol:
    """Apply the four diagnostics to a trained model on an eval set.

    >>> from faeval import build_model
    >>> model = build_model("resmlp", (8,), 3, seed=0, width=16, depth=2)
    >>> x_eval, y_eval = torch.randn(256, 8), torch.randint(3, (256,))
    >>> report = FAProtocol(model, x_eval, y_eval, frozen_baseline_acc=0.3).run()
    >>> report.verdict in ("PASS", "FAIL(D3)"), sorted(report["diagnostics"])
    (True, ['C_direction_stability', 'D1_scale_growth', 'D2_ref_validity', 'D3_depth_utility'])

    * ``model``: a faeval layered model; a model with the original artifact's contract
      (``blocks``, ``out_head``, optional ``out_ln``, ``forward(x, return_hidden=True)``);
      or any ``nn.Module`` with ``layers=[names]`` of the sub-modules whose outputs are
      the hidden states h_0..h_L.
    * ``frozen_baseline_acc``: accuracy of the same architecture with its blocks frozen
      at init (D3 is ``None`` without it).
    * ``headline_acc``: the accuracy to judge for D3; by default the model's accuracy on
      ``(x_eval, y_eval)``.
    * ``thresholds``: a :class:`Thresholds` or a dict overriding some of its fields.
    * ``verdict_on``: the diagnostics that decide the verdict (default D1, D2, D3; C is
      always measured and flagged, and decides the verdict only if listed here).
    * ``verdict_rule``: ``"any"`` (default: any verdict diagnostic fails the run) or
      ``"mode1_or_d3"`` (only D1 and D2 together, or D3); see :data:`VERDICT_RULES`.
      The report holds the verdict under both rules in ``report["verdicts"]``.
    * ``batch_size``/``n_batches``: D1 and D2 are measured on all of ``x_eval`` in
      disjoint batches of ``batch_size`` (BP gradients of each batch's mean CE, the
      scale the D2 floor assumes); C uses the first ``n_batches`` of them (10 x 128).
    """

    def __init__(self, model: nn.Module, x_eval: torch.Tensor, y_eval: torch.Tensor,
                 frozen_baseline_acc: float | None = None, headline_acc: float | None = None,
                 thresholds: Thresholds | Mapping[str, float] | None = None, layers: Sequence[str] | None = None,
                 batch_size: int = 128, n_batches: int = 10, token: str = "cls", spatial: str = "mean",
                 verdict_on: Sequence[str] = VERDICT_ON, verdict_rule: str = "any") -> None:
        D.check_xy(x_eval, y_eval)
        self.verdict_rule = check_verdict_rule(verdict_rule)
        bad = [d for d in verdict_on if d not in DIAGNOSTICS]
        if bad or not verdict_on:
            raise ValueError(f"verdict_on={tuple(verdict_on)}: choose a non-empty subset of {DIAGNOSTICS}")
        self.verdict_on = tuple(d for d in DIAGNOSTICS if d in verdict_on)
        self.model = model
        self.tap = D.Tap(model, layers=layers, token=token, spatial=spatial)
        D.check_against_model(self.tap, x_eval, y_eval)
        self.x, self.y = x_eval, y_eval
        self.frozen_baseline_acc = frozen_baseline_acc
        self.headline_acc = headline_acc
        self.thresholds = Thresholds.from_any(thresholds)
        self.batch_size, self.n_batches = batch_size, n_batches

    def run(self, frozen_baseline_acc: float | None = None) -> Report:
        """Measure and judge. D1/D2 use the whole eval set; C uses its first disjoint batches."""
        frozen = frozen_baseline_acc if frozen_baseline_acc is not None else self.frozen_baseline_acc
        th = self.thresholds
        m = D.measure(self.model, self.x, self.y, tap=self.tap, batch_size=self.batch_size)
        h_norms, g_norms = m["hidden_norms"], m["bp_grad_norms"]
        growth = D.max_block_growth(h_norms)
        g_L = g_norms[-1]
        dirs = m["batch_mean_grads"][:self.n_batches]
        stability = D.stability_of(dirs) if len(dirs) >= 2 else None

        if self.headline_acc is not None:
            acc, acc_src = float(self.headline_acc), "given"
        else:
            acc, acc_src = m["acc"], f"measured on the {len(self.x)} eval samples"

        diag = {
            "D1_scale_growth": {"value": growth, "threshold": th.d1_growth,
                                "fired": fires("D1", growth, th),
                                "what": "max over blocks of median||h_{l+1}|| / median||h_l||"},
            "D2_ref_validity": {"value": g_L, "threshold": th.d2_floor, "fired": fires("D2", g_L, th),
                                "what": "median per-sample ||dCE/dh_L|| at the deepest hidden state"},
            "C_direction_stability": None if stability is None else {
                "value": stability, "threshold": th.c_stability, "fired": fires("C", stability, th),
                "n_batches": len(dirs), "batch_size": self.batch_size,
                "what": "mean pairwise cosine of batch-mean BP gradient at h_L over disjoint batches"},
            "D3_depth_utility": None if frozen is None else {
                "value": acc, "frozen_baseline_acc": frozen, "margin_pp": 100.0 * (acc - frozen),
                "threshold": th.d3_margin_pp, "fired": fires("D3", acc, th, frozen),
                "what": "headline accuracy minus frozen-blocks baseline, in percentage points"},
        }
        fired = {d: (diag[_KEYS[d]] or {}).get("fired") for d in DIAGNOSTICS}
        data = {
            "verdict": verdict_from(fired, self.verdict_on, self.verdict_rule),
            "verdict_rule": self.verdict_rule,
            "verdicts": {r: verdict_from(fired, self.verdict_on, r) for r in VERDICT_RULES},
            "verdict_on": list(self.verdict_on),
            "fired": [d for d in self.verdict_on if fired[d]],
            "flagged_supplementary": [d for d in DIAGNOSTICS if d not in self.verdict_on and fired[d]],
            "mode1": bool(fired["D1"] and fired["D2"]),
            "diagnostics": diag,
            "per_layer": {"layers": self.tap.layer_names, "hidden_norms": h_norms, "bp_grad_norms": g_norms,
                          "aggregate": m["aggregate"]},
            "thresholds": asdict(th),
            "headline_acc": acc, "headline_acc_source": acc_src,
            "frozen_baseline_acc": frozen,
            "n_eval": len(self.x),
        }
        return Report(data)


# ---------------------------------------------------------------------------------------
# Monitor: the same thresholds during training
# ---------------------------------------------------------------------------------------
class Monitor:
    """Apply the protocol's thresholds to each epoch's diagnostic snapshot.

    In a training loop of your own, call :meth:`update` once per epoch with the model and an
    eval batch: it measures the snapshot itself. Or call it with ``(epoch, record)``, where ``record`` is a
    :class:`~faeval.diagnostics.Snapshot` (:func:`faeval.diagnostics.snapshot`) or an
    epoch record holding one under the key ``"diag"``. It records the first epoch at which
    D1, D2 and C fire (``first_fired``) and returns True when a diagnostic named in
    ``stop_on`` has fired, so a trainer can stop. :meth:`replay` runs a stored
    history through the same logic. D3 compares final accuracies and is judged by
    :class:`FAProtocol`, not per epoch.

    ``verdict_rule="mode1_or_d3"`` (:data:`VERDICT_RULES`) stops on D1 or D2 only once both
    have fired (Mode 1), at the same or at different epochs; C in ``stop_on`` still stops at once.
    ``d2_batch`` reads D2 at the gradient scale of batches of that many samples
    (:meth:`~faeval.diagnostics.Snapshot.g_L_at`; the paper's per-epoch logs used about 1,024)
    instead of the scale the snapshot was measured at (128).
    """

    PER_EPOCH = ("D1", "D2", "C")

    def __init__(self, thresholds: Thresholds | Mapping[str, float] | None = None,
                 stop_on: Iterable[str] = (), verdict_rule: str = "any", d2_batch: int | None = None) -> None:
        self.thresholds = Thresholds.from_any(thresholds)
        if d2_batch is not None and (not isinstance(d2_batch, int) or d2_batch < 1):
            raise ValueError(f"d2_batch={d2_batch!r}: give a batch size (an integer >= 1), or None")
        self.d2_batch = d2_batch
        self.verdict_rule = check_verdict_rule(verdict_rule)
        self.stop_on = tuple(stop_on)
        bad = [d for d in self.stop_on if d not in self.PER_EPOCH]
        if bad:
            raise ValueError(f"stop_on={bad}: the Monitor judges {self.PER_EPOCH} per epoch")
        self.reset()

    def reset(self) -> None:
        """Forget what was seen (thresholds and stop_on are kept)."""
        self.first_fired: dict[str, int | None] = {d: None for d in self.PER_EPOCH}
        self.stopped_at: int | None = None
        self.fired_by_epoch: list[dict] = []

    def _values(self, record) -> dict[str, float | None]:
        """D1, D2 and C values of an epoch record (a dict with a ``"diag"`` Snapshot), a Snapshot, or a
        Snapshot's stored dict."""
        snap = record.get("diag", record) if isinstance(record, Mapping) else record
        if isinstance(snap, Mapping):
            snap = D.Snapshot.from_dict(snap)
        g_L = snap.g_L if self.d2_batch is None else snap.g_L_at(self.d2_batch)
        return {"D1": snap.max_block_growth, "D2": g_L, "C": snap.stability}

    def update(self, model: nn.Module, x_eval: torch.Tensor, y_eval: torch.Tensor, epoch: int, *,
               layers: Sequence[str] | None = None, token: str = "cls", spatial: str = "mean") -> bool:
        """One call per epoch from any training loop: measure the snapshot of ``model`` on
        ``(x_eval, y_eval)`` (through the same :class:`~faeval.diagnostics.Tap` as
        :class:`FAProtocol`, so ``layers=`` names the hidden states of a model of your own),
        record first firings, and return whether to stop. The snapshot is kept as ``last``.

        >>> import faeval
        >>> model = faeval.build_model("resmlp", (8,), 3, seed=0, width=16, depth=2)
        >>> monitor = Monitor(stop_on=["D1"])
        >>> monitor.update(model, torch.randn(64, 8), torch.randint(3, (64,)), epoch=0)
        False
        """
        key = (id(model), tuple(layers) if layers is not None else None, token, spatial)
        if getattr(self, "_tap_key", None) != key:
            self._tap, self._tap_key = D.Tap(model, layers=layers, token=token, spatial=spatial), key
            D.check_xy(x_eval, y_eval)
            D.check_against_model(self._tap, x_eval, y_eval)
        self.last = D.snapshot(model, x_eval, y_eval, tap=self._tap)
        return self(epoch, self.last)

    def __call__(self, epoch: int, record) -> bool:
        vals = self._values(record)
        state = {d: fires(d, vals[d], self.thresholds) for d in self.PER_EPOCH}
        self.fired_by_epoch.append({"epoch": epoch, **state})
        for d, f in state.items():
            if f and self.first_fired[d] is None:
                self.first_fired[d] = epoch
        stop = any(state.get(d) for d in self.stop_on)
        if self.verdict_rule == "mode1_or_d3":
            mode1 = self.first_fired["D1"] is not None and self.first_fired["D2"] is not None
            stop = bool(state.get("C") and "C" in self.stop_on) or (
                mode1 and any(state.get(d) or self.first_fired[d] is not None
                              for d in self.stop_on if d in ("D1", "D2")))
        if stop and self.stopped_at is None:
            self.stopped_at = epoch
        return stop

    def replay(self, history: Sequence[Mapping]) -> dict[str, int | None]:
        """First firing epoch of each per-epoch diagnostic over a stored history (resets the monitor)."""
        self.reset()
        for i, rec in enumerate(history):
            if self(rec.get("epoch", i), rec):
                break
        return dict(self.first_fired)
