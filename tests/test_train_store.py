"""fit(), the run store and the CLI: reproducible, cached, atomic, and clear about bad input."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import faeval
import faeval.book.probe_rules  # noqa: F401  (the book's probe rules too: every registered rule is checked)
from faeval import config, store
from faeval import diagnostics as D
from faeval.methods import METHODS, LocalRule, register_method
from faeval.train import evaluate, fit

pytestmark = pytest.mark.filterwarnings("ignore:synthetic task")

SMALL = {"dataset": "synthetic", "data": {"d": 16, "n_train": 512, "n_test": 256}, "width": 32, "depth": 2,
         "epochs": 2, "eval_n": 256}


@pytest.fixture(scope="module")
def synth():
    return faeval.load_dataset("synthetic", d=16, n_train=512, n_test=256, seed=0)


def _model(seed=0):
    return faeval.build_model("resmlp", (16,), 10, seed=seed, width=32, depth=2)


def _strip(history):
    return [{k: v for k, v in rec.items() if k != "seconds"} for rec in history]


# -- fit ----------------------------------------------------------------------------------------
def test_history_records_every_epoch_and_the_snapshot(synth):
    run = fit(_model(), "dfa", synth, 3, seed=0, progress=False, eval_n=256)
    assert [r["epoch"] for r in run.history] == [0, 1, 2, 3]
    assert [r["step"] for r in run.history] == [0, 4, 8, 12]
    assert run.history[0]["train_loss"] is None
    for rec in run.history[1:]:
        assert 0 <= rec["train_acc"] <= 1 and rec["train_loss"] > 0 and 0 <= rec["test_acc"] <= 1
        d = rec["diag"]
        assert len(d.hidden_norms) == len(d.bp_grad_norms) == len(d.gamma) == 3
        assert d.g_L == d.bp_grad_norms[-1]
        assert d.max_block_growth == pytest.approx(D.max_block_growth(d.hidden_norms))
    assert run.stopped is None
    # the snapshot's test accuracy matches an independent evaluation of the final model
    with torch.no_grad():
        acc = (run.model(synth.x_test).argmax(-1) == synth.y_test).double().mean().item()
    assert run.test_acc == pytest.approx(acc)


def test_each_epoch_records_the_output_error_the_branches_and_every_parameters_drift(synth):
    """The head mechanism's record (issue #40), checked against the model itself: the output error and the
    branch norms recomputed by hand on the eval batch, and a fixed head's drift exactly zero."""
    model = _model()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    run = fit(model, faeval.build_method("dfa", model, seed=0, head_lr=0.0), synth, 2, seed=0, progress=False,
              eval_n=256)
    first, last = run.history[0], run.history[-1]
    assert set(first.drift["abs"].values()) == {0.0}
    assert last.drift["abs"]["out_head.weight"] == last.drift["rel"]["out_head.weight"] == 0.0   # head_lr=0
    assert last.drift["rel"]["blocks.0.w1.weight"] > 0 and last.drift["rel"]["out_ln.bias"] is None  # zero-init
    w = model.blocks[1].w1.weight.detach().double()
    w0 = init["blocks.1.w1.weight"].double()
    assert last.drift["abs"]["blocks.1.w1.weight"] == pytest.approx((w - w0).norm().item(), rel=1e-9)
    assert last.drift["rel"]["blocks.1.w1.weight"] == pytest.approx(((w - w0).norm() / w0.norm()).item(), rel=1e-9)
    x, y = synth.eval_batch(256)
    with torch.no_grad():
        hs, logits = faeval.tap.Tap(model).states(x)
    err = torch.softmax(logits.double(), -1) - torch.nn.functional.one_hot(y, 10).double()
    d = last["diag"]
    assert d.error_norm == pytest.approx(err.norm(dim=1).median().item(), rel=1e-5)
    by_batch = [e.mean(0).norm() / e.norm(dim=1).mean() for e in err.split(128)]
    assert d.error_consistency == pytest.approx(sum(by_batch).item() / 2, rel=1e-5)
    assert 0 < d.error_consistency < 1
    for l, b in enumerate(d.branch_norms):
        assert b == pytest.approx((hs[l + 1] - hs[l]).norm(dim=1).median().item(), rel=1e-5)
    # the record survives the store's round trip
    again = faeval.train.history_from_json(json.loads(json.dumps(faeval.train.history_to_json(run.history))))
    assert again[-1].drift == last.drift and again[-1]["diag"].branch_norms == d.branch_norms


