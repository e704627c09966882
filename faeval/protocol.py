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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn

from .snapshot import Snapshot, snapshot
from .tap import Tap, check_against_model, check_xy

__all__ = ["Diagnostic", "TABLE", "register_diagnostic", "per_epoch_diagnostics", "diagnostic_of_column", "Thresholds",
           "FAProtocol", "Report", "Result", "PerLayer", "Monitor", "fires", "verdict_from", "DIAGNOSTICS",
           "VERDICT_ON", "VERDICT_RULES", "CREDIT_RESOLUTION_WARN"]

#: how the fired verdict diagnostics become a verdict
VERDICT_RULES = {
    "any": "fails when any verdict diagnostic fires (the paper's FAIL(D1) example and CNN walk-back)",
    "mode1_or_d3": "fails only on Mode 1 (D1 and D2 together) or D3 (the original artifact's README)",
}


@dataclass(frozen=True)
class Diagnostic:
    """One diagnostic, declared once. :class:`FAProtocol`, :class:`Monitor`, :class:`Report`, the
    analyses (:mod:`faeval.analysis`), the figures and the CLI all iterate :data:`TABLE`, so adding a
    judged diagnostic is one :func:`register_diagnostic` call plus its measure in the
    :class:`~faeval.snapshot.Snapshot`.

    ``read(snapshot, batch=None)`` takes the value from a snapshot (``batch``: the gradient scale a
    :class:`Monitor` reads D2 at); ``judge(value, threshold, baseline)`` says whether it fires for a
    finite or non-finite value (``baseline``: the frozen-blocks accuracy, for a diagnostic that
    ``needs_baseline``; it is not judged without one).
    """

    name: str                       # "D1": how verdicts, stop_on and the chapters name it
    key: str                        # its entry in a report's "diagnostics"
    title: str                      # its row in a report
    threshold: str                  # its entry in Thresholds
    default: float                  # that threshold's default
    fires_if: str                   # the report's "fires if" cell, formatted with the threshold
    what: str                       # what the value is, in one line
    read: Callable[..., float | None]
    judge: Callable[[float, float, float | None], bool | None]
    field: str                      # its column in analysis rows and history frames
    label: str                      # its panel's title in figures (after "D1: ")
    grid: Callable[[float], list[float]]   # the thresholds of the sensitivity sweep, from the current one
    healthy: str = "low"            # the side healthy runs lie on: "low" (fires above) or "high" (fires below)
    gap: str = "ratio"              # how the sensitivity table measures healthy against degenerate
    log_scale: bool = False         # its values span decades
    per_epoch: bool = True          # the Monitor judges it every epoch
    in_verdict: bool = True         # part of the default verdict
    needs_baseline: bool = False    # judged against the frozen-blocks baseline's accuracy
    details: tuple[str, ...] = ()   # facts of the measurement its report entry records (e.g. "n_batches")

    def judgeable(self, value: float | None, baseline: float | None = None) -> bool:
        """Whether ``value`` can be judged: measured, and with a baseline where it ``needs_baseline``."""
        return value is not None and not (self.needs_baseline and baseline is None)

    def fires(self, value: float | None, th: Thresholds, baseline: float | None = None) -> bool | None:
        """Whether it fires for ``value`` at thresholds ``th`` (None: not evaluated)."""
        if not self.judgeable(value, baseline):
            return None
        return self.judge(value, getattr(th, self.threshold), baseline)

    def note(self, th: Thresholds) -> str:
        """A threshold line's caption in figures, e.g. ``"fires above 50"`` (``"flag"`` outside the verdict)."""
        return (f"{'fires' if self.in_verdict else 'flag'} {'above' if self.healthy == 'low' else 'below'} "
                f"{getattr(th, self.threshold):g}")


def _decades(t: float) -> list[float]:
    return [t * 10 ** (k / 2) for k in range(-6, 7)]          # 1e-3x .. 1e3x, half-decade steps


#: every diagnostic, in protocol order: name -> :class:`Diagnostic`
TABLE: dict[str, Diagnostic] = {}


