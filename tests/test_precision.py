"""A run's precision: float32 by default (keys unchanged), bfloat16 matmuls in the training step as an option,
with the test evaluation and every diagnostic still in float32."""
import pytest
import torch

import faeval
from faeval import store
from faeval.config import canonical_config, config_hash
from faeval.schedule import describe
from faeval.train import fit

pytestmark = pytest.mark.filterwarnings("ignore:synthetic task")

SMALL = {"dataset": "synthetic", "data": {"d": 16, "n_train": 512, "n_test": 256}, "width": 32, "depth": 2,
         "epochs": 2, "eval_n": 256}


def test_float32_adds_nothing_to_the_key_and_bfloat16_is_another_run():
    plain = canonical_config(method="dfa", epochs=2)
    assert "precision" not in plain
    assert config_hash(canonical_config(method="dfa", epochs=2, precision="float32")) == config_hash(plain)
    low = canonical_config(method="dfa", epochs=2, precision="bfloat16")
    assert low["precision"] == "bfloat16" and config_hash(low) != config_hash(plain)
    assert "precision=bfloat16" in describe(low)


def test_an_unknown_precision_is_named_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"precision='fp16'.*'float32', 'bfloat16'"):
        canonical_config(method="dfa", precision="fp16")
    ds = faeval.load_dataset("synthetic", d=16, n_train=64, n_test=64, seed=0)
    model = faeval.build_model("resmlp", (16,), 10, seed=0, width=32, depth=2)
    with pytest.raises(ValueError, match="precision='half'"):
        fit(model, "bp", ds, 1, progress=False, eval_n=64, precision="half")


@pytest.mark.parametrize("name", ["bp", "dfa", "ep"])
def test_bfloat16_runs_the_step_in_bfloat16_and_measures_in_float32(name):
    ds = faeval.load_dataset("synthetic", d=16, n_train=512, n_test=256, seed=0)
    model = faeval.build_model("resmlp", (16,), 10, seed=0, width=32, depth=2)
    seen = {"train": set(), "eval": set()}
    model.blocks[0].register_forward_hook(
        lambda mod, i, out: seen["train" if mod.training else "eval"].add(out.dtype))
    low = fit(model, name, ds, 2, seed=0, progress=False, eval_n=256, precision="bfloat16")
    # the blocks' outputs are bfloat16 in the training step (autocast) and float32 wherever the run is measured
    assert torch.bfloat16 in seen["train"]
    assert seen["eval"] == {torch.float32}
    assert all(p.dtype == torch.float32 for p in low.model.parameters())
    ref = fit(faeval.build_model("resmlp", (16,), 10, seed=0, width=32, depth=2), name, ds, 2, seed=0,
              progress=False, eval_n=256)
    a, b = low.final["diag"], ref.final["diag"]
    assert low.final["train_loss"] != ref.final["train_loss"]        # the step did change ...
    assert low.final["test_acc"] == pytest.approx(ref.final["test_acc"], abs=0.1)   # ... and still learns the task
    assert a.g_L == pytest.approx(b.g_L, rel=0.5) and a.h_L == pytest.approx(b.h_L, rel=0.2)


def test_a_bfloat16_run_is_stored_apart_and_loads_as_itself(tmp_path):
    low = store.experiment(method="dfa", results=tmp_path, progress=False, precision="bfloat16", **SMALL)
    plain = store.experiment(method="dfa", results=tmp_path, progress=False, **SMALL)
    assert not low.from_cache and not plain.from_cache and low.path != plain.path
    again = store.experiment(method="dfa", results=tmp_path, progress=False, precision="bfloat16", **SMALL)
    assert again.from_cache and again.history == low.history
    assert again.config["precision"] == "bfloat16"


def test_fit_many_never_groups_a_bfloat16_run(tmp_path, caplog):
    """The vectorised group step has no autocast: a reduced-precision run trains on its own, saying why."""
    from faeval.schedule import fit_many

    cfgs = [{"method": "dfa", "seed": s, "precision": "bfloat16", **SMALL} for s in (0, 1)]
    with caplog.at_level("INFO", logger="faeval"):
        runs = fit_many(cfgs, results=tmp_path, progress=False, group=True, workers=1)
    assert "no reduced precision" in caplog.text
    solo = store.experiment(method="dfa", seed=1, precision="bfloat16", results=tmp_path / "solo", progress=False,
                            **SMALL)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(runs[1].history) == strip(solo.history)
