"""faeval.layered: a residual network written here, with its own names and forward, trains with the rules
through the adapter, and the protocol reads it the same way through the adapter as through forward hooks."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

import faeval
from faeval import diagnostics as D

LAYERS = ["stem", "trunk.0", "trunk.1", "trunk.2"]


class Unit(nn.Module):
    """A pre-norm residual unit that adds its own skip."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, h):
        return h + self.down(torch.relu(self.up(self.norm(h))))


class TheirNet(nn.Module):
    """Not a faeval model: other module names, a flatten in the forward, no return_hidden."""

    def __init__(self, d_in: int = 784, d: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(d_in, d))
        self.trunk = nn.Sequential(*[Unit(d) for _ in range(3)])
        self.final_norm = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, classes)

    def forward(self, x):
        return self.classifier(self.final_norm(self.trunk(self.stem(x))))


def _adapt(net, **kw):
    return faeval.layered(net, embed="stem", blocks=LAYERS[1:], readout=["final_norm", "classifier"],
                          input_shape=(1, 28, 28), **kw)


@pytest.fixture(scope="module")
def fmnist():
    return faeval.load_dataset("fashion-mnist", subset=10000, seed=0)


@pytest.mark.parametrize("method", ["dfa", "bp"])
def test_their_model_trains_through_the_adapter_and_both_readings_of_the_protocol_agree(fmnist, method):
    torch.manual_seed(0)
    net = TheirNet()
    model = _adapt(net)
    before = [p.detach().clone() for p in net.trunk.parameters()]
    run = faeval.fit(model, method, fmnist, 1, seed=0, progress=False, eval_n=256)
    # the module's own parameters trained (the adapter shares them), and it learned the task
    assert all(not torch.equal(a, p) for a, p in zip(before, net.trunk.parameters()))
    assert run.test_acc > 0.45, run.test_acc        # measured: dfa 0.58, bp 0.78 (chance 0.1)
    x, y = fmnist.eval_batch(512)
    through_adapter = faeval.FAProtocol(model, x, y, frozen_baseline_acc=0.7).run()
    through_hooks = faeval.FAProtocol(net, x, y, frozen_baseline_acc=0.7, layers=LAYERS).run()
    a, b = json.loads(through_adapter.to_json()), json.loads(through_hooks.to_json())
    assert a["verdicts"] == b["verdicts"] and a["fired"] == b["fired"]
    for key in ("D1_scale_growth", "D2_ref_validity", "C_direction_stability", "D3_depth_utility"):
        assert a["diagnostics"][key]["value"] == pytest.approx(b["diagnostics"][key]["value"], rel=1e-5), key
    for key in ("hidden_norms", "bp_grad_norms"):
        assert a["per_layer"][key] == pytest.approx(b["per_layer"][key], rel=1e-5), key
    assert len(a["per_layer"]["hidden_norms"]) == 4 and b["per_layer"]["layers"] == LAYERS


@pytest.mark.parametrize("method", ["fa", "ep", "state_bridge", "credit_bridge", "drtp", "fa_layer", "usf", "frsf",
                                    "brsf", "kp", "wm"])
def test_every_other_rule_steps_on_the_adapted_model(method):
    net = TheirNet(d_in=12, d=16, classes=5)
    model = faeval.layered(net, embed="stem", blocks=LAYERS[1:], readout=["final_norm", "classifier"],
                           input_shape=(12,))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 12, generator=g), torch.randint(0, 5, (32,), generator=g)
    rule = faeval.build_method(method, model, seed=0)
    rule.start_training(10)
    assert math.isfinite(float(rule.step(x, y)["loss"]))
    assert all(p.grad is not None for p in rule.parameters())
    gamma = D.gamma_of(rule, model, x, y).mean
    assert len(gamma) == 4 and all(math.isfinite(v) for v in gamma)


def test_the_adapter_reads_the_branch_of_a_block_that_adds_its_own_skip():
    net = TheirNet(d_in=12, d=16, classes=5)
    model = faeval.layered(net, embed="stem", blocks=LAYERS[1:], readout=["final_norm", "classifier"],
                           input_shape=(12,))
    h = torch.randn(3, 16)
    torch.testing.assert_close(model.blocks[0](h), net.trunk[0](h) - h)
    hs, logits = model.states(torch.randn(3, 12))
    assert model.residual and model.equal_width and model.arch == "layered(TheirNet)"
    torch.testing.assert_close(hs[1], net.trunk[0](hs[0]), rtol=0, atol=0)     # exactly its own block
    # the penalty acts on that branch
    pen = faeval.build_method("dfa", model, penalty=0.5)
    assert pen.penalty == 0.5


