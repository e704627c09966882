"""Profiles (named sizes, parameter checks), claims (statuses, atomic save, ledger) and calibration summaries."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from faeval.book import claims as C
from faeval.book.calibration import first_firing, summarise
from faeval.book.profiles import PROFILES, get_profile
from faeval.config import canonical_config
from faeval.snapshot import Snapshot


# --------------------------------------------------------------------------- profiles
@pytest.mark.parametrize("name", list(PROFILES))
def test_every_run_a_profile_asks_for_is_a_valid_config(name):
    p = get_profile(name)
    for m in (*p.methods, "frozen"):
        cfg = canonical_config(**p.config(m, p.seeds[0]))
        assert cfg["epochs"] == p.epochs and cfg["method"] == m
    for label, over in p.sizes["cross_arch"]["archs"].items():
        cfg = canonical_config(**p.config("dfa", p.seeds[0], **over))
        assert cfg["arch"] == over.get("arch", p.base["arch"]), label
    size = p.sizes["penalty"]
    for lam in size["lambdas"]:
        assert canonical_config(**p.config("dfa", 0, penalty=lam, epochs=size["epochs"]))["hparams"]["penalty"] == lam
    for L in p.sizes["fa_vs_dfa"]["depths"]:
        assert canonical_config(**p.config("fa", 0, depth=L))["model"]["depth"] == L


def test_a_changed_architecture_or_dataset_drops_the_options_it_replaces():
    q = get_profile("quick")
    cnn = canonical_config(**q.config("dfa", 42, arch="cnn"))
    assert "width" not in cnn["model"] and cnn["data"]["normalize"] == "global"
    noisy = get_profile("quick", label_noise=0.4)
    syn = canonical_config(**noisy.config("dfa", 42, dataset="synthetic"))
    assert syn["data"]["label_noise"] == 0.0 and "normalize" not in syn["data"]
    assert canonical_config(**noisy.config("dfa", 42, arch="cnn"))["data"]["label_noise"] == 0.4
    assert get_profile("quick", dataset="cifar10", label_noise=0.4).base.get("label_noise") == 0.4
    assert get_profile("quick", label_noise=0.4).base.get("label_noise") == 0.4
    assert noisy.config("dfa", 42, dataset="cifar10").get("label_noise") is None


@pytest.mark.parametrize("kw, names", [
    ({"name": "qick"}, ["paper", "quick", "smoke"]),
    ({"dataset": "mnst"}, ["fashion-mnist", "cifar10"]),
    ({"arch": "resnet18"}, ["resmlp", "resnet", "vit"]),
    ({"methods": ["dfa", "dfaa"]}, ["credit_bridge", "dfa"]),
])
def test_unknown_names_are_refused_with_the_valid_ones(kw, names):
    name = kw.pop("name", "quick")
    with pytest.raises(ValueError) as e:
        get_profile(name, **kw)
    for n in names:
        assert n in str(e.value)


@pytest.mark.parametrize("kw", [{"seeds": 42}, {"seeds": []}, {"epochs": 0}, {"widht": 256}])
def test_bad_overrides_are_refused(kw):
    with pytest.raises((ValueError, TypeError)):
        get_profile("smoke", **kw)


def test_overrides_apply():
    p = get_profile("quick", seeds=[1, 2, 3], epochs=3, methods=["bp"], width=512)
    assert p.seeds == (1, 2, 3) and p.epochs == p.sizes["penalty"]["epochs"] == 3 and p.methods == ("bp",)
    assert canonical_config(**p.config("bp", 1))["model"]["width"] == 512


def test_quick_profile_lists_its_deviations_from_the_paper():
    q = PROFILES["quick"]
    text = " ".join(q.deviations)
    assert f"{q.epochs} epochs" in text and "Fashion-MNIST" in text
    # a seed count that differs from the paper's is a deviation the book states; the paper's is not
    assert (f"{len(q.seeds)} seeds" in text) == (q.seeds != PROFILES["paper"].seeds)
    # the calibration's rule qualified no candidate on three seeds: the quick profile keeps the paper's recipe
    from faeval.book.calibration import run_config
    paper_recipe = canonical_config(**run_config("paper", "dfa", steps=1))
    ours = canonical_config(**q.config("dfa", 42))
    assert (ours["data"], ours["model"]) == (paper_recipe["data"], paper_recipe["model"])
    paper = PROFILES["paper"]
    assert paper.seeds == (42, 123, 456) and paper.epochs == 100 and paper.sizes["penalty"]["epochs"] == 30
    assert paper.base["dataset"] == "cifar10" and not paper.deviations


# --------------------------------------------------------------------------- claims
def test_every_paper_value_names_its_source():
    values = json.loads(C.PAPER_VALUES.read_text())
    entries = {k: v for k, v in values.items() if not k.startswith("_")}
    assert len(entries) > 40
    for key, v in entries.items():
        assert set(v) == {"value", "text", "source"}, key
        # a section of the spec, or the original document itself (shared/reference/) where the spec is silent
        assert v["source"].startswith(("SPEC ", "reference/", "literature: ")), key
    with pytest.raises(KeyError, match="audit.acc.bp"):
        C.paper("audit.acc.bpp")


def test_claims_statuses_save_atomically_and_gather_in_the_ledger(tmp_path):
    c = C.Claims("01_audit", "smoke")
    c.check("held one", True, "1", "audit.acc.bp")
    c.check("not held one", False, "2")
    with pytest.raises(ValueError, match="needs a reason"):
        c.check("no reason", None, "")
    c.evaluate("crashes", lambda: 1 / 0)
    c.evaluate("no data", lambda: (None, "-"), reason="the run ended non-finite")
    path = c.save(tmp_path)
    assert path == tmp_path / "claims" / "01_audit.json"
    assert [p.name for p in (tmp_path / "claims").iterdir()] == ["01_audit.json"]      # no temporary left over
    rows = json.loads(path.read_text())["claims"]
    assert [r["status"] for r in rows] == ["held", "not held", "not evaluated", "not evaluated"]
    assert "ZeroDivisionError" in rows[2]["reason"] and rows[3]["reason"] == "the run ended non-finite"
    assert rows[0]["paper"] == C.paper("audit.acc.bp")["text"] and rows[0]["source"]
    C.Claims("02_temporal", "quick").save(tmp_path)
    ledger = C.ledger(tmp_path)
    assert list(ledger.notebook) == ["01_audit"] * 4 and set(ledger.profile) == {"smoke"}
    assert "NOT HELD" in str(c)
    # a first render leaves out the claims of the chapters still training (their file may be an earlier build's)
    t = C.Claims("03_cross_arch", "smoke")
    t.check("stale", True, "3")
    t.save(tmp_path)
    assert list(C.ledger(tmp_path).notebook).count("03_cross_arch") == 1
    assert "03_cross_arch" not in set(C.ledger(tmp_path, leave_out=["03_cross_arch"]).notebook)
    assert len(C.ledger(tmp_path, leave_out=["03_cross_arch"])) == 4


# --------------------------------------------------------------------------- calibration
def _history(growths, g_Ls, seconds=2.0, steps=10):
    return [{"epoch": e, "step": e * steps, "seconds": 0.0 if e == 0 else seconds, "test_acc": 0.5,
             "diag": Snapshot(hidden_norms=[1.0, g], bp_grad_norms=[1.0, gl], max_block_growth=g, g_L=gl,
                              stability=None, loss=1.0, acc=0.5, aggregate="test")}
            for e, (g, gl) in enumerate(zip(growths, g_Ls))]


def test_first_firing_reports_epoch_step_and_training_seconds():
    h = _history([1, 20, 60, 80], [1e-3, 1e-6, 5e-8, 1e-8])
    f = first_firing(h)
    assert f["D1"] == {"epoch": 2, "step": 20, "seconds": 4.0}
    assert f["D2"] == {"epoch": 2, "step": 20, "seconds": 4.0}
    assert first_firing(_history([1, 2], [1e-3, 1e-3])) == {"D1": None, "D2": None}
    assert first_firing(h, {"d1_growth": 70})["D1"]["epoch"] == 3


def test_summarise_gives_the_gap_and_what_bp_fires():
    run = lambda h, acc: SimpleNamespace(history=h, test_acc=acc, stopped=None)  # noqa: E731
    row = summarise("x", {"dfa": run(_history([1, 60], [1e-3, 1e-6]), 0.70),
                          "bp": run(_history([1, 2], [1e-3, 1e-3]), 0.85),
                          "frozen": run(_history([1, 1], [1e-3, 1e-3]), 0.80)})
    assert row["D1"]["step"] == 10 and row["D2"] is None and row["bp_fires"] == []
    assert row["gap_pp"] == pytest.approx(-10.0) and row["D3"] is True
    weak_bp = summarise("x", {"bp": run(_history([1, 2], [1e-3, 1e-3]), 0.81),
                              "frozen": run(_history([1, 1], [1e-3, 1e-3]), 0.80)})
    assert weak_bp["bp_fires"] == ["D3"] and weak_bp["bp_gap_pp"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- declared chapter plans
def test_every_declared_chapter_is_asked_for_by_a_notebook_and_vice_versa():
    import re
    from pathlib import Path

    from faeval.book.experiments import EXPERIMENTS

    asked = set()
    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        code = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        asked |= set(re.findall(r'P\.experiment\("(\w+)"\)', code))
        assert not re.search(r"P\.(train|sweep|runs|run)\(", code), f"{path.name} plans runs outside experiments.py"
    assert asked == set(EXPERIMENTS)


@pytest.mark.parametrize("name", list(PROFILES))
def test_planned_runs_are_the_union_of_the_chapters(name):
    from faeval.book.experiments import EXPERIMENTS, plan
    from faeval.config import config_hash

    p = get_profile(name)
    union = {config_hash(canonical_config(**cfg)) for ch in EXPERIMENTS for part in plan(ch, p).values()
             for cfg in part.values()}
    planned = [config_hash(c) for c in p.planned_runs()]
    assert len(planned) == len(set(planned)) and set(planned) == union
    with pytest.raises(ValueError, match="unknown chapter 'penalti'; chapters with runs: audit, calibration"):
        p.plan("penalti")


def test_a_per_seed_claim_states_k_of_n_and_the_spread():
    claims = C.Claims("01_audit", "quick")
    row = claims.per_seed("DFA fires D1 on every seed", {42: 70.9, 123: 7.6, 456: 51.2}, lambda v: v > 50,
                          "{:.3g}", "audit.dfa_d1")
    assert row["status"] == "not held"
    assert row["ours"] == "2/3 seeds; 7.6 to 70.9 (s42 70.9, s123 7.6, s456 51.2)"
    assert claims.per_seed("same", {1: 0, 2: 0}, lambda n: n == 0, "{:.0f} firings")["ours"] == \
        "2/2 seeds; all 0 firings (s1 0 firings, s2 0 firings)"
    assert claims.per_seed("all", {1: 60.0, 2: 61.0}, lambda v: v > 50)["status"] == "held"
    # a non-finite value does not hold (a NaN comparison would silently say False anyway; inf says True)
    assert claims.per_seed("inf", {1: float("inf"), 2: 60.0}, lambda v: v > 50)["ours"].startswith("1/2 seeds")
    assert claims.per_seed("verdicts", {1: "PASS", 2: "FAIL(D1)"}, lambda v: v == "PASS")["ours"] == \
        "1/2 seeds (s1 PASS, s2 FAIL(D1))"


def test_claims_record_their_parameters_and_overrides_do_not_overwrite_the_defaults(tmp_path):
    from faeval.config import CACHE_VERSION

    default = C.Claims("01_audit", get_profile("smoke"))
    default.check("x", True, "1")
    assert default.parameters == {"profile": "smoke", "overrides": {}, "cache_version": CACHE_VERSION}
    other = C.Claims("01_audit", get_profile("smoke", seeds=[7], methods=["bp", "dfa"]))
    other.check("x", False, "0")
    p1, p2 = default.save(tmp_path), other.save(tmp_path)
    assert p1.name == "01_audit.json" and p2.name.startswith("01_audit@") and p1 != p2
    assert json.loads(p2.read_text())["parameters"]["overrides"] == {"methods": ["bp", "dfa"], "seeds": [7]}
    table = C.ledger(tmp_path)
    assert table.set_index("parameters")["status"].to_dict() == {"defaults": "held",
                                                                  "methods=['bp', 'dfa'], seeds=[7]": "not held"}
    assert table[table["default"]]["status"].tolist() == ["held"]
    # a file from an older cache version is not the profile's either
    stale = json.loads(p1.read_text())
    stale["parameters"]["cache_version"] = CACHE_VERSION - 1
    p1.write_text(json.dumps(stale))
    assert not C.ledger(tmp_path)["default"].any()


def test_the_calibration_rule_needs_every_seed():
    from faeval.book.calibration import choose

    fire, quiet = {"epoch": 3, "step": 1000, "seconds": 9.0}, None
    rows = [{"candidate": "paper", "D1": fire, "D2": quiet, "bp_fires": []},      # holds on 1 of 2 seeds
            {"candidate": "paper", "D1": quiet, "D2": quiet, "bp_fires": []},
            {"candidate": "label_noise", "D1": quiet, "D2": fire, "bp_fires": []},  # holds on both
            {"candidate": "label_noise", "D1": fire, "D2": fire, "bp_fires": []},
            {"candidate": "width512", "D1": fire, "D2": fire, "bp_fires": ["D3"]}]  # BP fails
    chosen, table = choose(rows)
    assert chosen == "label_noise"
    assert {t["candidate"]: (t["rule holds on"], t["seeds"], t["qualifies"]) for t in table} == {
        "paper": (1, 2, False), "label_noise": (2, 2, True), "width512": (0, 1, False)}
    assert choose(rows[:2])[0] is None


def test_the_ledger_reads_a_reason_a_notebook_gave_its_own_claim(tmp_path):
    claims = C.Claims("08_discrepancies", "smoke")
    claims.check("x", False, "0", reason="not explained: ruled out a and b")
    claims.check("y", False, "0", reason="a note that names no kind")
    claims.save(tmp_path)
    table = C.ledger(tmp_path).set_index("claim")
    assert table.loc["x", "reason_kind"] == "not explained" and table.loc["x", "reason"] == "ruled out a and b"
    assert table.loc["y", "reason_kind"] == "" and table.loc["y", "reason"] == "a note that names no kind"


def test_reasons_are_written_into_the_claims_files_they_explain(tmp_path):
    """The appendix's reasons live in the claims files (readable without the ledger), only at the defaults."""
    default = C.Claims("01_audit", get_profile("smoke"))
    default.check("DFA fires D2", False, "0/2 seeds")
    default.check("BP passes", True, "2/2 seeds")
    other = C.Claims("01_audit", get_profile("smoke", seeds=[7]))
    other.check("DFA fires D2", False, "0/1 seeds")
    p1, p2 = default.save(tmp_path), other.save(tmp_path)
    reasons = [{"notebook": "01_audit", "claim": "DFA fires D2", "kind": "horizon", "text": "fires at epoch 20"}]
    assert C.attach_reasons(reasons, "smoke", tmp_path) == [p1]
    rows = {r["claim"]: r for r in json.loads(p1.read_text())["claims"]}
    assert (rows["DFA fires D2"]["reason_kind"], rows["DFA fires D2"]["reason"]) == ("horizon", "fires at epoch 20")
    assert rows["BP passes"]["reason"] == "" and rows["BP passes"]["reason_kind"] == ""
    assert json.loads(p2.read_text())["claims"][0]["reason"] == ""          # other parameters: untouched
    table = C.ledger(tmp_path)
    assert table[table.default & (table.claim == "DFA fires D2")]["reason_kind"].tolist() == ["horizon"]


