"""The findings page's and the chapters' openings' words: chosen by the measured values, never typed."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from faeval.book import claims as C
from faeval.book import findings as F

ROOT = Path(__file__).resolve().parents[1]


def _claims(rows):
    claims = C.Claims("01_audit", "smoke", judged="head fixed")
    for regime, id, held, ours in rows:
        claims.regime = regime
        claims.check(f"claim {id}", held, ours, id=f"audit.{id}")
    return claims


def test_an_opening_counts_the_judged_claims_and_names_what_changes_between_regimes():
    claims = _claims([("head fixed", "a", True, "3/3 seeds; 1 to 2 (s1 1, s2 2, s3 2)"),
                      ("head fixed", "b", False, "0/3 seeds"),
                      ("head trained", "a", False, "1/3 seeds"),
                      ("head trained", "b", False, "0/3 seeds")])
    text = F.opening(claims)
    assert "**1 of 2** of this chapter's claims hold with the head fixed" in text
    assert "- claim a (ours: 3/3 seeds; 1 to 2)" in text          # the per-seed list is left to the table
    assert "differs" in text and "- claim b (ours: 0/3 seeds)" in text
    assert "1 of the 2 claims checked in both change their status. Held with the head fixed and not held with " \
           "the head trained: claim a." in text
    same = F.opening(_claims([("head fixed", "a", True, "x"), ("head trained", "a", True, "y")]))
    assert "none of the 1 claims checked in both changes its status" in same and "differs" not in same


def test_an_opening_without_regimes_or_claims_says_so():
    claims = C.Claims("06_pitfalls", "smoke")
    assert "checked no claim" in F.opening(claims)
    claims.check("x holds", False, "0.3", id="pitfalls.x")
    text = F.opening(claims)
    assert "**0 of 1**" in text and "head" not in text and "agrees" not in text


def _ledger(rows):
    return pd.DataFrame([{"notebook": nb, "id": id, "claim": id, "paper": "p", "ours": "o", "status": st,
                          "profile": "quick", "reason_kind": kind, "reason": "", "regime": "", "judged": judged,
                          "parameters": "defaults", "default": True} for nb, id, st, kind, judged in rows])


def test_claim_counts_and_key_claims_read_only_the_judged_claims_of_the_profile():
    ledger = _ledger([("01_audit", "audit.dfa_d1", "held", "", True), ("01_audit", "audit.dfa_d2", "not held",
                                                                        "horizon", True),
                      ("01_audit", "audit.dfa_d2", "held", "", False),          # the other regime: not counted
                      ("02_temporal", "temporal.stop_saves", "not held", "", True)])
    counts = F.claim_counts(ledger, "quick").set_index("chapter")
    assert counts.loc["all", "claims"] == 3 and counts.loc["all", "held"] == 1
    assert counts.loc["audit", "reasons of those not held"] == "horizon 1"
    assert counts.loc["temporal", "reasons of those not held"] == "no reason measured 1"
    lines = F.key_claims(ledger, "quick").splitlines()
    assert len(lines) == len(F.KEY_CLAIMS)
    assert lines[0].startswith("- **DFA fires D1 and D2**: not held (ours: o, and o;") and "{doc}`01_audit`" in lines[0]
    assert lines[1] == "- **The full protocol walks DFA back**: not measured at this profile."


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("0*.ipynb")), ids=lambda p: p.stem)
def test_every_chapter_shows_its_opening_under_its_title_and_glues_it(path):
    cells = json.loads(path.read_text())["cells"]
    first = "".join(cells[0]["source"]).splitlines()
    assert first[0].startswith("# ") and first[2:5] == ["```{glue:md} opening", ":format: myst", "```"], first[:5]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "fb.findings.glue_opening(claims, P)" in code


def glue_refs(text: str) -> set[str]:
    """The glue keys a page's markdown asks for: ``{glue:md} key`` directives and ``{glue:...}`key``` roles (a key
    of another page as ``path::key``)."""
    keys = set(re.findall(r"```\{glue(?::\w+)?\}\s+(\S+)", text))
    for ref in re.findall(r"\{glue(?::\w+)?\}`([^`]+)`", text):     # [doc::]key[:format]
        doc, sep, key = ref.rpartition("::")
        keys.add(doc + sep + key.split(":")[0])
    return keys


def glued_keys(notebook: dict) -> set[str]:
    """The keys a notebook's code glues (``glue_md``/``glue_text``/``glue_opening``), read from its source."""
    code = "\n".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    keys = set(re.findall(r"glue_(?:md|text)\(\s*\"(\w+)\"", code))
    return keys | ({"opening"} if "glue_opening(" in code else set())


def test_every_glued_name_a_page_asks_for_is_glued_by_the_notebook_it_names():
    notebooks = {p.stem: json.loads(p.read_text()) for p in (ROOT / "notebooks").glob("*.ipynb")}
    asked = 0
    for name, nb in notebooks.items():
        md = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
        for key in glue_refs(md):
            assert "::" not in key and key in glued_keys(nb), f"{name} shows {key!r}, which it does not glue"
            asked += 1
    for page in (ROOT / "book").glob("*.md"):
        for ref in glue_refs(page.read_text()):
            doc, _, key = ref.rpartition("::")
            assert doc.startswith("executed/"), f"{page.name}: {ref!r} names no executed notebook"
            nb = notebooks[doc.removeprefix("executed/").removesuffix(".ipynb")]
            assert key in glued_keys(nb), f"{page.name}: {ref!r} is not glued"
            asked += 1
    assert asked >= 15
