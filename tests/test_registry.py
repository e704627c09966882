"""The registries: an architecture and a rule defined here, in the test file, work everywhere, and
a vectorised group never skips a rule's own step logic."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from torch import nn

import faeval as fe
from faeval import config, schedule
from faeval.many import fit_group, why_not_groupable
from faeval.methods.dfa import DFA
from faeval.train import fit

pytestmark = pytest.mark.filterwarnings("ignore:synthetic task")

DATA = {"dataset": "synthetic", "data": {"d": 12, "n_train": 384, "n_test": 128}, "eval_n": 128}


# -- an architecture defined outside the package --------------------------------------------------
class _GatedBranch(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln, self.a, self.b = nn.LayerNorm(d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, h):
        z = self.ln(h)
        return 0.1 * self.a(z) * torch.sigmoid(self.b(z))


class GatedMLP(fe.LayeredModel):
    """A residual MLP with gated branches: nothing in faeval knows its name."""

    groupable = True

    def __init__(self, input_shape, num_classes=10, width=24, depth=3, out_ln=True):
        super().__init__()
        d_in = int(torch.tensor(input_shape).prod())
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(d_in, width))
        self.blocks = nn.ModuleList(_GatedBranch(width) for _ in range(depth))
        self.out_ln = nn.LayerNorm(width) if out_ln else None
        self.out_head = nn.Linear(width, num_classes)


def test_a_registered_architecture_is_known_to_every_consumer():
    assert fe.ARCHS["gated_mlp"] is GatedMLP and GatedMLP.arch == "gated_mlp"
    assert config.model_options("gated_mlp") == {"width": 24, "depth": 3, "out_ln": True}
    cfg = config.canonical_config(arch="gated_mlp", method="dfa", width=16, **DATA)
    assert cfg["model"] == {"width": 16, "depth": 3, "out_ln": True}
    with pytest.raises(TypeError, match="not options of arch 'gated_mlp'; valid: depth, out_ln, width"):
        config.canonical_config(arch="gated_mlp", model={"channels": [4]})
    with pytest.raises(ValueError, match="valid archs: .*gated_mlp"):
        fe.build_model("gated_mpl", (4,), 2)
    # the class's step_cost and eval_cost, not a guess by name: its steps on 384 samples, its records on 128
    assert schedule._cost(cfg) == 1.0 * (cfg["epochs"] * 384 * 1.0 + (cfg["epochs"] + 1) * 128 * GatedMLP.eval_cost)
    # FA asks the class whether its states share one shape
    assert fe.build_method("fa", fe.build_model("gated_mlp", (12,), 10, seed=0)).width == 24


def test_dfa_and_bp_train_on_a_registered_architecture_through_the_store(tmp_path):
    runs = {m: fe.experiment(arch="gated_mlp", method=m, epochs=2, seed=3, results=tmp_path, progress=False, **DATA)
            for m in ("dfa", "bp")}
    x, y = fe.load_dataset("synthetic", d=12, n_train=384, n_test=128, seed=3).eval_batch(128)
    for run in runs.values():
        assert isinstance(run.model, GatedMLP) and run.history[-1]["epoch"] == 2
        assert run.history[-1]["train_loss"] < run.history[1]["train_loss"] * 1.5
        report = fe.FAProtocol(run.model, x, y, headline_acc=run.test_acc).run(frozen_baseline_acc=0.1)
        assert report.verdict in ("PASS", "FAIL(D1)", "FAIL(D2)", "FAIL(D1+D2)", "FAIL(D3)")
        assert report["per_layer"]["layers"] == ["h0", "h1", "h2", "h3"]
        loaded = fe.load_run(run.path)
        assert torch.equal(loaded.model(x), run.model(x))
    bp = runs["bp"].history
    assert bp[-1]["test_loss"] < bp[0]["test_loss"]               # BP learns on it
    assert runs["dfa"].history[-1]["diag"].gamma is not None


def test_the_cli_help_lists_the_registered_names():
    out = subprocess.run([sys.executable, "-m", "faeval", "train", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for name in ("resmlp", "studentnet", "credit_bridge", "fashion-mnist"):
        assert name in out


# -- a rule defined outside the package, in a vectorised group --------------------------------------
class DFANoBlock1(DFA):
    """DFA whose block 1 gets no credit: an override of local_credit that a group must honour."""

    def local_credit(self, states, logits, y, top_grad):
        credit = super().local_credit(states, logits, y, top_grad)
        credit[2] = torch.zeros_like(credit[2])           # a_2 trains block 1
        return credit


class DFAOwnStep(DFA):
    """DFA with a step of its own (gradients halved), which a vectorised group cannot run."""

    def step(self, x, y):
        stats = super().step(x, y)
        for p in self.parameters():
            p.grad /= 2
        return stats


@pytest.fixture(scope="module", autouse=True)
def _registered():
    """Register this file's architecture and rules, as a notebook cell would, for this file's tests
    only (the other tests' registries stay as the package defines them)."""
    fe.register_arch("gated_mlp")(GatedMLP)
    fe.register_method("dfa_no_block1")(DFANoBlock1)
    fe.register_method("dfa_own_step")(DFAOwnStep)
    yield
    fe.ARCHS.pop("gated_mlp")
    fe.METHODS.pop("dfa_no_block1")
    fe.METHODS.pop("dfa_own_step")


def _one(data, method, seed):
    model = fe.build_model("resmlp", data.input_shape, data.num_classes, seed=seed, width=24, depth=3)
    return model, fe.build_method(method, model, seed=seed)


def _pair(data, method, seeds):
    built = [_one(data, method, s) for s in seeds]
    return [b[0] for b in built], [b[1] for b in built]


@pytest.fixture(scope="module")
def data():
    return fe.load_dataset("synthetic", d=12, n_train=384, n_test=128, seed=0)


def test_a_group_runs_the_rules_own_credit(data):
    seeds = (0, 1)
    alone = [fit(*_one(data, "dfa_no_block1", s), data, 2, s, progress=False, eval_n=128) for s in seeds]
    models, rules = _pair(data, "dfa_no_block1", seeds)
    assert why_not_groupable(rules[0]) is None
    together = fit_group(models, rules, [data] * 2, 2, list(seeds), progress=False, eval_n=128)
    plain = fit(*_one(data, "dfa", 0), data, 2, 0, progress=False, eval_n=128)
    for a, b in zip(alone, together):
        assert a.test_acc == pytest.approx(b.test_acc, abs=1e-6)
        for pa, pb in zip(a.model.parameters(), b.model.parameters()):
            torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)
    # the override matters: block 1's weights move under plain DFA; without its credit only AdamW's
    # weight decay (a factor 1 - 1e-5 per step) touches them
    init = _one(data, "dfa", 0)[0].blocks[1].w2.weight
    moved = lambda run: (run.model.blocks[1].w2.weight - init).abs().max().item()  # noqa: E731
    assert moved(together[0]) < 1e-5 < 1e-4 < moved(plain)


