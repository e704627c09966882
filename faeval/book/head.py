"""How the output head trains: the two regimes the book shows, and the rule that picks the one its claims are judged in.

The seed documents say the output head is "always trained with the loss" for the CNN only; for
ResMLP that reading was an inference (the book's assumptions page). Every rule takes ``head_lr``, out_head's
learning rate as a multiple of ``lr`` (:class:`faeval.methods.Method`), and the book runs the
local rules in two regimes:

* ``head trained`` (``head_lr=1``, the package default): out_head trains on the true loss;
* ``head fixed`` (``head_lr=0``): out_head stays at its initialisation; out_ln, the blocks and
  the embedding train as before.

BP and the two baselines (frozen blocks, DFA-shallow) keep a trained head in both regimes: they
are the references a local rule is judged against.

Which regime the chapters' claims are judged in is decided by :func:`decide`, a rule fixed before
the runs: the regime that matches more of the paper's DFA signatures (:data:`SIGNATURES`), each
counted on every seed of the profile. A tie keeps the package default, ``head trained``: changing
the book's reading needs evidence. The calibration appendix prints the count; every chapter
states the judged regime and lists the other regime's claims beside, labelled.

>>> from faeval.book.profiles import get_profile
>>> P = get_profile("smoke")
>>> cfgs = {("dfa", 42): P.config("dfa", 42), ("bp", 42): P.config("bp", 42)}
>>> sorted(fixed_head(cfgs)), fixed_head(cfgs)["dfa", 42]["head_lr"]
([('dfa', 42)], 0.0)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..diagnostics import layer_mean
from ..protocol import Thresholds
from .claims import paper

__all__ = ["REGIMES", "DEFAULT", "KEEP_TRAINED", "fixed_head", "with_fixed_head", "by_regime", "regime_view",
           "SIGNATURES", "Signature", "Decision", "decide"]

#: regime name -> head_lr of the local rules
REGIMES: dict[str, float] = {"head trained": 1.0, "head fixed": 0.0}
DEFAULT = "head trained"
#: rules that keep a trained head in both regimes (the reference and the baselines)
KEEP_TRAINED = ("bp", "frozen")


def fixed_head(configs: Mapping, skip=()) -> dict:
    """The ``head fixed`` variant of each config whose rule is a local one (not in :data:`KEEP_TRAINED`,
    and its key not in ``skip``), under the same key."""
    return {k: {**cfg, "head_lr": REGIMES["head fixed"]} for k, cfg in configs.items()
            if cfg["method"] not in KEEP_TRAINED and k not in skip}


def with_fixed_head(parts: Mapping[str, Mapping], skip=()) -> dict[str, dict]:
    """A chapter's plan ``{part: {key: config}}`` plus, for each part, ``fixed_head_<part>``: its
    :func:`fixed_head` variants (where it has any)."""
    fixed = {FIXED + part: fixed_head(runs, skip) for part, runs in parts.items()}
    return {**parts, **{part: runs for part, runs in fixed.items() if runs}}


FIXED = "fixed_head_"


def by_regime(trained: Mapping, fixed: Mapping) -> dict[str, dict]:
    """``{regime: {key: run}}``: the ``head fixed`` regime takes the runs of ``fixed`` where it has them
    and shares the others (BP and the baselines) with ``head trained``."""
    return {"head trained": dict(trained), "head fixed": {k: fixed.get(k, r) for k, r in trained.items()}}


def regime_view(runs: Mapping[str, Mapping], part: str) -> dict[str, dict]:
    """Part ``part`` of a chapter's runs (``P.experiment(chapter)``) in both regimes: :func:`by_regime`
    of ``runs[part]`` and ``runs["fixed_head_<part>"]``."""
    return by_regime(runs[part], runs.get(FIXED + part, {}))


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
    """The rule's outcome: the count per regime, each signature's reading, and the judged regime."""

    counts: dict[str, int]
    table: list[dict] = field(default_factory=list)
    judged: str = DEFAULT

    @property
    def other(self) -> str:
        return next(r for r in REGIMES if r != self.judged)

    @property
    def order(self) -> list[str]:
        """The judged regime first."""
        return [self.judged, self.other]

    def label(self, regime: str) -> str:
        """``regime`` with whether the claims are judged in it, e.g. ``"head fixed (judged)"`` (figure titles)."""
        return f"{regime} ({'judged' if regime == self.judged else 'not judged'})"

    def why(self) -> str:
        """One sentence: what the rule picked and why."""
        c = self.counts
        tie = " (a tie keeps the package default)" if len(set(c.values())) == 1 else ""
        return (f"claims are judged with the {self.judged} regime: it matches {c[self.judged]} of "
                f"{len(SIGNATURES)} of the paper's DFA signatures, the {self.other} regime {c[self.other]}{tie}")

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.table)


def _regime_runs(P) -> dict[str, dict]:
    """Per regime, the runs the signatures read: ``{"dfa"|"fa"|"frozen": {seed: Run}, "assay": {method: Run}}``."""
    audit, pair = P.experiment("audit"), P.experiment("fa_vs_dfa")
    runs, assay = regime_view(audit, "runs"), regime_view(pair, "assay")
    out = {}
    for regime, rr in runs.items():
        out[regime] = {m: {s: rr[m, s] for s in P.seeds} for m in ("dfa", "fa", "frozen")}
        out[regime]["assay"] = assay[regime]
    return out


_DECISIONS: dict[tuple, Decision] = {}


def decide(P) -> Decision:
    """Apply the rule at profile ``P`` (from the stored runs; computed once per process and profile)."""
    key = (P.name, repr(sorted(P.parameters()["overrides"].items())), str(P.results))
    if key in _DECISIONS:
        return _DECISIONS[key]
    runs = _regime_runs(P)
    counts = {r: 0 for r in REGIMES}
    table = []
    for sig in SIGNATURES:
        row = {"signature": sig.name, "paper": paper(sig.paper_key)["text"]}
        for regime, rr in runs.items():
            ok, ours = sig.measure(rr)
            counts[regime] += bool(ok)
            row[regime] = f"{'yes' if ok else 'no'}: {ours}"
        table.append(row)
    best = max(counts.values())
    judged = DEFAULT if counts[DEFAULT] == best else next(r for r in REGIMES if counts[r] == best)
    table.append({"signature": "signatures matched", "paper": f"{len(SIGNATURES)} of {len(SIGNATURES)}",
                  **{r: f"{counts[r]} of {len(SIGNATURES)}" for r in REGIMES}})
    _DECISIONS[key] = Decision(counts, table, judged)
    return _DECISIONS[key]
