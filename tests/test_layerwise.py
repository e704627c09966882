"""The layer-wise feedback family: BioTorch's own layers give the same gradients, and each rule does what it says.

The equality check builds, for each of our models, a twin in which every nn.Linear / nn.Conv2d is
replaced by BioTorch's layer of that rule (``pip install --no-deps biotorch``; `make venv` installs
it) with the same weights and the same feedback matrices, and compares every parameter's gradient
of the mean cross-entropy on one batch.
"""
from __future__ import annotations

import copy
import importlib
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import faeval as fe
from faeval.methods import LayerwiseRule, build_method, register_method
from faeval.methods.base import METHODS, InheritedCreditWarning
from faeval.methods.bp import BP
from faeval.methods.dfa import DFA
from faeval.methods.layerwise import feedback_layers, matrix_angle

try:                      # never skipped: `make venv` installs it, and the check is this file's point
    import biotorch.layers  # noqa: F401
except ImportError as err:
    raise ImportError("tests/test_layerwise.py checks against BioTorch's layers: pip install --no-deps "
                      "biotorch==0.0.16 (make venv installs it)") from err

BIOTORCH = ("fa_layer", "usf", "frsf", "brsf")
#: our rule -> BioTorch's layer type
TYPE = {"fa_layer": "fa", "usf": "usf", "frsf": "frsf", "brsf": "brsf"}


def _models():
    mlp = fe.build_model("resmlp", (20,), 5, seed=0, width=16, depth=2)
    cnn = fe.build_model("cnn", (1, 12, 12), 5, seed=0, channels=(4, 6, 8), hidden=16)
    return {"mlp": (mlp, torch.randn(16, 20)), "cnn": (cnn, torch.randn(16, 1, 12, 12))}


def _twin(model: nn.Module, rule_name: str, stored: list[torch.Tensor]) -> nn.Module:
    """``model`` with every Linear/Conv2d replaced by BioTorch's layer of the rule, weights copied and its
    feedback matrix set to ours (``stored``: the rule's stored matrices, in module order)."""
    twin = copy.deepcopy(model)
    kind = TYPE[rule_name]
    module = importlib.import_module(f"biotorch.layers.{kind}")
    for (name, mod), R in zip(feedback_layers(twin), stored):
        cfg = {"type": kind, "options": {"init": "xavier", "constrain_weights": False, "gradient_clip": False}}
        if isinstance(mod, nn.Conv2d):
            new = module.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                                mod.dilation, mod.groups, mod.bias is not None, layer_config=cfg)
        else:
            new = module.Linear(mod.in_features, mod.out_features, mod.bias is not None, layer_config=cfg)
        with torch.no_grad():
            new.weight.copy_(mod.weight)
            new.bias.copy_(mod.bias)
            if kind in ("fa", "frsf"):     # fa: B itself; frsf: |R0|, as its constructor stores it (its conv
                new.weight_backward.copy_(R if kind == "fa" else R.abs())   # forward takes no abs of its own)
        parent, _, attr = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, attr, new)
    return twin


def _grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return dict(zip(names, torch.autograd.grad(loss, params)))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("name", BIOTORCH)
def test_the_same_gradients_as_biotorchs_layers(name, arch, monkeypatch):
    model, x = _models()[arch]
    model.train()
    y = torch.randint(5, (len(x),), generator=torch.Generator().manual_seed(1))
    rule = build_method(name, model, seed=3, convention="biotorch")
    ours = _grads(model, rule.loss(x, y)[0])
    stored = [R.clone() for R in rule.feedback]          # brsf: the draw its forward just made
    twin = _twin(model, name, stored)
    if name == "brsf":                                   # BioTorch redraws R with xavier_uniform_: give it ours
        queue = iter(stored)

        def from_ours(t, gain=1.0):
            with torch.no_grad():
                return t.copy_(next(queue))
        monkeypatch.setattr(torch.nn.init, "xavier_uniform_", from_ours)
    twin.train()
    theirs = _grads(twin, F.cross_entropy(twin(x), y))
    assert set(ours) <= set(theirs)
    scale = max(float(theirs[n].abs().max()) for n in ours)   # (a conv bias before BatchNorm gets ~0 by design)
    worst = max(float((ours[n] - theirs[n]).abs().max()) for n in ours) / scale
    assert worst < 1e-5, f"{name} on {arch}: largest difference {worst:.2e} of the largest gradient entry"
    # and the rule really differs from BP (the twin is not BP by accident)
    bp = _grads(model, build_method("bp", model).loss(x, y)[0])
    first = "embed.weight" if arch == "mlp" else "embed.0.weight"
    assert float((bp[first] - ours[first]).abs().max()) > 1e-4


def test_b_equal_to_w_is_bp_and_the_bp_reference_is_untouched():
    model, x = _models()["mlp"]
    y = torch.arange(len(x)) % 5
    rule = build_method("fa_layer", model, seed=0)
    rule.feedback = [m.weight.detach().clone() for _, m in rule.layers]
    ours = _grads(model, rule.loss(x, y)[0])
    bp = _grads(model, build_method("bp", model).loss(x, y)[0])
    for n in bp:
        torch.testing.assert_close(ours[n], bp[n], rtol=1e-5, atol=1e-7)
    rule.feedback = [torch.randn_like(B) for B in rule.feedback]
    fe.diagnostics.bp_grads(model, x, y)                  # no hooks left behind: BP's credit stays BP's
    credit = rule.credit(x, y)
    ref = fe.diagnostics.bp_grads(model, x, y)[1]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for _, m in rule.layers)
    assert torch.equal(build_method("bp", model).credit(x, y)[0], ref[0])
    assert float(F.cosine_similarity(credit[-1].flatten(), ref[-1].flatten(), 0)) < 0.9