def register_diagnostic(d: Diagnostic, *, replace: bool = False) -> Diagnostic:
    """Add ``d`` to :data:`TABLE` (after the others). A name or threshold already taken raises unless
    ``replace``."""
    taken = {x.threshold: x.name for x in TABLE.values() if x.name != d.name}
    if (d.name in TABLE and not replace) or d.threshold in taken:
        raise ValueError(f"diagnostic {d.name!r} (threshold {d.threshold!r}) clashes with the table's "
                         f"{', '.join(TABLE)}; pick new names, or pass replace=True to redefine {d.name!r}")
    TABLE[d.name] = d
    return d


register_diagnostic(Diagnostic(
    "D1", "D1_scale_growth", "D1 scale growth", "d1_growth", 50.0, "> {:g}x",
    "max over blocks of median||h_{l+1}|| / median||h_l||",
    read=lambda s, batch=None: s.max_block_growth,
    judge=lambda v, t, _: not (v <= t),                       # NaN/inf (an overflowed state) fires
    field="growth", label="max per-block growth (x)", grid=_decades, log_scale=True))
register_diagnostic(Diagnostic(
    "D2", "D2_ref_validity", "D2 reference validity", "d2_floor", 1e-7, "< {:.0e}",
    "median per-sample ||dCE/dh_L|| at the deepest hidden state",
    read=lambda s, batch=None: s.g_L if batch is None else s.g_L_at(batch),
    judge=lambda v, t, _: not (math.isfinite(v) and v >= t),  # a NaN/inf reference is unusable: fires
    field="g_L", label="median ‖g_L‖", grid=_decades, healthy="high", log_scale=True))
register_diagnostic(Diagnostic(
    "C", "C_direction_stability", "C direction stability", "c_stability", 0.30, "> {:g}",
    "mean pairwise cosine of batch-mean BP gradient at h_L over disjoint batches",
    read=lambda s, batch=None: s.stability,
    judge=lambda v, t, _: None if math.isnan(v) else v > t,
    field="stability", label="direction stability (cosine)", grid=lambda t: [round(0.05 * k, 2) for k in range(1, 20)],
    gap="difference", in_verdict=False, details=("n_batches", "batch_size")))
register_diagnostic(Diagnostic(
    "D3", "D3_depth_utility", "D3 depth utility", "d3_margin_pp", 2.0, "< frozen + {:g} pp",
    "headline accuracy minus frozen-blocks baseline, in percentage points",
    read=lambda s, batch=None: s.acc,
    judge=lambda v, t, baseline: v < baseline + t / 100.0,
    field="acc", label="test accuracy", grid=lambda t: [0.5 * k for k in range(0, 21)],
    healthy="high", gap="difference", per_epoch=False, needs_baseline=True))

#: the diagnostics' names, in protocol order (a live view of :data:`TABLE`)
DIAGNOSTICS = TABLE.keys()
VERDICT_ON = ("D1", "D2", "D3")        # the paper's three-diagnostic verdict; C is supplementary
#: below this credit resolution (rounding units of the state the credit's displacement spans) a report warns:
#: the float32 credit's cosine with the exact one stays above 0.99 at or above it (``benchmarks/ep_precision.py``)
CREDIT_RESOLUTION_WARN = 30.0


def per_epoch_diagnostics() -> tuple[str, ...]:
    """The diagnostics a :class:`Monitor` judges every epoch (those that need no baseline run)."""
    return tuple(n for n, d in TABLE.items() if d.per_epoch)


def diagnostic_of_column(column: str) -> Diagnostic | None:
    """The diagnostic whose value a table or history column holds: the column named as its ``field``
    (``growth``, ``g_L``), or that field read at another scale (``g_L_1024``: D2's); None for any other."""
    return next((d for d in TABLE.values() if column == d.field or column.startswith(d.field + "_")), None)


def _diagnostic(name: str) -> Diagnostic:
    if name not in TABLE:
        raise ValueError(f"unknown diagnostic {name!r}; valid: {tuple(TABLE)}")
    return TABLE[name]