@pytest.mark.parametrize("name", ["dfa", "credit_bridge"])
def test_same_seed_same_history(synth, name):
    a = fit(_model(), name, synth, 2, seed=3, progress=False, eval_n=256)
    b = fit(_model(), name, synth, 2, seed=3, progress=False, eval_n=256)
    assert _strip(a.history) == _strip(b.history)
    c = fit(_model(), name, synth, 2, seed=4, progress=False, eval_n=256)
    assert _strip(c.history) != _strip(a.history)


def test_monitor_stops_the_run(synth):
    seen = []

    def monitor(epoch, rec):
        seen.append(epoch)
        return epoch >= 2

    run = fit(_model(), "bp", synth, 5, progress=False, eval_n=256, monitor=monitor)
    assert seen == [0, 1, 2] and run.final["epoch"] == 2
    assert run.stopped == "monitor stopped the run at epoch 2" == run.final["stopped"]


def test_a_non_finite_loss_ends_the_run_cleanly(synth):
    @register_method("explodes_test")
    class Explodes(LocalRule):
        """Credit that grows a thousandfold per step: the stream overflows within a few steps."""

        def __init__(self, model, *, seed=0, penalty=0.0, trainable_blocks=None, init_aux=True):
            super().__init__(model, seed=seed, penalty=penalty, trainable_blocks=trainable_blocks,
                             init_aux=init_aux)
            self.k = 0

        def local_credit(self, states, logits, y, top_grad):
            self.k += 1
            return [-(10.0 ** (3 * self.k)) * torch.ones_like(h) for h in states]

    try:
        run = fit(_model(), "explodes_test", synth, 20, progress=False, eval_n=256, check_every=1)
    finally:
        METHODS.pop("explodes_test")
    assert run.stopped is not None and run.stopped.startswith("non-finite")
    assert run.final["epoch"] < 20 and run.final["stopped"] == run.stopped
    assert math.isinf(run.final["diag"].max_block_growth) or not math.isfinite(run.final["train_loss"])


def test_fit_refuses_bad_settings(synth):
    m = _model()
    with pytest.raises(ValueError, match=r"lr=0: must be > 0"):
        fit(m, "bp", synth, 1, lr=0, progress=False)
    with pytest.raises(ValueError, match="different model"):
        fit(m, faeval.build_method("bp", _model()), synth, 1, progress=False)


# -- the store --------------------------------------------------------------------------------------
def test_a_store_hit_returns_the_same_numbers_without_training(tmp_path, monkeypatch):
    first = store.experiment(method="dfa", results=tmp_path, progress=False, **SMALL)
    assert not first.from_cache and first.path.is_dir()
    assert sorted(p.name for p in first.path.iterdir()) == ["checkpoint.pt", "config.json", "history.json"]

    def no_training(*a, **k):
        raise AssertionError("a store hit must not train")
    monkeypatch.setattr(store, "fit", no_training)
    again = store.experiment(method="dfa", results=tmp_path, progress=False, **SMALL)
    assert again.from_cache and again.path == first.path
    assert again.history == first.history           # every number survives the JSON round trip
    for p, q in zip(first.model.parameters(), again.model.parameters()):
        assert torch.equal(p, q)
    # an explicit default is the same run; a different value is not
    assert store.experiment(method="dfa", results=tmp_path, progress=False, penalty=0, **SMALL).from_cache
    with pytest.raises(AssertionError, match="must not train"):
        store.experiment(method="dfa", results=tmp_path, progress=False, penalty=1e-2, **SMALL)


@pytest.mark.parametrize("name", ["dfa", "fa", "state_bridge", "credit_bridge", "ep"])
def test_gamma_after_reloading_equals_gamma_before_saving(tmp_path, name):
    run = store.experiment(method=name, results=tmp_path, progress=False, **{**SMALL, "epochs": 1})
    ds = faeval.load_dataset("synthetic", d=16, n_train=512, n_test=256, seed=0)
    x, y = ds.eval_batch(256)
    before = D.gamma_of(run.method, run.model, x, y).mean
    loaded = store.load_run(run.path)
    after = D.gamma_of(loaded.method, loaded.model, x, y).mean
    assert after == before
    assert loaded.final["diag"].gamma == pytest.approx(before, abs=1e-6)   # the history recorded it too


