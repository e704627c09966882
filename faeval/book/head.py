"""How the output head trains: the regimes the book shows, the head's rate fitted to the paper as a dial,
and the regime its claims are judged in.

The seed documents say the output head is "always trained with the loss" for the CNN only; for
ResMLP that reading was an inference (the book's assumptions page). Every rule takes ``head_lr``, out_head's
learning rate as a multiple of ``lr`` (:class:`faeval.methods.Method`). Three regimes appear:

* ``head trained`` (``head_lr=1``, the package default): out_head trains on the true loss;
* ``head fitted``: the local rules train out_head at the rate :func:`fit` picks from :data:`GRID`, the
  value whose runs lie nearest the paper's DFA and FA numbers (:data:`DISTANCES`); the chapters show
  this regime beside ``head trained`` and their claims are judged in it;
* ``head fixed`` (``head_lr=0``): out_head stays at its initialisation; out_ln, the blocks and the
  embedding train as before. It stays in the calibration appendix (the grid's end, the mechanism).

BP keeps a trained head in every regime: it is the reference a local rule is judged against. The
frozen-blocks baseline trains its head at the rate of the regime (a matched baseline, so that D3 compares
blocks, not heads); the ``head trained`` regime's frozen baseline, the paper's, is shown beside it.

The rule that fits the dial, fixed before the grid's runs: for each head_lr of :data:`GRID`, on the first
seed, each of the paper's signatures in :data:`DISTANCES` gets a distance (``log10``: the decades between
ours and the paper's band, 0 inside it; ``headroom``: the accuracy margin over the frozen baseline in
units of BP's headroom over frozen on the same data, ours against the paper's, as an absolute
difference; ``gamma``: the absolute difference of Gamma, per layer averaged over the layers). The fitted
value has the least sum; a tie goes to the larger head_lr (nearer the package default: changing the book's
reading needs evidence). The binary count of :data:`SIGNATURES` (:func:`decide`) stays beside it.

>>> from faeval.book.profiles import get_profile
>>> P = get_profile("smoke")
>>> cfgs = {("dfa", 42): P.config("dfa", 42), ("bp", 42): P.config("bp", 42)}
>>> sorted(variants(cfgs, 0.1)), variants(cfgs, 0.1)["dfa", 42]["head_lr"]
([('dfa', 42)], 0.1)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..config import canonical_config
from ..diagnostics import deep_mean, layer_mean
from ..protocol import Thresholds
from ..store import load_run, run_dir
from .claims import paper

__all__ = ["TRAINED", "FITTED", "FIXED", "REGIMES", "DEFAULT", "KEEP_TRAINED", "GRID", "variants", "with_head",
           "with_fitted_head", "FIT_INPUTS", "fit_inputs", "by_regime", "regime_view", "head_lr", "fitted_head_lr",
           "judged_at", "headroom_note", "grid_plan", "ends", "paper_headroom", "paper_margin", "DISTANCES",
           "Distance", "TOLERANCE", "Fit", "fit", "grid_rows", "totals_by_seed", "SIGNATURES", "Signature",
           "Decision", "decide"]

TRAINED, FITTED, FIXED = "head trained", "head fitted", "head fixed"
#: the two regimes every chapter shows, the package default first
REGIMES: tuple[str, ...] = (TRAINED, FITTED)
DEFAULT = TRAINED
#: rules that keep a trained head in every regime (the reference)
KEEP_TRAINED = ("bp",)
#: the head_lr values of the dial, the package default first; the first seed runs every one, every seed
#: runs the two ends and the fitted value
GRID: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03, 0.01, 0.0)
#: the rules the dial is fitted on
GRID_RULES = ("dfa", "fa")
#: part-name prefix of a regime's variants in a chapter's plan
PREFIX = {FITTED: "fitted_head_", FIXED: "fixed_head_"}


def variants(configs: Mapping, rate: float, skip=()) -> dict:
    """Each config at head_lr ``rate`` whose rule is not in :data:`KEEP_TRAINED` and whose key is not in
    ``skip``, under the same key."""
    return {k: {**cfg, "head_lr": float(rate)} for k, cfg in configs.items()
            if cfg["method"] not in KEEP_TRAINED and k not in skip}


def with_head(parts: Mapping[str, Mapping], regime: str, rate: float, skip=()) -> dict[str, dict]:
    """A chapter's plan ``{part: {key: config}}`` plus, for each part, ``<prefix><part>``: its
    :func:`variants` at ``rate`` (where it has any), the prefix that of ``regime`` (:data:`PREFIX`)."""
    extra = {PREFIX[regime] + part: variants(runs, rate, skip) for part, runs in parts.items()}
    return {**parts, **{part: runs for part, runs in extra.items() if runs}}


#: the part of a chapter's plan that holds the grid's runs the fit reads, until they are stored
FIT_INPUTS = "head_grid_first_seed"


def with_fitted_head(P, parts: Mapping[str, Mapping], skip=()) -> dict[str, dict]:
    """:func:`with_head` in the ``head fitted`` regime at ``P``'s fitted value. Until the grid's runs that
    :func:`fit` reads are stored, ``parts`` plus those runs (part :data:`FIT_INPUTS`): training the plan stores
    them, and the plan then grows to the fitted runs (``train_until_stable``)."""
    rate = fitted_head_lr(P)
    if rate is None:
        return {**parts, FIT_INPUTS: fit_inputs(P)}
    return with_head(parts, FITTED, rate, skip)


def fit_inputs(P) -> dict:
    """The configs :func:`fit` reads: ``{(method, head_lr, seed) | (method, seed): config}``, the grid and BP and
    frozen on the first seed."""
    plan, s0 = grid_plan(P), P.seeds[0]
    return {**{k: c for k, c in plan["grid"].items() if k[2] == s0},
            **{k: c for k, c in plan["refs"].items() if k[1] == s0}}


def by_regime(trained: Mapping, other: Mapping, regime: str = FITTED) -> dict[str, dict]:
    """``{regime: {key: run}}``: the other regime takes the runs of ``other`` where it has them and shares the
    rest (BP) with ``head trained``."""
    return {TRAINED: dict(trained), regime: {k: other.get(k, r) for k, r in trained.items()}}


def regime_view(runs: Mapping[str, Mapping], part: str, regime: str = FITTED) -> dict[str, dict]:
    """Part ``part`` of a chapter's runs (``P.experiment(chapter)``) in ``head trained`` and ``regime``:
    :func:`by_regime` of ``runs[part]`` and ``runs["<prefix><part>"]``."""
    return by_regime(runs[part], runs.get(PREFIX[regime] + part, {}), regime)


def head_lr(P, regime: str) -> float:
    """The local rules' head_lr in ``regime`` at profile ``P``."""
    return _stored_fit(P).head_lr if regime == FITTED else {TRAINED: 1.0, FIXED: 0.0}[regime]


