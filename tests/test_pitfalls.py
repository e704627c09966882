"""The pitfall reproducers (SPEC 7) measure what the catalog says, from real computations."""
import math
import time

import pytest
import torch

from faeval.book import pitfalls as P
from faeval.diagnostics import gamma_per_layer
from faeval.errors import MissingAuxStateError


@pytest.fixture(scope="module")
def results():
    t = time.perf_counter()
    rs = P.run_all(seed=0)
    return rs, time.perf_counter() - t


def _by_number(results, number):
    return next(r for r in results[0] if r.number == number)


def test_run_all_returns_the_eight_in_order_fast(results):
    rs, elapsed = results
    assert [r.number for r in rs] == ["1", "2", "3", "4", "5", "6", "6.5", "7"]
    assert elapsed < 5.0, f"run_all took {elapsed:.2f} s"
    assert len(P.CHECKLIST) == 8
    for r in rs:
        row = r.row()
        assert row["#"] == r.number and isinstance(row["wrong"], str) and isinstance(row["right"], str)
        assert r.wrong_label and r.right_label and r.explanation and r.title


def test_run_all_is_deterministic(results):
    again = P.run_all(seed=0)
    for a, b in zip(results[0], again):
        assert a.row() == b.row()
        assert repr(a.wrong) == repr(b.wrong) and repr(a.right) == repr(b.right)


def test_1_norm_minus_one_is_the_harmonic_p_norm(results):
    r = _by_number(results, "1")
    assert r.wrong == pytest.approx(1.142857, abs=1e-6)
    assert r.right == [5.0, 10.0]


def test_2_cosine_similarity_eps_shrinks_tiny_reference(results):
    r = _by_number(results, "2")
    assert abs(r.right - r.details["true_mean_cosine"]) < 1e-9
    assert 0.3 < r.right < 0.7
    assert abs(r.wrong) < 0.05 * abs(r.right)
    assert r.details["median_ref_norm"] < 1e-9


def test_2_scales_with_the_reference_norm():
    small = P.cosine_eps_pitfall(grad_norm=1e-10)
    smaller = P.cosine_eps_pitfall(grad_norm=1e-11)
    assert smaller.right == pytest.approx(small.right, abs=1e-9)    # the true cosine does not care
    assert smaller.wrong == pytest.approx(small.wrong / 10, rel=1e-3)
    big = P.cosine_eps_pitfall(grad_norm=1e-3)                      # above eps: no shrinkage
    assert big.wrong == pytest.approx(big.right, abs=1e-5)


def test_3_fp16_underflow_gives_nan_bf16_does_not(results):
    r = _by_number(results, "3")
    assert math.isnan(r.wrong)
    assert r.details["fp16_zero_fraction"] == 1.0 and r.details["bf16_zero_fraction"] == 0.0
    assert 1e-10 < r.details["median_abs_component"] < 3e-8         # a real gradient below fp16's floor
    assert abs(r.right["float32"] - r.right["bfloat16"]) < 0.01
    assert r.right["float32"] > 0.3


def test_4_training_feedback_beats_fresh_feedback_null(results):
    r = _by_number(results, "4")
    assert r.right - r.wrong > 3 * r.details["fresh_std"]
    assert r.details["train_accuracy"] > 0.9


def test_5_aggregations_disagree_with_sign_flip(results):
    r = _by_number(results, "5")
    assert set(r.wrong) == {"mean_over_layers", "median_over_layers", "pooled_over_batch", "batch_mean_direction"}
    spread = max(r.wrong.values()) - min(r.wrong.values())
    assert spread == pytest.approx(r.details["spread"]) and spread > 0.05
    assert r.wrong["mean_over_layers"] > 0 > r.wrong["median_over_layers"]
    assert r.details["sign_flip"]
    assert len(r.right) == 5


def test_6_layer0_dominates_the_layer_mean(results):
    r = _by_number(results, "6")
    hidden = r.right["hidden_only_mean"]
    assert r.right["per_layer"][0] > 0.3
    assert r.wrong > 0.05
    assert abs(hidden) < 0.5 * r.wrong and hidden < r.wrong - 0.05
    assert r.wrong == pytest.approx(sum(r.right["per_layer"]) / len(r.right["per_layer"]))


def test_6_5_fallback_reports_one_and_the_library_refuses(results):
    r = _by_number(results, "6.5")
    assert r.wrong == pytest.approx(1.0, abs=1e-12)
    assert r.right.startswith("N/A")
    with pytest.raises(MissingAuxStateError):
        gamma_per_layer(None, [torch.ones(2, 3)])


def test_pitfall_functions_leave_thread_count_alone():
    n = torch.get_num_threads()
    P.fp16_underflow_pitfall()
    assert torch.get_num_threads() == n


def test_ep_precision_pitfall_loses_the_credit_in_float32_and_keeps_it_in_float64(results):
    r = _by_number(results, "7")
    assert 1e3 < r.details["median_h_L_norm"] < 1e4          # the paper's ||h_L|| (3-8e3)
    assert r.right > 0.99 and r.wrong < 0.5                   # float64 phases keep the credit, float32 loses most
    assert max(r.details["resolution"]) < 1                   # the displacement spans under one rounding unit
    assert r.details["cos_f32_f64"] == pytest.approx(r.wrong, abs=0.05)   # the lost part is rounding, not the rule


def test_ep_precision_pitfall_is_absent_at_the_ordinary_scale():
    r = P.ep_precision_pitfall(embed_scale=1.0)
    assert r.details["median_h_L_norm"] < 10 and r.wrong > 0.99 and min(r.details["resolution"]) > 1e3