def test_an_interrupted_run_leaves_no_entry(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(KeyboardInterrupt):
        store.experiment(method="bp", results=tmp_path, progress=False, **SMALL)
    assert list(tmp_path.iterdir()) == []
    assert store.list_runs(tmp_path) == []


def test_an_incomplete_directory_is_refused(tmp_path):
    cfg = config.canonical_config(method="bp", **SMALL)
    path = store.run_dir(cfg, tmp_path)
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not a complete faeval run"):
        store.experiment(method="bp", results=tmp_path, progress=False, **SMALL)


def test_a_damaged_store_entry_is_named_with_the_fix_and_fit_many_lists_every_one(tmp_path):
    """A truncated checkpoint or unreadable history names its run directory and says how to recover,
    instead of torch's 'PytorchStreamReader failed reading zip archive'; fit_many reports all of them."""
    from faeval.schedule import fit_many

    a = store.experiment(method="bp", results=tmp_path, progress=False, **SMALL)
    b = store.experiment(method="bp", results=tmp_path, progress=False, **{**SMALL, "seed": 1})
    ckpt = a.path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])                          # truncated
    (b.path / "history.json").write_text('[{"epoch": 0, "diag"')      # unreadable
    with pytest.raises(store.DamagedRunError, match=rf"{a.path.name}.*checkpoint.pt.*delete that folder.*retrain=True"):
        store.experiment(method="bp", results=tmp_path, progress=False, **SMALL)
    with pytest.raises(store.DamagedRunError, match=r"history.json: JSONDecodeError"):
        store.load_run(b.path)
    with pytest.raises(store.DamagedRunError, match=r"2 of 2 stored runs") as err:
        fit_many([dict(method="bp", **SMALL), dict(method="bp", **{**SMALL, "seed": 1})], results=tmp_path,
                 progress=False, workers=1)
    assert a.path.name in str(err.value) and b.path.name in str(err.value)
    again = store.experiment(method="bp", results=tmp_path, progress=False, retrain=True, **SMALL)
    assert store.load_run(again.path).history == again.history         # retrain=True repairs the entry


def test_a_dataset_object_where_a_name_belongs_is_refused_with_the_fix(synth):
    with pytest.raises(TypeError, match=r"dataset=Dataset object.*pass the dataset's name and its options"):
        store.experiment(dataset=synth, method="bp", epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"method=.* object.*pass the rule's name"):
        config.canonical_config(method=faeval.methods.METHODS["bp"])


def test_canonical_config_routes_and_fills_defaults():
    a = config.canonical_config(method="dfa", penalty=1e-2, width=256, subset=100, lr=1)
    b = config.canonical_config(method="dfa", hparams={"penalty": 0.01}, subset=100, lr=1.0)
    assert a == b and config.config_hash(a) == config.config_hash(b)
    assert a["hparams"]["penalty"] == 0.01 and a["model"]["width"] == 256 and a["data"]["subset"] == 100
    assert config.config_hash(a) != config.config_hash({**a, "seed": 1})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_rule_builds_from_its_canonical_config(name):
    cfg = config.canonical_config(method=name)
    rule = faeval.build_method(name, _model(), seed=cfg["seed"], **cfg["hparams"])
    assert rule.name == name
    assert "seed" not in cfg["hparams"] and "init_aux" not in cfg["hparams"]


@pytest.mark.parametrize("kw,err,msg", [
    ({"method": "dfx"}, ValueError, "unknown method 'dfx'"),
    ({"arch": "mlp"}, ValueError, "unknown arch 'mlp'"),
    ({"dataset": "imagenet"}, ValueError, "unknown dataset 'imagenet'"),
    ({"method": "dfa", "betta": 1}, TypeError, r"unknown config key\(s\) 'betta'.*valid keys: .*penalty"),
    ({"method": "dfa", "hparams": {"beta": 1}}, TypeError, r"hparams key\(s\) 'beta' are not options of method 'dfa'"),
])
def test_bad_configs_are_named(kw, err, msg):
    with pytest.raises(err, match=msg):
        config.canonical_config(**kw)