def judged_at(rate: float) -> str:
    """The regime the claims are judged in when the dial picks ``rate``: ``head fitted``, or ``head trained`` where
    the fitted value is the package default."""
    return TRAINED if rate == GRID[0] else FITTED


# ---------------------------------------------------------------------------------------
# the dial: the grid, the distances and the fit
# ---------------------------------------------------------------------------------------
def grid_plan(P, fitted: float | None = None) -> dict[str, dict]:
    """The grid's runs: ``grid`` ``{(method, head_lr, seed): config}``, DFA and FA at every head_lr of
    :data:`GRID` on the first seed and, on every seed, at both ends and at ``fitted`` (where given);
    ``refs`` ``{(method, seed): config}``: BP and the frozen baseline (head trained), every seed."""
    s0, ends_ = P.seeds[0], {GRID[0], GRID[-1], *([] if fitted is None else [fitted])}
    keys = [(m, h, s0) for m in GRID_RULES for h in GRID]
    keys += [(m, h, s) for m in GRID_RULES for h in sorted(ends_, reverse=True) for s in P.seeds[1:]]
    return {"grid": {(m, h, s): P.config(m, s, head_lr=h) for m, h, s in keys},
            "refs": {(m, s): P.config(m, s) for m in ("bp", "frozen") for s in P.seeds}}


