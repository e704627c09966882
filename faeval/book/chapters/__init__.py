"""Each chapter's claims, declared once: one module per chapter, named as the chapter (the notebook's name
without its number), each with its ``CLAIMS`` (:class:`faeval.book.claims.Chapter`) and the functions that build
the tables its claims read from the chapter's runs (e.g. :func:`faeval.book.chapters.temporal.firing_table`).

A notebook's last cell evaluates its chapter's claims by id with :func:`check_claims`, passing what it
measured by name (and, in a chapter with head regimes, each regime's own evidence), then saves them.

A new chapter's claims are one new module here, added to the import below.
"""
from __future__ import annotations

from ..claims import CHAPTERS, Claims, chapter_of
from . import (
    audit,
    calibration,
    cross_arch,
    discrepancies,
    fa_vs_dfa,
    more_rules,
    penalty,
    pitfalls,
    quickstart,
    temporal,
)

__all__ = ["CHAPTERS", "check_claims", "audit", "calibration", "cross_arch", "discrepancies", "fa_vs_dfa",
           "more_rules", "penalty", "pitfalls", "quickstart", "temporal"]


def check_claims(notebook: str, profile, **evidence) -> Claims:
    """Evaluate the declared claims of ``notebook``'s chapter (:meth:`faeval.book.claims.Chapter.check`)."""
    chapter = chapter_of(notebook)
    if chapter not in CHAPTERS:
        raise KeyError(f"no declared claims for chapter {chapter!r} (notebook {notebook!r}): declare them in "
                       f"faeval/book/chapters/{chapter}.py; declared chapters: {sorted(CHAPTERS)}")
    return CHAPTERS[chapter].check(notebook, profile, **evidence)