def test_sign_concordant_matrices_follow_the_weights():
    model, x = _models()["mlp"]
    usf = build_method("usf", model, seed=0)
    W = model.blocks[0].w1.weight
    B = usf.backward_matrices()[1]
    assert torch.equal(torch.sign(B), torch.sign(W)) and len(torch.unique(B.abs())) == 1
    assert B.abs()[0, 0] == pytest.approx(float(W.detach().std()), rel=1e-5)               # "matched": W's own spread
    frsf = build_method("frsf", model, seed=0)
    before = frsf.backward_matrices()[1]
    with torch.no_grad():
        W.neg_()
    assert torch.equal(frsf.backward_matrices()[1], -before)      # |R0| fixed, the signs read from W
    brsf = build_method("brsf", model, seed=0)
    y = torch.arange(len(x)) % 5
    brsf.loss(x, y)
    first = [R.clone() for R in brsf.feedback]
    brsf.loss(x, y)
    assert not torch.equal(first[1], brsf.feedback[1])            # redrawn at every forward
    again = build_method("brsf", model, seed=0)                   # from the run's own stream: reproducible
    again.loss(x, y)
    assert torch.equal(again.feedback[1], first[1])


def _train(name, steps=60, **hp):
    ds = fe.load_dataset("synthetic", n_train=512, n_test=128, d=16)
    model = fe.build_model("resmlp", ds.input_shape, ds.num_classes, seed=0, width=16, depth=2)
    rule = build_method(name, model, seed=0, **hp)
    opt = torch.optim.AdamW(rule.parameters(), lr=1e-2)
    for i in range(steps):
        xb, yb = ds.x_train[(i * 32) % 512:][:32], ds.y_train[(i * 32) % 512:][:32]
        opt.zero_grad()
        rule.step(xb, yb)
        opt.step()
        rule.after_step()
    return rule


def test_kolen_pollack_shrinks_w_minus_b_by_its_decay_every_step():
    rule = _train("kp", steps=50, decay=0.05)
    for (_, mod), D, B in zip(rule.layers, rule.feedback, rule.backward_matrices()):
        torch.testing.assert_close(mod.weight.detach() - B, D)
    fresh = build_method("kp", _train("bp", steps=0).model, seed=0, decay=0.05)   # the same initial D_0
    for D0, D in zip(fresh.feedback, rule.feedback):
        torch.testing.assert_close(D, D0 * 0.95 ** 50, rtol=1e-4, atol=1e-7)
    assert max(rule.epoch_stats().values()) < 20                         # B aligned with W (from ~90 degrees)


def test_weight_mirroring_aligns_b_with_w():
    start = build_method("wm", _train("bp", steps=0).model, seed=0).epoch_stats()
    rule = _train("wm", steps=300)
    end = rule.epoch_stats()
    assert min(start.values()) > 80 and max(end.values()) < 15, (start, end)


def test_drtp_sends_the_projected_target_and_every_rule_reports_its_own_credit():
    model, x = _models()["mlp"]
    y = torch.arange(len(x)) % 5
    drtp = build_method("drtp", model, seed=0)
    dfa = build_method("dfa", model, seed=0)
    target = F.one_hot(y, 5).float()
    for a, B in zip(drtp.credit(x, y), drtp.feedback):
        torch.testing.assert_close(a.flatten(1), -target @ B / len(y))
    assert torch.equal(drtp.feedback[0], dfa.feedback[0])                # DFA's matrices, DFA's stream
    assert not torch.allclose(drtp.credit(x, y)[0], dfa.credit(x, y)[0])


def test_a_rule_that_inherits_bps_credit_is_warned_about():
    with pytest.warns(InheritedCreditWarning, match="inherits BP's credit.*1.0 by construction"):
        @register_method("test_sign_bp")
        class SignBP(BP):
            def loss(self, x, y):
                loss, stats = super().loss(x, y)
                return loss.sign() * loss, stats
    with warnings.catch_warnings():                                      # overriding the credit too: no warning
        warnings.simplefilter("error")

        @register_method("test_half_dfa")
        class HalfDFA(DFA):
            def local_credit(self, *args):
                return [a / 2 for a in super().local_credit(*args)]
    for n in ("test_sign_bp", "test_half_dfa"):
        METHODS.pop(n)


def test_models_whose_backward_cannot_be_replaced_are_refused():
    net = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2))
    with pytest.raises(fe.methods.UnsupportedArchError, match="MultiheadAttention.*nn.Linear and nn.Conv2d"):
        feedback_layers(net)
    with pytest.raises(ValueError, match="convention='xavier'"):
        build_method("fa_layer", _models()["mlp"][0], convention="xavier")
    assert matrix_angle(torch.eye(3), torch.eye(3)) == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("arch", ["vit", "resnet", "studentnet"])
def test_every_layer_of_every_arch_is_replaced(arch):
    shape = (1, 8, 8) if arch in ("vit", "resnet") else (12,)
    model = fe.build_model(arch, shape, 4, seed=0, **({"width": 16} if arch != "resnet" else {"channels": 4}))
    rule = build_method("fa_layer", model, seed=0)
    x, y = torch.randn(6, *shape), torch.arange(6) % 4
    rule.loss(x, y)[0].backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for _, m in rule.layers)
    assert isinstance(rule, LayerwiseRule) and len(rule.layers) == len(rule.epoch_stats()) >= 4
    gamma = [float(F.cosine_similarity(a.flatten(), b.flatten(), 0))
             for a, b in zip(rule.credit(x, y), fe.diagnostics.bp_grads(model, x, y)[1])]
    assert all(abs(g) < 0.999 for g in gamma[:-1]), gamma
