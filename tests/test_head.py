"""head_lr: the output head's learning rate as a multiple of lr, a hyperparameter of every rule.

At 0 the head stays at its initialisation (the regime in which the paper's scale failure shows),
it is part of the run key, and a vectorised group trains what the runs alone train.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import faeval as fe
import faeval.book as fb
from faeval import config
from faeval.many import fit_group
from faeval.train import fit


@pytest.fixture(scope="module")
def fmnist():
    return fe.load_dataset("fashion-mnist", subset=8192, seed=0)


def _dfa_growth(data, head_lr):
    model = fe.build_model("resmlp", data.input_shape, data.num_classes, seed=42, width=256)
    head0 = [p.detach().clone() for p in model.out_head.parameters()]
    run = fit(model, fe.build_method("dfa", model, seed=42, head_lr=head_lr), data, 3, seed=42, progress=False,
              eval_n=256)
    same = all(torch.equal(a, b) for a, b in zip(head0, model.out_head.parameters()))
    return run.final["diag"].max_block_growth, same, model


def test_a_fixed_head_stays_bit_identical_and_dfa_grows_ten_times_faster(fmnist):
    fixed, same_fixed, m_fixed = _dfa_growth(fmnist, 0.0)
    trained, same_trained, _ = _dfa_growth(fmnist, 1.0)
    assert same_fixed and not same_trained
    # measured 2026-12-03: growth 54 (fixed) against 4.6 (trained) after 3 epochs on 8,192 images
    assert fixed >= 10 * trained, (fixed, trained)
    # the rest of the model trains in both regimes
    fresh = fe.build_model("resmlp", fmnist.input_shape, fmnist.num_classes, seed=42, width=256)
    assert not torch.equal(fresh.out_ln.weight, m_fixed.out_ln.weight)
    assert not torch.equal(fresh.embed.weight, m_fixed.embed.weight)


@pytest.mark.parametrize("name", ["bp", "frozen", "fa", "dfa", "ep", "state_bridge", "credit_bridge"])
def test_every_rule_takes_head_lr_and_leaves_the_head_out_of_its_parameters_at_zero(name):
    model = fe.build_model("resmlp", (12,), 5, seed=0, width=16, depth=2)
    head = {id(p) for p in model.out_head.parameters()}
    rule = fe.build_method(name, model, seed=0, head_lr=0)
    assert not head & {id(p) for p in rule.parameters()}
    x, y = torch.randn(8, 12), torch.arange(8) % 5
    rule.start_training(10)
    rule.step(x, y)
    assert all(p.grad is None for p in model.out_head.parameters())
    assert rule.head_lr == 0.0 and "head_lr=0" in repr(rule)


def test_head_lr_scales_the_heads_learning_rate_only():
    model = fe.build_model("resmlp", (12,), 5, seed=0, width=16, depth=2)
    groups = fe.build_method("dfa", model, head_lr=0.1).param_groups(1e-3)
    head = {id(p) for p in model.out_head.parameters()}
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    assert {id(p) for p in groups[1]["params"]} == head
    assert not head & {id(p) for p in groups[0]["params"]}
    assert len(fe.build_method("dfa", model).param_groups(1e-3)) == 1      # head_lr=1: one group, as before


def test_a_head_at_a_tenth_of_lr_takes_a_tenth_of_adams_step():
    """Adam's first step moves every weight by about lr: the head's by lr * head_lr."""
    moved = {}
    for head_lr in (1.0, 0.1):
        model = fe.build_model("resmlp", (12,), 5, seed=0, width=16, depth=2)
        before = model.out_head.weight.detach().clone()
        rule = fe.build_method("bp", model, head_lr=head_lr)
        opt = fe.train.adamw(rule.param_groups(1e-2), lr=1e-2, weight_decay=0.0)
        rule.step(torch.randn(8, 12, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 5)
        opt.step()
        moved[head_lr] = (model.out_head.weight - before).abs().median().item()
    assert moved[0.1] == pytest.approx(0.1 * moved[1.0], rel=1e-3), moved


def test_head_lr_is_part_of_the_run_key_and_refused_out_of_range():
    a, b = (config.canonical_config(method="dfa", head_lr=h) for h in (1.0, 0.0))
    assert a["hparams"]["head_lr"] == 1.0 and b["hparams"]["head_lr"] == 0.0
    assert config.config_hash(a) != config.config_hash(b)
    assert config.config_hash(a) == config.config_hash(config.canonical_config(method="dfa", head_lr=1))
    model = fe.build_model("resmlp", (12,), 5, seed=0, width=16, depth=2)
    for bad in (-0.5, float("nan"), True):
        with pytest.raises(ValueError, match="head_lr"):
            fe.build_method("dfa", model, head_lr=bad)


def test_a_group_with_a_fixed_head_matches_the_runs_alone():
    data = fe.load_dataset("synthetic", n_train=384, n_test=128, d=24)

    def build(seed):
        model = fe.build_model("resmlp", data.input_shape, data.num_classes, seed=seed, width=24, depth=3)
        return model, fe.build_method("dfa", model, seed=seed, head_lr=0.0)

    alone = [fit(*build(s), data, 2, s, progress=False) for s in (0, 1)]
    built = [build(s) for s in (0, 1)]
    heads = [[p.detach().clone() for p in m.out_head.parameters()] for m, _ in built]
    together = fit_group([b[0] for b in built], [b[1] for b in built], [data] * 2, 2, [0, 1], progress=False)
    for a, b, h in zip(alone, together, heads):
        assert all(torch.equal(p, q) for p, q in zip(h, b.model.out_head.parameters()))
        for pa, pb in zip(a.model.parameters(), b.model.parameters()):
            torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)
        assert abs(a.final["test_loss"] - b.final["test_loss"]) < 1e-4 * (1 + a.final["test_loss"])
    # runs whose head_lr differs do not share a group
    m0, r0 = build(0)
    m1 = fe.build_model("resmlp", data.input_shape, data.num_classes, seed=1, width=24, depth=3)
    with pytest.raises(ValueError, match="head_lr"):
        fit_group([m0, m1], [r0, fe.build_method("dfa", m1, seed=1)], [data] * 2, 1, [0, 1], progress=False)


def test_a_layered_model_keeps_its_own_head_fixed():
    data = fe.load_dataset("synthetic", n_train=384, n_test=64, d=24)
    net = nn.Sequential()
    net.stem, net.block = nn.Linear(24, 16), nn.Linear(16, 16)
    net.norm, net.head = nn.LayerNorm(16), nn.Linear(16, data.num_classes)
    model = fe.layered(net, embed="stem", blocks=["block"], readout=["norm", "head"], input_shape=(24,),
                       residual=False)
    head, stem = net.head.weight.detach().clone(), net.stem.weight.detach().clone()
    fit(model, fe.build_method("dfa", model, seed=0, head_lr=0), data, 1, 0, progress=False, eval_n=64)
    assert torch.equal(head, net.head.weight)
    assert not torch.equal(stem, net.stem.weight)


# -- the two regimes in the book ------------------------------------------------------------
def test_every_local_rule_of_the_quick_audit_has_a_fixed_head_twin_and_the_references_have_none():
    P = fb.get_profile("quick")
    plan = P.plan("audit")
    assert set(plan["fixed_head_runs"]) == {(m, s) for m in P.methods if m != "bp" for s in P.seeds}
    for key, cfg in plan["fixed_head_runs"].items():
        assert {**cfg, "head_lr": 1.0} == {**plan["runs"][key], "head_lr": 1.0} and cfg["head_lr"] == 0.0
    views = fb.head.by_regime({("bp", 1): "bp run", ("dfa", 1): "dfa run"}, {("dfa", 1): "fixed dfa run"})
    assert views == {"head trained": {("bp", 1): "bp run", ("dfa", 1): "dfa run"},
                     "head fixed": {("bp", 1): "bp run", ("dfa", 1): "fixed dfa run"}}
    # every chapter that shows both regimes plans them; the dose-response spans trained to fixed
    for chapter in ("temporal", "penalty", "fa_vs_dfa"):
        assert any(part.startswith(fb.head.FIXED) for part in P.plan(chapter)), chapter
    assert sorted(P.plan("calibration")["head_dose"]) == [0.0, 0.01, 0.1, 1.0]


def _fake_run(acc, growth=2.0, g_L=1e-4, h_L=10.0, gamma=(0.0, 0.0, 0.0), history=None):
    from types import SimpleNamespace

    snap = SimpleNamespace(max_block_growth=growth, g_L=g_L, h_L=h_L, gamma=list(gamma))
    return SimpleNamespace(test_acc=acc, history=history or [{"epoch": 3, "diag": snap}])


def _regime(dfa_paper_like: bool, seeds=(1, 2)):
    """The runs the signatures read, either like the paper's DFA or like a healthy one."""
    if dfa_paper_like:
        dfa = {s: _fake_run(0.30, growth=700, g_L=4e-9, gamma=(0.42, 0.01, -0.01)) for s in seeds}
        assay = {"dfa": _fake_run(0.1, h_L=2e4), "ep": _fake_run(0.1, h_L=500)}
    else:
        dfa = {s: _fake_run(0.80, gamma=(0.9, 0.8, 0.7)) for s in seeds}
        assay = {"dfa": _fake_run(0.1, h_L=90), "ep": _fake_run(0.1, h_L=50)}
    return {"dfa": dfa, "fa": {s: _fake_run(0.5) for s in seeds}, "frozen": {s: _fake_run(0.35) for s in seeds},
            "assay": assay}


