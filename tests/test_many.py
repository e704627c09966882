"""Many runs as one: a vectorised group trains exactly the runs that fit trains one by one."""
from __future__ import annotations

import logging

import pytest
import torch

import faeval as fe
from faeval import many, schedule, store
from faeval.many import fit_group, why_not_groupable
from faeval.train import fit

SMALL = {"dataset": "synthetic", "n_train": 384, "n_test": 128, "d": 24, "width": 24, "depth": 3, "epochs": 2,
         "eval_n": 128}


@pytest.fixture(scope="module")
def data():
    return fe.load_dataset("synthetic", n_train=384, n_test=128, d=24)


def _build(ds, method, seed, **hp):
    model = fe.build_model("resmlp", ds.input_shape, ds.num_classes, seed=seed, width=24, depth=3)
    return model, fe.build_method(method, model, seed=seed, **hp)


def _close(a, b, rtol=1e-4):
    return abs(a - b) <= rtol * (1 + abs(a))


@pytest.mark.parametrize("method, hps", [("dfa", [{}, {"penalty": 1e-2}, {}]), ("bp", [{}, {"penalty": 0.1}]),
                                         ("fa", [{}, {}]), ("frozen", [{}, {}]), ("drtp", [{}, {}]),
                                         ("fa_layer", [{}, {"penalty": 1e-2}]), ("usf", [{}, {}]),
                                         ("frsf", [{}, {}])])
def test_a_group_matches_the_runs_trained_one_by_one(data, method, hps):
    seeds = list(range(len(hps)))
    alone = [fit(*_build(data, method, s, **hp), data, 2, s, progress=False) for s, hp in zip(seeds, hps)]
    built = [_build(data, method, s, **hp) for s, hp in zip(seeds, hps)]
    together = fit_group([b[0] for b in built], [b[1] for b in built], [data] * len(seeds), 2, seeds, progress=False)
    for a, b in zip(alone, together):
        assert [r["epoch"] for r in a.history] == [r["epoch"] for r in b.history] == [0, 1, 2]
        assert set(a.history[-1]) == set(b.history[-1])
        for ra, rb in zip(a.history, b.history):
            for k in ("train_loss", "train_acc", "test_loss", "test_acc", "penalty"):
                if ra.get(k) is not None:
                    assert _close(ra[k], rb[k]), (k, ra["epoch"], ra[k], rb[k])
            assert _close(ra["diag"].g_L, rb["diag"].g_L, 1e-3)
            assert all(_close(x, y, 1e-3) for x, y in zip(ra["diag"].hidden_norms, rb["diag"].hidden_norms))
            assert _close(ra["diag"].error_consistency, rb["diag"].error_consistency, 1e-3)
            assert ra.drift["abs"].keys() == rb.drift["abs"].keys()
            assert all(_close(ra.drift["abs"][n], rb.drift["abs"][n], 1e-3) for n in ra.drift["abs"])
        for pa, pb in zip(a.model.parameters(), b.model.parameters()):
            torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)
    # the runs really differ from each other (seeds and penalties are not shared by accident)
    assert together[0].history[-1]["test_loss"] != together[1].history[-1]["test_loss"]


def test_a_run_in_a_group_stops_on_its_own(data):
    built = [_build(data, "dfa", s) for s in (0, 1)]
    runs = fit_group([b[0] for b in built], [b[1] for b in built], [data] * 2, 3, [0, 1], progress=False,
                     monitors=[lambda epoch, rec: epoch >= 1, None])
    assert runs[0].stopped == "monitor stopped the run at epoch 1" == runs[0].history[-1]["stopped"]
    assert [r["epoch"] for r in runs[0].history] == [0, 1]
    assert runs[1].stopped is None and [r["epoch"] for r in runs[1].history] == [0, 1, 2, 3]
    built = [_build(data, "dfa", s) for s in (0, 1)]
    blown = fit_group([b[0] for b in built], [b[1] for b in built], [data] * 2, 3, [0, 1], progress=False, lr=1e6)
    assert all(r.stopped.startswith("non-finite") and r.history[-1]["epoch"] == 1 for r in blown)


def test_what_cannot_be_grouped_says_why(data):
    ep = _build(data, "ep", 0)[1]
    assert "inner loop" in why_not_groupable(ep)
    cnn = fe.build_model("cnn", (1, 8, 8), 10, seed=0, channels=(2, 2, 2), hidden=4)
    assert "arch 'cnn'" in why_not_groupable(fe.build_method("dfa", cnn))
    assert why_not_groupable(_build(data, "dfa", 0)[1]) is None
    m0, d0 = _build(data, "dfa", 0)
    m1, d1 = _build(data, "bp", 1)
    with pytest.raises(ValueError, match="cannot group"):
        fit_group([m0, m1], [d0, d1], [data, data], 1, [0, 1], progress=False)


