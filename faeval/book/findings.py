"""What the book found, in words computed from its runs: the findings page and every chapter's opening.

Every sentence here is chosen from measured values (a sentence that would be false at another profile
is picked by the numbers, never typed as fact), and every number is formatted from the run store or
the claims files. The notebooks place the text with myst-nb's ``glue``: a chapter glues its
:func:`opening` at its end and shows it right under its title (``{glue:md}`` with ``:format: myst``), so
the source notebook stays free of outputs and its opening is filled by the build.

* :func:`opening`: a chapter's result, from its :class:`~faeval.book.claims.Claims`.
* :func:`claim_counts`, :func:`headline`, :func:`head_finding`, :func:`key_claims`, :func:`profile_note`:
  the findings page (``notebooks/99_findings.ipynb``), which reads the claims files and the store and
  trains nothing (:func:`stored`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import fmean

from ..store import results_dir
from .claims import HELD, NOT_HELD, chapter_of, paper
from .experiments import unstored
from .head import FITTED, REGIMES, SIGNATURES, TRAINED, decide, regime_view
from .prose import times

__all__ = ["Text", "glue_md", "glue_text", "opening", "glue_opening", "stored", "judged_ledger", "claim_counts",
           "headline", "head_numbers", "head_finding", "key_claims", "profile_note", "partial_note", "dial_figure",
           "KEY_CLAIMS"]

#: the five claims a reader of the paper cares most about: a title and the claim ids it reads (in order)
KEY_CLAIMS = (
    ("DFA fires D1 and D2", ("audit.dfa_d1", "audit.dfa_d2")),
    ("The full protocol walks DFA back", ("audit.walks_back.dfa",)),
    ("Early stopping saves compute", ("temporal.stop_saves",)),
    ("FA beats DFA", ("fa_vs_dfa.fa_more_accurate",)),
    ("The penalty rescues the reference", ("penalty.keeps_g_L",)),
)


#: an opening lists at most this many of the claims that hold (all that do not hold are listed)
SHOWN_HELD = 3


class Text(str):
    """A string whose repr is itself, so that ``{glue:text}`` pastes it without quotes."""

    def __repr__(self) -> str:
        return str(self)


def glue_md(name: str, markdown: str) -> None:
    """Glue ``markdown`` (MyST) under ``name`` without showing it here: ``{glue:md} name`` with ``:format: myst``
    shows it where the page places it."""
    from IPython.display import Markdown
    from myst_nb import glue

    glue(name, Markdown(markdown), display=False)


def glue_text(name: str, text: str) -> None:
    """Glue plain ``text`` under ``name`` without showing it here (``{glue:text}`name``` pastes it, also from
    another page: ``{glue:text}`path::name```)."""
    from myst_nb import glue

    glue(name, Text(text), display=False)


# ---------------------------------------------------------------------------------------------
# a chapter's opening
# ---------------------------------------------------------------------------------------------
def _short(ours: str) -> str:
    """A claim's measured value without its per-seed list (``3/3 seeds; 12 to 40 (s42 12, ...)`` -> the head)."""
    return ours.split(" (s", 1)[0].strip()


def _item(row: Mapping) -> str:
    paper = f"; paper: {row['paper']}" if row.get("paper") else ""
    return f"{row['claim']} (ours: {_short(row['ours'])}{paper})"