@pytest.mark.parametrize("fixed_like_paper, trained_like_paper, judged", [
    (True, False, "head fixed"), (False, True, "head trained"), (False, False, "head trained")])
def test_the_rule_judges_the_regime_that_matches_more_signatures_and_a_tie_keeps_the_default(
        monkeypatch, fixed_like_paper, trained_like_paper, judged):
    runs = {"head trained": _regime(trained_like_paper), "head fixed": _regime(fixed_like_paper)}
    monkeypatch.setattr(fb.head, "_regime_runs", lambda P: runs)
    monkeypatch.setattr(fb.head, "_DECISIONS", {})
    decision = fb.head.decide(fb.get_profile("smoke"))
    assert decision.judged == judged and decision.order == [judged, decision.other]
    assert decision.label(judged) == f"{judged} (judged)" and decision.label(decision.other).endswith("(not judged)")
    # the paper-like fake matches all seven signatures, the healthy one none
    assert decision.counts == {"head trained": 7 if trained_like_paper else 0,
                               "head fixed": 7 if fixed_like_paper else 0}, decision.table
    assert ("tie" in decision.why()) == (fixed_like_paper == trained_like_paper)
    assert decision.table[-1] == {"signature": "signatures matched", "paper": "7 of 7",
                                  **{r: f"{n} of 7" for r, n in decision.counts.items()}}
