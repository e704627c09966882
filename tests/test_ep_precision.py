"""EP's credit at large state scales: float32's resolution (faeval.book.ep_precision) and ep64, EP with its phases
in float64 (faeval.methods.ep64)."""
from __future__ import annotations

import pytest
import torch

import faeval
from faeval.book import ep_precision as X
from faeval.methods import build_method
from faeval.methods.ep64 import EP64


def _xy(n=64, d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, 10, (n,), generator=g)


def _model(scale):
    return X.scaled_model((20,), 10, scale=scale, seed=0, width=32, depth=3)


def test_ep64_gives_eps_credit_where_float32_resolves_it():
    x, y = _xy()
    m = _model(1.0)
    ep, ep64 = build_method("ep", m).credit(x, y), build_method("ep64", m).credit(x, y)
    assert all(a.dtype == torch.float32 for a in ep64)
    for a, b in zip(ep, ep64):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * b.abs().max().item()), (a - b).abs().max()


def test_at_a_large_state_scale_float32_loses_eps_credit_and_ep64_keeps_it():
    x, y = _xy()
    (row,) = [r for r in X.measure(_model(3000.0), x, y, scale=3000.0) if r["layer"] == 1]
    (row64,) = [r for r in X.measure(_model(3000.0), x, y, rule=EP64) if r["layer"] == 1]
    assert row["R"] < 0.01
    assert row["h"] > 1e3 and row["Gamma f64"] > 0.95
    assert row["cos(f32, f64)"] < 0.5 and row["Gamma f32"] < 0.5 * row["Gamma f64"]
    assert row64["cos(f32, f64)"] > 0.999 and row64["Gamma f32"] == pytest.approx(row64["Gamma f64"], abs=1e-3)


def test_the_resolution_falls_with_the_square_of_the_state_scale_and_says_when_float32_resolves():
    x, y = _xy()
    rows = [r for s in (1.0, 30.0, 300.0, 3000.0) for r in X.measure(_model(s), x, y, scale=s)]
    by = {(r["scale"], r["layer"]): r for r in rows}
    for (_, l), r in by.items():
        base = by[1.0, l]
        assert r["gain"] == pytest.approx(base["gain"], rel=0.05)        # the relaxation's gain is scale-free
        assert r["R"] == pytest.approx(base["R"] * (base["h"] / r["h"]) ** 2, rel=0.1)    # R ~ 1/||h||^2
        if r["R"] >= X.RESOLVED:
            assert r["cos(f32, f64)"] > 0.99, r
        if r["R"] <= 0.01:
            assert r["cos(f32, f64)"] < 0.15, r
    assert {r["R"] >= X.RESOLVED for r in rows} == {True, False}           # both regimes are measured


def test_ep64_trains_and_refuses_batch_norm():
    x, y = _xy()
    m = _model(1.0)
    rule = build_method("ep64", m, seed=0)
    before = [p.detach().clone() for p in m.parameters()]
    loss, stats = rule.loss(x, y)
    loss.backward()
    assert all(p.dtype == torch.float32 for p in m.parameters()) and stats["relax_ratio"] < 1
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, m.parameters()))       # the phases changed no weight
    cnn = faeval.build_model("resnet", (1, 8, 8), 10, seed=0)
    with pytest.raises(ValueError, match="batch norm"):
        build_method("ep64", cnn)


# -- the model option, the rule's own resolution and the protocol's report ------------------------------------
def test_embed_scale_scales_the_same_draws_and_leaves_stored_keys_alone():
    from faeval.config import canonical_config, config_hash

    a, b = (faeval.build_model("resmlp", (20,), 10, seed=3, width=16, depth=2, embed_scale=s) for s in (1.0, 500.0))
    assert torch.equal(b.embed.weight, 500.0 * a.embed.weight) and torch.equal(b.embed.bias, 500.0 * a.embed.bias)
    assert all(torch.equal(p, q) for p, q in zip(a.blocks.parameters(), b.blocks.parameters()))
    plain = canonical_config(method="ep", epochs=1)
    assert "embed_scale" not in plain["model"]                       # a run that does not set it keeps its key
    assert config_hash(plain) == config_hash(canonical_config(method="ep", epochs=1, embed_scale=1))
    assert config_hash(plain) != config_hash(canonical_config(method="ep", epochs=1, embed_scale=500))
    with pytest.raises(ValueError, match="embed_scale"):
        faeval.build_model("resmlp", (20,), 10, embed_scale=0.0)