def opening(claims, profile=None) -> str:
    """A chapter's result in a few computed sentences (MyST), from the claims it just checked: how many of its
    claims hold in the judged head regime, each claim that agrees and each that differs with the measured
    value beside the paper's, and, where the chapter ran both head regimes, which claims change between them."""
    rows = list(claims.rows)
    judged = [r for r in rows if r["judged"]]
    regime = next((r["regime"] for r in judged if r["regime"]), "")
    where = f" with the head {regime.removeprefix('head ')} (the regime the book judges)" if regime else ""
    prof = f"the {claims.profile} profile"
    if profile is not None:
        prof += f" ({len(profile.seeds)} seed{'s' * (len(profile.seeds) > 1)}, {profile.epochs} epochs)"
    held = [r for r in judged if r["status"] == HELD]
    missed = [r for r in judged if r["status"] == NOT_HELD]
    other = [r for r in judged if r["status"] not in (HELD, NOT_HELD)]
    if not judged:
        return f"**What this run found** at {prof}: this chapter checked no claim."
    out = [f"**What this run found** at {prof}: **{len(held)} of {len(judged)}** of this chapter's claims "
           f"hold{where}."]
    if held:
        shown = held if len(held) <= SHOWN_HELD + 1 else held[:SHOWN_HELD]
        more = (f"\n- and {len(held) - len(shown)} more, listed with their numbers in the claims table at the "
                "end of the page" if len(shown) < len(held) else "")
        out.append("Where it agrees with the paper (the claims that hold):\n\n"
                   + "\n".join(f"- {_item(r)}" for r in shown) + more)
    if missed:
        out.append("Where it differs (the claims that do not hold):\n\n" + "\n".join(f"- {_item(r)}" for r in missed))
    if other:
        out.append(f"{len(other)} could not be evaluated at this profile: "
                   + "; ".join(f"{r['claim']} ({r['reason']})" for r in other) + ".")
    changed = _regime_changes(rows)
    if changed is not None:
        out.append(changed)
    return "\n\n".join(out)


def glue_opening(claims, profile=None) -> None:
    """Glue the chapter's :func:`opening` as ``opening``: the chapter's first markdown cell shows it under its
    title (``{glue:md} opening`` with ``:format: myst``)."""
    glue_md("opening", opening(claims, profile))


def _regime_changes(rows) -> str | None:
    """One sentence on what changes between the head regimes (None where the chapter ran one)."""
    by = {}
    for r in rows:
        if r["regime"]:
            by.setdefault(r["id"] or r["claim"], {})[r["regime"]] = r
    both = {k: v for k, v in by.items() if len(v) == 2}
    if not both:
        return None
    flips = [(v, next(iter(v.values()))["claim"]) for v in both.values()
             if len({r["status"] for r in v.values()}) > 1]
    if not flips:
        return (f"Between the two head regimes (trained, fixed) none of the {len(both)} claims checked in both "
                "changes its status.")
    groups: dict[tuple, list[str]] = {}          # the claims that flip the same way, together
    for v, claim in flips:
        groups.setdefault(tuple(sorted((g, r["status"]) for g, r in v.items())), []).append(claim)
    parts = [" and ".join(f"{st} with the {g}" for g, st in pattern) + ": " + "; ".join(claims)
             for pattern, claims in groups.items()]
    return (f"Between the two head regimes, {len(flips)} of the {len(both)} claims checked in both change their "
            "status. " + ". ".join(p[0].upper() + p[1:] for p in parts) + ".")


# ---------------------------------------------------------------------------------------------
# the findings page
# ---------------------------------------------------------------------------------------------
def stored(P, chapter: str) -> dict[str, dict]:
    """``P.experiment(chapter)`` from the store only: a run that is not stored is an error, never trained
    (the findings page reads what the chapters measured)."""
    missing = unstored(chapter, P)
    if missing:
        raise FileNotFoundError(
            f"the findings page reads the {chapter!r} chapter's runs and trains none, but {len(missing)} are not "
            f"in the store ({results_dir(P.results)}): run the chapters first "
            "(make book, or python -m faeval.book prepare)")
    return P.experiment(chapter)


def judged_ledger(ledger, profile: str):
    """The rows the book counts: measured at ``profile``'s defaults, in the judged head regime."""
    return ledger[(ledger.profile == profile) & ledger.default & ledger.judged.astype(bool)]


def claim_counts(ledger, profile: str):
    """Per chapter (and in all), the judged claims by status and the reason kinds of those that do not hold."""
    import pandas as pd

    rows = judged_ledger(ledger, profile)
    out = []
    for name, g in [*rows.groupby("notebook", sort=True), ("all", rows)]:
        missed = g[g.status == NOT_HELD]
        kinds = missed.reason_kind.replace("", "no reason measured").value_counts()
        out.append({"chapter": name if name == "all" else chapter_of(name).replace("_", " "),
                    "claims": len(g), "held": int((g.status == HELD).sum()), "not held": len(missed),
                    "not evaluated": int((~g.status.isin([HELD, NOT_HELD])).sum()),
                    "reasons of those not held": ", ".join(f"{k} {n}" for k, n in kinds.items()) or "-"})
    return pd.DataFrame(out)


