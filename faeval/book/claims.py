"""Claims: what each notebook set out to show, checked against what it measured.

The paper's numbers live in one sourced data file, ``faeval/book/reference/paper_values.json``
(each entry names its source); :func:`paper` reads an entry. A notebook's last
cell builds a :class:`Claims`, checks each claim from measured values and saves
it to ``<results_dir>/claims/<notebook>.json``; the book's claims ledger gathers
every file with :func:`ledger`.

A claim is ``held``, ``not held`` or ``not evaluated`` (with the reason, e.g. a
run that ended non-finite): a claim that could not be evaluated is recorded as
such, never dropped. A claim about every seed is checked per seed
(:meth:`Claims.per_seed`) and states how many of the seeds it held on, with the
spread of the measured values.

Where a chapter measures its claims in both regimes of the output head (:mod:`faeval.book.head`), each
row records its ``regime`` and whether it is ``judged``: the judged regime's claims are the
book's, the other regime's are listed beside them, labelled (:attr:`Claims.regime`).

A chapter declares its claims once, in ``faeval/book/chapters/<chapter>.py`` (:class:`Chapter`): each
:class:`Claim` has its id, its sentence, the key of the paper's value and the function that measures
ours from the evidence the notebook passes (:func:`faeval.book.chapters.check_claims`). The notebook's
last cell evaluates them by id; it holds no claim of its own.

A claims file records the parameters it was measured with (profile, every
override of it, cache version: ``Profile.parameters()``). A notebook re-run with
other parameters writes ``<notebook>@<hash>.json`` beside the default file instead of
overwriting it, and :func:`ledger` marks which rows were measured at the profile's
defaults (``default``), so that a book's ledger never presents them as the profile's.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..config import CACHE_VERSION
from ..store import results_dir as _results_dir
from .tables import table

__all__ = ["paper", "Claims", "ledger", "claims_dir", "styled", "describe_parameters", "attach_reasons",
           "PAPER_VALUES", "REASON_KINDS", "chapter_of", "Chapter", "Claim", "Family", "Check", "PerSeed", "Evidence",
           "MissingEvidence", "CHAPTERS"]

PAPER_VALUES = Path(__file__).with_name("reference") / "paper_values.json"
HELD, NOT_HELD, NOT_EVALUATED = "held", "not held", "not evaluated"
#: the kinds of reason a claim that does not hold can have (:mod:`faeval.book.discrepancies` measures them)
REASON_KINDS = ("horizon", "data", "measurement convention", "implementation choice", "not explained")


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


def chapter_of(notebook: str) -> str:
    """A notebook's chapter: its name without its number (``01_audit`` -> ``audit``)."""
    head, _, rest = notebook.partition("_")
    return rest if head.isdigit() and rest else notebook


def claims_dir(results_dir=None) -> Path:
    return _results_dir(results_dir) / "claims"


