"""benchmarks/precision_book.py: the bfloat16 policy's check compares real twins, not a run with itself."""
import importlib.util
import math
from pathlib import Path

from faeval.book.profiles import get_profile
from faeval.config import canonical_config
from faeval.schedule import fit_many
from faeval.store import load_meta, load_run, run_dir

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "precision_book.py"


def _script():
    spec = importlib.util.spec_from_file_location("precision_book", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_policy_keeps_float32_where_bfloat16_was_not_measured_or_fails():
    pb = _script()
    P = get_profile("smoke")
    assert pb.in_bfloat16(canonical_config(**P.config("dfa", 42)))
    assert pb.in_bfloat16(canonical_config(**P.config("frozen", 42)))
    for method in ("ep", "ep64", "state_bridge", "fa_layer", "usf"):
        assert not pb.in_bfloat16(canonical_config(**P.config(method, 42))), method
    assert not pb.in_bfloat16(canonical_config(**P.config("dfa", 42, arch="vit")))
    twin = pb.twin(canonical_config(**P.config("dfa", 42)))
    assert twin["precision"] == "bfloat16"
    assert run_dir(twin) != run_dir(canonical_config(**P.config("dfa", 42)))


def test_compare_sets_each_bfloat16_twin_against_its_float32_run_and_the_seed_spread(tmp_path):
    pb = _script()
    P = get_profile("smoke", results_dir=str(tmp_path))
    configs = [canonical_config(**P.config("dfa", s)) for s in P.seeds]
    fit_many(configs + [pb.twin(c) for c in configs], results=tmp_path, workers=1, progress=False)
    assert all(load_meta(run_dir(pb.twin(c), tmp_path))["config"]["precision"] == "bfloat16" for c in configs)

    rows = pb.compare(configs, tmp_path)
    assert len(rows) == len(configs) * len(pb.NUMBERS)
    accs = [load_run(run_dir(c, tmp_path)).test_acc for c in configs]
    acc_rows = [r for r in rows if r["number"] == "test_acc"]
    assert [r["float32"] for r in acc_rows] == accs
    assert all(r["spread"] == max(accs) - min(accs) > 0 for r in acc_rows)
    # the twin trained in bfloat16: some number differs from its float32 run, by less than the seed spread
    assert any(r["diff"] > 0 for r in rows)
    assert all(r["diff"] == abs(r["bfloat16"] - r["float32"]) for r in rows)
    assert all(r["within"] == (r["diff"] < r["spread"] or r["diff"] == 0) for r in rows)
    # one seed: no spread, so no verdict
    one = pb.compare(configs[:1], tmp_path)
    assert all(math.isnan(r["spread"]) and r["within"] is None for r in one)
