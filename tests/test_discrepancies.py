"""The discrepancies appendix's machinery: probes match claims, every reason has one of five kinds."""
import math
import subprocess
import sys

import pytest
import torch

from faeval import build_method, build_model
from faeval.book import discrepancies as X


def test_a_reason_must_be_one_of_the_five_kinds():
    assert X.Reason("horizon", "fires at epoch 20").kind == "horizon"
    with pytest.raises(ValueError, match="must be one of"):
        X.Reason("bad luck", "")


def test_explain_runs_the_probe_of_the_claims_id_and_says_when_there_is_none(monkeypatch):
    calls = []
    monkeypatch.setattr(X, "PROBES", {})
    X.probe("audit.dfa_d2")(lambda row, ctx: calls.append(row["claim"]) or X.Reason("horizon", "later"))
    rows = [{"notebook": "01_audit", "id": "audit.dfa_d2", "claim": "DFA fires D2 on every seed", "status": "not held"},
            {"notebook": "01_audit", "id": "audit.bp", "claim": "BP passes", "status": "held"},
            {"notebook": "02_temporal", "id": "temporal.dfa_d2", "claim": "DFA fires D2 before the end",
             "status": "not held"}]
    out = X.explain(rows, ctx=None)
    assert calls == ["DFA fires D2 on every seed"]
    assert [(r["id"], r["kind"]) for r in out] == [("audit.dfa_d2", "horizon"), ("temporal.dfa_d2", "not explained")]
    assert "no probe" in out[1]["text"]
    with pytest.raises(ValueError, match="already has a probe"):
        X.probe("audit.dfa_d2")(lambda row, ctx: None)


def test_rewording_a_claim_keeps_its_reason(monkeypatch):
    """Probes are found by the claim's id, never by its sentence."""
    monkeypatch.setattr(X, "PROBES", {})
    X.probe("audit.dfa_d1")(lambda row, ctx: X.Reason("horizon", "fires at epoch 20"))
    before = {"notebook": "01_audit", "id": "audit.dfa_d1", "claim": "DFA fires D1 on every seed",
              "status": "not held"}
    after = {**before, "claim": "On every seed, DFA's per-block growth exceeds 50x (D1)"}
    assert [r["text"] for r in X.explain([before], None)] == [r["text"] for r in X.explain([after], None)] == [
        "fires at epoch 20"]


def test_crossing_epoch_extrapolates_a_log_linear_trend():
    e = list(range(1, 9))
    g = [1e-3 * 10 ** (-0.5 * (k - 1)) for k in e]          # falls half a decade per epoch
    assert X.crossing_epoch(e, g, 1e-7) == pytest.approx(9.0)
    assert X.crossing_epoch(e, [1e-3] * 8, 1e-7) is None      # flat: never crosses
    rising = [10 ** (0.1 * k) for k in e]
    assert X.crossing_epoch(e, rising, 1e-7) is None          # moves away from a floor below it
    assert X.crossing_epoch(e, rising, 50.0) == pytest.approx(math.log10(50) / 0.1)


