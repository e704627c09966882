"""Each chapter's runs, declared once, as data.

A chapter's entry is a function of the :class:`~faeval.book.profiles.Profile` that returns
``{part: {key: config}}``: the run configs of each of its experiments (``config`` as
``faeval.experiment`` takes it). A notebook asks for them with one call,
``P.experiment("penalty")``, which loads the stored runs and trains the rest;
``P.planned_runs()`` and ``python -m faeval.book prepare`` are the union over every entry,
so what ``prepare`` trains is what the notebooks load, by construction. Adding a
chapter is its notebook, its entry here (``@chapter("name")``) and a line in the
table of contents.

>>> from faeval.book.profiles import get_profile
>>> P = get_profile("smoke")
>>> sorted(EXPERIMENTS)[:6]
['audit', 'calibration', 'cross_arch', 'discrepancies', 'fa_vs_dfa', 'head_grid']
>>> sorted(EXPERIMENTS)[6:]
['head_mechanism', 'more_rules', 'paper_ep', 'penalty', 'quickstart', 'temporal']
>>> plan("audit", P)["runs"]["dfa", 42]["method"]
'dfa'
"""
from __future__ import annotations

from collections.abc import Callable

from ..config import canonical_config, config_hash
from ..store import run_dir, train_seconds
from . import head, probe_rules  # noqa: F401  (probe_rules registers the discrepancies' probe rules)
from .calibration import CANDIDATES, sequential_plan
from .calibration import run_config as calibration_run_config

#: the calibration candidates that change the task (not the model): their DFA runs 3x longer are probes
CANDIDATE_TASKS = ("label_noise", "synthetic", "augment")

__all__ = ["EXPERIMENTS", "chapter", "check_chapters", "plan", "planned_runs", "seconds_by_chapter", "unstored"]

#: chapter name -> function(profile) -> {part: {key: config}}
EXPERIMENTS: dict[str, Callable] = {}


def chapter(name: str) -> Callable[[Callable], Callable]:
    """Decorator: declare the runs of chapter ``name`` (replaces an earlier entry of that name)."""
    def deco(fn: Callable) -> Callable:
        EXPERIMENTS[name] = fn
        return fn
    return deco


def plan(name: str, profile) -> dict[str, dict]:
    """``{part: {key: config}}`` of chapter ``name`` at ``profile``."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown chapter {name!r}; chapters with runs: {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name](profile)


def check_chapters(chapters) -> list[str]:
    """``chapters`` as a list, each a declared chapter (else a ``ValueError`` naming the valid ones)."""
    unknown = [c for c in chapters if c not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown chapter(s) {', '.join(map(repr, unknown))}; chapters with runs: "
                         f"{', '.join(EXPERIMENTS)}")
    return list(chapters)


def _unique_runs(profile, chapters=None):
    """``(chapter, canonical config)`` of every declared run at ``profile`` (of ``chapters`` only, where given),
    each run once, for the first chapter that plans it."""
    seen = set()
    for name in EXPERIMENTS if chapters is None else check_chapters(chapters):
        for runs in plan(name, profile).values():
            for cfg in runs.values():
                c = canonical_config(**cfg)
                h = config_hash(c)
                if h not in seen:
                    seen.add(h)
                    yield name, c


def planned_runs(profile, chapters=None) -> list[dict]:
    """The canonical configs of every declared chapter's runs at ``profile`` (of ``chapters`` only, where given),
    deduplicated, in order."""
    return [c for _, c in _unique_runs(profile, chapters)]


def seconds_by_chapter(profile, results=None) -> dict[str, tuple[int, float]]:
    """``{chapter: (runs, seconds)}``: how many of each chapter's planned runs are in the store and how long they
    trained (worker-seconds; a run that several chapters plan counts for the first of them)."""
    out = dict.fromkeys(EXPERIMENTS, (0, 0.0))
    for name, c in _unique_runs(profile):
        t = train_seconds(c, results)
        if t is not None:
            n, secs = out[name]
            out[name] = (n + 1, secs + t)
    return out


@chapter("quickstart")
def quickstart(P) -> dict:
    """Plain DFA and the frozen baseline at the first seed, beside the chapter's in-cell rule."""
    s = P.seeds[0]
    return {"runs": {m: P.config(m, s) for m in ("dfa", "frozen")}}