def test_claims_of_two_head_regimes_record_which_is_judged_and_reasons_reach_only_the_judged(tmp_path):
    from faeval.book.claims import Claims, attach_reasons, ledger

    claims = Claims("01_audit", "smoke", judged="head fixed")
    for regime, held in (("head fixed", False), ("head trained", False)):
        claims.regime = regime
        claims.check("DFA fires D2 on every seed", held, f"ours in {regime}")
    claims.regime = None
    claims.check("A random-init model passes", True, "PASS")
    assert [(r["regime"], r["judged"]) for r in claims.rows] == [("head fixed", True), ("head trained", False),
                                                                ("", True)]
    assert list(claims.table()["regime"][:2]) == ["head fixed (judged)", "head trained (not judged)"]
    assert "[head trained, not judged] DFA fires D2" in str(claims)
    claims.save(tmp_path)
    attach_reasons([{"notebook": "01_audit", "claim": "DFA fires D2 on every seed", "kind": "horizon",
                     "text": "fires later"}], "smoke", tmp_path)
    table = ledger(tmp_path)
    assert list(table.judged) == [True, False, True]
    assert list(table.reason_kind) == ["horizon", "", ""]


def test_a_candidate_with_seeds_still_to_run_does_not_qualify():
    from faeval.book.calibration import choose

    fire = {"epoch": 3, "step": 1000, "seconds": 9.0}
    rows = [{"candidate": "label_noise", "D1": fire, "D2": None, "bp_fires": []}]
    assert choose(rows)[0] == "label_noise"
    assert choose(rows, n_seeds=3)[0] is None
    assert choose(rows * 3, n_seeds=3)[0] == "label_noise"