def test_parts_that_do_not_compose_into_the_forward_are_refused_with_the_fix():
    net = TheirNet(d_in=12, d=16, classes=5)
    kw = dict(embed="stem", readout=["final_norm", "classifier"], input_shape=(12,))
    with pytest.raises(ValueError, match=r"does not reproduce the module's forward \(with skip='block', their "
                                         r"logits differ .*; with skip='model', their logits differ"):
        faeval.layered(net, blocks=["trunk.1", "trunk.0", "trunk.2"], **kw)         # blocks out of order
    with pytest.raises(ValueError, match=r"skip='model'"):
        faeval.layered(net, blocks=LAYERS[1:], skip="model", **kw)                  # the skip counted twice
    with pytest.raises(ValueError, match=r"no sub-module named 'trunk\.3' in TheirNet; its module names are: "
                                         r"'stem', 'stem\.0'"):
        faeval.layered(net, blocks=["trunk.0", "trunk.3"], **kw)
    with pytest.raises(TypeError, match=r"the last readout module, 'final_norm', is a LayerNorm; it must be the "
                                        r"classifier"):
        faeval.layered(net, embed="stem", blocks=LAYERS[1:], readout="final_norm", input_shape=(12,))
    with pytest.raises(ValueError, match=r"running the parts failed"):
        faeval.layered(net, embed="stem", blocks=["trunk"], readout=["stem", "classifier"], input_shape=(12,))
    with pytest.raises(ValueError, match=r"the module's own forward cannot take samples of input_shape=\(13,\)"):
        faeval.layered(net, blocks=LAYERS[1:], **{**kw, "input_shape": (13,)})
    with pytest.raises(ValueError, match=r"skip='sum': must be 'block'"):
        faeval.layered(net, blocks=LAYERS[1:], skip="sum", **kw)


class BranchNet(nn.Module):
    """The most common way to write a residual network: the forward adds each block's output to its input."""

    def __init__(self, d_in: int = 12, d: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Linear(d_in, d)
        self.branches = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU()) for _ in range(2))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, x):
        h = self.stem(x)
        for f in self.branches:
            h = h + f(h)
        return self.head(self.norm(h))


def test_left_out_the_skip_convention_is_the_one_that_reproduces_the_forward():
    kw = dict(embed="stem", readout=["norm", "head"], input_shape=(12,))
    branch_net = BranchNet()
    model = faeval.layered(branch_net, blocks=["branches.0", "branches.1"], **kw)
    assert model.skip == "model"
    h = torch.randn(3, 16)
    torch.testing.assert_close(model.blocks[0](h), branch_net.branches[0](h), rtol=0, atol=0)
    x = torch.randn(3, 12)
    torch.testing.assert_close(model.states(x)[1], branch_net(x))
    their = TheirNet(d_in=12, d=16, classes=5)
    assert faeval.layered(their, embed="stem", blocks=LAYERS[1:], readout=["final_norm", "classifier"],
                          input_shape=(12,)).skip == "block"
    # an explicit skip= still wins, and is refused where it does not reproduce the forward
    with pytest.raises(ValueError, match=r"does not reproduce the module's forward \(their logits differ"):
        faeval.layered(branch_net, blocks=["branches.0", "branches.1"], skip="block", **kw)
    # neither convention: the error says what each gave
    with pytest.raises(ValueError, match=r"\(with skip='block', their logits differ .*; with skip='model', their "
                                         r"logits differ"):
        faeval.layered(branch_net, blocks=["branches.1", "branches.0"], **kw)


def test_a_registered_adapter_is_keyed_stored_and_reloaded(tmp_path):
    @faeval.register_arch("their_net_test")
    class Theirs(faeval.Layered):
        def __init__(self, input_shape, num_classes, width=16):
            super().__init__(TheirNet(math.prod(input_shape), width, num_classes), embed="stem", blocks=LAYERS[1:],
                             readout=["final_norm", "classifier"], input_shape=input_shape)

    try:
        small = dict(arch="their_net_test", dataset="synthetic", d=12, n_train=256, n_test=64, width=8, eval_n=64,
                     epochs=1, results=tmp_path, progress=False)
        run = faeval.experiment(method="dfa", **small)
        again = faeval.experiment(method="dfa", **small)
        assert again.from_cache and again.config["model"] == {"width": 8}
        for p, q in zip(run.model.state_dict().values(), again.model.state_dict().values()):
            torch.testing.assert_close(p, q)
        assert again.final["diag"].hidden_norms == pytest.approx(run.final["diag"].hidden_norms)
    finally:
        faeval.ARCHS.pop("their_net_test")