class Thresholds:
    """The protocol's thresholds (the protocol chapter): one per diagnostic of :data:`TABLE`, under its
    ``threshold`` name, at its ``default``. Override any of them by name: ``Thresholds(d1_growth=100)``.

    >>> Thresholds(d2_floor=1e-8).d2_floor, Thresholds().d1_growth
    (1e-08, 50.0)
    """

    def __init__(self, **values: float) -> None:
        valid = {d.threshold for d in TABLE.values()}
        unknown = set(values) - valid
        if unknown:
            raise ValueError(f"unknown threshold(s) {sorted(unknown)}; valid names: {sorted(valid)}")
        bad = [k for k, v in values.items() if not (isinstance(v, (int, float)) and math.isfinite(v))]
        if bad:
            raise ValueError(f"threshold(s) {bad} must be finite numbers")
        object.__setattr__(self, "_given", {k: float(v) for k, v in values.items()})

    def __getattr__(self, name: str) -> float:
        given = self.__dict__.get("_given", {})
        if name in given:
            return given[name]
        for d in TABLE.values():
            if d.threshold == name:
                return d.default
        raise AttributeError(f"no threshold {name!r}; valid names: {sorted(d.threshold for d in TABLE.values())}")

    def __setattr__(self, name, value) -> None:
        raise AttributeError("Thresholds are immutable: use .replace(name=value)")

    def as_dict(self) -> dict[str, float]:
        """Every threshold by name, in protocol order."""
        return {d.threshold: getattr(self, d.threshold) for d in TABLE.values()}

    def replace(self, **values: float) -> Thresholds:
        """A copy with ``values`` changed."""
        return Thresholds(**{**self._given, **values})

    def __eq__(self, other) -> bool:
        return isinstance(other, Thresholds) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().items()))

    def __repr__(self) -> str:
        return f"Thresholds({', '.join(f'{k}={v!r}' for k, v in self.as_dict().items())})"

    @classmethod
    def from_any(cls, t: Thresholds | Mapping[str, float] | None) -> Thresholds:
        if t is None:
            return cls()
        if isinstance(t, Thresholds):
            return t
        return cls(**t)


def fires(diag: str, value: float | None, th: Thresholds, frozen_acc: float | None = None) -> bool | None:
    """Whether diagnostic ``diag`` fires for a measured value (None: not evaluated; :meth:`Diagnostic.fires`).

    A non-finite D1 value (a hidden state overflowed) fires; a non-finite D2 value
    (the reference gradient itself is NaN/inf) fires, since the reference is then
    unusable; a NaN stability is reported as not evaluated.
    """
    return _diagnostic(diag).fires(value, th, frozen_acc)


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
    names = [d for d in TABLE if d in on and fired.get(d)]
    if check_verdict_rule(rule) == "mode1_or_d3":
        mode1 = "D1" in names and "D2" in names
        fails = mode1 or "D3" in names
    else:
        fails = bool(names)
    return f"FAIL({'+'.join(names)})" if fails else "PASS"


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    """One diagnostic's outcome in a :class:`Report` (None there where it was not evaluated)."""

    name: str                            # the diagnostic, e.g. "D1" (protocol.TABLE)
    value: float
    threshold: float
    fired: bool | None
    what: str
    baseline: float | None = None        # the frozen-blocks accuracy it was judged against (D3)
    facts: Mapping[str, Any] = field(default_factory=dict)   # of the measurement, e.g. n_batches

    @property
    def margin_pp(self) -> float | None:
        """``value`` over the baseline in percentage points (None without a baseline)."""
        return None if self.baseline is None else 100.0 * (self.value - self.baseline)

    def to_dict(self) -> dict:
        """The report's JSON entry: value, [frozen_baseline_acc, margin_pp], threshold, fired, [facts], what."""
        out: dict[str, Any] = {"value": self.value}
        if self.baseline is not None:
            out.update(frozen_baseline_acc=self.baseline, margin_pp=self.margin_pp)
        return {**out, "threshold": self.threshold, "fired": self.fired, **self.facts, "what": self.what}


@dataclass(frozen=True)
class PerLayer:
    """The per-layer medians a report shows: ‖h_l‖ and the BP gradient's ‖g_l‖, per hidden state."""

    layers: list[str]
    hidden_norms: list[float]
    bp_grad_norms: list[float]
    aggregate: str

    def to_dict(self) -> dict:
        return {"layers": self.layers, "hidden_norms": self.hidden_norms, "bp_grad_norms": self.bp_grad_norms,
                "aggregate": self.aggregate}