def test_the_sequential_calibration_plan_stops_a_candidate_where_the_rule_fails(tmp_path, monkeypatch, caplog):
    """Seeds in order: the next seed is planned once the last one's runs are stored and the rule held there."""
    from faeval.book import calibration as cal
    from faeval.schedule import train_until_stable

    tiny = {"dataset": "synthetic", "d": 8, "n_train": 64, "n_test": 32, "width": 8, "depth": 1, "eval_n": 32}
    cands = [cal.Candidate(n, n, {**tiny, "alpha": a}) for n, a in (("holds", 1.0), ("fails", 0.5), ("own", 0.0))]
    monkeypatch.setitem(cal.CANDIDATES, "holds", cands[0])
    monkeypatch.setitem(cal.CANDIDATES, "fails", cands[1])
    monkeypatch.setitem(cal.CANDIDATES, "own", cands[2])
    # the rule's outcome is the test's: it holds on every seed of "holds" and on no seed of "fails"
    monkeypatch.setattr(cal, "_rule_holds", lambda row: row["candidate"] == "holds")

    def plan():
        return cal.sequential_plan(cands, steps=4, seeds=(1, 2, 3), results=tmp_path, every_seed=["own"])

    def seeds(p):
        return {c.name: sorted({s for (n, s, _) in p if n == c.name}) for c in cands}

    assert seeds(plan()) == {"holds": [1], "fails": [1], "own": [1, 2, 3]}     # nothing stored yet
    with caplog.at_level("INFO", logger="faeval"):
        trained = train_until_stable(lambda: list(plan().values()), results=tmp_path, progress=False, workers=1)
    p = plan()
    assert seeds(p) == {"holds": [1, 2, 3], "fails": [1], "own": [1, 2, 3]}
    assert len(trained) == len(p) == 3 * 7 and all(m in ("dfa", "bp", "frozen") for (_, _, m) in p)
    assert caplog.text.count("the plan grew by 3 runs") == 2                   # seeds 2 and 3 of "holds"
    assert train_until_stable(lambda: list(plan().values()), results=tmp_path) == []