def ends(P) -> dict[str, dict]:
    """``{"head trained"|"head fixed": {(method, seed): Run}}``: the grid's DFA and FA at head_lr 1 and 0, every
    seed, with BP and the frozen baseline (head trained) in both (what the calibration appendix's mechanism reads)."""
    runs = P.experiment("head_grid")
    refs = runs["refs"]
    return {regime: {**refs, **{(m, s): r for (m, h, s), r in runs["grid"].items() if h == rate}}
            for regime, rate in ((TRAINED, GRID[0]), (FIXED, GRID[-1]))}


@dataclass(frozen=True)
class Distance:
    """One of the paper's signatures as a distance: ``read(run, refs) -> ours`` on one run of ``rule`` (``refs``:
    ``{"bp"|"frozen": Run}`` of its seed), against the paper's ``band`` ``(low, high)``, by ``kind`` (a point has
    low == high; for a per-layer Gamma, ``low`` is layer 0's value and ``high`` every deeper layer's)."""

    rule: str
    name: str
    paper_key: str
    kind: str                          # "log10", "headroom" or "gamma"
    band: tuple
    read: Callable

    def distance(self, ours) -> float:
        lo, hi = self.band
        if self.kind == "log10":
            if not ours or ours <= 0 or math.isnan(ours):
                return math.inf
            return 0.0 if lo <= ours <= hi else abs(math.log10(ours / (lo if ours < lo else hi)))
        if self.kind == "gamma" and isinstance(ours, list):   # layer 0 against ``low``, deeper layers ``high``
            ref = [lo] + [hi] * (len(ours) - 1)
            return sum(abs(a - b) for a, b in zip(ours, ref)) / len(ours)
        return abs(ours - lo)                           # headroom units, or one Gamma


def _diag(run):
    return run.history[-1]["diag"]


def _margin(run, refs) -> float:
    """Accuracy over the frozen baseline in units of BP's headroom over it (same seed, head trained)."""
    return (run.test_acc - refs["frozen"].test_acc) / (refs["bp"].test_acc - refs["frozen"].test_acc)


def headroom_note(margins: Mapping, headroom: Mapping) -> str:
    """D3 margins ``{seed: points}`` in units of BP's headroom over frozen (``headroom`` ``{seed: points}``, head
    trained), as a claim's note: ``"in BP's headroom s42 -0.41, ..."``."""
    return "in BP's headroom " + ", ".join(f"s{s} {m / headroom[s]:+.2f}" for s, m in margins.items())


def paper_headroom() -> float:
    """The paper's BP accuracy over its frozen baseline, in points (CIFAR-10)."""
    return 100 * (paper("audit.acc.bp")["value"] - paper("audit.acc.frozen")["value"])


def paper_margin(acc_key: str) -> float:
    """The paper's accuracy under ``acc_key`` over its frozen baseline, in units of its BP's headroom over frozen."""
    return 100 * (paper(acc_key)["value"] - paper("audit.acc.frozen")["value"]) / paper_headroom()


