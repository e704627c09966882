"""Diagnostics and FAProtocol on cases with known answers."""
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from faeval import FAProtocol, Monitor, build_model
from faeval import diagnostics as D
from faeval.analysis import decision_utility_ablation, row_from_report, threshold_sensitivity
from faeval.errors import MissingAuxStateError
from faeval.snapshot import Snapshot, snapshot
from faeval.tap import Tap


def _data(n=1280, shape=(1, 28, 28), seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.fixture(scope="module")
def xy():
    return _data()


def _resmlp(seed=0, **kw):
    return build_model("resmlp", (1, 28, 28), 10, seed=seed, **kw)


# -- known answers ----------------------------------------------------------------------
def test_random_init_resmlp_passes(xy):
    x, y = xy
    r = FAProtocol(_resmlp(), x, y, frozen_baseline_acc=0.05).run()
    assert r["verdict"] == "PASS" and r.fired == [] and not r.mode1
    d = r["diagnostics"]
    assert 0.9 < d["D1_scale_growth"]["value"] < 1.2              # ~1 per block at init
    assert 3e-3 < d["D2_ref_validity"]["value"] < 2e-2           # ~8e-3 (SPEC 1.1 random-init BP grad)
    assert -0.1 < d["C_direction_stability"]["value"] < 0.3
    assert d["C_direction_stability"]["n_batches"] == 10
    assert all(7 < h < 11 for h in r["per_layer"]["hidden_norms"])


def test_blown_up_blocks_fire_d1(xy):
    x, y = xy
    m = _resmlp()
    with torch.no_grad():
        m.blocks[1].w2.weight.mul_(1e4)                           # block 1 multiplies the stream
    r = FAProtocol(m, x, y).run()
    assert r["diagnostics"]["D1_scale_growth"]["fired"]
    assert r["diagnostics"]["D1_scale_growth"]["value"] > 50
    assert "D1" in r["verdict"]


def test_terminal_ln_with_huge_stream_fires_d2_only(xy):
    x, y = xy
    m = _resmlp()
    with torch.no_grad():                                       # ||h|| ~ 1e8 everywhere: no growth, but
        m.embed.weight.mul_(1e7)                                # the LN Jacobian 1/||h|| kills g_L
        m.embed.bias.mul_(1e7)
    r = FAProtocol(m, x, y).run()
    d = r["diagnostics"]
    assert d["D2_ref_validity"]["fired"] and d["D2_ref_validity"]["value"] < 1e-7
    assert not d["D1_scale_growth"]["fired"]
    assert r["verdict"] == "FAIL(D2)"
    assert min(r["per_layer"]["hidden_norms"]) > 1e7
    # without the terminal LN the same stream leaves the reference valid (D2 is an LN effect)
    m2 = _resmlp(out_ln=False)
    with torch.no_grad():
        m2.embed.weight.mul_(1e7)
        m2.embed.bias.mul_(1e7)
    assert not FAProtocol(m2, x, y).run()["diagnostics"]["D2_ref_validity"]["fired"]


def test_mode1_and_verdict_names_every_fired_diagnostic(xy):
    x, y = xy
    m = _resmlp()
    with torch.no_grad():
        for b in m.blocks:
            b.w2.weight.mul_(1e6)                            # ||h_L|| ~ 2e6 -> g_L ~ 4e-8
    r = FAProtocol(m, x, y, frozen_baseline_acc=0.9).run()
    assert r.fired[:2] == ["D1", "D2"] and r.mode1
    assert r["verdict"].startswith("FAIL(D1+D2") and r["verdict"].endswith("D3)")


def test_c_is_supplementary_unless_asked(xy):
    x, y = xy
    same = torch.cat([x[:128]] * 10), torch.cat([y[:128]] * 10)     # identical batches: stability = 1
    r = FAProtocol(_resmlp(), *same).run()
    assert r["diagnostics"]["C_direction_stability"]["fired"]
    assert r["verdict"] == "PASS" and r["flagged_supplementary"] == ["C"]
    assert "FIRES (not in verdict)" in str(r)
    r4 = FAProtocol(_resmlp(), *same, verdict_on=("D1", "D2", "C", "D3")).run()
    assert r4["verdict"] == "FAIL(C)" and r4.fired == ["C"]
    with pytest.raises(ValueError, match="non-empty subset"):
        FAProtocol(_resmlp(), x, y, verdict_on=("D9",))


def test_d3_margin(xy):
    x, y = xy
    m = _resmlp()
    r = FAProtocol(m, x, y, frozen_baseline_acc=0.50, headline_acc=0.515).run()
    assert r["diagnostics"]["D3_depth_utility"]["fired"]
    r = FAProtocol(m, x, y, frozen_baseline_acc=0.50, headline_acc=0.525).run()
    assert not r["diagnostics"]["D3_depth_utility"]["fired"]
    assert r["diagnostics"]["D3_depth_utility"]["margin_pp"] == pytest.approx(2.5)
    assert FAProtocol(m, x, y).run()["diagnostics"]["D3_depth_utility"] is None
    # thresholds are overridable
    assert FAProtocol(m, x, y, frozen_baseline_acc=0.50, headline_acc=0.525,
                      thresholds={"d3_margin_pp": 3.0}).run()["diagnostics"]["D3_depth_utility"]["fired"]


def test_self_cosine_is_one_at_tiny_norm():
    v = torch.randn(4, 256, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True) * 1e-12
    assert torch.allclose(D.per_sample_cosine(v, v), torch.ones(4, dtype=torch.float64), atol=1e-12)
    # the clamped library cosine is not: this is pitfall 2
    assert F.cosine_similarity(v, v, dim=1).max().item() < 1e-6


def test_rho_true_gradient_vs_random(xy):
    x, y = xy
    x, y = x[:256], y[:256]
    m = _resmlp()
    _, grads, _ = D.bp_grads(m, x, y)
    rho_bp = D.perturbation_rho(m, x, y, grads, eps=1e-3, n_directions=32)
    assert min(rho_bp) > 0.99, rho_bp
    rnd = [torch.randn_like(g) for g in grads]
    rho_rnd = D.perturbation_rho(m, x, y, rnd, eps=1e-3, n_directions=32)
    assert max(abs(r) for r in rho_rnd) < 0.05, rho_rnd


def test_nudging_along_bp_gradient_lowers_loss(xy):
    x, y = xy
    m = _resmlp()
    _, grads, _ = D.bp_grads(m, x[:256], y[:256])
    res = D.nudging(m, x[:256], y[:256], [g * 256 for g in grads], etas=(1e-3, 1e-2))
    for eta, deltas in res.items():
        assert all(dl < 0 for dl in deltas), (eta, deltas)
    assert res["0.01"][0] < res["0.001"][0]                       # a bigger step helps more
    up = D.nudging(m, x[:256], y[:256], [-g * 256 for g in grads], etas=(1e-2,))
    assert all(dl > 0 for dl in up["0.01"])                       # the opposite direction hurts


def test_stability_of_constant_direction_is_one(xy):
    v = torch.randn(64, dtype=torch.float64)
    assert D.stability_of([v, 2 * v, 0.5 * v, 7 * v]) == pytest.approx(1.0, abs=1e-12)
    assert D.stability_of([v, -v]) == pytest.approx(-1.0, abs=1e-12)
    x, y = xy
    same = [(x[:128], y[:128])] * 4                                # identical batches: identical directions
    assert D.direction_stability(_resmlp(), same) == pytest.approx(1.0, abs=1e-9)


def test_gamma_per_layer_and_aggregates(xy):
    x, y = xy
    m = _resmlp()
    _, grads, _ = D.bp_grads(m, x[:128], y[:128])
    res = D.gamma_per_layer([g * 1e6 for g in grads], grads)          # scale-free: exactly aligned
    assert all(abs(v - 1) < 1e-12 for v in res.mean)
    assert res.ref_norm[0] == pytest.approx(D.median_per_sample_l2(grads[0]))
    neg = D.gamma_per_layer([-g for g in grads], grads)
    assert all(abs(v + 1) < 1e-12 for v in neg.mean)
    agg = D.gamma_aggregations(grads, grads)
    assert set(agg) == {"mean_over_layers", "median_over_layers", "pooled_over_batch", "batch_mean_direction"}
    assert all(v == pytest.approx(1.0) for v in agg.values())


def test_gamma_of_a_rule_without_aux_state_raises(xy):
    x, y = xy
    m = _resmlp()

    class NoFeedback:                      # a rule whose feedback matrices were not saved
        feedback = None

        def credit(self, x, y):
            return None if self.feedback is None else [f(x) for f in self.feedback]

    with pytest.raises(MissingAuxStateError):
        D.gamma_of(NoFeedback(), m, x[:64], y[:64])
    with pytest.raises(TypeError, match="no credit"):
        D.gamma_of(object(), m, x[:64], y[:64])

    class BPRule:
        def credit(self, x, y):
            return D.bp_grads(m, x, y)[1]

    assert D.gamma_of(BPRule(), m, x[:64], y[:64]).mean == pytest.approx([1.0] * 5)


def test_null_calibration_is_centred_on_zero(xy):
    x, y = xy
    m = _resmlp()
    _, grads, _ = D.bp_grads(m, x[:256], y[:256])
    e = torch.randn(256, 10, dtype=torch.float32)

    def draw(g):
        return [e @ torch.randn(10, h.shape[1], generator=g) for h in grads]

    null = D.null_calibration(grads, draw, n_draws=10)
    assert len(null["mean"]) == 5 and len(null["draws"]) == 10
    assert all(abs(mu) < 0.05 for mu in null["mean"])
    assert all(0 < s < 0.1 for s in null["std"])


def test_parameter_drift():
    m = _resmlp()
    init = {k: v.clone() for k, v in m.named_parameters()}
    with torch.no_grad():
        m.embed.weight.mul_(1.5)
        m.out_ln.bias.add_(0.25)                      # initialised at zero: no relative change exists
    drift = D.parameter_drift(m, init)
    assert drift["embed.weight"] == pytest.approx(0.5, rel=1e-6)
    assert drift["blocks.0.w1.weight"] == 0.0
    assert drift["out_ln.bias"] is None
    absolute = D.parameter_drift(m, init, relative=False)
    assert absolute["embed.weight"] == pytest.approx(0.5 * init["embed.weight"].norm().item(), rel=1e-6)
    assert absolute["out_ln.bias"] == pytest.approx(0.25 * m.out_ln.bias.numel() ** 0.5, rel=1e-6)


# -- foreign models via layers= ---------------------------------------------------------
def test_foreign_sequential_via_layers_matches_resmlp(xy):
    x, y = xy
    m = _resmlp(residual=False, w2_std=0.5)
    seq = nn.Sequential(m.embed, *m.blocks, nn.Sequential(m.out_ln, m.out_head))
    r1 = FAProtocol(m, x, y, frozen_baseline_acc=0.1).run()
    r2 = FAProtocol(seq, x, y, frozen_baseline_acc=0.1, layers=["0", "1", "2", "3", "4"]).run()
    for k in ("hidden_norms", "bp_grad_norms"):
        assert r1["per_layer"][k] == pytest.approx(r2["per_layer"][k], rel=1e-6)
    for k in ("D1_scale_growth", "D2_ref_validity", "C_direction_stability", "D3_depth_utility"):
        assert r1["diagnostics"][k]["value"] == pytest.approx(r2["diagnostics"][k]["value"], rel=1e-6)
    assert r1["verdict"] == r2["verdict"]
    _, g1, _ = D.bp_grads(m, x[:64], y[:64])
    tap = Tap(seq, layers=["0", "1", "2", "3", "4"])
    rho1 = D.perturbation_rho(m, x[:64], y[:64], g1, n_directions=4)
    rho2 = D.perturbation_rho(seq, x[:64], y[:64], g1, n_directions=4, tap=tap)
    assert rho1 == pytest.approx(rho2, abs=1e-6)


class _UserBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.f = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

    def forward(self, h):
        return h + self.f(h)                     # the user's block adds its own skip


class UserResNet(nn.Module):
    """A residual net written the way a user would, with no faeval interface."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(784, 64)
        self.b1 = _UserBlock(64)
        self.b2 = _UserBlock(64)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.norm(self.b2(self.b1(self.inp(x.flatten(1))))))


def test_user_residual_net_via_layers(xy):
    x, y = xy
    net = UserResNet()
    with pytest.raises(TypeError, match="layers="):
        FAProtocol(net, x, y)
    r = FAProtocol(net, x, y, layers=["inp", "b1", "b2"]).run()
    assert r["verdict"] == "PASS"
    assert r["per_layer"]["layers"] == ["inp", "b1", "b2"]
    with torch.no_grad():                         # the taps really are the residual stream
        h0 = net.inp(x.flatten(1))
        h2 = net.b2(net.b1(h0))
    assert r["per_layer"]["hidden_norms"][0] == pytest.approx(D.median_per_sample_l2(h0), rel=1e-6)
    assert r["per_layer"]["hidden_norms"][2] == pytest.approx(D.median_per_sample_l2(h2), rel=1e-6)
    with pytest.raises(ValueError, match="its module names are: .*'b1'.*'head'"):
        FAProtocol(net, x, y, layers=["inp", "block9"])


class PaperResMLP(nn.Module):
    """The original artifact's model contract: blocks return the branch, forward(x, return_hidden=True)."""

    def __init__(self, d_input=784, d=64, classes=10, blocks=3, skip_inside=False):
        super().__init__()
        self.embed_layer = nn.Linear(d_input, d)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
                                     for _ in range(blocks)])
        self.out_ln = nn.LayerNorm(d)
        self.out_head = nn.Linear(d, classes)
        self.skip_inside = skip_inside

    def forward(self, x, return_hidden=False):
        hs = [self.embed_layer(x)]
        for b in self.blocks:
            hs.append(hs[-1] + b(hs[-1]) * (2.0 if self.skip_inside else 1.0))
        logits = self.out_head(self.out_ln(hs[-1]))
        return (logits, hs) if return_hidden else logits


