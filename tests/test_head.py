"""head_lr: the output head's learning rate as a multiple of lr, a hyperparameter of every rule.

At 0 the head stays at its initialisation (the regime in which the paper's scale failure shows),
it is part of the run key, and a vectorised group trains what the runs alone train.
"""
from __future__ import annotations

import math

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


def _fake_run(acc, growth=2.0, g_L=1e-4, h_L=10.0, gamma=(0.0, 0.0, 0.0), history=None):
    from types import SimpleNamespace

    snap = SimpleNamespace(max_block_growth=growth, g_L=g_L, h_L=h_L, gamma=list(gamma))
    return SimpleNamespace(test_acc=acc, history=history or [{"epoch": 3, "diag": snap}])


# -- the regimes in the book, and the dial ---------------------------------------------------
def test_every_local_rule_and_the_frozen_baseline_of_the_quick_audit_get_a_fitted_head_twin(monkeypatch):
    P = fb.get_profile("quick")
    monkeypatch.setattr(fb.head, "fitted_head_lr", lambda P: None)
    before = P.plan("audit")                     # until the fit is known: the grid's runs it reads, no fitted runs
    assert "no_ln" not in P.plan("discrepancies") and fb.head.FIT_INPUTS in P.plan("discrepancies")
    assert "fitted_head_runs" not in before and before[fb.head.FIT_INPUTS] == fb.head.fit_inputs(P)
    assert {k[1] for k in fb.head.fit_inputs(P) if len(k) == 3 and k[0] == "dfa"} == set(fb.head.GRID)
    monkeypatch.setattr(fb.head, "fitted_head_lr", lambda P: 0.1)
    plan = P.plan("audit")
    assert set(plan["fitted_head_runs"]) == {(m, s) for m in (*P.methods, "frozen") if m != "bp" for s in P.seeds}
    for key, cfg in plan["fitted_head_runs"].items():
        assert {**cfg, "head_lr": 1.0} == {**plan["runs"][key], "head_lr": 1.0} and cfg["head_lr"] == 0.1
    views = fb.head.by_regime({("bp", 1): "bp run", ("dfa", 1): "dfa run"}, {("dfa", 1): "fitted dfa run"})
    assert views == {"head trained": {("bp", 1): "bp run", ("dfa", 1): "dfa run"},
                     "head fitted": {("bp", 1): "bp run", ("dfa", 1): "fitted dfa run"}}
    for chapter in ("temporal", "penalty", "fa_vs_dfa", "cross_arch", "more_rules"):
        assert any(part.startswith("fitted_head_") for part in P.plan(chapter)), chapter
    # the discrepancies' no-LN probes train in the judged regime (the fitted value), the others keep the head
    probes = P.plan("discrepancies")
    assert {c["head_lr"] for c in probes["no_ln"].values()} == {0.1}
    assert probes["long"]["dfa"].get("head_lr", 1.0) == 1.0
    monkeypatch.setattr(fb.head, "fitted_head_lr", lambda P: 1.0)      # the dial picks 1: judged head trained
    assert {c["head_lr"] for c in P.plan("discrepancies")["no_ln"].values()} == {1.0}
    # the mechanism keeps its head-fixed twin (head_lr 0) whatever the fit
    assert {c["head_lr"] for c in P.plan("head_mechanism")["fixed_head_noisy"].values()} == {0.0}


def test_the_grid_runs_every_head_lr_on_the_first_seed_and_the_ends_and_the_fit_on_every_seed():
    P = fb.get_profile("quick")
    grid = fb.head.grid_plan(P)["grid"]
    s0, rest = P.seeds[0], P.seeds[1:]
    assert {h for (m, h, s) in grid if s == s0 and m == "dfa"} == set(fb.head.GRID)
    assert {h for (m, h, s) in grid if s in rest} == {1.0, 0.0}
    assert {h for (m, h, s) in fb.head.grid_plan(P, 0.03)["grid"] if s in rest} == {1.0, 0.03, 0.0}
    assert grid["fa", 0.1, s0] == P.config("fa", s0, head_lr=0.1)


def _snap(growth=2.0, h_L=10.0, g_L=1e-4, gamma=(0.0, 0.0, 0.0)):
    from types import SimpleNamespace

    return SimpleNamespace(max_block_growth=growth, g_L=g_L, h_L=h_L, gamma=list(gamma))


def test_each_distance_reads_decades_outside_the_band_headroom_units_and_gamma_per_layer():
    growth, h_L, _, margin, gamma, *_ = fb.head.DISTANCES
    assert growth.distance(1.9e3) == 0 and growth.distance(19) == pytest.approx(2.0)
    assert h_L.distance(4.5e8) == 0 and h_L.distance(5e9) == pytest.approx(1.0)     # from the band's upper edge
    assert h_L.distance(0) == float("inf")
    # DFA's margin in BP's headroom: ours (0.80 - 0.84) / (0.88 - 0.84) = -1 against the paper's (0.306 - 0.349) /
    # (0.615 - 0.349) = -0.1617
    refs = {"bp": _fake_run(0.88), "frozen": _fake_run(0.84)}
    ours = margin.read(_fake_run(0.80), refs)
    assert ours == pytest.approx(-1.0) and margin.distance(ours) == pytest.approx(1 - 0.043 / 0.266, abs=1e-3)
    # per layer: l0 against +0.42, the rest against 0, averaged: (|0.42-0.42| + 0.3 + 0.1) / 3
    assert gamma.distance([0.42, 0.3, -0.1]) == pytest.approx(0.4 / 3)


