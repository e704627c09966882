"""Claims: what each notebook set out to show, checked against what it measured.

The paper's numbers live in one sourced data file, ``faeval/reference/paper_values.json``
(each entry names its source); :func:`paper` reads an entry. A notebook's last
cell builds a :class:`Claims`, checks each claim from measured values and saves
it to ``<results_dir>/claims/<notebook>.json``; the book's claims ledger gathers
every file with :func:`ledger`.

A claim is ``held``, ``not held`` or ``not evaluated`` (with the reason, e.g. a
run that ended non-finite): a claim that could not be evaluated is recorded as
such, never dropped.
"""
from __future__ import annotations

import json
import os
import tempfile
import traceback
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

__all__ = ["paper", "Claims", "ledger", "claims_dir", "PAPER_VALUES"]

PAPER_VALUES = Path(__file__).with_name("reference") / "paper_values.json"
HELD, NOT_HELD, NOT_EVALUATED = "held", "not held", "not evaluated"


@lru_cache(maxsize=1)
def _paper() -> dict:
    return json.loads(PAPER_VALUES.read_text())


def paper(key: str) -> dict:
    """The paper's entry ``key``: ``{"value", "text", "source"}``."""
    values = _paper()
    if key not in values or key.startswith("_"):
        near = sorted(k for k in values if k.split(".")[0] == key.split(".")[0])
        raise KeyError(f"no paper value {key!r} in {PAPER_VALUES.name}; keys in that section: {near}")
    return values[key]


def claims_dir(results_dir=None) -> Path:
    from .store import results_dir as _results_dir

    return _results_dir(results_dir) / "claims"


class Claims:
    """The claims of one notebook at one profile.

    >>> import tempfile
    >>> claims = Claims("01_audit", "smoke")
    >>> row = claims.check("BP passes on every seed", True, "PASS, PASS", "audit.verdict.bp")
    >>> path = claims.save(tempfile.mkdtemp())
    >>> [(r["claim"], r["status"], r["paper"]) for r in claims.rows]
    [('BP passes on every seed', 'held', 'trustworthy')]
    """

    def __init__(self, notebook: str, profile: str) -> None:
        self.notebook, self.profile = notebook, profile
        self.rows: list[dict] = []

    def check(self, claim: str, held: bool | None, ours: str, paper_key: str | None = None,
              reason: str | None = None) -> dict:
        """Record one claim. ``held=None`` means it could not be evaluated; give ``reason``."""
        if held is None and not reason:
            raise ValueError(f"claim {claim!r}: held=None (not evaluated) needs a reason")
        if held is not None and not isinstance(held, bool):
            held = bool(held)
        ref = paper(paper_key) if paper_key else None
        row = {"notebook": self.notebook, "profile": self.profile, "claim": claim,
               "status": NOT_EVALUATED if held is None else HELD if held else NOT_HELD,
               "ours": ours, "paper": ref["text"] if ref else "", "source": ref["source"] if ref else "",
               "reason": reason or ""}
        self.rows.append(row)
        return row

    def evaluate(self, claim: str, fn: Callable[[], tuple[bool, str]], paper_key: str | None = None,
                 reason: str | None = None) -> dict:
        """Check a claim computed by ``fn() -> (held, ours)``; an exception or a non-finite
        measurement records it as not evaluated, with the reason."""
        try:
            held, ours = fn()
        except Exception as e:  # noqa: BLE001 - the claim is recorded, not dropped
            last = traceback.extract_tb(e.__traceback__)[-1]
            return self.check(claim, None, "", paper_key,
                              f"could not be evaluated: {type(e).__name__}: {e} (line {last.lineno})")
        if held is None:
            return self.check(claim, None, ours, paper_key, reason or "could not be evaluated")
        return self.check(claim, held, ours, paper_key, reason)

    def save(self, results_dir=None) -> Path:
        """Write ``<results_dir>/claims/<notebook>.json`` atomically; returns its path."""
        out = claims_dir(results_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self.notebook}.json"
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{self.notebook}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"notebook": self.notebook, "profile": self.profile, "claims": self.rows}, f, indent=1,
                          default=str)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def table(self):
        import pandas as pd

        cols = ["claim", "status", "ours", "paper", "source", "reason"]
        return pd.DataFrame(self.rows, columns=["notebook", "profile", *cols])[cols]

    def __str__(self) -> str:
        lines = [f"Claims of {self.notebook} at the {self.profile!r} profile:"]
        for r in self.rows:
            extra = f"  [{r['reason']}]" if r["reason"] else ""
            paper_part = f" | paper: {r['paper']}" if r["paper"] else ""
            lines.append(f"  {r['status'].upper():>13}  {r['claim']}: ours {r['ours']}{paper_part}{extra}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return self.table().to_html(index=False)


def ledger(results_dir=None):
    """Every saved claims file under ``<results_dir>/claims/`` as one table."""
    import pandas as pd

    rows = []
    for path in sorted(claims_dir(results_dir).glob("*.json")):
        rows += json.loads(path.read_text())["claims"]
    cols = ["notebook", "claim", "paper", "ours", "status", "profile", "reason"]
    return pd.DataFrame(rows, columns=cols)