def test_reference_quick_start_works_as_written():
    """reference/000: FAProtocol(model, x_eval, y_eval).run() on a .blocks/.out_head/.out_ln model."""
    from faeval import FAProtocol
    torch.manual_seed(0)
    model = PaperResMLP()
    x_eval, y_eval = torch.randn(512, 784), torch.randint(0, 10, (512,))     # (N, d_input), (N,)
    protocol = FAProtocol(model, x_eval, y_eval)
    report = protocol.run()
    assert report['verdict'] == 'PASS'
    assert {'D1_scale_growth', 'D2_ref_validity', 'D3_depth_utility'} <= set(report['diagnostics'])
    assert report['diagnostics']['D3_depth_utility'] is None
    assert protocol.run(frozen_baseline_acc=0.9)['verdict'] == 'FAIL(D3)'
    # the adapter reads the model's own hidden list; rho re-runs blocks from h_l
    assert report['per_layer']['hidden_norms'][2] == pytest.approx(
        D.median_per_sample_l2(torch.cat([model(x_eval[i:i + 128], return_hidden=True)[1][2]
                                          for i in range(0, 512, 128)]).detach()), rel=1e-6)
    _, g, _ = D.bp_grads(model, x_eval[:128], y_eval[:128])
    assert min(D.perturbation_rho(model, x_eval[:128], y_eval[:128], g, n_directions=8)) > 0.99
    # a forward the adapter cannot re-run is refused, not mis-measured
    with pytest.raises(TypeError, match="cannot re-run it from a hidden state. Pass layers="):
        FAProtocol(PaperResMLP(skip_inside=True), x_eval, y_eval).run()