#: the paper's signatures "D1 fires on every seed" and "D2 fires on every seed", as the head rule reads them
_FIRES = {s.paper_key.removeprefix("audit.dfa_"): s for s in SIGNATURES if s.paper_key in ("audit.dfa_d1",
                                                                                          "audit.dfa_d2")}


def head_numbers(P) -> dict[str, dict]:
    """Per head regime, DFA's means over seeds at the end of training: max per-block growth, g_L, accuracy and
    its margin over the frozen baseline of the same seed (pp), and whether D1 and D2 fired on every seed (read
    by :data:`faeval.book.head.SIGNATURES`, as the rule that picks the judged regime reads them)."""
    runs = regime_view(stored(P, "audit"), "runs")
    out = {}
    for regime in REGIMES:
        rr = runs[regime]
        dfa = {s: rr["dfa", s] for s in P.seeds}
        last = [r.history[-1]["diag"] for r in dfa.values()]
        out[regime] = {
            "growth": fmean(d.max_block_growth for d in last),
            "g_L": fmean(d.g_L for d in last),
            "acc": fmean(r.test_acc for r in dfa.values()),
            "margin_pp": fmean(100 * (r.test_acc - rr["frozen", s].test_acc) for s, r in dfa.items()),
            **{k: sig.measure({"dfa": dfa})[0] for k, sig in _FIRES.items()},
        }
    return out


def _failing(n: Mapping) -> list[str]:
    """The head regimes in which DFA's scale failure (D1 and D2 on every seed) shows, of :func:`head_numbers`."""
    return [g for g in REGIMES if n[g]["d1"] and n[g]["d2"]]


def _where(failing: list[str], both: str, neither: str, one: str) -> str:
    """``both``, ``neither`` or ``one`` (formatted with ``regime`` and ``other``), as the failure shows."""
    if len(failing) == len(REGIMES):
        return both
    if not failing:
        return neither
    other = next(g for g in REGIMES if g not in failing)
    return one.format(regime=failing[0].removeprefix("head "), other=other.removeprefix("head "))


def head_finding(P, numbers: Mapping | None = None) -> str:
    """The head-regime finding in three computed sentences: DFA's growth, g_L and margin over frozen with the head's
    rate fitted and with the head trained (the paper's beside), and where the scale failure (D1 and D2 on every
    seed) shows."""
    n = numbers or head_numbers(P)
    fitted, trained = n[FITTED], n[TRAINED]
    p = {k: paper(f"audit.dfa_{k}")["text"] for k in ("d1", "d2", "d3")}

    def nums(x, who="its"):
        return (f"{who} largest per-block growth is {times(x['growth'])}, g_L {x['g_L']:.2e}, and it ends "
                f"{x['margin_pp']:+.1f} pp against the frozen baseline (accuracy {x['acc']:.3f}")

    dfa = "DFA's"
    d = decide(P)
    rate = d.head_lr[FITTED]
    first = (f"With the output head trained at the fitted rate (head_lr {rate:g}, the value of the grid nearest the "
             f"paper's DFA and FA numbers), {nums(fitted, who=dfa)}; means over {len(P.seeds)} seeds; the frozen "
             "baseline trains its head at the same rate).")
    second = (f"With the head trained on the loss at the full rate, {nums(trained)}). The paper reports {p['d1']}, "
              f"g_L {p['d2']} and an accuracy of {p['d3']}.")
    place = _where(_failing(n), "in both regimes", "in neither regime", "only with the head {regime}")
    third = (f"So at this profile DFA's scale failure (D1 and D2 on every seed) appears {place}; the book judges "
             f"its claims with the {d.judged}; the binary count of the paper's {len(SIGNATURES)} DFA signatures "
             "matched reads " + ", ".join(f"{r} {c}" for r, c in d.counts.items()) + ".")
    return " ".join([first, second, third])


