"""Each chapter's claims, declared once in faeval/book/chapters/: ids, paper values, probes, evaluation, and the
chapters' share of code."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from faeval.book import claims as C
from faeval.book import discrepancies as X
from faeval.book.chapters import CHAPTERS, check_claims

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


def _code(path: Path) -> str:
    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")


def test_every_notebook_evaluates_its_chapters_declared_claims_and_declares_none_itself():
    assert {C.chapter_of(p.stem) for p in NOTEBOOKS} == set(CHAPTERS)
    for path in NOTEBOOKS:
        code = _code(path)
        assert f'fb.check_claims(\n    "{path.stem}"' in code or f'fb.check_claims("{path.stem}"' in code, path.name
        assert not re.search(r"\bClaims\(|\.per_seed\(|claims\.check\(|claims\.evaluate\(", code), path.name


def test_claim_ids_are_unique_across_the_book_and_name_their_chapter():
    ids = [i for ch in CHAPTERS.values() for i in ch.ids()]
    assert len(ids) >= 55 and len(ids) == len(set(ids))
    for name, ch in CHAPTERS.items():
        assert all(i.startswith(f"{name}.") for i in ch.ids()), name


def test_paper_values_are_keyed_by_the_ids_of_the_claims_that_show_them():
    ids = {i for ch in CHAPTERS.values() for i in ch.ids()}
    values = json.loads(C.PAPER_VALUES.read_text())
    claims = [c for ch in CHAPTERS.values() for c in ch.items if isinstance(c, C.Claim)]
    for c in claims:
        assert c.paper is None or (c.paper in ids and c.paper in values), (c.id, c.paper)
        # an entry under a claim's own id is that claim's paper value: forgetting paper=True would hide it
        assert c.id not in values or c.paper == c.id, f"{c.id} has a paper entry under its id but shows {c.paper}"
    shown = {c.paper for c in claims if c.paper}
    assert len(shown) >= 35
    assert not [k for k in values if k in ids and k not in shown]


def test_every_registered_probe_names_a_declared_claim():
    ids = {i for ch in CHAPTERS.values() for i in ch.ids()}
    assert X.PROBES, "no probes registered"
    orphans = [i for i in X.PROBES if i not in ids]
    assert not orphans, f"probes for claim ids no chapter declares: {orphans}"


@pytest.fixture
def chapter():
    ch = C.Chapter("tchapter")
    yield ch
    del C.CHAPTERS["tchapter"]


def test_a_declared_chapter_is_measured_per_regime_and_records_what_could_not_be_evaluated(chapter):
    from types import SimpleNamespace

    ok, stopped = SimpleNamespace(stopped=None), SimpleNamespace(stopped="non-finite loss")

    @chapter.claim("tchapter.bigger", "The value exceeds {bar} on every seed")
    def _(ev):
        return C.PerSeed(ev.values, lambda v: v > ev.bar)

    @chapter.claim("tchapter.broken", "A claim whose measure raises")
    def _(ev):
        return C.Check(ev.values[999] > 0, "")

    chapter.stopped_runs("tchapter.stopped", "runs", "{0}.s{1}", "{0} seed {1} trained to the end")

    @chapter.claim("tchapter.once", "Measured once, outside the regimes", per_regime=False)
    def _(ev):
        return C.Check(ev.bar == 1, f"bar {ev.bar}")

    claims = check_claims("09_tchapter", "smoke", judged="head fixed", bar=1,
                          regimes={"head fixed": {"values": {42: 2.0, 7: 3.0}, "runs": {("dfa", 7): ok}},
                                   "head trained": {"values": {42: 0.5, 7: 3.0},
                                                    "runs": {("dfa", 42): ok, ("dfa", 7): stopped}}})
    got = [(r["id"], r["regime"], r["judged"], r["status"]) for r in claims.rows]
    assert got == [("tchapter.bigger", "head fixed", True, "held"),
                   ("tchapter.broken", "head fixed", True, "not evaluated"),
                   ("tchapter.bigger", "head trained", False, "not held"),
                   ("tchapter.broken", "head trained", False, "not evaluated"),
                   ("tchapter.stopped.dfa.s7", "head trained", False, "not evaluated"),
                   ("tchapter.once", "", True, "held")]
    assert claims.rows[0]["claim"] == "The value exceeds 1 on every seed"
    assert claims.rows[2]["ours"] == "1/2 seeds; 0.5 to 3 (s42 0.5, s7 3)"
    assert claims.rows[1]["reason"].startswith("could not be evaluated: KeyError: 999 (test_chapters.py line ")
    assert claims.rows[4]["reason"] == "the run stopped: non-finite loss"
    assert claims.rows[4]["claim"] == "dfa seed 7 trained to the end"


def test_evidence_a_notebook_did_not_pass_is_an_error_that_names_it(chapter):
    @chapter.claim("tchapter.x", "x")
    def _(ev):
        return C.Check(ev.rows is not None, "")

    with pytest.raises(C.MissingEvidence, match=r"reads 'rows', which the notebook did not pass: add rows=\.\.\."):
        check_claims("09_tchapter", "smoke", row=[1])


def test_declaring_a_claim_refuses_a_foreign_or_repeated_id_and_an_unknown_paper_key(chapter):
    measure = lambda ev: C.Check(True, "")  # noqa: E731
    chapter.claim("tchapter.a", "a")(measure)
    with pytest.raises(ValueError, match="declared twice"):
        chapter.claim("tchapter.a", "a again")(measure)
    with pytest.raises(ValueError, match="must read 'tchapter.<name>'"):
        chapter.claim("audit.a", "a")(measure)
    with pytest.raises(KeyError, match="no paper value 'tchapter.nope'"):
        chapter.claim("tchapter.nope", "n", paper=True)(measure)
    with pytest.raises(KeyError, match="declare them in faeval/book/chapters/nochapter.py"):
        check_claims("09_nochapter", "smoke")


MAX_CODE_SHARE = 0.60


def code_share(path: Path) -> float:
    """The share of a notebook's non-space characters that are in code cells (the parameters cell included)."""
    cells = json.loads(path.read_text())["cells"]
    count = [sum(not ch.isspace() for ch in "".join(c["source"])) for c in cells]
    return sum(n for n, c in zip(count, cells) if c["cell_type"] == "code") / sum(count)


def test_every_chapter_reads_prose_first(capsys):
    """At most 60% of each notebook's non-space characters are code; the share per notebook is printed."""
    shares = {p.name: code_share(p) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    with capsys.disabled():
        print("\ncode share: " + ", ".join(f"{name} {s:.0%}" for name, s in shares.items()))
    assert len(shares) >= 10
    over = {name: round(s, 3) for name, s in shares.items() if s > MAX_CODE_SHARE}
    assert not over, f"more than {MAX_CODE_SHARE:.0%} code: {over}; move machinery into faeval/book/ or explain more"


def test_the_paper_values_figures_and_the_head_rule_read_exist():
    from faeval.book import head, plots

    keys = [*plots.AUDIT_MARKS.values(), *(s.paper_key for s in head.SIGNATURES)]
    assert len(keys) >= 15
    for key in keys:
        C.paper(key)        # a KeyError names the missing entry