# -- bad input --------------------------------------------------------------------------
def test_bad_inputs(xy):
    x, y = xy
    m = _resmlp()
    with pytest.raises(ValueError, match="x has 1280 samples but y has 1279"):
        FAProtocol(m, x, y[:-1])
    with pytest.raises(ValueError, match="eval set is empty"):
        FAProtocol(m, x[:0], y[:0])
    with pytest.raises(ValueError, match="eval set is empty"):
        snapshot(m, x[:0], y[:0])
    with pytest.raises(ValueError, match="unknown threshold"):
        FAProtocol(m, x, y, thresholds={"d1": 3})
    with pytest.raises(MissingAuxStateError, match="never substituted"):
        D.gamma_per_layer(None, [torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="half precision"):
        D.bp_grads(_resmlp().half(), x[:8].half(), y[:8])


def test_non_finite_state_is_infinite_growth_and_fail(xy):
    x, y = xy
    m = _resmlp()
    with torch.no_grad():
        m.blocks[2].w2.weight.fill_(float("inf"))
    r = FAProtocol(m, x, y).run()
    assert r["diagnostics"]["D1_scale_growth"]["value"] == math.inf
    assert r["verdict"].startswith("FAIL(D1")
    j = json.loads(r.to_json())                                  # strict JSON: no Infinity literal
    assert j["diagnostics"]["D1_scale_growth"]["value"] == "inf" and "Infinity" not in r.to_json()


def test_report_renderers(xy):
    x, y = xy
    r = FAProtocol(_resmlp(), x, y, frozen_baseline_acc=0.2).run()
    assert "FAProtocol verdict: FAIL(D3)" in str(r)
    assert "<table>" in r._repr_html_() and "FAIL(D3)" in r._repr_html_()
    j = json.loads(r.to_json())
    assert j["verdict"] == "FAIL(D3)" and len(j["per_layer"]["hidden_norms"]) == 5
    md = r.to_markdown(method="bp", arch="resmlp", dataset="fashion-mnist", seeds="42")
    assert "| verdict | **FAIL(D3)** |" in md and "| method | bp |" in md
    assert "| ‖g_l‖ (BP) |" in md and "| median per sample |" in md


def test_protocol_on_vit_and_cnn_read_cls_and_channel_means():
    x = torch.randn(96, 3, 32, 32)
    y = torch.randint(0, 10, (96,))
    for arch in ("vit", "cnn"):
        m = build_model(arch, (3, 32, 32), 10, seed=0)
        r = FAProtocol(m, x, y, batch_size=32).run()
        assert r["diagnostics"]["C_direction_stability"]["n_batches"] == 3
        assert r["verdict"] == "PASS"
        with torch.no_grad():
            hs, _ = m.eval().states(x)
        expect = D.median_per_sample_l2(m.reduce_state(hs[1]))
        assert r["per_layer"]["hidden_norms"][1] == pytest.approx(expect, rel=1e-5)


# -- Monitor ------------------------------------------------------------------------------
def _history():
    """Per-epoch snapshots of a model whose block grows each epoch (a synthetic trajectory)."""
    x, y = _data(256)
    m = _resmlp()
    hist = []
    for epoch in range(6):
        hist.append({"epoch": epoch, "diag": snapshot(m, x, y)})
        with torch.no_grad():
            for b in m.blocks:
                b.w2.weight.mul_(30.0)
    return hist


def test_monitor_online_equals_replay_and_stops():
    hist = _history()
    online = Monitor()
    for rec in hist:
        online(rec["epoch"], rec)
    assert online.first_fired["D1"] is not None and online.first_fired["D2"] is not None
    assert online.first_fired["D1"] >= 1
    assert Monitor().replay(hist) == online.first_fired
    stopper = Monitor(stop_on=("D1",))
    stopped = [e for e, rec in enumerate(hist) if stopper(e, rec)]
    assert stopped[0] == online.first_fired["D1"] == stopper.stopped_at
    with pytest.raises(ValueError, match="judges"):
        Monitor(stop_on=("D3",))


def test_snapshot_keys_match_protocol(xy):
    x, y = xy
    m = _resmlp()
    snap = snapshot(m, x, y)
    r = FAProtocol(m, x, y).run()
    assert D.median_hidden_norms(m, x) == r["per_layer"]["hidden_norms"]
    assert D.median_bp_grad_norms(m, x, y) == r["per_layer"]["bp_grad_norms"]
    # 1280 samples as one batch would give gradients 10x smaller: the 128-batch convention is kept
    one_batch = D.median_bp_grad_norms(m, x, y, batch_size=1280)
    assert one_batch[-1] == pytest.approx(r["per_layer"]["bp_grad_norms"][-1] / 10, rel=0.05)
    assert snap.hidden_norms == r["per_layer"]["hidden_norms"]
    assert snap.g_L == r["diagnostics"]["D2_ref_validity"]["value"]
    assert snap.stability == pytest.approx(r["diagnostics"]["C_direction_stability"]["value"])
    _, full, _ = D.bp_grads(m, x, y)                               # one batch of 1280: other 1/B scale
    credit = [g + 0.5 * g.std() * torch.randn_like(g) for g in full]
    expect = D.gamma_per_layer(credit, full).mean
    assert snapshot(m, x, y, credit=credit).gamma == pytest.approx(expect, rel=1e-6)   # float32 grads


# -- analysis helpers ---------------------------------------------------------------------
def _rows():
    healthy = [{"name": f"bp/s{s}", "growth": g, "g_L": gl, "stability": st, "acc": 0.6, "frozen_acc": 0.35,
                "gamma": 1.0, "num_classes": 10} for s, g, gl, st in [(1, 3.0, 3e-4, 0.1), (2, 11.0, 1e-4, 0.12)]]
    bad = [{"name": f"dfa/s{s}", "growth": g, "g_L": gl, "stability": st, "acc": 0.30, "frozen_acc": 0.35,
            "gamma": 0.1, "num_classes": 10} for s, g, gl, st in [(1, 694.0, 4e-9, 0.05), (2, 2000.0, 5e-10, 0.5)]]
    return healthy + bad


def test_threshold_sensitivity_separation():
    res = threshold_sensitivity(_rows())
    sep = res["separation"]
    assert sep["D1"]["healthy_worst"] == 11.0 and sep["D1"]["degenerate_mildest"] == 694.0
    assert sep["D1"]["equivalent_range"] == (11.0, 694.0)
    assert sep["D2"]["gap"] == pytest.approx(1e-4 / 4e-9)
    assert sep["D3"]["gap"] == pytest.approx(25 - (-5))
    d1 = [t for t in res["table"] if t["diagnostic"] == "D1"]
    assert all(t["verdicts_unchanged"] == (11.0 < t["threshold"] < 694.0) for t in d1
               if t["threshold"] not in (11.0, 694.0))


def test_decision_utility_ablation():
    res = decision_utility_ablation(_rows())
    assert res["S0"]["n_walked_back"] == 0 and res["S1"]["n_walked_back"] == 0
    assert {b["name"] for b in res["S_full"]["walked_back"]} == {"dfa/s1", "dfa/s2"}
    for s in ("S2", "S3", "S5"):
        assert res[s]["n_walked_back"] == 2
    assert res["S4"]["n_walked_back"] == 1                        # C alone misses one degenerate run
    four = threshold_sensitivity(_rows(), verdict_on=("D1", "D2", "C", "D3"))
    c_rows = [t for t in four["table"] if t["diagnostic"] == "C"]
    assert not all(t["verdicts_unchanged"] for t in c_rows)        # with C in the verdict its threshold matters


def test_row_from_report(xy):
    x, y = xy
    r = FAProtocol(_resmlp(), x, y, frozen_baseline_acc=0.1).run()
    row = row_from_report(r, "init", gamma=0.0, num_classes=10)
    assert row["growth"] == r["diagnostics"]["D1_scale_growth"]["value"] and row["frozen_acc"] == 0.1


# --------------------------------------------------------------------------- no credit, verdict rules
def test_a_layer_without_credit_has_no_gamma_not_zero_gamma():
    """EP with 2 relaxation steps on 4 blocks nudges only h_3 and h_4: h_0..h_2 get exactly zero credit,
    which is 'no credit' (NaN, left out of every mean), not a Gamma of 0."""
    from faeval import build_method

    model = _resmlp(width=32, depth=4)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28, generator=g), torch.randint(10, (64,), generator=g)
    rule = build_method("ep", model, steps=2, beta=0.5)
    gam = D.gamma_of(rule, model, x, y)
    assert gam.no_credit == [0, 1, 2] and all(math.isnan(v) for v in gam.mean[:3])
    assert gam.mean[3] > 0.9 and gam.mean[4] > 0.9
    assert gam.deep_mean() == pytest.approx((gam.mean[3] + gam.mean[4]) / 2)
    assert gam.layer_mean() == pytest.approx(gam.deep_mean())
    snap = snapshot(model, x, y, credit_fn=rule.credit)
    assert snap.no_credit == [0, 1, 2] and snap.deep_gamma == pytest.approx(gam.deep_mean())
    assert Snapshot.from_dict(json.loads(json.dumps(snap.to_dict()))).no_credit == [0, 1, 2]
    # with enough steps every layer gets credit again
    full = D.gamma_of(build_method("ep", model, steps=10, beta=0.5), model, x, y)
    assert full.no_credit == [] and min(full.mean) > 0.9


