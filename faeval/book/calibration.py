"""Calibrating the quick profile: where on a CPU budget do the paper's findings show?

On Fashion-MNIST with the paper's exact ResMLP block, DFA's residual stream grows
only slowly (the book's calibration appendix), so D1/D2 may not fire within a CPU budget. This module
trains DFA, BP and the frozen-blocks baseline on named *candidate* settings
through the run store and summarises, per candidate, when each diagnostic first
fires (in steps and training seconds), the DFA - frozen accuracy gap (D3), and
whether BP ever fires. ``benchmarks/calibrate_quick.py`` prints the table and
``notebooks/07_calibration.ipynb`` draws the curves; both read the same stored runs.

A candidate is a set of run-config overrides on top of the paper's recipe
(ResMLP d=256 L=4, AdamW 1e-3 / wd 0.01, batch 128). ``kind`` is ``"candidate"``
for settings the quick profile may adopt, ``"sensitivity"`` for architecture
changes the paper did not make, which are shown but never chosen.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

from ..config import canonical_config, train_size
from ..protocol import Monitor, Thresholds
from ..schedule import fit_many
from ..store import load_history, load_meta, run_dir

__all__ = ["Candidate", "CANDIDATES", "run_config", "plan", "sequential_plan", "summarise", "summarise_all",
           "calibrate", "first_firing", "choose"]


@dataclass(frozen=True)
class Candidate:
    """A named calibration setting: run-config overrides plus a label."""

    name: str
    label: str
    config: Mapping = field(default_factory=dict)
    kind: str = "candidate"


CANDIDATES: dict[str, Candidate] = {c.name: c for c in [
    Candidate("paper", "(a) paper recipe, Fashion-MNIST, global standardisation", {}),
    Candidate("per_pixel", "(b) per-pixel standardisation", {"normalize": "per_pixel"}),
    Candidate("label_noise", "(c) 40% of training labels replaced at random", {"label_noise": 0.4}),
    Candidate("synthetic", "(c) teacher-student task, alpha=1, ResMLP student (terminal LN), d=128",
              {"dataset": "synthetic", "alpha": 1.0, "width": 128}),
    Candidate("augment", "(c) random crop (pad 4) and horizontal flip of the training images",
              {"augment": True}),
    Candidate("width512", "(d) ResMLP width 512 (L=4)", {"width": 512}),
]}

METHODS = ("dfa", "bp", "frozen")


def _candidate(c: Candidate | str) -> Candidate:
    if isinstance(c, Candidate):
        return c
    if c not in CANDIDATES:
        raise ValueError(f"unknown calibration candidate {c!r}; valid: {', '.join(CANDIDATES)}")
    return CANDIDATES[c]


def run_config(candidate: Candidate | str, method: str, *, steps: int, seed: int = 42, **overrides) -> dict:
    """The run config of ``method`` on ``candidate`` for about ``steps`` training steps."""
    c = _candidate(candidate)
    cfg = {**c.config, **overrides}
    full = canonical_config(**cfg, method=method)
    epochs = max(1, math.ceil(steps / math.ceil(train_size(full) / full["batch_size"])))
    return {**cfg, "method": method, "epochs": epochs, "seed": seed}


def first_firing(history: Sequence[Mapping], thresholds=None) -> dict[str, dict | None]:
    """Per D1/D2: the first record where it fires, as ``{epoch, step, seconds}`` (or None).

    ``seconds`` is the training time summed over the epochs up to and including it.
    """
    th = Thresholds.from_any(thresholds)
    out: dict[str, dict | None] = {}
    for diag in ("D1", "D2"):
        fired = Monitor(th).replay(history)[diag]
        if fired is None:
            out[diag] = None
            continue
        recs = [r for r in history if r["epoch"] <= fired]
        out[diag] = {"epoch": fired, "step": recs[-1]["step"], "seconds": sum(r["seconds"] for r in recs)}
    return out


def summarise(name: str, runs: Mapping[str, object], thresholds=None) -> dict:
    """One calibration row from a candidate's stored runs (keys of ``runs``: method names).

    ``bp_fires`` lists what fires for BP: D1/D2 at any epoch, and D3 when BP does not
    clear the frozen baseline by the margin (a setting where BP fails is no test bed).
    """
    th = Thresholds.from_any(thresholds)
    dfa, bp, frozen = (runs.get(m) for m in METHODS)
    row: dict = {"candidate": name}
    if dfa is not None:
        last = dfa.history[-1]["diag"]
        fire = first_firing(dfa.history, th)
        row.update(steps=dfa.history[-1]["step"], dfa_acc=dfa.test_acc,
                   dfa_growth=last.max_block_growth, dfa_h_L=last.h_L, dfa_g_L=last.g_L,
                   D1=fire["D1"], D2=fire["D2"], dfa_seconds=sum(r["seconds"] for r in dfa.history),
                   dfa_stopped=dfa.stopped)
    if bp is not None:
        fire = first_firing(bp.history, th)
        row.update(bp_acc=bp.test_acc, bp_fires=[d for d, f in fire.items() if f is not None],
                   bp_growth=bp.history[-1]["diag"].max_block_growth, bp_g_L=bp.history[-1]["diag"].g_L,
                   bp_seconds=sum(r["seconds"] for r in bp.history))
    if frozen is not None:
        row.update(frozen_acc=frozen.test_acc, frozen_seconds=sum(r["seconds"] for r in frozen.history))
    if dfa is not None and frozen is not None:
        row["gap_pp"] = 100 * (dfa.test_acc - frozen.test_acc)
        row["D3"] = row["gap_pp"] < th.d3_margin_pp
    if bp is not None and frozen is not None:
        row["bp_gap_pp"] = 100 * (bp.test_acc - frozen.test_acc)
        if row["bp_gap_pp"] < th.d3_margin_pp:
            row["bp_fires"] = [*row["bp_fires"], "D3"]
    return row


def plan(candidates: Iterable[Candidate | str] = tuple(CANDIDATES), *, steps: int, seeds=(42,),
         methods: Sequence[str] = METHODS, **overrides) -> dict[tuple, dict]:
    """``{(candidate name, seed, method): run config}`` for every candidate, seed and method."""
    cands = [_candidate(c) for c in candidates]
    return {(c.name, seed, m): run_config(c, m, steps=steps, seed=seed, **overrides)
            for c in cands for seed in seeds for m in methods}


def sequential_plan(candidates: Iterable[Candidate | str] = tuple(CANDIDATES), *, steps: int, seeds=(42,),
                    results=None, every_seed: Iterable[str] = (), methods: Sequence[str] = METHODS,
                    **overrides) -> dict[tuple, dict]:
    """:func:`plan`, with each candidate's seeds taken in order and stopped where the choice rule is decided.

    A candidate qualifies only if the rule holds on every seed (:func:`choose`), so once it fails on one
    seed the later seeds cannot change the outcome: the next seed is planned only after every run of the
    seed before it is in the store (``results``) and the rule held there. A plan therefore grows as its
    runs are stored; :meth:`faeval.book.profiles.Profile.experiment` and ``python -m faeval.book prepare``
    train until it stops growing. Candidates named in ``every_seed`` take every seed (e.g. the profile's own task,
    whose runs other chapters plan anyway).
    """
    out: dict[tuple, dict] = {}
    every = set(every_seed)
    for c in (_candidate(c) for c in candidates):
        for seed in seeds:
            cfgs = {m: run_config(c, m, steps=steps, seed=seed, **overrides) for m in methods}
            out.update({(c.name, seed, m): cfg for m, cfg in cfgs.items()})
            if c.name in every:
                continue
            paths = {m: run_dir(canonical_config(**cfg), results) for m, cfg in cfgs.items()}
            if not all(p.is_dir() for p in paths.values()):
                break                   # the next seed waits for this one
            if not _rule_holds(summarise(c.name, {m: _stored(p) for m, p in paths.items()})):
                break                   # decided: the candidate cannot qualify
    return out


def _stored(path) -> SimpleNamespace:
    """What :func:`summarise` reads of a stored run (history, final accuracy, why it stopped), without its model."""
    history = load_history(path)
    return SimpleNamespace(history=history, test_acc=history[-1].test_acc, stopped=load_meta(path).get("stopped"))


def summarise_all(runs: Mapping[tuple, object], thresholds=None) -> list[dict]:
    """One calibration row per candidate and seed from ``{(candidate, seed, method): Run}`` (the keys
    of :func:`plan`), in the order they first appear."""
    groups: dict[tuple, dict] = {}
    for (name, seed, method), run in runs.items():
        groups.setdefault((name, seed), {})[method] = run
    return [{**summarise(name, by_method, thresholds), "seed": seed, "label": _candidate(name).label,
             "kind": _candidate(name).kind} for (name, seed), by_method in groups.items()]


def _rule_holds(row: Mapping) -> bool:
    """The choice rule on one (candidate, seed) row: DFA fires D1 or D2, and BP fires nothing."""
    return bool(row.get("D1") or row.get("D2")) and not row.get("bp_fires")


def choose(rows: Sequence[Mapping], n_seeds: int | None = None) -> tuple[str | None, list[dict]]:
    """The calibration's choice rule over :func:`summarise_all`'s rows.

    A candidate qualifies when, on every seed it was run on, DFA fires D1 or D2 within
    the horizon while BP passes (fires neither D1 nor D2, and clears the frozen baseline
    by the D3 margin); only candidates of kind ``"candidate"`` may be chosen, and the
    first that qualifies, in the order of :data:`CANDIDATES`, is chosen. With ``n_seeds`` a candidate must
    also have been run on that many seeds (:func:`sequential_plan` stops a candidate at the first seed
    where the rule fails, so one with fewer rows and no failure has seeds still to run). Returns the
    chosen name (None when none qualifies) and one row per candidate: how many seeds the
    rule held on, of how many, and whether it qualifies.
    """
    per: dict[str, list[Mapping]] = {}
    for r in rows:
        per.setdefault(r["candidate"], []).append(r)
    table = []
    for name, rs in per.items():
        k = sum(_rule_holds(r) for r in rs)
        kind = _candidate(name).kind
        table.append({"candidate": name, "label": _candidate(name).label, "kind": kind, "seeds": len(rs),
                      "rule holds on": k,
                      "qualifies": kind == "candidate" and k == len(rs) and len(rs) == (n_seeds or len(rs))})
    order = list(CANDIDATES)
    eligible = sorted((t for t in table if t["qualifies"]), key=lambda t: order.index(t["candidate"])
                      if t["candidate"] in order else len(order))
    return (eligible[0]["candidate"] if eligible else None), table


def calibrate(candidates: Iterable[Candidate | str] = tuple(CANDIDATES), *, steps: int, seeds=(42,),
              methods: Sequence[str] = METHODS, results=None, progress: bool = True, **overrides) -> list[dict]:
    """Train every method on every candidate and seed (stored runs are loaded); one row per
    candidate and seed. Runs train through :func:`faeval.schedule.fit_many`."""
    configs = plan(candidates, steps=steps, seeds=seeds, methods=methods, **overrides)
    trained = fit_many(list(configs.values()), results=results, progress=progress)
    return summarise_all(dict(zip(configs, trained)))