@dataclass(frozen=True, eq=False)
class Report(Mapping):
    """Result of :meth:`FAProtocol.run`: typed fields, e.g. ``report.verdict``,
    ``report.results["D1"].value``, ``report.per_layer.hidden_norms``.

    It renders as text (``str``), HTML in a notebook, JSON (:meth:`to_json`, whose keys are the
    stored reports' and the reporting template's) and the filled-in reporting template
    (:meth:`to_markdown`). It also reads like that JSON, as a mapping (``report["diagnostics"]
    ["D1_scale_growth"]["value"]``), for code written against earlier versions.
    """

    verdict: str
    verdict_rule: str
    verdicts: dict[str, str]             # the verdict under every rule of VERDICT_RULES
    verdict_on: list[str]
    fired: list[str]                     # the verdict diagnostics that fired
    flagged_supplementary: list[str]     # the others that fired
    mode1: bool
    results: dict[str, Result | None]    # by diagnostic name, in protocol order
    per_layer: PerLayer
    thresholds: Thresholds
    headline_acc: float
    headline_acc_source: str
    frozen_baseline_acc: float | None
    n_eval: int
    #: per hidden state h_0..h_L, the credit's resolution of a rule whose credit is a difference of states (EP):
    #: how many rounding units of the state the displacement spans (None: no such rule given; None at h_0 and
    #: at a state the rule gives no credit)
    credit_resolution: list[float | None] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def lowest_credit_resolution(self) -> float | None:
        """The lowest :attr:`credit_resolution` over the states that have one (None without a rule that has it)."""
        measured = [r for r in self.credit_resolution or () if r is not None]
        return min(measured) if measured else None

    def to_dict(self) -> dict:
        """The report as the nested dict its JSON holds (keys as stored reports have them)."""
        return {"verdict": self.verdict, "verdict_rule": self.verdict_rule, "verdicts": dict(self.verdicts),
                "verdict_on": list(self.verdict_on), "fired": list(self.fired),
                "flagged_supplementary": list(self.flagged_supplementary), "mode1": self.mode1,
                "diagnostics": {TABLE[n].key if n in TABLE else n: None if r is None else r.to_dict()
                                for n, r in self.results.items()},
                "per_layer": self.per_layer.to_dict(), "thresholds": self.thresholds.as_dict(),
                "headline_acc": self.headline_acc, "headline_acc_source": self.headline_acc_source,
                "frozen_baseline_acc": self.frozen_baseline_acc, "n_eval": self.n_eval,
                **({"credit_resolution": self.credit_resolution} if self.credit_resolution is not None else {}),
                **({"warnings": list(self.warnings)} if self.warnings else {})}

    # the mapping view (the JSON's keys)
    def __getitem__(self, k: str) -> Any:
        return self.to_dict()[k]

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def as_dict(self) -> dict:
        """The report as plain JSON types (non-finite numbers as the strings 'inf', '-inf', 'nan')."""
        return json.loads(self.to_json())

    def to_json(self, **kw) -> str:
        """Strict JSON (no NaN/Infinity literals): a non-finite number is written as 'inf', '-inf' or 'nan'."""
        return json.dumps(_finite(self.to_dict()), allow_nan=False, **kw)

    # -- renderers ------------------------------------------------------------------------
    # Every renderer draws the same two tables, each with one header cell per column:
    # the diagnostics (diagnostic, value, fires if, state) and the per-layer norms.
    def _rows(self) -> list[tuple[str, str, str, str]]:
        rows = []
        for name, r in self.results.items():
            diag = TABLE[name]
            rule = diag.fires_if.format(getattr(self.thresholds, diag.threshold))
            if r is None:
                rows.append((diag.title, "not evaluated", rule, "-"))
                continue
            state = "n/a" if r.fired is None else ("FIRES" if r.fired else "ok")
            if name not in self.verdict_on:
                state += " (not in verdict)"
            rows.append((diag.title, _fmt(r.value), rule, state))
        return rows

    DIAG_HEADER = ("diagnostic", "value", "fires if", "state")

    def _layer_rows(self) -> tuple[list[str], list[list[str]]]:
        pl = self.per_layer
        header = ["median per sample", *pl.layers]
        rows = [["‖h_l‖", *(_fmt(v) for v in pl.hidden_norms)], ["‖g_l‖ (BP)", *(_fmt(v) for v in pl.bp_grad_norms)]]
        if self.credit_resolution is not None:
            rows.append(["credit resolution", *("-" if v is None else _fmt(v) for v in self.credit_resolution)])
        return header, rows

    def _verdict_note(self) -> str:
        other = {r: v for r, v in self.verdicts.items() if r != self.verdict_rule}
        return (f"verdict judged on {'+'.join(self.verdict_on)}, rule {self.verdict_rule!r}"
                + "".join(f"; under {r!r}: {v}" for r, v in other.items()))

    def __str__(self) -> str:
        mode1 = "   [Mode 1: D1+D2 measurement degeneracy]" if self.mode1 else ""
        lines = [f"FAProtocol verdict: {self.verdict}{mode1}"]
        lines += _text_table(self.DIAG_HEADER, self._rows())
        lines.append(f"  ({self._verdict_note()})")
        lines += [f"  WARNING: {w}" for w in self.warnings]
        lines += _text_table(*self._layer_rows())
        lines.append(f"  ({self.per_layer.aggregate}; {self.n_eval} eval samples)")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.verdict == "PASS" else "#b42318"
        mode1 = " &middot; Mode 1 (D1+D2)" if self.mode1 else ""
        return (f"<div><p><b>FAProtocol verdict: <span style='color:{colour}'>{self.verdict}</span></b>{mode1}</p>"
                + _html_table(self.DIAG_HEADER, self._rows(), bold_last=True)
                + f"<p><small>{html.escape(self._verdict_note())}</small></p>"
                + "".join(f"<p style='color:#b42318'><b>Warning:</b> {html.escape(w)}</p>" for w in self.warnings)
                + _html_table(*self._layer_rows())
                + f"<p><small>{html.escape(self.per_layer.aggregate)}; {self.n_eval} eval samples</small></p></div>")

    def to_markdown(self, method: str = "(method)", arch: str = "(architecture)", dataset: str = "(dataset)",
                    seeds: str = "(seeds)", notes: str = "") -> str:
        """The reporting template, filled in with this report's numbers."""
        lines = [
            f"## Protocol report: {method}", "",
            "| field | value |", "|---|---|",
            f"| method | {method} |", f"| architecture | {arch} |", f"| dataset | {dataset} |", f"| seeds | {seeds} |",
            f"| headline accuracy | {_fmt(self.headline_acc)} ({self.headline_acc_source}) |",
            f"| frozen-blocks baseline accuracy | {_fmt(self.frozen_baseline_acc)} |",
            f"| eval samples | {self.n_eval} |",
            f"| verdict | **{self.verdict}** |", f"| Mode 1 (D1 and D2) | {'yes' if self.mode1 else 'no'} |", "",
            *_markdown_table(self.DIAG_HEADER, self._rows()), "", f"({self._verdict_note()})", "",
            *(f"**Warning:** {w}\n" for w in self.warnings),
            *_markdown_table(*self._layer_rows()),
        ]
        c = self.results.get("C")
        if c is not None:
            lines.append(f"\nDirection stability over {c.facts['n_batches']} disjoint batches.")
        if notes:
            lines += ["", notes]
        return "\n".join(lines) + "\n"


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
    * ``rule``: the learning rule that trained ``model`` (a :class:`~faeval.methods.Method` on it). Where its
      credit is a difference of two states (it has ``credit_resolution``, as EP does), the report adds the
      credit's resolution per hidden state, measured on the first ``batch_size`` eval samples: how many
      rounding units of the state the displacement spans. It is reported, not judged: the report warns when
      it falls below :data:`CREDIT_RESOLUTION_WARN` at any layer, and the verdict does not change.
    """

    def __init__(self, model: nn.Module, x_eval: torch.Tensor, y_eval: torch.Tensor,
                 frozen_baseline_acc: float | None = None, headline_acc: float | None = None,
                 thresholds: Thresholds | Mapping[str, float] | None = None, layers: Sequence[str] | None = None,
                 batch_size: int = 128, n_batches: int = 10, token: str = "cls", spatial: str = "mean",
                 verdict_on: Sequence[str] = VERDICT_ON, verdict_rule: str = "any", rule=None) -> None:
        check_xy(x_eval, y_eval)
        if rule is not None and getattr(rule, "model", None) is not model:
            raise ValueError("rule= is the learning rule that trained this model (built on it, e.g. "
                             "faeval.build_method('ep', model)); the rule given is built on another model")
        self.rule = rule
        self.verdict_rule = check_verdict_rule(verdict_rule)
        bad = [d for d in verdict_on if d not in TABLE]
        if bad or not verdict_on:
            raise ValueError(f"verdict_on={tuple(verdict_on)}: choose a non-empty subset of {tuple(TABLE)}")
        self.verdict_on = tuple(d for d in TABLE if d in verdict_on)
        self.model = model
        self.tap = Tap(model, layers=layers, token=token, spatial=spatial)
        check_against_model(self.tap, x_eval, y_eval)
        self.x, self.y = x_eval, y_eval
        self.frozen_baseline_acc = frozen_baseline_acc
        self.headline_acc = headline_acc
        self.thresholds = Thresholds.from_any(thresholds)
        self.batch_size, self.n_batches = batch_size, n_batches

    def run(self, frozen_baseline_acc: float | None = None) -> Report:
        """Measure and judge. D1/D2 use the whole eval set; C uses its first disjoint batches."""
        frozen = frozen_baseline_acc if frozen_baseline_acc is not None else self.frozen_baseline_acc
        th = self.thresholds
        snap = snapshot(self.model, self.x, self.y, tap=self.tap, batch_size=self.batch_size,
                          stability_batches=self.n_batches)
        if self.headline_acc is not None:
            snap, acc_src = replace(snap, acc=float(self.headline_acc)), "given"
        else:
            acc_src = f"measured on the {len(self.x)} eval samples"
        facts = {"n_batches": min(self.n_batches, len(self.x) // self.batch_size), "batch_size": self.batch_size}
        results = {n: _result(d, d.read(snap), th, frozen, facts) for n, d in TABLE.items()}
        fired = {n: None if r is None else r.fired for n, r in results.items()}
        resolution, warnings = self._credit_resolution()
        return Report(
            verdict=verdict_from(fired, self.verdict_on, self.verdict_rule), verdict_rule=self.verdict_rule,
            verdicts={r: verdict_from(fired, self.verdict_on, r) for r in VERDICT_RULES},
            verdict_on=list(self.verdict_on), fired=[d for d in self.verdict_on if fired[d]],
            flagged_supplementary=[d for d in TABLE if d not in self.verdict_on and fired[d]],
            mode1=bool(fired["D1"] and fired["D2"]), results=results,
            per_layer=PerLayer(self.tap.layer_names, snap.hidden_norms, snap.bp_grad_norms, snap.aggregate),
            thresholds=th, headline_acc=snap.acc, headline_acc_source=acc_src, frozen_baseline_acc=frozen,
            n_eval=len(self.x), credit_resolution=resolution, warnings=warnings)

    def _credit_resolution(self) -> tuple[list[float | None] | None, list[str]]:
        """The rule's credit resolution per hidden state (None at h_0) and the warning it raises, if any."""
        measure = getattr(self.rule, "credit_resolution", None)
        if measure is None:
            return None, []
        per = measure(self.x[:self.batch_size], self.y[:self.batch_size])
        low = [(l + 1, r) for l, r in enumerate(per) if r is not None and not r >= CREDIT_RESOLUTION_WARN]
        warning = [] if not low else [
            f"the credit resolution falls to {min(r for _, r in low):.3g} at "
            f"{', '.join(f'h_{l}' for l, _ in low)} (below {CREDIT_RESOLUTION_WARN:g} rounding units of the "
            "state): the rule's credit is a difference of two states that differ by little more than their own "
            "rounding, so part of it is rounding noise and its Gamma understates the rule; compute the phases in "
            "float64 (ep64)"]
        return [None, *per], warning