def test_the_two_verdict_rules():
    from faeval.protocol import VERDICT_RULES, verdict_from

    d1_only = {"D1": True, "D2": False, "C": False, "D3": False}
    assert verdict_from(d1_only) == "FAIL(D1)" and verdict_from(d1_only, rule="mode1_or_d3") == "PASS"
    assert verdict_from({**d1_only, "D2": True}, rule="mode1_or_d3") == "FAIL(D1+D2)"
    assert verdict_from({**d1_only, "D3": True}, rule="mode1_or_d3") == "FAIL(D1+D3)"
    with pytest.raises(ValueError, match="verdict_rule='strict'.*'any'.*'mode1_or_d3'"):
        verdict_from(d1_only, rule="strict")
    x, y = torch.randn(256, 1, 28, 28), torch.randint(10, (256,))
    report = FAProtocol(_resmlp(), x, y, frozen_baseline_acc=0.9, verdict_rule="mode1_or_d3").run()
    assert report["verdict_rule"] == "mode1_or_d3" and set(report["verdicts"]) == set(VERDICT_RULES)
    assert report.verdict == report["verdicts"]["mode1_or_d3"] == "FAIL(D3)"   # D3 fails under both
    assert "under 'any': FAIL(D3)" in str(report)
    with pytest.raises(ValueError, match="verdict_rule"):
        FAProtocol(_resmlp(), x, y, verdict_rule="all")