def _grid_runs(near: float, seed=1):
    """Fake grid runs: every signature at the paper's value at head_lr ``near``, and 10x away elsewhere."""
    runs = {}
    for h in fb.head.GRID:
        k = 1.0 if h == near else 10.0
        runs["dfa", h, seed] = _fake_run(0.84 - 0.0043, history=[{"epoch": 8, "diag": _snap(
            1.9e3 * k, 4.5e8 * k, 2e-9 * k, (0.42, 0.0, 0.0))}])
        runs["fa", h, seed] = _fake_run(0.84 + 0.0052, history=[{"epoch": 8, "diag": _snap(
            50, 1e5 * k, 1e-6 * k, (0.33, 0.33, 0.33))}])
    refs = {("bp", seed): _fake_run(0.84 + 0.0266), ("frozen", seed): _fake_run(0.84)}
    return runs, refs


@pytest.mark.parametrize("near", [0.1, 0.0, 1.0])
def test_the_dial_fits_the_head_lr_of_least_total_distance(near):
    runs, refs = _grid_runs(near)
    fit = fb.head.fit_runs(runs, refs, seed=1)
    assert fit.head_lr == near and fit.totals[near] == pytest.approx(0, abs=1e-6)
    assert fit.unfit() == [] and "every signature lies within" in fit.why()
    # elsewhere: DFA growth and FA's h_L and g_L a decade from their points, DFA's h_L (4.5e9) and g_L (2e-8) from
    # their bands' upper edges (5e8, 4e-9); margins and Gamma unchanged
    other = next(h for h in fb.head.GRID if h != near)
    assert fit.totals[other] == pytest.approx(3 + math.log10(4.5e9 / 5e8) + math.log10(2e-8 / 4e-9), abs=1e-6)
    table = fit.table()
    assert list(table.index)[-1] == "total distance" and table.shape == (len(fb.head.DISTANCES) + 1, 7)


def test_a_tie_keeps_the_larger_head_lr_and_unfit_signatures_are_named():
    runs, refs = _grid_runs(0.1)
    runs["dfa", 0.1, 1].history[-1]["diag"].h_L = 4.5e9          # as far as at every other head_lr
    fit = fb.head.fit_runs(runs, refs, seed=1)
    assert fit.head_lr == 0.1
    assert fit.unfit() == ["DFA ||h_L||"]
    assert "DFA ||h_L|| is 0.95 away (nearest at head_lr 1)" in fit.why()    # a tie: the larger head_lr
    flat, _ = _grid_runs(0.1)
    flat = {k: _fake_run(r.test_acc, history=[{"epoch": 8, "diag": _snap(1.9e3, 4.5e8, 2e-9, (0.42, 0, 0))
                                                if k[0] == "dfa" else _snap(50, 1e5, 1e-6, (0.33,) * 3)}])
            for k, r in flat.items()}
    assert fb.head.fit_runs(flat, refs, seed=1).head_lr == 1.0
    with pytest.raises(ValueError, match="head grid lacks"):
        fb.head.fit_runs({k: r for k, r in flat.items() if k[1] != 0.3}, refs, seed=1)


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


@pytest.mark.parametrize("fitted, judged", [(0.1, "head fitted"), (1.0, "head trained")])
def test_the_claims_are_judged_at_the_fitted_value_with_the_binary_count_beside(monkeypatch, fitted, judged):
    runs = {"head trained": _regime(False), "head fitted": _regime(False), "head fixed": _regime(True)}
    grid, refs = _grid_runs(fitted)
    monkeypatch.setattr(fb.head, "_regime_runs", lambda P: runs)
    monkeypatch.setattr(fb.head, "fit", lambda P: fb.head.fit_runs(grid, refs, seed=1))
    monkeypatch.setattr(fb.head, "_DECISIONS", {})
    decision = fb.head.decide(fb.get_profile("smoke"))
    assert decision.judged == judged and decision.order == [judged, decision.other]
    assert set(decision.order) == {"head trained", "head fitted"}
    assert decision.head_lr == {"head trained": 1.0, "head fitted": fitted, "head fixed": 0.0}
    assert decision.label(judged) == f"{judged} (judged)" and decision.label(decision.other).endswith("(not judged)")
    # the paper-like fake matches all seven signatures, the healthy one none
    assert decision.counts == {"head trained": 0, "head fitted": 0, "head fixed": 7}, decision.table
    assert f"head_lr {fitted:g} has the least total distance" in decision.why()
    assert "head fixed 7" in decision.why()
    assert decision.table[-1] == {"signature": "signatures matched", "paper": "7 of 7",
                                  **{r: f"{n} of 7" for r, n in decision.counts.items()}}