def test_eps_resolution_matches_the_float64_measurement_and_enters_the_step_stats():
    x, y = _xy()
    for scale in (1.0, 300.0, 3000.0):
        m = _model(scale)
        mine = build_method("ep", m).credit_resolution(x, y)
        exact = [r["R"] for r in X.measure(m, x, y)]
        for r, e in zip(mine, exact):
            if e > 30:                      # resolved: the displacement float32 measures is the exact one
                assert r == pytest.approx(e, rel=0.05)
            else:                           # unresolved: it reads low as well (the nudge rounds away)
                assert r < 30
    stats = build_method("ep", _model(3000.0)).step(x, y)
    assert stats["credit_resolution"] < 1
    assert build_method("ep64", _model(3000.0)).step(x, y)["credit_resolution"] > 1e6   # float64's units


def test_the_report_warns_on_an_unresolved_credit_and_keeps_its_verdict():
    x, y = _xy(n=256)
    big = _model(3000.0)
    plain = faeval.FAProtocol(big, x, y).run()
    ep = faeval.FAProtocol(big, x, y, rule=build_method("ep", big)).run()
    ep64 = faeval.FAProtocol(big, x, y, rule=build_method("ep64", big)).run()
    one = _model(1.0)
    small = faeval.FAProtocol(one, x, y, rule=build_method("ep", one)).run()
    assert ep.verdict == plain.verdict and plain.credit_resolution is None and not plain.warnings
    assert "credit_resolution" not in plain.to_dict() and "warnings" not in plain.to_dict()
    assert ep.credit_resolution[0] is None and max(ep.credit_resolution[1:]) < 1
    assert len(ep.warnings) == 1 and "ep64" in ep.warnings[0] and "WARNING" in str(ep)
    assert "credit resolution" in ep.to_markdown() and ep.as_dict()["warnings"] == ep.warnings
    assert not ep64.warnings and not small.warnings and min(small.credit_resolution[1:]) > 30
    dfa = faeval.FAProtocol(big, x, y, rule=build_method("dfa", big)).run()
    assert dfa.credit_resolution is None and not dfa.warnings      # not a difference of states: nothing to add
    with pytest.raises(ValueError, match="another model"):
        faeval.FAProtocol(big, x, y, rule=build_method("ep", _model(1.0)))


def test_ep64_trains_the_model_as_ep_does_where_float32_resolves_the_credit():
    """The bug this catches: phases that swapped the parameters' storage to float64 and back detached them from
    the training graph, so ep64 computed the right credit and trained nothing."""
    x, y = _xy()
    grads = {}
    for name in ("ep", "ep64"):
        m = _model(1.0)
        build_method(name, m, head_lr=0.0).step(x, y)
        grads[name] = {n: p.grad for n, p in m.named_parameters() if n != "out_head.weight" and n != "out_head.bias"}
    assert all(g is not None and g.abs().sum() > 0 for g in grads["ep64"].values())
    for n, g in grads["ep"].items():
        assert torch.allclose(grads["ep64"][n], g, rtol=1e-3, atol=1e-3 * g.abs().max().item()), n


def test_a_state_the_nudge_cannot_reach_has_no_resolution_and_raises_no_warning():
    x, y = _xy(n=128)
    m = _model(1.0)                                      # depth 3: two steps reach h_2 and h_3, not h_1
    rule = build_method("ep", m, steps=2)
    res = rule.credit_resolution(x, y)
    assert res[0] is None and all(r > 30 for r in res[1:])
    report = faeval.FAProtocol(m, x, y, rule=rule).run()
    assert report.credit_resolution[:2] == [None, None] and not report.warnings