def _snap(growth, g_L):
    return Snapshot(hidden_norms=[1.0, growth], bp_grad_norms=[1.0, g_L], max_block_growth=growth, g_L=g_L,
                      stability=0.0, loss=1.0, acc=0.5, aggregate="test")


def test_monitor_under_mode1_or_d3_stops_when_d1_and_d2_have_both_fired():
    # D1 fires at epoch 1, D2 only at epoch 3
    history = [_snap(2.0, 1e-3), _snap(80.0, 1e-3), _snap(90.0, 1e-5), _snap(95.0, 1e-8), _snap(99.0, 1e-9)]
    any_rule = Monitor(stop_on=("D1", "D2"))
    mode1 = Monitor(stop_on=("D1", "D2"), verdict_rule="mode1_or_d3")
    stops_any = [e for e, s in enumerate(history) if any_rule(e, s)]
    stops_mode1 = [e for e, s in enumerate(history) if mode1(e, s)]
    assert any_rule.stopped_at == 1 and stops_any[0] == 1
    assert mode1.stopped_at == 3 and stops_mode1[0] == 3
    assert mode1.first_fired == any_rule.first_fired == {"D1": 1, "D2": 3, "C": None}


@pytest.mark.parametrize("arch", ["resmlp", "cnn"])
def test_g_L_at_another_batch_scale_equals_measuring_at_that_scale(arch):
    """The paper's per-epoch logs used ~1,024 samples per batch; reading our batch-128 g_L at that
    scale (x 128/1024) is what measuring on batches of 1,024 gives (BatchNorm in eval mode too)."""
    opts = {"width": 32} if arch == "resmlp" else {"channels": (4, 8, 8), "hidden": 16}
    model = build_model(arch, (1, 28, 28), 10, seed=1, **opts)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(1024, 1, 28, 28, generator=g), torch.randint(10, (1024,), generator=g)
    snap = snapshot(model, x, y)
    at_1024 = D.measure(model, x, y, batch_size=1024)["bp_grad_norms"][-1]
    assert snap.batch_size == 128
    assert snap.g_L_at(1024) == pytest.approx(at_1024, rel=1e-4) and at_1024 < snap.g_L / 7.9
    # the Monitor can judge D2 at that scale: 8e-7 at batch 128 fires only there
    rec = _snap(1.0, 8e-7)
    assert Monitor()._values(rec)["D2"] == 8e-7
    assert Monitor(d2_batch=1024)._values(rec)["D2"] == pytest.approx(1e-7)
    m = Monitor(d2_batch=2048)
    m(0, rec)
    assert m.first_fired["D2"] == 0 and Monitor().replay([{"epoch": 0, "diag": rec}])["D2"] is None
    with pytest.raises(ValueError, match="d2_batch"):
        Monitor(d2_batch=0)


