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
CHAPTERS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


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


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
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


SHOWS = re.compile(r"fb\.plots\.table\(|_figure\(|display\(")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_table_and_figure_is_followed_by_prose_that_says_what_to_look_at(path):
    """Item 3 of the findings issue: after each code cell that shows a table or a figure, the next markdown cell
    says what to look at in it (``**What to look at.**``) or shows the chapter's computed reading of it (in any of the
    markdown cells between it and the next code cell that follows them)."""
    cells = json.loads(path.read_text())["cells"]
    for i, c in enumerate(cells):
        code = "".join(c["source"])
        if c["cell_type"] != "code" or not SHOWS.search(code) or "check_claims(" in code:
            continue
        nxt = next((j for j in range(i + 1, len(cells)) if cells[j]["cell_type"] == "markdown"), len(cells))
        end = next((j for j in range(nxt, len(cells)) if cells[j]["cell_type"] == "code"), len(cells))
        after = "\n".join("".join(m["source"]) for m in cells[nxt:end])     # the markdown run that follows
        assert "**What to look at.**" in after or "{glue:md} read_" in after, (
            f"{path.name}, cell {c.get('id')}: the table or figure it shows has no reading after it")


def test_an_opening_names_three_claims_that_hold_and_every_claim_that_does_not():
    rows = [("head fixed", f"h{i}", True, "3/3 seeds") for i in range(6)]
    rows += [("head fixed", f"m{i}", False, "0/3 seeds") for i in range(4)]
    text = F.opening(_claims(rows))
    assert "**6 of 10**" in text
    assert [f"claim h{i}" in text for i in range(6)] == [True] * F.SHOWN_HELD + [False] * (6 - F.SHOWN_HELD)
    assert f"- and {6 - F.SHOWN_HELD} more, listed with their numbers in the claims table" in text
    assert all(f"- claim m{i} (ours: 0/3 seeds)" in text for i in range(4))
    four = F.opening(_claims(rows[:F.SHOWN_HELD + 1]))            # one over the limit: listed, not "1 more"
    assert "more, listed" not in four and f"claim h{F.SHOWN_HELD}" in four


def test_prose_helpers_write_lists_ranges_and_counts():
    from faeval.book import prose
    assert prose.names([]) == "none" and prose.names(["a"]) == "a" and prose.names("abc") == "a, b and c"
    assert prose.span([3.0, 1.0, float("nan"), None]) == "1 to 3" and prose.span([2.0, 2.0001]) == "2"
    assert prose.span([]) == "-"
    assert (prose.count(0, 3), prose.count(3, 3), prose.count(2, 3)) == ("none of the 3", "all 3", "2 of the 3")
    assert prose.vs_frozen(-15.73) == "15.7 pp under the frozen baseline"
    assert prose.vs_frozen(2.0) == "2.0 pp over the frozen baseline"
    assert prose.decades(100.0) == "2.0 decades" and prose.decades(1.1) == "a hair"
    assert prose.times(4547.2) == "4,547x" and prose.times(8.21) == "8.21x"


class _Decision:
    judged, other, order = "head fixed", "head trained", ["head fixed", "head trained"]


def test_the_temporal_reading_is_chosen_by_whether_dfa_fired():
    from faeval.book.chapters import temporal

    def rows(regime, d1, d2, acc_stop):
        return [{"regime": regime, "method": "dfa", "seed": s, "epochs": 8, "D1 epoch": d1, "D2 epoch": d2,
                 "stop epoch": min((e for e in (d1, d2) if e is not None), default=None), "acc at stop": acc_stop,
                 "final acc": 0.5, "saved share": 0.75 if d1 else 0.0} for s in (1, 2)] + [
            {"regime": regime, "method": "bp", "seed": 1, "epochs": 8, "D1 epoch": None, "D2 epoch": None,
             "stop epoch": None, "acc at stop": None, "final acc": 0.9, "saved share": 0.0}]
    firing = pd.DataFrame(rows("head fixed", 2, None, 0.4) + rows("head trained", None, None, None))
    text = temporal.read_firing(firing, _Decision)
    fixed, trained = text.split("With the head trained")
    assert "DFA fires D1 at epoch 2 and D2 at epoch -" in fixed and "D2 never fires on all 2 seeds" in fixed
    assert "saves 75% of the training time" in fixed and "+10.0 points" in fixed and "BP never fires" in fixed
    assert "DFA fires neither D1 nor D2 within 8 epochs" in trained


def test_the_penalty_d3_reading_names_where_the_verdict_changes():
    from faeval.book.chapters import penalty
    idx = pd.MultiIndex.from_product([["head fixed", "head trained"], [0.0, 0.01, 0.1]], names=["regime", "lambda"])
    margin = pd.Series([-5.0, 2.5, 1.0, 3.0, 4.0, 5.0], index=idx)
    d3 = pd.DataFrame({"mean margin (pp)": margin, "D3 fires at 2.0 pp": margin < 2.0})
    fixed, trained = penalty.read_d3(d3, _Decision).split("With the head trained")
    assert "clears the 2 pp bar at lambda 0.01 only, so D3's verdict changes" in fixed
    assert "D3 is quiet at every lambda (the smallest mean margin is +3.0 pp)" in trained


def test_the_audit_reading_counts_the_walked_back_runs_a_positive_gamma_would_keep():
    from faeval.book.chapters import audit
    table = pd.DataFrame([
        {"regime": g, "method": m, "seed": s, "verdict": v, "gamma": gam}
        for g in ("head fixed", "head trained")
        for m, s, v, gam in (("bp", 1, "PASS", 0.9), ("dfa", 1, "FAIL(D1+D2)", 0.2), ("dfa", 2, "FAIL(D2)", -0.1),
                             ("fa", 1, "PASS", 0.3), ("fa", 2, "FAIL(D3)", 0.3))])
    fixed = audit.read_protocol(table, _Decision).split("With the head trained")[0]
    assert "bp pass on every seed" in fixed and "walks back dfa (by D1+D2) on every seed, and fa on 1 of 2" in fixed
    assert "1 of the 3 walked-back runs have a positive headline Gamma (+0.200 to +0.300)" not in fixed
    assert "2 of the 3 walked-back runs have a positive headline Gamma (+0.200 to +0.300)" in fixed