class Claims:
    """The claims of one notebook at one profile.

    >>> import tempfile
    >>> claims = Claims("01_audit", "smoke")
    >>> row = claims.check("BP passes on every seed", True, "PASS, PASS", "audit.bp_passes")
    >>> path = claims.save(tempfile.mkdtemp())
    >>> [(r["claim"], r["status"], r["paper"]) for r in claims.rows]
    [('BP passes on every seed', 'held', 'trustworthy')]
    """

    def __init__(self, notebook: str, profile, judged: str | None = None) -> None:
        """``profile``: the :class:`~faeval.book.profiles.Profile` the notebook ran (its parameters are
        recorded), or a profile name (then recorded as that profile's defaults). ``judged``: the
        head regime whose claims are the book's (:func:`faeval.book.head.decide`); set :attr:`regime`
        before checking the claims of each regime."""
        self.notebook = notebook
        if isinstance(profile, str):
            self.profile, self.parameters = profile, {"profile": profile, "overrides": {},
                                                      "cache_version": CACHE_VERSION}
        else:
            self.profile, self.parameters = profile.name, profile.parameters()
        self.rows: list[dict] = []
        self.judged = judged
        #: the head regime the next claims are measured in (None: the chapter has no regimes)
        self.regime: str | None = None

    @property
    def default(self) -> bool:
        """Whether these claims were measured at the profile's defaults and the current cache version."""
        return not self.parameters["overrides"] and self.parameters["cache_version"] == CACHE_VERSION

    def per_seed(self, claim: str, values: Mapping, holds: Callable, fmt: str = "{:.3g}",
                 paper_key: str | None = None, reason: str | None = None, missing: str = "none", *,
                 id: str | None = None, note: str = "") -> dict:
        """A claim about every seed: ``holds(value)`` per seed of ``values`` (``{seed: value}``).

        Held when it holds on every seed; ``ours`` states k of n seeds, the spread
        (min to max of numeric values) and each seed's value, e.g.
        ``2/3 seeds; 7.6 to 70.9 (s42 70.9, s123 7.6, s456 51.2)``. A non-finite or missing
        value counts as not holding on that seed; a missing one (None) is shown as ``missing``. ``note``, where
        given, follows after a semicolon.
        """
        if not values:
            return self.check(claim, None, "", paper_key, reason or "no seeds were measured", id=id)
        ok = {s: _holds(holds, v) for s, v in values.items()}
        k, n = sum(ok.values()), len(ok)
        nums = [float(v) for v in values.values() if _number(v)]
        lo, hi = (fmt.format(min(nums)), fmt.format(max(nums))) if len(nums) > 1 else ("", "")
        spread = "" if not lo else f"; all {lo}" if lo == hi else f"; {lo} to {hi}"
        each = ", ".join(f"s{s} {fmt.format(v) if _number(v) else missing if v is None else v}"
                         for s, v in values.items())
        return self.check(claim, k == n, f"{k}/{n} seeds{spread} ({each})" + (f"; {note}" if note else ""),
                          paper_key, reason, id=id)

    def check(self, claim: str, held: bool | None, ours: str, paper_key: str | None = None,
              reason: str | None = None, *, id: str | None = None) -> dict:
        """Record one claim. ``held=None`` means it could not be evaluated; give ``reason``.

        ``id`` names the claim for good: ``<chapter>.<name>`` (the chapter is the notebook's name without
        its number, e.g. ``audit.dfa_d1``), unique in the notebook per head regime, so unique in the book.
        The discrepancies appendix's probes register for ids (:func:`faeval.book.discrepancies.probe`): the
        sentence can be reworded without losing its reason. Every claim of the book has one.
        """
        self._check_id(id, claim)
        if held is None and not reason:
            raise ValueError(f"claim {claim!r}: held=None (not evaluated) needs a reason")
        if held is not None and not isinstance(held, bool):
            held = bool(held)
        ref = paper(paper_key) if paper_key else None
        status = NOT_EVALUATED if held is None else HELD if held else NOT_HELD
        kind, reason = _reason_kind(status, reason or "")
        row = {"notebook": self.notebook, "id": id or "", "profile": self.profile, "claim": claim, "status": status,
               "ours": ours, "paper": ref["text"] if ref else "", "source": ref["source"] if ref else "",
               "reason": reason, "reason_kind": kind, "regime": self.regime or "",
               "judged": self.regime is None or self.judged is None or self.regime == self.judged}
        self.rows.append(row)
        return row

    def evaluate(self, claim: str, fn: Callable[[], tuple[bool, str]], paper_key: str | None = None,
                 reason: str | None = None, *, id: str | None = None) -> dict:
        """Check a claim computed by ``fn() -> (held, ours)``; an exception or a non-finite
        measurement records it as not evaluated, with the reason (as a declared claim's: :class:`Chapter`)."""
        return _outcome(self, id, claim, paper_key, lambda: Check(*fn(), reason))

    @property
    def chapter(self) -> str:
        """The notebook's name without its number (``01_audit`` -> ``audit``): the prefix of its claims' ids."""
        return chapter_of(self.notebook)

    def _check_id(self, id: str | None, claim: str) -> None:
        if id is None:
            return
        if not (isinstance(id, str) and id.startswith(f"{self.chapter}.") and len(id) > len(self.chapter) + 1):
            raise ValueError(f"claim {claim!r}: id={id!r} must read '{self.chapter}.<name>' (the chapter's name, "
                             "a dot, a name of the claim's own)")
        if any(r["id"] == id and r["regime"] == (self.regime or "") for r in self.rows):
            raise ValueError(f"claim id {id!r} is used twice in {self.notebook}"
                             + (f" (regime {self.regime})" if self.regime else "") + ": give each claim its own id")

    def filename(self) -> str:
        """``<notebook>.json`` at the profile's defaults, else ``<notebook>@<8 hex of the parameters>.json``."""
        if self.default:
            return f"{self.notebook}.json"
        blob = json.dumps(self.parameters, sort_keys=True, default=str).encode()
        return f"{self.notebook}@{hashlib.sha256(blob).hexdigest()[:8]}.json"

    def save(self, results_dir=None) -> Path:
        """Write ``<results_dir>/claims/<filename()>`` atomically; returns its path."""
        path = claims_dir(results_dir) / self.filename()
        _write_json(path, {"notebook": self.notebook, "profile": self.profile, "parameters": self.parameters,
                           "claims": self.rows})
        return path

    def table(self):
        import pandas as pd

        cols = ["claim", "status", "ours", "paper", "source", "reason"]
        if any(r["regime"] for r in self.rows):
            cols = ["regime", *cols]
        frame = pd.DataFrame(self.rows, columns=["notebook", "profile", "judged", *cols])
        if "regime" in cols:
            frame["regime"] = [f"{r} ({'judged' if j else 'not judged'})" for r, j in zip(frame.regime, frame.judged)]
        return frame[cols]

    def __str__(self) -> str:
        lines = [f"Claims of {self.notebook} at the {self.profile!r} profile:"]
        for r in self.rows:
            why = f"{r['reason_kind']}: {r['reason']}" if r.get("reason_kind") else r["reason"]
            extra = f"  [{why}]" if why else ""
            paper_part = f" | paper: {r['paper']}" if r["paper"] else ""
            regime = f"[{r['regime']}{'' if r['judged'] else ', not judged'}] " if r["regime"] else ""
            lines.append(f"  {r['status'].upper():>13}  {regime}{r['claim']}: ours {r['ours']}{paper_part}{extra}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The chapter's closing table: each claim, the paper's value, ours, and whether it held (with the
        head regime it was measured in, where the chapter has regimes)."""
        frame = self.table()
        cols = [c for c in ("regime", "claim", "paper", "ours", "status") if c in frame.columns]
        return styled(frame[cols]).to_html()


# ---------------------------------------------------------------------------------------
# declared claims: each chapter's claims, written once in faeval/book/chapters/<chapter>.py
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """What a claim measured: ``held`` (None: it could not be evaluated, ``reason`` says why) and ours."""

    held: bool | None
    ours: str
    reason: str | None = None


@dataclass(frozen=True)
class PerSeed:
    """A claim about every seed: ``holds(value)`` on each of ``values`` (``{seed: value}``), see
    :meth:`Claims.per_seed`."""

    values: Mapping
    holds: Callable
    fmt: str = "{:.3g}"
    missing: str = "none"
    reason: str | None = None
    note: str = ""                     # appended to ``ours`` (e.g. the same margins in other units)


class MissingEvidence(AttributeError):
    """A claim reads a name the notebook did not pass to :func:`faeval.book.chapters.check_claims`: the notebook's
    mistake, raised at once, never recorded as a claim that could not be evaluated."""


class Evidence:
    """What a notebook measured, by name, for its chapter's claims to read (``ev.rows``; ``ev.P`` is the
    profile). Later mappings override earlier ones: ``Evidence(shared, regime_own)``."""

    def __init__(self, *maps: Mapping) -> None:
        values: dict = {}
        for m in maps:
            values.update(m)
        reserved = sorted(k for k in values if hasattr(type(self), k))
        if reserved:
            raise ValueError(f"evidence names {reserved} are taken by Evidence itself: pass them under other names")
        self._values = values

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise MissingEvidence(f"a claim reads {name!r}, which the notebook did not pass: add {name}=... to "
                                  f"its check_claims(...) call (it passed {self.names()})") from None

    def __getitem__(self, name: str):          # str.format_map fills a sentence's {fields} through this
        return getattr(self, name)

    def names(self) -> list[str]:
        return sorted(self._values)

    def text(self, sentence: str | Callable) -> str:
        """The sentence: a template filled from the evidence (``"... ({horizon} epochs)"``), or a function of it."""
        return sentence(self) if callable(sentence) else sentence.format_map(self)


@dataclass(frozen=True)
class Claim:
    """One claim of a chapter: its id (``<chapter>.<name>``), its sentence (a template filled from the
    evidence, or a function of it), the function that measures ours (``measure(ev) -> Check | PerSeed``),
    the key of the paper's value in ``paper_values.json`` (a claim id: its own, or the claim whose value it
    shares) and whether it is measured once per head regime."""

    id: str
    sentence: str | Callable
    measure: Callable[[Evidence], Check | PerSeed]
    paper: str | None = None
    per_regime: bool = True


@dataclass(frozen=True)
class Family:
    """Claims that exist only where the evidence has them (e.g. one per run that stopped early):
    ``expand(ev)`` yields ``(name, sentence, Check)``; each gets the id ``<prefix>.<name>``."""

    prefix: str
    expand: Callable[[Evidence], Iterable[tuple[str, str, Check]]]
    per_regime: bool = True

    @property
    def id(self) -> str:
        return f"{self.prefix}.*"


#: every declared chapter, by name (the notebook's name without its number): :class:`Chapter` registers itself
CHAPTERS: dict[str, Chapter] = {}


class Chapter:
    """The claims of one chapter, declared once, in the order its closing table shows them.

    >>> ch = Chapter("doc_example")
    >>> @ch.claim("doc_example.positive", "The value is positive on every seed", paper=None)
    ... def _(ev):
    ...     return PerSeed(ev.values, lambda v: v > 0)
    >>> claims = ch.check("09_doc_example", "smoke", values={42: 1.5, 7: 2.0})
    >>> [(r["id"], r["status"], r["ours"]) for r in claims.rows]
    [('doc_example.positive', 'held', '2/2 seeds; 1.5 to 2 (s42 1.5, s7 2)')]
    >>> del CHAPTERS["doc_example"]
    """

    def __init__(self, name: str) -> None:
        if name in CHAPTERS:
            raise ValueError(f"chapter {name!r} is declared twice: its claims belong in one module")
        self.name = name
        self.items: list[Claim | Family] = []
        CHAPTERS[name] = self

    def claim(self, id: str, sentence: str | Callable, *, paper: str | bool | None = None,
              per_regime: bool = True) -> Callable:
        """Declare the decorated ``measure(ev)`` as claim ``id``. ``paper=True``: the paper's value is the
        entry ``id`` of ``paper_values.json``; a string: the entry of that (other) claim's id."""
        def add(measure: Callable) -> Callable:
            key = id if paper is True else paper or None
            self._add(Claim(id, sentence, measure, key, per_regime))
            return measure
        return add

    def stopped_runs(self, prefix: str, runs: str, name: str, sentence: str) -> None:
        """Declare one not-evaluated claim per run of the evidence ``runs`` (``{key: Run}``) that stopped early:
        id ``<prefix>.<name>`` and ``sentence``, both formatted with the run's key (``"{0}.s{1}"``)."""
        def expand(ev):
            for key, run in getattr(ev, runs).items():
                if run.stopped:
                    key = key if isinstance(key, tuple) else (key,)
                    yield name.format(*key), sentence.format(*key), Check(None, "", f"the run stopped: {run.stopped}")
        self._add(Family(prefix, expand))

    def _add(self, item: Claim | Family) -> None:
        name = item.prefix if isinstance(item, Family) else item.id
        if not name.startswith(f"{self.name}.") or len(name) <= len(self.name) + 1:
            raise ValueError(f"claim id {name!r} must read '{self.name}.<name>'")
        if any(i.id == item.id for i in self.items):
            raise ValueError(f"claim id {item.id!r} is declared twice in chapter {self.name!r}")
        if isinstance(item, Claim) and item.paper is not None:
            paper(item.paper)                      # a clear error now, not when a notebook reaches it
        self.items.append(item)

    def ids(self) -> list[str]:
        return [i.id for i in self.items]

    def check(self, notebook: str, profile, *, judged: str | None = None, regimes: Mapping | None = None,
              **evidence) -> Claims:
        """Evaluate every claim of the chapter and return them as :class:`Claims`.

        ``evidence``: what the notebook measured, by name (a claim reads ``ev.<name>``; ``ev.P`` is the
        profile). ``regimes``: ``{regime: {name: value}}``, the evidence of each head regime, in the order
        the table shows them; each per-regime claim is then measured once per regime, with that regime's
        evidence beside the shared one, and the other claims once, after them. A claim whose measurement
        raises is recorded as not evaluated, with the error (never dropped)."""
        claims = Claims(notebook, profile, judged=judged)
        if claims.chapter != self.name:
            raise ValueError(f"notebook {notebook!r} is chapter {claims.chapter!r}, not {self.name!r}")
        shared = {"P": profile, **evidence}
        for regime, own in (regimes or {}).items():
            claims.regime = regime
            ev = Evidence(shared, own)
            for item in self.items:
                if item.per_regime:
                    _record(claims, item, ev)
        claims.regime = None
        for item in self.items:
            if not (regimes and item.per_regime):
                _record(claims, item, Evidence(shared))
        return claims