def test_the_head_probe_names_the_head_where_the_other_regime_holds_and_only_judged_claims_are_explained(
        monkeypatch):
    import pandas as pd

    from faeval.book.profiles import get_profile

    monkeypatch.setattr(X, "PROBES", {})
    X.probe("audit.d1")(lambda row, ctx: X.Reason("not explained", "ruled out the horizon"))
    def row(claim, regime, judged, status, ours):
        ids = {"DFA fires D2 on every seed": "audit.d2", "DFA fires D1 on every seed": "audit.d1"}
        return {"notebook": "01_audit", "id": ids.get(claim, "audit.fa_vs_dfa"), "claim": claim, "regime": regime,
                "judged": judged, "status": status, "ours": ours}
    rows = [row("DFA fires D2 on every seed", "head trained", True, "not held", "0/3 seeds (g_L 3e-06)"),
            row("DFA fires D2 on every seed", "head fixed", False, "held", "3/3 seeds (g_L 9e-08)"),
            row("DFA fires D1 on every seed", "head trained", True, "not held", "0/3 seeds"),
            row("DFA fires D1 on every seed", "head fixed", False, "not held", "1/3 seeds"),
            row("FA is more accurate than DFA", "head fixed", False, "not held", "FA 0.8 vs DFA 0.9")]
    ctx = X.Context(get_profile("smoke"), pd.DataFrame(rows), regime="head trained")
    out = X.explain(rows, ctx)
    assert [r["claim"] for r in out] == ["DFA fires D2 on every seed", "DFA fires D1 on every seed"]
    d2, d1 = out
    assert d2["kind"] == "implementation choice" and d2["probe"] == "output head"
    assert "head fixed (head_lr 0) the claim holds (3/3 seeds (g_L 9e-08))" in d2["text"]
    assert "0/3 seeds (g_L 3e-06)" in d2["text"]
    # the other regime does not hold either: the claim's own probe gives the reason, after what the head gave
    assert d1["kind"] == "not explained"
    assert d1["text"] == "with the head fixed it does not hold either (1/3 seeds); ruled out the horizon"
    assert ctx.claim_held("audit.d2") is False       # the judged row, not the other regime's


def test_where_dfa_fires_the_stop_probe_reports_the_stop_not_a_horizon(monkeypatch):
    """'DFA's accuracy at the stop' fails when DFA fires early and keeps learning (the head-fixed regime at
    the quick profile): the reason gives the stop and the accuracies, never 'no firing within the horizon'."""
    from types import SimpleNamespace

    from faeval.book.profiles import get_profile
    from faeval.snapshot import Snapshot

    def run(growths, accs):
        return SimpleNamespace(history=[
            {"epoch": e, "test_acc": a, "diag": Snapshot(hidden_norms=[1.0, g], bp_grad_norms=[1.0, 1e-3],
                                                        max_block_growth=g, g_L=1e-3, stability=None, loss=1.0,
                                                        acc=a, aggregate="test")}
            for e, (g, a) in enumerate(zip(growths, accs))], test_acc=accs[-1])

    P = get_profile("smoke")
    fires = {("dfa", s): run([1, 227, 727], [0.1, 0.19, 0.47]) for s in P.seeds}
    ctx = X.Context(P)
    monkeypatch.setattr(ctx, "judged_runs", lambda chapter, part: fires)
    reason = X.stop_accuracy({"claim": "DFA's accuracy at the stop is within 5 points"}, ctx)
    assert reason.kind == "not explained" and reason.probe == "accuracy after the stop"
    assert "s42 stops at epoch 1 of 2 with accuracy 0.190, final 0.470" in reason.text
    # without a firing there is no stop: the firing's own probe answers (it reads the long DFA run)
    quiet = {("dfa", s): run([1, 2, 3], [0.1, 0.5, 0.6]) for s in P.seeds}
    monkeypatch.setattr(ctx, "judged_runs", lambda chapter, part: quiet)
    monkeypatch.setattr(X, "d2_horizon", lambda row, ctx: X.Reason("horizon", "the firing's reason", "longer"))
    assert X.stop_accuracy({}, ctx).text == "the firing's reason"


def test_dfa_input_credit_trains_block_l_on_the_credit_of_its_input():
    """The pairing probe of the discrepancies appendix: dfa_input_credit with feedback B_0..B_L trains
    exactly as DFA whose feedback for h_{l+1} is B_l (and keeps B_0 for the embedding)."""
    model = build_model("resmlp", (12,), 5, seed=3, width=16, depth=3)
    x, y = torch.randn(32, 12, generator=torch.Generator().manual_seed(3)), torch.arange(32) % 5
    probe = build_method("dfa_input_credit", model, seed=3)
    plain = build_method("dfa", model, seed=3)
    fb = probe.feedback
    plain.feedback = [fb[0], *fb[:-1]]
    grads = []
    for rule in (probe, plain):
        model.zero_grad()
        rule.loss(x, y)[0].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b) for a, b in zip(*grads))
    # Gamma reads the credit at each state, as for DFA: a_l = e B_l at h_l
    assert all(torch.equal(a, b) for a, b in zip(probe.credit(x, y), build_method("dfa", model, seed=3).credit(x, y)))
    with pytest.raises(ValueError, match="states of one shape"):
        build_method("dfa_input_credit", build_model("cnn", (1, 28, 28), 10, seed=0, channels=(4, 8, 8), hidden=8))