def test_fit_many_groups_stores_and_reloads(tmp_path, caplog, monkeypatch):
    configs = [{**SMALL, "method": "dfa", "seed": s} for s in (0, 1, 2)] + [{**SMALL, "method": "dfa", "seed": 0,
                                                                             "penalty": 1e-2}]
    with caplog.at_level(logging.INFO, logger="faeval"):
        runs = fe.fit_many(configs, results=tmp_path, progress=False, workers=1, group=True)
    assert "training 4 dfa runs together" in caplog.text
    one = store.experiment(results=tmp_path / "alone", progress=False, **configs[1])
    assert _close(one.history[-1]["test_loss"], runs[1].history[-1]["test_loss"])
    assert len(list(tmp_path.glob("dfa_*"))) == 4
    monkeypatch.setattr(many, "fit_group", lambda *a, **k: pytest.fail("a stored run was retrained"))
    again = fe.fit_many(configs, results=tmp_path, progress=False)
    assert all(r.from_cache for r in again)
    assert [r.history[-1]["test_loss"] for r in again] == [r.history[-1]["test_loss"] for r in runs]


def test_fit_many_asks_once_per_group_whether_it_can_group(tmp_path, monkeypatch):
    built = []
    real = store.build_run
    counting = lambda cfg, *a: built.append(cfg["method"]) or real(cfg, *a)  # noqa: E731
    for module in (store, schedule):         # schedule asks whether runs group; store builds a run it trains
        monkeypatch.setattr(module, "build_run", counting)
    configs = [{**SMALL, "method": m, "seed": s, "epochs": 1} for m in ("dfa", "ep") for s in (0, 1, 2)]
    fe.fit_many(configs, results=tmp_path, progress=False, workers=1, group=True)
    # one check per group key (dfa, ep), then one build per trained run
    assert sorted(built) == sorted(["dfa", "ep"] + ["dfa"] * 3 + ["ep"] * 3)


def test_fit_many_trains_what_cannot_be_grouped_one_by_one(tmp_path, caplog):
    configs = [{**SMALL, "method": m, "seed": 0, "epochs": 1} for m in ("ep", "dfa")]
    with caplog.at_level(logging.INFO, logger="faeval"):
        runs = fe.fit_many(configs, results=tmp_path, progress=False, workers=1, group=True)
    assert [r.config["method"] for r in runs] == ["ep", "dfa"]
    assert "training ep seed 0 on its own" in caplog.text


def test_out_of_memory_splits_the_group_and_retries(tmp_path, caplog, monkeypatch):
    real = many.fit_group

    def small_device(models, *a, **k):
        if len(models) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(models, *a, **k)

    monkeypatch.setattr(many, "fit_group", small_device)
    configs = [{**SMALL, "method": "bp", "seed": s, "epochs": 1} for s in (0, 1, 2)]
    with caplog.at_level(logging.WARNING, logger="faeval"):
        runs = fe.fit_many(configs, results=tmp_path, progress=False, workers=1, group=True)
    assert len(runs) == 3 and all(r.history[-1]["epoch"] == 1 for r in runs)
    assert "out of memory training a group of 3 runs together; splitting it into 1 + 2" in caplog.text


def test_worker_processes_train_the_same_runs(tmp_path):
    configs = [{**SMALL, "method": m, "seed": s, "epochs": 1} for m in ("dfa", "ep") for s in (0, 1)]
    here = fe.fit_many(configs, results=tmp_path / "here", progress=False, workers=1, group=True)
    there = fe.fit_many(configs, results=tmp_path / "there", progress=False, workers=2)
    assert [r.path.name for r in here] == [r.path.name for r in there]
    assert not any(r.from_cache for r in there)
    for a, b in zip(here, there):
        assert _close(a.history[-1]["test_loss"], b.history[-1]["test_loss"])
    assert all(r.from_cache for r in fe.fit_many(configs, results=tmp_path / "there", progress=False, workers=2))


def test_an_out_of_memory_at_the_first_grouped_step_stays_an_out_of_memory(data, monkeypatch):
    """fit_group_splitting splits a group on an OOM; the first step's error must reach it as one."""
    def oom(*a, **k):
        def call(*a, **k):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return call
    monkeypatch.setattr(many, "vmap", oom)
    built = [_build(data, "dfa", s) for s in (0, 1)]
    with pytest.raises(RuntimeError, match="out of memory") as e:
        fit_group([b[0] for b in built], [b[1] for b in built], [data] * 2, 1, [0, 1], progress=False)
    assert many._is_oom(e.value) and not isinstance(e.value, ValueError)