@chapter("audit")
def audit(P) -> dict:
    """Every audited rule and the frozen-blocks baseline, on every seed: ``{(method, seed): config}``;
    ``("shallow", seed)`` is the DFA-shallow baseline, DFA on the same model without residual blocks
    (embedding, terminal LN and head; the embedding learns from its DFA credit, the head from the loss).
    ``fitted_head_runs``: the local rules and the frozen baseline again at the fitted head_lr
    (:mod:`faeval.book.head`; BP and the DFA-shallow baseline keep a trained head), full length: the chapter reads
    their final verdicts."""
    runs = {(m, s): P.config(m, s) for m in (*P.methods, "frozen") for s in P.seeds}
    if P.base.get("arch", "resmlp") in ("resmlp", "studentnet"):
        runs.update({("shallow", s): P.config("dfa", s, depth=0) for s in P.seeds})
    return head.with_fitted_head(P, {"runs": runs}, skip=[("shallow", s) for s in P.seeds])


@chapter("temporal")
def temporal(P) -> dict:
    """BP and DFA on every seed, in both head regimes, trained and fitted (the audit's runs; their per-epoch
    histories are replayed)."""
    return head.with_fitted_head(P, {"runs": {(m, s): P.config(m, s) for m in ("bp", "dfa") for s in P.seeds}})


@chapter("cross_arch")
def cross_arch(P) -> dict:
    """BP and DFA on each architecture of the profile, first seed: ``{(label, method): config}``;
    ``fitted_head_runs``: DFA again at the fitted head_lr (:mod:`faeval.book.head`), except on SmallCNN, whose
    head the seed documents say is always trained by the loss (it keeps its trained run in both regimes)."""
    archs = P.sizes["cross_arch"]["archs"]
    runs = {(label, m): P.config(m, P.seeds[0], **o) for label, o in archs.items() for m in ("bp", "dfa")}
    cnn = [(label, "dfa") for label, o in archs.items() if o.get("arch") == "cnn"]
    return head.with_fitted_head(P, {"runs": runs}, skip=cnn)


@chapter("penalty")
def penalty(P) -> dict:
    """The DFA lambda sweep, the frozen baseline at the same horizon, and the BP/DFA x lambda 2x2; the
    sweep, the frozen baseline and the 2x2's DFA runs again at the fitted head_lr (``fitted_head_*``; BP keeps a
    trained head)."""
    size = P.sizes["penalty"]
    e, lam_on = size["epochs"], size["lam_on"]
    return head.with_fitted_head(P, {
        "sweep": {(lam, s): P.config("dfa", s, epochs=e, penalty=lam) for lam in size["lambdas"] for s in P.seeds},
        "frozen": {s: P.config("frozen", s, epochs=e) for s in P.seeds},
        "two_by_two": {(m, lam, s): P.config(m, s, epochs=e, penalty=lam)
                       for m in ("bp", "dfa") for lam in (0.0, lam_on) for s in P.seeds},
    })


@chapter("fa_vs_dfa")
def fa_vs_dfa(P) -> dict:
    """The audit's BP/FA/DFA/frozen runs, the depth ladder (first seed) and the random-target assay, each
    also at the fitted head_lr (``fitted_head_*``: FA, DFA, EP and the frozen baseline; BP keeps a trained head)."""
    size, s0 = P.sizes["fa_vs_dfa"], P.seeds[0]
    return head.with_fitted_head(P, {
        "pair": {(m, s): P.config(m, s) for m in ("bp", "fa", "dfa", "frozen") for s in P.seeds},
        "ladder": {(m, L): P.config(m, s0, depth=L) for m in ("frozen", "fa", "dfa") for L in size["depths"]},
        "assay": {m: P.config(m, s0, epochs=size["assay_epochs"], random_targets=True)
                  for m in size["assay_methods"]},
    })


#: the rules the "More rules under the protocol" chapter adds to the audit's (its BioTorch subset on SmallCNN)
MORE_RULES = ("fa_layer", "usf", "frsf", "brsf", "kp", "wm", "drtp")
BIOTORCH_RULES = ("fa_layer", "usf", "frsf", "brsf")