def test_report_renders_aligned_tables_in_html_text_and_markdown(xy):
    """One header cell per column in every table, and every row as wide as its header (the old HTML
    table gave the short and long diagnostic names two cells under one heading)."""
    from html.parser import HTMLParser

    class Tables(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.row = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.row = []
                self.tables[-1].append(self.row)
            elif tag in ("td", "th"):
                self.row.append(tag)

    report = FAProtocol(_resmlp(), *xy, frozen_baseline_acc=0.2).run()
    parser = Tables()
    parser.feed(report._repr_html_())
    diag, layers = parser.tables
    assert diag[0] == ["th"] * 4 and all(r == ["td"] * 4 for r in diag[1:]) and len(diag) == 5
    assert layers[0] == ["th"] * 6 and all(len(r) == 6 and set(r) == {"td"} for r in layers[1:])
    text = str(report).splitlines()
    header = next(i for i, l in enumerate(text) if l.strip().startswith("diagnostic"))
    widths = {len(l) for l in text[header:header + 5]}
    assert len(widths) == 1, text[header:header + 5]            # aligned columns
    tables, current = [], []
    for line in report.to_markdown().splitlines() + [""]:
        if line.startswith("|"):
            current.append(line.count("|"))
        elif current:
            tables.append(current)
            current = []
    assert len(tables) == 3 and all(len(set(t)) == 1 for t in tables), tables


def test_bad_eval_data_is_refused_with_the_problem_and_the_fix(xy):
    """A NaN pixel is the data's fault, not the model's FAIL(D1+D2); labels and shapes that do not fit the
    model are named as such (not torch's IndexError / 'mat1 and mat2 shapes cannot be multiplied')."""
    x, y = xy
    model = _resmlp()
    bad = x.clone()
    bad[3, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values .* in 1 of \d+ samples \(first: sample 3\).*clean"):
        FAProtocol(model, bad, y)
    with pytest.raises(ValueError, match=r"labels from 0 to 13, outside the model's 10 classes"):
        FAProtocol(model, x, torch.where(y == y[0], torch.tensor(13), y).clamp_min(0))
    with pytest.raises(ValueError, match=r"shape \(1, 14, 14\), which the model cannot take \(the model was built "
                                         r"for samples of shape \(1, 28, 28\)"):
        FAProtocol(model, x[:, :, ::2, ::2], y)
    with pytest.raises(ValueError, match="pass class indices as integers"):
        FAProtocol(model, x, y.float())


class _Res(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))

    def forward(self, h):
        return h + self.f(h)


class _UserNet(nn.Module):
    """A residual MLP of a user's own, with its own module names."""

    def __init__(self, d_in=8, d=16, classes=3):
        super().__init__()
        self.stem = nn.Linear(d_in, d)
        self.stages = nn.ModuleList([_Res(d), _Res(d)])
        self.classifier = nn.Linear(d, classes)

    def forward(self, x):
        h = self.stem(x)
        for s in self.stages:
            h = s(h)
        return self.classifier(h)


def test_monitor_update_stops_a_plain_pytorch_loop_at_the_epoch_d1_fires():
    torch.manual_seed(0)
    net = _UserNet()
    x, y = torch.randn(256, 8), torch.randint(3, (256,))
    layers = ["stem", "stages.0", "stages.1"]
    monitor = Monitor(stop_on=["D1"])
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    growth = []
    for epoch in range(10):                      # the user's own loop
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        with torch.no_grad():                    # the residual stream is made to blow up, 4x per epoch
            net.stages[1].f[2].weight.mul_(4.0)
            net.stages[1].f[2].bias.mul_(4.0)
        tap = Tap(net, layers=layers)
        growth.append(D.max_block_growth(D.measure(net, x, y, tap=tap)["hidden_norms"]))
        if monitor.update(net, x, y, epoch, layers=layers):
            break
    expected = next(e for e, g in enumerate(growth) if g > 50)
    assert 0 < expected < 9 and monitor.stopped_at == expected == epoch == monitor.first_fired["D1"]
    assert monitor.last.max_block_growth == pytest.approx(growth[-1])
    with pytest.raises(ValueError, match="outside the model's 3 classes"):
        Monitor().update(_UserNet(), x, y + 5, 0, layers=layers)


# -- the diagnostic table -------------------------------------------------------------------
def test_a_diagnostic_declared_in_one_place_reaches_the_report_the_monitor_and_the_sensitivity_table(xy, monkeypatch):
    """One Diagnostic entry (reading a Snapshot field that exists) is judged everywhere the protocol's are."""
    from faeval import protocol as P

    hidden = P.Diagnostic(
        "H", "H_hidden_scale", "H hidden scale", "h_max", 5.0, "> {:g}", "median per-sample ||h_L||",
        read=lambda s, batch=None: s.h_L, judge=lambda v, t, _: not (v <= t),
        field="h_L", label="median ‖h_L‖", grid=lambda t: [t / 10, t, 10 * t], log_scale=True)
    monkeypatch.setitem(P.TABLE, "H", hidden)
    x, y = xy
    model = _resmlp()                     # h_L ~ 8-10 at init (see test_random_init_resmlp_passes)
    r = FAProtocol(model, x, y, frozen_baseline_acc=0.05, verdict_on=("D1", "D2", "D3", "H")).run()
    h = r["diagnostics"]["H_hidden_scale"]
    assert h["fired"] is True and h["threshold"] == 5.0 and 7 < h["value"] < 11
    assert r.verdict == "FAIL(H)" and r["thresholds"]["h_max"] == 5.0
    assert "H hidden scale" in str(r) and "> 5" in str(r)
    calm = FAProtocol(model, x, y, frozen_baseline_acc=0.05, verdict_on=("D1", "H"), thresholds={"h_max": 50}).run()
    assert calm.verdict == "PASS" and calm["diagnostics"]["H_hidden_scale"]["fired"] is False
    # the Monitor judges it per epoch and may stop on it
    monitor = Monitor(stop_on=["H"])
    assert monitor.update(model, x[:256], y[:256], epoch=3) is True and monitor.first_fired["H"] == 3
    # the sensitivity sweep walks its grid
    row = row_from_report(r, "init")
    assert row["h_L"] == h["value"]
    sens = threshold_sensitivity([row])
    assert [t["threshold"] for t in sens["table"] if t["diagnostic"] == "H"] == [0.5, 5.0, 50.0]
    assert [t["n_flagged"] for t in sens["table"] if t["diagnostic"] == "H"] == [1, 1, 0]


def test_a_diagnostic_that_clashes_with_the_table_is_refused():
    from faeval import protocol as P

    with pytest.raises(ValueError, match="clashes with the table's D1, D2, C, D3"):
        P.register_diagnostic(P.TABLE["D1"])
    with pytest.raises(ValueError, match="unknown threshold"):
        P.Thresholds(h_max=3)