def _record(claims: Claims, item: Claim | Family, ev: Evidence) -> None:
    if isinstance(item, Family):
        for name, sentence, outcome in item.expand(ev):
            _outcome(claims, f"{item.prefix}.{name}", sentence, None, lambda outcome=outcome: outcome)
        return
    _outcome(claims, item.id, ev.text(item.sentence), item.paper, lambda: item.measure(ev))


def _outcome(claims: Claims, id: str | None, sentence: str, paper_key: str | None, measure: Callable) -> dict:
    """Record the claim ``measure()`` measures (a :class:`Check` or a :class:`PerSeed`): one that raises is
    not evaluated, with the error and where it was raised; one whose ``held`` is None is not evaluated."""
    try:
        out = measure()
        if isinstance(out, PerSeed):
            return claims.per_seed(sentence, out.values, out.holds, out.fmt, paper_key, out.reason, out.missing,
                                   id=id, note=out.note)
    except MissingEvidence:
        raise
    except Exception as e:  # noqa: BLE001 - the claim is recorded, not dropped
        last = traceback.extract_tb(e.__traceback__)[-1]
        return claims.check(sentence, None, "", paper_key, f"could not be evaluated: {type(e).__name__}: {e} "
                            f"({Path(last.filename).name} line {last.lineno})", id=id)
    if not isinstance(out, Check):
        raise TypeError(f"claim {id!r}: its measure returned {type(out).__name__}; return a Check or a PerSeed")
    if out.held is None:
        return claims.check(sentence, None, out.ours, paper_key, out.reason or "could not be evaluated", id=id)
    return claims.check(sentence, out.held, out.ours, paper_key, out.reason, id=id)