@chapter("more_rules")
def more_rules(P) -> dict:
    """The layer-wise family and DRTP beside the audit's rules (whose runs are the audit's, shared through
    the store): ``runs`` ``{(method, seed): config}`` with the head trained, ``fitted_head_runs`` the local and
    layer-wise rules (and the frozen baseline) at the fitted head_lr (:func:`faeval.book.chapters.more_rules.regimes`
    reads both); the new rules on every seed in the regime the book judges (:func:`faeval.book.head.decide`), the
    first seed in the other. Until the grid's runs the fit reads are stored the plan holds the head-trained runs
    and those grid runs (:data:`faeval.book.head.FIT_INPUTS`), and grows once they are (``train_until_stable``).
    ``cnn``: BP, DFA and BioTorch's four rules on the
    cross-architecture chapter's SmallCNN, first seed, head trained (as BioTorch trains it)."""
    s0 = P.seeds[0]
    judged = _judged_regime(P)
    seeds = {regime: (P.seeds if regime == judged else (s0,)) for regime in head.REGIMES}
    every = head.with_fitted_head(P, {"runs": {(m, s): P.config(m, s) for m in (*P.methods, "frozen", *MORE_RULES)
                                           for s in P.seeds}})
    parts = {part: {k: c for k, c in every[part].items()      # the audit's rules on every seed, the new ones
                    if k[0] not in MORE_RULES or k[1] in seeds[regime]}   # on the seeds of their regime
             for part, regime in (("runs", head.TRAINED), ("fitted_head_runs", head.FITTED)) if part in every}
    if head.FIT_INPUTS in every:                 # until the fit is known: the grid's runs it reads
        parts[head.FIT_INPUTS] = every[head.FIT_INPUTS]
    cnn = next((o for o in P.sizes["cross_arch"]["archs"].values() if o.get("arch") == "cnn"), None)
    if cnn is not None:
        parts["cnn"] = {m: P.config(m, s0, **cnn) for m in ("bp", "dfa", *BIOTORCH_RULES)}
    return parts


def unstored(chapter: str, P) -> list[dict]:
    """The configs of chapter ``chapter``'s runs at profile ``P`` that are not in ``P``'s store yet."""
    return [c for runs in plan(chapter, P).values() for c in runs.values()
            if not run_dir(canonical_config(**c), P.results).is_dir()]


def _judged_regime(P) -> str | None:
    """The regime the claims are judged in (:func:`faeval.book.head.decide`: the fitted one, or ``head trained``
    where the dial picks 1), once the grid's runs the fit reads are stored (else None)."""
    rate = head.fitted_head_lr(P)
    return None if rate is None else head.judged_at(rate)


def _in_judged_regime(P, parts: dict) -> dict:
    """``parts`` with every rule but BP (:data:`faeval.book.head.KEEP_TRAINED`) at the head_lr of the regime the
    book judges; until the grid's runs the fit reads are stored, those runs instead (part
    :data:`faeval.book.head.FIT_INPUTS`: training them grows the plan to ``parts``, ``train_until_stable``)."""
    rate = head.fitted_head_lr(P)            # the judged regime's head_lr (1 where the dial picks head trained)
    if rate is None:
        return {head.FIT_INPUTS: head.fit_inputs(P)}
    return {part: {k: c if c["method"] in head.KEEP_TRAINED else {**c, "head_lr": rate} for k, c in runs.items()}
            for part, runs in parts.items()}


@chapter("paper_ep")
def paper_ep(P) -> dict:
    """EP at the paper's state scale (the embedding's initialisation times ``sizes["paper_ep"]["embed_scale"]``,
    :mod:`faeval.book.ep_precision`): ``runs`` ``{(method, seed): config}`` of EP (float32), EP with its phases
    in float64 (``ep64``), and BP and the frozen baseline at the same scale, every seed. The two EP rules train
    in the regime the book judges (:func:`faeval.book.head.decide`; the package default while the runs it
    reads are not stored yet); BP and frozen keep a trained head, as everywhere."""
    scale = P.sizes["paper_ep"]["embed_scale"]
    head_lr = head.head_lr(P, _judged_regime(P) or head.DEFAULT)
    return {"runs": {(m, s): P.config(m, s, embed_scale=scale, **({} if m in head.KEEP_TRAINED else
                                                                   {"head_lr": head_lr}))
                     for m in ("ep", "ep64", "bp", "frozen") for s in P.seeds}}


@chapter("head_mechanism")
def head_mechanism(P) -> dict:
    """The prediction test of why a trained head stops the growth (:mod:`faeval.book.mechanism`): DFA and FA on the
    profile's task with a fraction ``sizes["head_mechanism"]["label_noise"]`` of the training labels replaced at
    random, first seed, with the head trained and fixed: ``noisy`` ``{(method, noise): config}`` and
    ``fixed_head_noisy``; ``assay``: the random-target assay of the FA-vs-DFA chapter (the same runs) and
    ``fixed_head_assay``, with the head fixed. The mechanism reads the grid's ends on clean labels
    (:func:`faeval.book.head.ends`)."""
    s0, size = P.seeds[0], P.sizes["fa_vs_dfa"]
    noisy = {(m, p): P.config(m, s0, label_noise=p) for m in ("dfa", "fa")
             for p in P.sizes["head_mechanism"]["label_noise"]}
    assay = {m: P.config(m, s0, epochs=size["assay_epochs"], random_targets=True) for m in size["assay_methods"]}
    return head.with_head({"noisy": noisy, "assay": assay}, head.FIXED, head.GRID[-1])