def test_a_rule_with_its_own_step_is_refused_by_a_group_and_trained_alone(data, tmp_path, caplog):
    models, rules = _pair(data, "dfa_own_step", (0, 1))
    assert "overrides step()" in why_not_groupable(rules[0])
    with pytest.raises(ValueError, match="overrides step"):
        fit_group(models, rules, [data] * 2, 1, [0, 1], progress=False)
    configs = [{**DATA, "width": 24, "depth": 3, "method": "dfa_own_step", "seed": s, "epochs": 1} for s in (0, 1)]
    with caplog.at_level(logging.INFO, logger="faeval"):
        runs = fe.fit_many(configs, results=tmp_path, progress=False, workers=1, group=True)
    assert "training dfa_own_step seed 0 on its own" in caplog.text and "overrides step()" in caplog.text
    seed1 = fe.load_dataset("synthetic", d=12, n_train=384, n_test=128, seed=1)   # the store seeds synthetic data
    alone = fit(*_one(seed1, "dfa_own_step", 1), seed1, 1, 1, progress=False, eval_n=128)
    assert runs[1].test_acc == pytest.approx(alone.test_acc, abs=1e-6)


class DFAWithNoise(DFA):
    """DFA that adds a fixed random tensor of its own to the credit, without listing it in group_state."""

    def __init__(self, model, **kw):
        super().__init__(model, **kw)
        self.offset = torch.randn(model.width, generator=torch.Generator().manual_seed(self.seed + 99)) * 1e-3

    def local_credit(self, states, logits, y, top_grad):
        return [a + self.offset for a in super().local_credit(states, logits, y, top_grad)]


def test_a_group_refuses_per_run_state_it_would_not_stack(data):
    models = [fe.build_model("resmlp", data.input_shape, data.num_classes, seed=s, width=24, depth=3) for s in (0, 1)]
    rules = [DFAWithNoise(m, seed=s) for m, s in zip(models, (0, 1))]
    with pytest.raises(ValueError, match=r"per-run state \['offset'\] that its group_state\(\) does not list"):
        fit_group(models, rules, [data] * 2, 1, [0, 1], progress=False)