#: the paper's DFA and FA signatures the dial is fitted on (the rule: least sum of these distances); FA's growth
#: has no number in the paper and is not among them
DISTANCES: tuple[Distance, ...] = (
    Distance("dfa", "DFA max per-block growth", "audit.dfa_d1", "log10", (1.9e3, 1.9e3),
             lambda r, refs: _diag(r).max_block_growth),
    Distance("dfa", "DFA ||h_L||", "audit.h_L.dfa", "log10", (4e8, 5e8), lambda r, refs: _diag(r).h_L),
    Distance("dfa", "DFA g_L", "audit.dfa_d2", "log10", (5e-10, 4e-9), lambda r, refs: _diag(r).g_L),
    Distance("dfa", "DFA margin (headroom units)", "audit.dfa_d3", "headroom",
             (paper_margin("audit.dfa_d3"),) * 2, _margin),
    Distance("dfa", "DFA Gamma per layer", "audit.gamma_l0.dfa", "gamma",
             (paper("audit.gamma_l0.dfa")["value"], 0.0),
             lambda r, refs: list(_diag(r).gamma)),
    Distance("fa", "FA ||h_L||", "fa_vs_dfa.both_grow", "log10", (1e5, 1e5), lambda r, refs: _diag(r).h_L),
    Distance("fa", "FA g_L", "audit.fa_d3", "log10", (1e-6, 1e-6), lambda r, refs: _diag(r).g_L),
    Distance("fa", "FA margin (headroom units)", "fa_vs_dfa.fa_clears_frozen", "headroom",
             (paper_margin("audit.acc.fa"),) * 2, _margin),
    Distance("fa", "FA deep Gamma", "fa_vs_dfa.fa_gamma_higher", "gamma", (0.33, 0.33),
             lambda r, refs: deep_mean(_diag(r).gamma)),
)


#: how near a signature must be to count as fitted (stated with the rule, before the runs): a factor of about 3
#: for a log10 distance, half of BP's headroom for a margin, 0.1 for a Gamma
TOLERANCE = {"log10": 0.5, "headroom": 0.5, "gamma": 0.1}


def _larger_first(values):
    return sorted(values, key=lambda h: -h)


@dataclass
class Fit:
    """The dial at one profile: ``rows`` (one per head_lr of the grid and signature, first seed: ``ours``,
    ``paper``, ``distance``), ``totals`` ``{head_lr: sum of distances}`` and the fitted ``head_lr``."""

    rows: list[dict]
    totals: dict[float, float]
    head_lr: float
    seed: int

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def table(self):
        """Signatures x head_lr: ``ours (distance)``, the paper's band beside, and the total per head_lr."""
        import pandas as pd

        df = self.frame()
        cell = df.assign(cell=[f"{_fmt(o)} ({d:.2f})" for o, d in zip(df.ours, df.distance)])
        wide = cell.pivot(index="signature", columns="head_lr", values="cell")
        wide = wide[_larger_first(wide.columns)].reindex([d.name for d in DISTANCES])
        wide.columns = [f"head_lr {h:g}" for h in wide.columns]
        wide.insert(0, "paper", [df[df.signature == n].paper.iloc[0] for n in wide.index])
        total = pd.DataFrame([{"paper": "", **{f"head_lr {h:g}": f"{t:.2f}" for h, t in self.totals.items()}}],
                             index=["total distance"])
        return pd.concat([wide, total])

    def best(self) -> dict[str, float]:
        """Each signature's own nearest head_lr (a tie to the larger)."""
        return {d.name: min(_larger_first(self.totals), key=lambda h: self.distance(d.name, h)) for d in DISTANCES}

    def unfit(self) -> list[str]:
        """The signatures farther than their :data:`TOLERANCE` from the paper at the fitted value."""
        return [d.name for d in DISTANCES if self.distance(d.name) > TOLERANCE[d.kind]]

    def why(self) -> str:
        """What the dial picked and, where no value fits every signature, which ones pull apart."""
        t = self.totals
        text = (f"head_lr {self.head_lr:g} has the least total distance to the paper's signatures "
                f"({t[self.head_lr]:.2f}; "
                + ", ".join(f"{h:g}: {v:.2f}" for h, v in t.items() if h != self.head_lr) + f"; seed {self.seed})")
        bad = self.unfit()
        if not bad:
            return text + ", and every signature lies within its tolerance there."
        best = self.best()
        return (text + f". No value fits every signature: at {self.head_lr:g}, " + "; ".join(
            f"{n} is {self.distance(n):.2f} away (nearest at head_lr {best[n]:g})" for n in bad) + ".")

    def distance(self, name: str, rate: float | None = None) -> float:
        rate = self.head_lr if rate is None else rate
        return next(r["distance"] for r in self.rows if r["signature"] == name and r["head_lr"] == rate)


