"""The book's machinery: what exists only to build this book, on top of the :mod:`faeval` library.

``faeval`` is the library a researcher imports to put a rule or a model through the
protocol; it never imports this package (an import-linter contract, run by ``make test``,
keeps the arrow one way). Here live, in the order data flows through them:

* :mod:`~faeval.book.profiles`: smoke / quick / paper, the sizes of every chapter;
* :mod:`~faeval.book.experiments`: each chapter's runs, declared once as data (``prepare`` trains
  their union: ``python -m faeval.book prepare``); :mod:`~faeval.book.probe_rules`: the rules that
  exist only as probes of the discrepancies appendix;
* :mod:`~faeval.book.head`, :mod:`~faeval.book.calibration`: the judged head regime; the quick
  profile's calibration;
* :mod:`~faeval.book.chapters`, :mod:`~faeval.book.claims`: each chapter's claims and tables, evaluated
  against the sourced paper values (``reference/paper_values.json``);
* :mod:`~faeval.book.discrepancies`, :mod:`~faeval.book.pitfalls`: the probes behind every reason;
  the pitfalls' reproducers;
* :mod:`~faeval.book.plots`, :mod:`~faeval.book.tables`: every figure; the book's column formats;
* :mod:`~faeval.book.findings`: the findings page and each chapter's opening, in words computed from the runs.

A notebook imports both halves: ``import faeval as fe`` (the library: models, rules, protocol, training,
store) and ``import faeval.book as fb`` (the book: ``fb.profile_from``, ``fb.plots``, ``fb.check_claims``, ...).

It needs the ``book`` extra (pandas, matplotlib, seaborn, papermill, Jupyter Book):
``pip install 'faeval[book]'``.
"""
from __future__ import annotations

import importlib
import importlib.util

#: what the book's modules import beyond the library (the ``book`` extra installs them)
NEEDS = ("pandas", "matplotlib", "seaborn")


def _check_extra() -> None:
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"faeval.book needs the 'book' extra, and {', '.join(missing)} cannot be imported: "
                          "pip install 'faeval[book]' (the library itself, `import faeval`, needs none of them)")


_check_extra()

__all__ = ["get_profile", "profile_from", "PROFILES", "Claims", "check_claims", "paper"]

_LAZY = {"get_profile": "profiles", "profile_from": "profiles", "PROFILES": "profiles", "Claims": "claims",
         "paper": "claims", "check_claims": "chapters"}
_SUBMODULES = ("profiles", "experiments", "probe_rules", "head", "calibration", "claims", "chapters", "discrepancies",
               "pitfalls", "plots", "tables", "findings", "ep_precision", "prose", "mechanism")


def __getattr__(name):  # fb.plots, fb.get_profile, ... load on first use
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'faeval.book' has no attribute {name!r}")