def test_the_probe_rules_are_the_books_not_the_librarys():
    """``import faeval`` registers no probe rule of the appendix; the book's experiments register it."""
    code = "import faeval, faeval.methods as m; print(sorted(m.METHODS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'dfa'" in out.stdout and "dfa_input_credit" not in out.stdout
    from faeval.methods import METHODS
    assert METHODS["dfa_input_credit"].__module__ == "faeval.book.probe_rules"


def test_d3_is_data_only_where_the_headroom_scaled_bar_holds_and_the_absolute_one_fails(monkeypatch):
    """The paper's 2 pp bar scales with BP's headroom over frozen (26.6 pp there). FA at +0.5 pp on a task with 4 pp
    of headroom clears the scaled bar (0.30 pp) and misses the absolute one: kind data. At +0.1 pp it misses
    both: not explained."""
    from types import SimpleNamespace

    from faeval.book import head as fb_head
    from faeval.book.profiles import get_profile

    assert fb_head.paper_headroom() == pytest.approx(26.6, abs=0.05)
    assert X.scaled_bar(fb_head.paper_headroom()) == pytest.approx(2.0)
    P = get_profile("smoke")
    ctx = X.Context(P)

    def runs(fa_margin_pp):
        judged = {("frozen", s): SimpleNamespace(test_acc=0.80) for s in P.seeds}
        judged |= {("fa", s): SimpleNamespace(test_acc=0.80 + fa_margin_pp / 100) for s in P.seeds}
        trained = {("frozen", s): SimpleNamespace(test_acc=0.82) for s in P.seeds}
        trained |= {("bp", s): SimpleNamespace(test_acc=0.86) for s in P.seeds}
        return judged, trained

    probes = {"fa_clean": SimpleNamespace(test_acc=0.85), "frozen_clean": SimpleNamespace(test_acc=0.84),
              "bp_last_block": SimpleNamespace(test_acc=0.83)}
    monkeypatch.setattr(ctx, "probe_runs", lambda part: probes)
    for margin, kind in ((0.5, "data"), (0.1, "not explained"), (2.5, "not explained")):
        judged, trained = runs(margin)
        monkeypatch.setattr(ctx, "judged_runs", lambda chapter, part, j=judged: j)
        monkeypatch.setattr(ctx, "runs", lambda chapter, t=trained: {"runs": t})
        reason = X.fa_headroom({}, ctx)
        assert reason.kind == kind, (margin, reason.text)
    assert "s42 +2.50 pp against 0.30 (headroom 4.0 pp)" in reason.text


def test_a_claim_over_several_backbones_is_explained_only_where_every_failing_backbone_is():
    horizon = X.Reason("horizon", "fires at epoch 20", "longer training", judged_regime=True)
    choice = X.Reason("implementation choice", "batch norm", "batch norm", judged_regime=True)
    unknown = X.Reason("not explained", "ruled out the horizon", "longer training", judged_regime=True)
    both = X._per_backbone({"A": horizon, "B": choice, "C": horizon}, "D1")
    assert both.kind == "horizon" and both.judged_regime
    assert both.text == "A (horizon): fires at epoch 20; B (implementation choice): batch norm; C (horizon): " \
                        "fires at epoch 20"
    assert both.probe == "longer training, batch norm"
    assert X._per_backbone({"A": choice, "B": horizon}, "D1").kind == "implementation choice"   # tie: the first
    assert X._per_backbone({"A": horizon, "B": unknown}, "D1").kind == "not explained"
    assert X._per_backbone({}, "D2").kind == "not explained"