def headline(P, ledger, numbers: Mapping | None = None, pending: Sequence[str] = ()) -> str:
    """One sentence for the introduction: claims held in all, and where the scale failure reproduces (in a first
    render, with ``pending`` the notebooks still training, it says that the count is so far)."""
    rows = judged_ledger(ledger, P.name)
    scale = _where(_failing(numbers or head_numbers(P)), "in both head regimes", "in neither head regime",
                   "when the output head is {regime} and not when it is {other}")
    so_far = f"So far ({len(pending)} chapters are still training), " if pending else ""
    return (f"{so_far}{int((rows.status == HELD).sum())} of {len(rows)} of the claims this book checks hold at the "
            f"{P.name} profile, and DFA's scale failure reproduces {scale}.")


def partial_note(pending: Sequence[str]) -> str:
    """Nothing for a complete book. For a first render (``pending``: the notebooks whose runs are still training,
    ``scripts/build_book.py``), a note in MyST that names those chapters and says the page counts the others."""
    if not pending:
        return ""
    names = ", ".join(f"{{doc}}`{name}`" for name in pending)
    return (":::{admonition} A partial book\n:class: important\n"
            f"This is the build's first render: the runs of {len(pending)} chapters are still training ({names}). "
            "Their pages hold a placeholder, and what this page counts covers the chapters rendered so far. "
            "`make book` renders the whole book again once their runs are stored.\n:::")


def key_claims(ledger, profile: str, pending: Sequence[str] = ()) -> str:
    """The five claims of :data:`KEY_CLAIMS`, one line each (MyST): ours beside the paper's, with a link to the
    chapter; a claim not in the ledger at this profile says so (or, in a first render with chapters ``pending``,
    that it may be one of theirs)."""
    rows = judged_ledger(ledger, profile).set_index("id")
    lines = []
    for title, ids in KEY_CLAIMS:
        found = [rows.loc[i] for i in ids if i in rows.index]
        if not found:
            lines.append(f"- **{title}**: " + ("not measured yet: its chapter is still training." if pending
                                               else "not measured at this profile."))
            continue
        status = HELD if all(r.status == HELD for r in found) else NOT_HELD
        ours = ", and ".join(_short(r.ours) for r in found)
        paper = "; ".join(r.paper for r in found if r.paper) or "-"
        lines.append(f"- **{title}**: {status} (ours: {ours}; paper: {paper}). See {{doc}}`{found[0].notebook}`.")
    return "\n".join(lines)


def profile_note(P) -> str:
    """Which profile this page shows and where it departs from the paper (data, epochs, seeds), in MyST."""
    data = P.base.get("dataset", "?")
    sub = f", a {P.base['subset']}-image subset" if P.base.get("subset") else ""
    lines = [f"This page shows the **{P.name}** profile: {data}{sub}, {P.base.get('arch', '?')}, "
             f"{P.epochs} epochs, seeds {', '.join(str(s) for s in P.seeds)}. The paper trains on CIFAR-10 for 100 "
             "epochs."]
    if P.deviations:
        lines.append("Where this profile departs from the paper's recipe:\n\n"
                     + "\n".join(f"- {d}" for d in P.deviations))
    return "\n\n".join(lines)


def dial_figure(P, partial: bool = False):
    """Each of the paper's signatures against the head's learning rate (the head grid: the first seed at every
    head_lr, every seed at both ends and the fitted value), the paper's value as a band (read from the store).
    In a first render (``partial``) whose grid is still training, it says so and draws nothing."""
    from . import head, plots

    missing = unstored("head_grid", P) if partial else []
    if missing:
        print(f"The head grid's runs are still training ({len(missing)} of them): this figure appears in the "
              "build's last render.")
        return None
    runs = stored(P, "head_grid")
    return plots.dial_figure(head.grid_rows(runs["grid"], runs["refs"]), head.head_lr(P, head.FITTED))
