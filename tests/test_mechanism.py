"""The head mechanism's readings (faeval.book.mechanism): the prediction's parts, the seed record's comparison and the
drift convention, on runs whose numbers are set by hand so that every branch is known."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

import faeval as fe
from faeval.book import mechanism as M
from faeval.snapshot import Snapshot
from faeval.train import EpochRecord


def _rec(epoch, h, loss, *, hidden=None, grads=None, gamma=None, drift=None, recorded=True):
    hidden = hidden or [1.0, h]
    snap = Snapshot(hidden, grads or [1e-5] * len(hidden), 1.0, 1e-5, None, 0.0, 0.5, "", gamma=gamma,
                    error_norm=0.5 if recorded else None, error_consistency=0.1 if recorded else None,
                    branch_norms=[h] if recorded else None)
    return EpochRecord(epoch, epoch, loss, 0.5, 1.0, 0.5, 0.0, snap,
                       drift=({"abs": {}, "rel": drift or {}} if recorded else None))


def _run(h_by_epoch, loss=0.5, **kw):
    return SimpleNamespace(history=[_rec(e, h, loss, **kw) for e, h in enumerate(h_by_epoch)])


def test_later_growth_and_a_record_that_predates_the_mechanism():
    assert M.later_growth(_run([1, 10, 20, 80])) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="epoch 2"):
        M.later_growth(_run([1, 10]))
    with pytest.raises(ValueError, match="retrain=True"):
        M.check_record(_run([1, 2, 3], recorded=False))


def test_each_part_of_the_prediction_is_read_and_a_failing_part_is_named():
    clean = {("dfa", "head trained"): _run([1, 10, 10, 12], loss=0.4),
             ("dfa", "head fixed"): _run([1, 100, 1e3, 1e4], loss=1.4)}
    grows = {("dfa", 0.4, "head trained"): _run([1, 10, 10, 100], loss=1.6),
             ("dfa", 0.4, "head fixed"): _run([1, 100, 1e3, 1e4], loss=2.0)}
    (row,) = M.prediction_rows(clean, grows)
    assert row["holds"] == "yes" and row["later growth (noisy / clean)"] == "10 / 1.2"
    stalls = {("dfa", 0.4, "head trained"): _run([1, 10, 10, 11], loss=1.6),     # (b) fails: no later growth
              ("dfa", 0.4, "head fixed"): _run([1, 100, 1e3, 1e5], loss=2.0)}  # (c) fails: excess larger
    (row,) = M.prediction_rows(clean, stalls)
    assert row["holds"] == "no: (b) later growth, (c) fixed-head excess"


def test_the_seed_record_is_compared_as_profiles_and_the_nearer_regime_is_named():
    seed = {"epoch": 2, "hidden_norms": [10.0, 100.0], "bp_grad_norms": [1e-4, 1e-5], "bp_cosine": [0.9],
            "drift": {"w": 2.0}}
    same = _run([1, 5, 50], hidden=[1.0, 10.0], grads=[1e-3, 1e-4], gamma=[1.0, 0.9], drift={"w": 2.0})
    other = _run([1, 5, 50], hidden=[1.0, 1e3], grads=[1e-3, 1e-3], gamma=[1.0, 0.0], drift={"w": 0.0})
    rows = M.seed_fa_rows({"head trained": same, "head fixed": other}, seed)
    assert [r["quantity"] for r in rows] == ["||h_1|| / ||h_0||", "||g_1|| / ||g_0||", "cos block 1 (h_1)", "drift w"]
    assert {r["closer"] for r in rows} == {"head trained"} and rows[0]["head trained"] == pytest.approx(10.0)
    assert M.closer_count(rows) == {"head trained": 4}
    # runs shorter than the seed's record are read at their last epoch
    assert M.seed_fa_epoch({"a": _run([1, 2])}, seed) == 1


def test_the_drift_convention_is_read_from_which_tensors_the_record_leaves_out():
    model = fe.build_model("resmlp", (6,), 3, seed=0, width=8, depth=2)
    zero = M.zero_initialised(model)
    assert "out_ln.bias" in zero and "out_head.weight" not in zero
    names = [n for n, _ in model.named_parameters()]
    assert M.drift_convention({n: 1.0 for n in names if n not in zero}, model).startswith("relative")
    assert M.drift_convention({n: 1.0 for n in names}, model).startswith("undecided")
    assert M.drift_convention({"conv.weight": 1.0}, model).startswith("not ours")


def test_the_seeds_own_record_follows_the_relative_convention():
    assert M.seed_drift_convention().startswith("relative: the seed lists 21 of the model's 30")