# -- the CLI ----------------------------------------------------------------------------------------
def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "faeval", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_cli_trains_lists_and_audits(tmp_path):
    args = ["--method", "dfa", "--dataset", "synthetic", "--epochs", "1", "--seed", "42", "--width", "32",
            "--depth", "2", "--penalty", "1e-2", "--set", "data={\"d\": 16, \"n_train\": 256, \"n_test\": 128}",
            "--eval-n", "128", "--quiet"]
    r = _cli("train", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "dfa  epoch 1  step 2  test_acc" in r.stdout
    r2 = _cli("train", *args, "--json", cwd=tmp_path)
    final = json.loads(r2.stdout)
    assert final["epoch"] == 1 and final["step"] == 2
    runs = _cli("runs", cwd=tmp_path)
    assert runs.returncode == 0 and "dfa" in runs.stdout and "synthetic" in runs.stdout
    # the listing shows what tells runs of one rule apart: the options that differ from the defaults
    assert "eval_n=128, depth=2, width=32, penalty=0.01, d=16, n_test=128, n_train=256" in runs.stdout
    listed = json.loads(_cli("runs", "--json", cwd=tmp_path).stdout)
    assert len(listed) == 1 and listed[0]["seed"] == 42
    run_path = Path(tmp_path, "results", listed[0]["run"])
    audit = _cli("audit", str(run_path), "--frozen-acc", "0.5", "--n-eval", "128", "--data-root", ".", cwd=tmp_path)
    assert audit.returncode == 0, audit.stderr
    assert "FAProtocol verdict" in audit.stdout


@pytest.mark.parametrize("cmd", [[], ["train"], ["runs"], ["audit"]])
def test_cli_help_works_for_every_subcommand(cmd, tmp_path):
    r = _cli(*cmd, "--help", cwd=tmp_path)
    assert r.returncode == 0 and "usage: python -m faeval" in r.stdout


def test_the_books_command_line_is_its_own(tmp_path):
    """``prepare`` belongs to the book: ``python -m faeval.book prepare``; the library's CLI says where it went."""
    r = subprocess.run([sys.executable, "-m", "faeval.book", "prepare", "--help"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "usage: python -m faeval.book prepare" in r.stdout and "--profile" in r.stdout
    r = _cli("prepare", "--profile", "quick", cwd=tmp_path)
    assert r.returncode == 2 and "prepare is the book's command: python -m faeval.book prepare" in r.stderr
    assert "{train,runs,audit}" in r.stderr           # the usage line lists the library's commands
    assert not (tmp_path / "results").exists()


def test_cli_bad_input_is_one_clear_line(tmp_path):
    r = _cli("train", "--method", "dfx", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: unknown method 'dfx'")
    r = _cli("train", "--method", "ep", "--beta", "0", cwd=tmp_path)
    assert r.returncode == 2 and "beta=0.0: must be > 0" in r.stderr


def test_the_lean_adamw_matches_torch_fused_adamw_bit_for_bit():
    """faeval.train.AdamW is torch.optim.AdamW(fused=True) without the bookkeeping: the same
    parameters after every step, including steps where some parameters have no gradient."""
    from faeval.train import AdamW
    torch.manual_seed(0)
    start = [torch.randn(7, 5), torch.randn(5), torch.randn(3, 7)]
    ours = [p.clone().requires_grad_() for p in start]
    theirs = [p.clone().requires_grad_() for p in start]
    opt_ours = AdamW(ours, lr=3e-3, weight_decay=0.05)
    opt_theirs = torch.optim.AdamW(theirs, lr=3e-3, weight_decay=0.05, fused=True)
    for step in range(6):
        x = torch.randn(4, 7)
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad(set_to_none=True)
            out = (x @ params[0] + params[1]).tanh().sum()
            if step % 2:                       # the third parameter gets a gradient every other step only
                out = out + (params[2] @ x.T).pow(2).mean()
            out.backward()
            opt.step()
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b), f"step {step}: {(a - b).abs().max()}"
    assert not torch.equal(ours[2], start[2]) and not torch.equal(ours[0], start[0])


def test_evaluate_is_the_whole_splits_loss_and_accuracy_whatever_the_batch_size(synth):
    model = _model(seed=3)
    with torch.no_grad():
        logits = model(synth.x_test)
    loss = torch.nn.functional.cross_entropy(logits.double(), synth.y_test).item()
    acc = (logits.argmax(-1) == synth.y_test).double().mean().item()
    for batch_size in (None, 7, 1024):
        got_loss, got_acc = evaluate(model, synth.x_test, synth.y_test, batch_size=batch_size)
        assert got_loss == pytest.approx(loss, rel=1e-6) and got_acc == acc
    assert 0.0 < acc < 0.5 and model.training            # an untrained model; evaluate restores train mode


def test_adamw_takes_a_gradient_in_another_memory_layout_as_the_same_gradient():
    """A transposed-view gradient (torch.autograd.grad returns such for stacked weights) is the same
    gradient: the update equals the one from a contiguous copy and AdamW's unfused reference.
    (torch 2.13's own fused AdamW applies it transposed; faeval's copies it into layout first.)"""
    from faeval.train import AdamW
    torch.manual_seed(1)
    start = torch.randn(4, 3)
    grad = torch.randn(3, 4).t()
    assert not grad.is_contiguous()
    after = {}
    for name, g in (("view", grad), ("copy", grad.contiguous()), ("reference", grad)):
        p = start.clone().requires_grad_()
        opt = torch.optim.AdamW([p], lr=0.1, weight_decay=0.01) if name == "reference" else AdamW([p], 0.1, 0.01)
        p.grad = g
        opt.step()
        after[name] = p.detach()
    assert torch.equal(after["view"], after["copy"])
    torch.testing.assert_close(after["view"], after["reference"], rtol=1e-6, atol=1e-7)
    assert (after["view"] - start).abs().max() > 0.05


def test_adamw_checks_the_private_fused_kernel_and_falls_back_to_torch_optim(monkeypatch, caplog):
    """On the installed torch the direct kernel call passes its check and is used; a kernel whose signature
    changed (it raises) or whose update is wrong makes adamw() use torch.optim.AdamW, logged once."""
    from faeval import train

    p = torch.zeros(3, requires_grad=True)
    assert train.fused_kernel_ok("cpu") and isinstance(train.adamw([p], 1e-3, 0.01), train.AdamW)
    # the check's written-out AdamW is torch.optim.AdamW's update on the installed torch
    g = torch.Generator().manual_seed(1)
    init, *grads = (torch.randn(5, 2, generator=g, dtype=torch.float64) for _ in range(5))
    q = init.clone().requires_grad_()
    ref = torch.optim.AdamW([q], lr=0.05, weight_decay=0.1, foreach=False, fused=False)
    for grad in grads:
        q.grad = grad
        ref.step()
    torch.testing.assert_close(train._adamw_reference(init, grads, lr=0.05, weight_decay=0.1), q.detach(),
                               rtol=1e-12, atol=1e-14)

    def changed(*args, **kwargs):
        raise TypeError("_fused_adamw_() got an unexpected keyword argument 'beta1'")

    def wrong(params, grads, *args, **kwargs):       # runs, but moves nothing
        return None

    for kernel, why in ((changed, "TypeError: _fused_adamw_() got an unexpected keyword"),
                        (wrong, "its update differs from AdamW's by")):
        monkeypatch.setattr(train, "_KERNEL_OK", {})
        monkeypatch.setattr(torch, "_fused_adamw_", kernel)
        caplog.clear()
        with caplog.at_level("WARNING", logger="faeval"):
            opt = train.adamw([p], 1e-3, 0.01)
            train.adamw([p], 1e-3, 0.01)
        assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]
        warned = [r.getMessage() for r in caplog.records if "fails its check" in r.getMessage()]
        assert len(warned) == 1 and why in warned[0], warned           # logged once, not per optimiser
    monkeypatch.undo()
    # and the fallback trains: faeval.fit with it gives the same run as torch.optim.AdamW's reference, to rounding
    ds = faeval.load_dataset("synthetic", d=16, n_train=256, n_test=64, seed=0)
    runs = []
    for ok in (True, False):
        monkeypatch.setattr(train, "_KERNEL_OK", {"cpu": ok})
        runs.append(fit(_model(), "bp", ds, 2, seed=0, progress=False, eval_n=64))
    assert runs[0].test_acc == runs[1].test_acc
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_channels_last_evaluation_records_the_same_numbers_and_training_never_sees_it(monkeypatch):
    """SmallCNN evaluates with channels-last copies of its conv weights (eval_layout): the history's test
    numbers and snapshot agree with the plain layout's to float rounding, its training numbers bit for bit,
    and the weights the optimiser steps keep their own layout."""
    from faeval.models import SmallCNN
    from faeval.train import eval_layout
    ds = faeval.load_dataset("fashion-mnist", subset=256)
    histories = {}
    for flag in (False, True):
        monkeypatch.setattr(SmallCNN, "eval_channels_last", flag)
        model = faeval.build_model("cnn", ds.input_shape, 10, seed=0, channels=(4, 8, 8), hidden=16)
        convs = [p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1]
        with eval_layout(model):
            laid_out = [p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs]
            assert all(laid_out) == flag and any(laid_out) == flag
        histories[flag] = fit(model, "dfa", ds, 2, seed=0, eval_n=128, progress=False).history
        assert all(p.is_contiguous() for p in convs)
    for plain, fast in zip(histories[False], histories[True]):
        assert plain.train_loss == fast.train_loss and plain.diag.hidden_norms[0] == pytest.approx(
            fast.diag.hidden_norms[0], rel=1e-5)
        assert fast.test_loss == pytest.approx(plain.test_loss, rel=1e-5)
        assert fast.test_acc == pytest.approx(plain.test_acc, abs=2e-4)       # at most two near-ties flip
        assert fast.diag.g_L == pytest.approx(plain.diag.g_L, rel=1e-4)
        assert fast.diag.gamma == pytest.approx(plain.diag.gamma, abs=1e-4)