def _fmt(v) -> str:
    if isinstance(v, list):
        return " ".join(f"{g:+.2f}" for g in v)
    return f"{v:+.2f}" if abs(v) < 10 and abs(v) >= 1e-2 else f"{v:.2g}"


def _band(d: Distance) -> str:
    lo, hi = d.band
    if d.kind == "gamma" and d.rule == "dfa":
        return f"l0 {lo:+.2f}, deeper {hi:+.2f}"
    return _fmt(lo) if lo == hi else f"{_fmt(lo)} to {_fmt(hi)}"


def grid_rows(grid: Mapping, refs: Mapping) -> list[dict]:
    """One row per head_lr, seed and signature of :data:`DISTANCES` whose run ``grid`` ``{(method, head_lr, seed):
    Run}`` holds, against ``refs`` ``{(method, seed): Run}`` (BP and frozen): ``ours``, ``paper``, ``distance``."""
    rows = []
    for h, s in sorted({(h, s) for _, h, s in grid}, key=lambda k: (-k[0], k[1])):
        ref = {m: refs[m, s] for m in ("bp", "frozen")}
        for d in DISTANCES:
            if (d.rule, h, s) in grid:
                ours = d.read(grid[d.rule, h, s], ref)
                rows.append({"head_lr": h, "seed": s, "signature": d.name, "rule": d.rule, "kind": d.kind,
                             "ours": ours, "paper": _band(d), "distance": d.distance(ours)})
    return rows


def totals_by_seed(rows) -> dict[int, dict[float, float]]:
    """``{seed: {head_lr: total distance}}`` of :func:`grid_rows`, for the head_lr values with every signature."""
    out: dict[int, dict[float, float]] = {}
    for r in rows:
        out.setdefault(r["seed"], {}).setdefault(r["head_lr"], []).append(r["distance"])
    return {s: {h: sum(d) for h, d in by.items() if len(d) == len(DISTANCES)} for s, by in out.items()}


def fit_runs(grid: Mapping, refs: Mapping, seed: int) -> Fit:
    """:class:`Fit` of ``grid`` ``{(method, head_lr, seed): Run}`` at ``seed`` (every head_lr of :data:`GRID`)
    against ``refs`` ``{(method, seed): Run}`` (BP and frozen)."""
    missing = [(m, h) for m in GRID_RULES for h in GRID if (m, h, seed) not in grid]
    if missing:
        raise ValueError(f"the head grid lacks {missing} at seed {seed}: train P.experiment('head_grid')")
    rows = grid_rows({k: r for k, r in grid.items() if k[2] == seed}, refs)
    totals = totals_by_seed(rows)[seed]
    best = min(_larger_first(GRID), key=lambda h: totals[h])
    return Fit(rows, totals, best, seed)


_FITS: dict[tuple, Fit] = {}


def _key(P) -> tuple:
    return P.name, repr(sorted(P.parameters()["overrides"].items())), str(P.results)


def fit(P) -> Fit | None:
    """The dial fitted at profile ``P`` from the grid's stored runs on the first seed (None while any is not
    stored; computed once per process and profile)."""
    key = _key(P)
    if key in _FITS:
        return _FITS[key]
    s0 = P.seeds[0]
    dirs = {k: run_dir(canonical_config(**c), P.results) for k, c in fit_inputs(P).items()}
    if not all(d.is_dir() for d in dirs.values()):
        return None
    runs = {k: load_run(d, device="cpu") for k, d in dirs.items()}
    _FITS[key] = fit_runs({k: r for k, r in runs.items() if len(k) == 3},
                          {k: r for k, r in runs.items() if len(k) == 2}, s0)
    return _FITS[key]