@chapter("head_grid")
def head_grid(P) -> dict:
    """The head's rate as a dial (:func:`faeval.book.head.grid_plan`): DFA and FA at every head_lr of the grid on the
    first seed, and on every seed at both ends and at the fitted value (once the first seed's runs are stored);
    BP and the frozen baseline for the headroom."""
    return head.grid_plan(P, head.fitted_head_lr(P))


@chapter("calibration")
def calibration(P) -> dict:
    """DFA, BP and frozen on every calibration candidate at the profile's horizon: ``{(candidate, seed,
    method): config}``, a candidate's seeds in order until the choice rule is decided on it
    (:func:`faeval.book.calibration.sequential_plan`; the paper's recipe, the profile's own task whose runs the
    audit plans, on every seed)."""
    sub = {"subset": P.base["subset"]} if P.base.get("subset") else {}
    runs = sequential_plan(CANDIDATES, steps=P.sizes["calibration"]["steps"], seeds=P.seeds, results=P.results,
                           every_seed=["paper"], **sub)
    return {"runs": runs}


@chapter("discrepancies")
def discrepancies(P) -> dict:
    """The probes of the discrepancies appendix (:mod:`faeval.book.discrepancies`), first seed unless stated:
    DFA and State Bridge at ``horizon_factor`` x the horizon (with and without the terminal LN, and without it under
    augmentation); random targets as fixed labels per sample and 3x longer; the other credit
    pairing on ``pairing_seeds`` seeds; FA and frozen on clean labels and BP with one trainable
    block; SmallCNN without batch norm and 2x longer; the EP beta x steps sweep on a subset; DFA on
    the calibration's candidate tasks at ``horizon_factor`` x its horizon; and the shallow baseline
    trained by BP instead of DFA, every seed. The no-LN probes train in the regime the book judges
    (:func:`_in_judged_regime`); the others train the head."""
    size, s0 = P.sizes["discrepancies"], P.seeds[0]
    sub = {"subset": P.base["subset"]} if P.base.get("subset") else {}
    cal_steps = size["horizon_factor"] * P.sizes["calibration"]["steps"]
    long_e = size["horizon_factor"] * P.epochs
    assay_e = P.sizes["fa_vs_dfa"]["assay_epochs"]
    cnn = next(o for label, o in P.sizes["cross_arch"]["archs"].items() if o.get("arch") == "cnn")
    cnn_e = cnn.get("epochs", P.epochs)
    ep = size["ep_sweep"]
    ep_data = {"subset": ep["subset"], "epochs": ep["epochs"]}
    return {
        "long": {m: P.config(m, s0, epochs=long_e) for m in ("dfa", "state_bridge")},
        **_in_judged_regime(P, {"no_ln": {"long": P.config("dfa", s0, epochs=long_e, out_ln=False),
                                          "augment": P.config("dfa", s0, out_ln=False, augment=True)}}),
        "random_targets": {**{("fixed", m): P.config(m, s0, epochs=assay_e, label_noise=1.0)
                              for m in ("dfa", "fa", "ep")},
                           **{("long", m): P.config(m, s0, epochs=size["horizon_factor"] * assay_e,
                                                    random_targets=True) for m in ("dfa", "fa")}},
        "pairing": {("input", s): P.config("dfa_input_credit", s, epochs=size["pairing_epochs"])
                    for s in P.seeds[:size["pairing_seeds"]]},
        "headroom": {"bp_last_block": P.config("bp", s0, trainable_blocks=1),
                     "fa_clean": P.config("fa", s0, label_noise=0.0),
                     "frozen_clean": P.config("frozen", s0, label_noise=0.0)},
        "cnn": {"no_bn": P.config("dfa", s0, **{**cnn, "batchnorm": False}),
                "long": P.config("dfa", s0, **{**cnn, "epochs": 2 * cnn_e})},
        "ep_sweep": {(b, k): P.config("ep", s0, beta=b, steps=k, **ep_data) for b in ep["betas"] for k in ep["steps"]},
        "ep_reference": {m: P.config(m, s0, **ep_data) for m in ("frozen", "bp")},
        "long_candidates": {c: calibration_run_config(c, "dfa", steps=cal_steps, seed=s0, **sub)
                            for c in CANDIDATE_TASKS},
        "shallow_bp": ({s: P.config("bp", s, depth=0) for s in P.seeds}
                       if P.base.get("arch", "resmlp") in ("resmlp", "studentnet") else {}),
    }