STATUS_COLOURS = {HELD: "color: #1a7f37", NOT_HELD: "color: #cf222e", NOT_EVALUATED: "color: #9a6700"}


def styled(frame):
    """A claims table for the book (:func:`faeval.book.plots.table`), the status coloured."""
    style = table(frame)
    if "status" in frame.columns:
        style = style.map(lambda s: STATUS_COLOURS.get(s, ""), subset=["status"])
    return style


def _reason_kind(status: str, reason: str) -> tuple[str, str]:
    """``(kind, text)`` of a not-held claim's reason written as ``"<kind>: <text>"``, else ``("", reason)``."""
    kind, _, text = reason.partition(":")
    if status == NOT_HELD and kind in REASON_KINDS:
        return kind, text.strip()
    return "", reason


def _write_json(path: Path, data) -> None:
    """Write ``data`` as JSON to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def attach_reasons(reasons, profile: str, results_dir=None) -> list[Path]:
    """Write each reason (``{notebook, id, claim, kind, text}``) into the not-held claim it explains (found by
    its id; by its sentence where it has none), in the claims files of ``profile`` measured at its defaults;
    returns the files rewritten."""
    by_claim = {(r["notebook"], r.get("id") or r["claim"]): r for r in reasons}   # they explain the judged claims
    written = []
    for path in sorted(claims_dir(results_dir).glob("*.json")):
        data = json.loads(path.read_text())
        params = data.get("parameters", {})
        if data.get("profile") != profile or params.get("overrides") or params.get("cache_version") != CACHE_VERSION:
            continue
        hit = False
        for row in data["claims"]:
            why = by_claim.get((row["notebook"], row.get("id") or row["claim"]))
            if why is not None and row["status"] == NOT_HELD and row.get("judged", True):
                row.update(reason=why["text"], reason_kind=why["kind"])
                hit = True
        if hit:
            _write_json(path, data)
            written.append(path)
    return written


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _holds(holds: Callable, v) -> bool:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return False
    return bool(holds(v))


def describe_parameters(parameters: Mapping) -> str:
    """``"defaults"`` or the overrides, e.g. ``"seeds=[7], methods=['bp', 'dfa']"`` (+ a stale cache)."""
    parts = [f"{k}={v}" for k, v in parameters.get("overrides", {}).items()]
    if parameters.get("cache_version") != CACHE_VERSION:
        parts.append(f"cache version {parameters.get('cache_version')} (current {CACHE_VERSION})")
    return ", ".join(parts) or "defaults"


def ledger(results_dir=None, leave_out=()):
    """Every saved claims file under ``<results_dir>/claims/`` as one table (but the claims of the notebooks
    named in ``leave_out``: a first render leaves out those of the chapters still training, whose files may be
    an earlier build's).

    ``parameters`` describes what each row was measured with (:func:`describe_parameters`);
    ``default`` is True for rows measured at their profile's defaults and the current cache
    version, the only rows a book's ledger presents as the profile's. A claim that does not
    hold carries its reason: ``reason_kind`` is one of :data:`REASON_KINDS` and ``reason``
    says what was measured (the discrepancies appendix writes them in: :func:`attach_reasons`).
    ``regime`` names the head regime a row was measured in (empty where its chapter has none), and
    ``judged`` is False for the rows of the regime the book's claims are not judged in; ``id`` is the
    claim's id (:meth:`Claims.check`; empty in files written before claims had ids).
    """
    import pandas as pd

    rows = []
    for path in sorted(claims_dir(results_dir).glob("*.json")):
        data = json.loads(path.read_text())
        params = data.get("parameters", {"profile": data.get("profile"), "overrides": {}, "cache_version": None})
        label = describe_parameters(params)
        rows += [{"id": "", "reason_kind": "", "regime": "", "judged": True, **r, "parameters": label,
                  "default": label == "defaults"} for r in data["claims"] if r["notebook"] not in leave_out]
    cols = ["notebook", "id", "claim", "paper", "ours", "status", "profile", "reason_kind", "reason", "regime",
            "judged", "parameters", "default"]
    return pd.DataFrame(rows, columns=cols)