def test_train_until_stable_refuses_a_pass_that_leaves_its_runs_missing(tmp_path, monkeypatch):
    from faeval import schedule

    monkeypatch.setattr(schedule, "fit_many", lambda configs, **kw: [])       # trains nothing, stores nothing
    cfg = {"method": "bp", "dataset": "synthetic", "d": 8, "n_train": 64, "n_test": 32, "width": 8, "depth": 1}
    with pytest.raises(RuntimeError, match="1 runs were trained but are not in the store"):
        schedule.train_until_stable(lambda: [cfg], results=tmp_path)


def test_a_claim_id_names_its_chapter_and_is_used_once_per_regime():
    claims = C.Claims("01_audit", "smoke")
    row = claims.check("x", True, "1", id="audit.x")
    assert row["id"] == "audit.x" and claims.chapter == "audit"
    with pytest.raises(ValueError, match="used twice in 01_audit"):
        claims.check("x reworded", True, "1", id="audit.x")
    with pytest.raises(ValueError, match="must read 'audit.<name>'"):
        claims.check("y", True, "1", id="temporal.y")
    claims.regime = "head fixed"                     # the same claim in the other regime keeps its id
    assert claims.check("x", False, "0", id="audit.x")["regime"] == "head fixed"


def test_the_more_rules_summary_counts_passes_per_regime_and_keeps_angles_to_rules_with_feedback():
    import math

    import pandas as pd

    from faeval.book.chapters import more_rules as mr

    rows = []
    for regime, verdicts in (("head fixed", {"fa": ["FAIL(D1)", "PASS"], "kp": ["PASS", "PASS"]}),
                             ("head trained", {"fa": ["PASS"], "kp": ["FAIL(D3)"]})):
        for m, vs in verdicts.items():
            for s, v in enumerate(vs):
                rows.append({"regime": regime, "method": m, "family": mr.FAMILY[m], "seed": s, "acc": 0.5 + 0.1 * s,
                             "margin_pp": 3.0, "growth": 1.0, "g_L": 1e-3, "C": 0.9, "deep Gamma": 0.5,
                             "angle": math.nan if m == "fa" else 10.0 + s, "head angle": math.nan if m == "fa" else 5.0,
                             "verdict": v, "Mode 1 or D3": "PASS"})
    summary = mr.summary(pd.DataFrame(rows))
    assert summary.loc[("head fixed", "kp"), "PASS"] == "2/2" and summary.loc[("head fixed", "fa"), "PASS"] == "1/2"
    assert summary.loc[("head trained", "kp"), "PASS"] == "0/1" and summary.loc[("head fixed", "kp"), "acc"] == 0.55
    assert list(summary.loc["head fixed"].index) == ["kp", "fa"]          # every seed passing first
    assert list(mr.protocol_table(summary, "head fixed").data.columns) == mr.PROTOCOL_COLUMNS
    angles = mr.angle_table(summary)
    assert list(angles.index) == ["kp"] and angles.loc["kp", ("head fixed", "angle")] == 10.5
    assert list(angles.columns.get_level_values(0).unique()) == ["head fixed", "head trained"]
