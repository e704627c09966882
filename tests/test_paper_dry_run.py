"""A dry run of the ``paper`` profile on a CPU: every kind of run it plans trains, from CIFAR-10 files.

The paper profile is meant for a GPU and has never been run by this project's CI at its
size. This test shrinks every distinct run it plans (rule x architecture x model and
data options) to one epoch on a few images of CIFAR-10 files written in the official
format, and trains them through ``fit_many``, so the CIFAR-shaped code paths (crop and
flip augmentation, 3x32x32 inputs for every architecture, each rule on each of them)
fail here rather than an hour into a GPU run.
"""
from __future__ import annotations

import copy
import json
import math
import pickle

import numpy as np
import pytest

from faeval.book.profiles import PROFILES
from faeval.config import config_hash
from faeval.schedule import fit_many

pytestmark = pytest.mark.filterwarnings("ignore:synthetic task")


def _write_cifar(folder, n_per_batch: int = 40) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)], b"filenames": [b"x.png"] * n_per_batch}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)


def _shrunk(cfg: dict) -> dict:
    """One epoch on a few samples, every other setting (rule, penalty, model, augmentation) as planned."""
    small = copy.deepcopy(cfg)
    small.update(epochs=1, eval_n=32, seed=0)
    if "subset" in small["data"]:
        small["data"]["subset"] = 160
    if small["dataset"] == "synthetic":
        small["data"].update(n_train=160, n_test=64)
    return small


def test_every_kind_of_run_the_paper_profile_plans_trains_on_cifar_files(tmp_path, monkeypatch):
    _write_cifar(tmp_path / "data" / "cifar-10-batches-py")
    monkeypatch.setenv("FAEVAL_DATA", str(tmp_path / "data"))
    planned = PROFILES["paper"].planned_runs()
    kinds: dict[str, dict] = {}
    for cfg in planned:
        small = _shrunk(cfg)
        kinds.setdefault(config_hash(small), small)
    configs = list(kinds.values())
    assert {c["arch"] for c in configs} == {"resmlp", "vit", "cnn", "resnet", "studentnet"}
    assert {c["method"] for c in configs} >= {"bp", "frozen", "fa", "dfa", "ep", "state_bridge", "credit_bridge"}
    cifar = [c for c in configs if c["dataset"] == "cifar10"]
    assert cifar and all(c["data"]["augment"] for c in cifar)      # the paper trains with crop and flip

    runs = fit_many(configs, results=tmp_path / "results", device="cpu", progress=False, workers=1)
    for cfg, run in zip(configs, runs):
        label = f"{cfg['method']} on {cfg['arch']} {json.dumps(cfg['model'])} ({cfg['dataset']})"
        assert run.stopped is None, f"{label}: {run.stopped}"
        assert [r["epoch"] for r in run.history] == [0, 1], label
        last = run.history[-1]
        assert math.isfinite(last["test_loss"]) and 0.0 <= last["test_acc"] <= 1.0, label
        assert len(last["diag"].hidden_norms) == run.model.depth + 1, label