def _stored_fit(P) -> Fit:
    """:func:`fit`, or an error that names the runs to train."""
    f = fit(P)
    if f is None:
        raise FileNotFoundError("the fitted head_lr is read from the head grid's runs, which are not all "
                                "stored yet: run P.experiment('head_grid') (or python -m faeval.book prepare)")
    return f


def fitted_head_lr(P) -> float | None:
    """The fitted head_lr at ``P`` (:func:`fit`), or None while the grid's runs are not stored."""
    f = fit(P)
    return None if f is None else f.head_lr


# ---------------------------------------------------------------------------------------
# the rule
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signature:
    """One of the paper's DFA signatures: ``measure(runs) -> (matches, ours)`` on one regime's runs."""

    name: str
    paper_key: str
    measure: Callable[[Mapping], tuple[bool, str]]


def _last(run):
    return run.history[-1]["diag"]


def _per_seed(values: Mapping, fmt: str) -> str:
    return ", ".join(f"s{s} {fmt.format(v)}" for s, v in values.items())


def _d1(r):
    g = {s: _last(run).max_block_growth for s, run in r["dfa"].items()}
    return all(v > Thresholds().d1_growth for v in g.values()), "growth " + _per_seed(g, "{:.3g}")


def _d2(r):
    g = {s: _last(run).g_L for s, run in r["dfa"].items()}
    return all(v < Thresholds().d2_floor for v in g.values()), "g_L " + _per_seed(g, "{:.2e}")


def _below_frozen(r):
    pp = {s: 100 * (run.test_acc - r["frozen"][s].test_acc) for s, run in r["dfa"].items()}
    return all(v < 0 for v in pp.values()), "DFA - frozen " + _per_seed(pp, "{:+.1f} pp")


def _gamma_pattern(r):
    layers = [_last(run).gamma for run in r["dfa"].values()]
    mean = [layer_mean([g[l] for g in layers]) for l in range(len(layers[0]))]
    ok = abs(mean[0] - 0.42) <= 0.15 and all(abs(g) <= 0.05 for g in mean[1:])
    return ok, "Gamma (mean over seeds) " + " ".join(f"l{l} {g:+.3f}" for l, g in enumerate(mean))


def _random_targets(r):
    run = r["assay"]["dfa"]
    hist = [rec for rec in run.history if 1 <= rec["epoch"] <= 3]
    peak = max((rec["diag"].h_L for rec in hist), default=math.nan)
    return peak > 1e4, f"DFA ||h_L|| {peak:.3g} by epoch {hist[-1]['epoch'] if hist else 0}"


def _fa_over_dfa(r):
    fa = [run.test_acc for run in r["fa"].values()]
    dfa = [run.test_acc for run in r["dfa"].values()]
    f, d = sum(fa) / len(fa), sum(dfa) / len(dfa)
    return f > d, f"FA {f:.4f} vs DFA {d:.4f}"


def _ep_bounded(r):
    h = {m: _last(r["assay"][m]).h_L for m in ("dfa", "ep")}
    return h["ep"] * 10 <= h["dfa"], f"EP {h['ep']:.3g} vs DFA {h['dfa']:.3g}"


#: the paper's DFA signatures, in the order the issue states them (each counted on every seed)
SIGNATURES: tuple[Signature, ...] = (
    Signature("D1 fires on every seed", "audit.dfa_d1", _d1),
    Signature("D2 fires on every seed", "audit.dfa_d2", _d2),
    Signature("DFA below the frozen baseline on every seed", "audit.dfa_d3", _below_frozen),
    Signature("per-layer Gamma: l0 within 0.15 of +0.42, l1..L within 0.05 of 0", "audit.gamma_l0.dfa",
              _gamma_pattern),
    Signature("random-target ||h_L|| above 1e4 by epoch 3", "fa_vs_dfa.random_targets", _random_targets),
    Signature("FA more accurate than DFA (mean over seeds)", "fa_vs_dfa.fa_more_accurate", _fa_over_dfa),
    Signature("EP at least 10x below DFA under random targets", "fa_vs_dfa.random_targets", _ep_bounded),
)