def _result(d: Diagnostic, value: float | None, th: Thresholds, baseline: float | None,
            facts: Mapping[str, Any]) -> Result | None:
    """Diagnostic ``d``'s :class:`Result` (None where it is not evaluated: no value, or no baseline)."""
    if not d.judgeable(value, baseline):
        return None
    return Result(d.name, value, getattr(th, d.threshold), d.fires(value, th, baseline), d.what,
                  baseline if d.needs_baseline else None, {k: facts[k] for k in d.details})


# ---------------------------------------------------------------------------------------
# Monitor: the same thresholds during training
# ---------------------------------------------------------------------------------------
class Monitor:
    """Apply the protocol's thresholds to each epoch's diagnostic snapshot.

    In a training loop of your own, call :meth:`update` once per epoch with the model and an
    eval batch: it measures the snapshot itself. Or call it with ``(epoch, record)``, where ``record`` is a
    :class:`~faeval.snapshot.Snapshot` (:func:`faeval.snapshot.snapshot`) or an
    epoch record holding one under the key ``"diag"``. It records the first epoch at which
    D1, D2 and C fire (``first_fired``) and returns True when a diagnostic named in
    ``stop_on`` has fired, so a trainer can stop. :meth:`replay` runs a stored
    history through the same logic. D3 compares final accuracies and is judged by
    :class:`FAProtocol`, not per epoch.

    ``verdict_rule="mode1_or_d3"`` (:data:`VERDICT_RULES`) stops on D1 or D2 only once both
    have fired (Mode 1), at the same or at different epochs; C in ``stop_on`` still stops at once.
    ``d2_batch`` reads D2 at the gradient scale of batches of that many samples
    (:meth:`~faeval.snapshot.Snapshot.g_L_at`; the paper's per-epoch logs used about 1,024)
    instead of the scale the snapshot was measured at (128).
    """

    def __init__(self, thresholds: Thresholds | Mapping[str, float] | None = None,
                 stop_on: Iterable[str] = (), verdict_rule: str = "any", d2_batch: int | None = None) -> None:
        self.thresholds = Thresholds.from_any(thresholds)
        if d2_batch is not None and (not isinstance(d2_batch, int) or d2_batch < 1):
            raise ValueError(f"d2_batch={d2_batch!r}: give a batch size (an integer >= 1), or None")
        self.d2_batch = d2_batch
        self.verdict_rule = check_verdict_rule(verdict_rule)
        self.stop_on = tuple(stop_on)
        bad = [d for d in self.stop_on if d not in per_epoch_diagnostics()]
        if bad:
            raise ValueError(f"stop_on={bad}: the Monitor judges {per_epoch_diagnostics()} per epoch")
        self.reset()

    def reset(self) -> None:
        """Forget what was seen (thresholds and stop_on are kept)."""
        self.first_fired: dict[str, int | None] = {d: None for d in per_epoch_diagnostics()}
        self.stopped_at: int | None = None
        self.fired_by_epoch: list[dict] = []

    def _values(self, record) -> dict[str, float | None]:
        """The per-epoch diagnostics' values of an epoch record (a dict with a ``"diag"`` Snapshot), a
        Snapshot, or a Snapshot's stored dict."""
        snap = record.get("diag", record) if isinstance(record, Mapping) else record
        if isinstance(snap, Mapping):
            snap = Snapshot.from_dict(snap)
        return {d: TABLE[d].read(snap, batch=self.d2_batch) for d in self.first_fired}

    def update(self, model: nn.Module, x_eval: torch.Tensor, y_eval: torch.Tensor, epoch: int, *,
               layers: Sequence[str] | None = None, token: str = "cls", spatial: str = "mean") -> bool:
        """One call per epoch from any training loop: measure the snapshot of ``model`` on
        ``(x_eval, y_eval)`` (through the same :class:`~faeval.tap.Tap` as
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
            self._tap, self._tap_key = Tap(model, layers=layers, token=token, spatial=spatial), key
            check_xy(x_eval, y_eval)
            check_against_model(self._tap, x_eval, y_eval)
        self.last = snapshot(model, x_eval, y_eval, tap=self._tap)
        return self(epoch, self.last)

    def __call__(self, epoch: int, record) -> bool:
        vals = self._values(record)
        state = {d: TABLE[d].fires(v, self.thresholds) for d, v in vals.items()}
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