@dataclass
class Decision:
    """The judged regime and why: the dial's :class:`Fit`, and beside it the binary count of :data:`SIGNATURES`
    per regime (``head trained``, ``head fitted``, ``head fixed``) with each signature's reading."""

    counts: dict[str, int]
    table: list[dict] = field(default_factory=list)
    judged: str = DEFAULT
    fitted: Fit | None = None

    @property
    def other(self) -> str:
        return TRAINED if self.judged == FITTED else FITTED

    @property
    def order(self) -> list[str]:
        """The chapters' two regimes, the judged first."""
        return [self.judged, self.other]

    @property
    def head_lr(self) -> dict[str, float]:
        """``{regime: head_lr}`` of the three regimes."""
        return {TRAINED: 1.0, FITTED: self.fitted.head_lr if self.fitted else math.nan, FIXED: 0.0}

    def label(self, regime: str) -> str:
        """``regime`` with whether the claims are judged in it, e.g. ``"head fitted (judged)"`` (figure titles)."""
        return f"{regime} ({'judged' if regime == self.judged else 'not judged'})"

    def why(self) -> str:
        """What the rule picked and why, with the binary count beside."""
        c = self.counts
        count = ", ".join(f"{r} {c[r]}" for r in c)
        first = (f"claims are judged with the {self.judged} (head_lr {self.head_lr[self.judged]:g})"
                 + (f": {self.fitted.why()}" if self.fitted else ""))
        return f"{first} The count of the paper's {len(SIGNATURES)} DFA signatures matched: {count}."

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.table)


#: the chapters whose runs the rule that picks the judged regime reads (:func:`decide`, :func:`_regime_runs`): a
#: notebook that reports in the judged regime needs them stored (``scripts/build_book.py`` trains them first)
DECISION_CHAPTERS = ("audit", "fa_vs_dfa", "head_grid", "head_mechanism")


def _regime_runs(P) -> dict[str, dict]:
    """Per regime, the runs the signatures read: ``{"dfa"|"fa"|"frozen": {seed: Run}, "assay": {method: Run}}``;
    the frozen baseline is the head-trained one in every regime (the count's definition, unchanged)."""
    audit, pair = P.experiment("audit"), P.experiment("fa_vs_dfa")
    runs, assay = regime_view(audit, "runs"), regime_view(pair, "assay")
    runs[FIXED] = ends(P)[FIXED]
    assay[FIXED] = regime_view(P.experiment("head_mechanism"), "assay", FIXED)[FIXED]
    frozen = {s: runs[TRAINED]["frozen", s] for s in P.seeds}
    return {regime: {**{m: {s: rr[m, s] for s in P.seeds} for m in ("dfa", "fa")}, "frozen": frozen,
                     "assay": assay[regime]} for regime, rr in runs.items()}


_DECISIONS: dict[tuple, Decision] = {}


def decide(P) -> Decision:
    """Apply the rule at profile ``P`` (from the stored runs; computed once per process and profile): the claims are
    judged at the fitted head_lr (:func:`fit`), in the ``head trained`` regime where the dial picks 1."""
    key = _key(P)
    if key in _DECISIONS:
        return _DECISIONS[key]
    fitted = _stored_fit(P)
    runs = _regime_runs(P)
    counts = {r: 0 for r in runs}
    table = []
    for sig in SIGNATURES:
        row = {"signature": sig.name, "paper": paper(sig.paper_key)["text"]}
        for regime, rr in runs.items():
            ok, ours = sig.measure(rr)
            counts[regime] += bool(ok)
            row[regime] = f"{'yes' if ok else 'no'}: {ours}"
        table.append(row)
    table.append({"signature": "signatures matched", "paper": f"{len(SIGNATURES)} of {len(SIGNATURES)}",
                  **{r: f"{counts[r]} of {len(SIGNATURES)}" for r in counts}})
    _DECISIONS[key] = Decision(counts, table, judged_at(fitted.head_lr), fitted)
    return _DECISIONS[key]
