"""Small reproducers of the measurement pitfalls (the book's pitfalls chapter and checklist).

Each ``*_pitfall()`` function runs a few lines of real code and returns a
:class:`PitfallResult` holding the value the pitfall produces (``wrong``) next
to the value the correct measurement produces (``right``), each with a label
saying how it was computed. Nothing is hard-coded: every number is measured
when the function runs, on the CPU, deterministically from ``seed``.
:func:`run_all` runs the eight of them (well under a few seconds); ``CHECKLIST``
is the one-line rule per pitfall.
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..diagnostics import (
    bp_grads,
    gamma_aggregations,
    gamma_per_layer,
    null_calibration,
    per_sample_cosine,
)
from ..errors import MissingAuxStateError
from ..methods import build_method
from ..models import build_model
from ..seeds import generator
from ..train import adamw

__all__ = [
    "CHECKLIST",
    "PitfallResult",
    "aggregation_pitfall",
    "cosine_eps_pitfall",
    "cosine_clamp_sweep",
    "fp16_underflow_pitfall",
    "fresh_feedback_pitfall",
    "layer0_dominance_pitfall",
    "norm_dim_pitfall",
    "run_all",
    "details_table",
    "DETAILS",
    "self_cosine_fallback_pitfall",
    "ep_precision_pitfall",
]

CHECKLIST: list[str] = [
    ("1. Name the dimension of every norm: t.norm(dim=-1), never t.norm(-1) (that is the p=-1 'norm' of the "
     "flattened tensor)."),
    ("2. Compute cosines in float64 without an eps clamp (or assert ||g|| > 1e-8 first); never "
     "F.cosine_similarity on gradients near or below 1e-8."),
    "3. Take BP reference gradients in float32 or float64 (bfloat16 at worst), never float16.",
    ("4. Save the feedback matrices with the checkpoint, measure Gamma with the training-time ones, and "
     "compare it with a fresh-feedback null (mean +- std over draws)."),
    "5. Report Gamma per layer and name the aggregation of any single number.",
    "6. Report the hidden-only mean (layers 1..L) next to any all-layer mean: layer 0 can dominate it.",
    "6.5. When the rule's auxiliary state is missing, report N/A; never substitute the BP gradient.",
    ("7. When the credit is a difference of two states (EP), check that the difference spans many rounding units "
     "of the states (faeval's credit resolution, in the report with rule=); below that, compute the phases in "
     "float64 (ep64)."),
]


@dataclass
class PitfallResult:
    """One pitfall, measured: the value the pitfall produces vs the value the correct code produces."""

    number: str
    title: str
    wrong: Any
    right: Any
    wrong_label: str
    right_label: str
    explanation: str
    details: dict = field(default_factory=dict)

    def row(self) -> dict:
        """A flat dict of display strings for a table (raw values stay on the object)."""
        return {"#": self.number, "pitfall": self.title,
                "wrong": _fmt(self.wrong), "computed as (wrong)": self.wrong_label,
                "right": _fmt(self.right), "computed as (right)": self.right_label,
                "why": self.explanation}


def _fmt(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        return "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


@contextlib.contextmanager
def _one_thread():
    """Tiny CPU models: one intra-op thread is faster (and bitwise repeatable); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------
# 1. t.norm(-1)
# ---------------------------------------------------------------------------------------
def norm_dim_pitfall() -> PitfallResult:
    x = torch.tensor([[3.0, 4.0], [6.0, 8.0]])
    wrong = x.norm(-1).item()              # p=-1 (positional), over the flattened tensor
    right = x.norm(dim=-1).tolist()
    harmonic = 1.0 / sum(1.0 / abs(v) for v in x.flatten().tolist())
    return PitfallResult(
        "1", "t.norm(-1) is not a per-row norm", wrong, right,
        "x.norm(-1) on x=[[3,4],[6,8]]", "x.norm(dim=-1)",
        f"torch.norm's second positional argument is p, so x.norm(-1) is the p=-1 'norm' of the flattened "
        f"tensor, 1/sum(1/|x_i|) = {harmonic:.6f}, a single scalar; the per-row L2 norms need dim=-1.",
        {"p_minus_1_closed_form": harmonic})


# ---------------------------------------------------------------------------------------
# 2. F.cosine_similarity's eps clamp
# ---------------------------------------------------------------------------------------
def _clamp_mechanism() -> tuple[str, dict]:
    """Measure how F.cosine_similarity applies eps: to each norm, or to their product."""
    v = torch.ones(1, 4, dtype=torch.float64) / 2.0                 # unit vector
    both_small = F.cosine_similarity(v * 1e-5, v * 1e-5).item()     # each norm > eps, product < eps
    one_tiny = F.cosine_similarity(v, v * 1e-10).item()
    probes = {"cos_sim(1e-5 v, 1e-5 v)": both_small, "cos_sim(v, 1e-10 v)": one_tiny}
    if abs(both_small - 1.0) < 1e-6:
        return (("it clamps each norm separately, x/max(||x||, eps) . y/max(||y||, eps) (measured: "
                f"cos_sim(1e-5 v, 1e-5 v) = {both_small:.3g}, cos_sim(v, 1e-10 v) = {one_tiny:.3g}), so a "
                "reference below eps shrinks the cosine by ||g||/eps whatever ||a|| is"), probes)
    return (("it clamps the product of the norms, x.y/max(||x|| ||y||, eps) (measured: "
            f"cos_sim(1e-5 v, 1e-5 v) = {both_small:.3g}), so the cosine shrinks by ||a|| ||g||/eps"), probes)


def cosine_eps_pitfall(grad_norm: float = 1e-10, seed: int = 0, n: int = 64, d: int = 128) -> PitfallResult:
    g_ = generator(seed, "pitfall-data")
    a = torch.randn(n, d, generator=g_, dtype=torch.float64)
    a = a / a.norm(dim=1, keepdim=True) * torch.exp(0.3 * torch.randn(n, 1, generator=g_, dtype=torch.float64))
    true_cos = 0.3 + 0.4 * torch.rand(n, generator=g_, dtype=torch.float64)   # per sample, in [0.3, 0.7]
    ahat = a / a.norm(dim=1, keepdim=True)
    u = torch.randn(n, d, generator=g_, dtype=torch.float64)
    u = u - (u * ahat).sum(1, keepdim=True) * ahat                            # orthogonal to a
    u = u / u.norm(dim=1, keepdim=True)
    gnorm = grad_norm * torch.exp(0.3 * torch.randn(n, 1, generator=g_, dtype=torch.float64))
    g = gnorm * (true_cos[:, None] * ahat + (1 - true_cos[:, None] ** 2).sqrt() * u)

    wrong = F.cosine_similarity(a.float(), g.float(), dim=1).mean().item()   # the library call, eps=1e-8
    right = per_sample_cosine(a, g).mean().item()
    mechanism, probes = _clamp_mechanism()
    return PitfallResult(
        "2", "F.cosine_similarity eps clamp on tiny references", wrong, right,
        "F.cosine_similarity(a, g, dim=1).mean() (eps=1e-8, float32)",
        "per-sample cosine, float64, no clamp (diagnostics.per_sample_cosine), mean",
        f"With ||g|| ~ {grad_norm:g} and ||a|| ~ 1, F.cosine_similarity reports {wrong:.4g} for a true mean "
        f"cosine of {right:.4g} ({right / wrong:.0f}x too small): {mechanism}.",
        {"true_mean_cosine": true_cos.mean().item(), "median_ref_norm": gnorm.median().item(),
         "median_credit_norm": a.norm(dim=1).median().item(), "ratio_right_over_wrong": right / wrong,
         "clamp_probes": probes})


def cosine_clamp_sweep(grad_norms: Sequence[float] = tuple(10.0 ** -k for k in range(3, 13)), seed: int = 0):
    """Pitfall 2 across reference scales: the clamped and unclamped mean cosine at each median ||g||.

    One row per norm: ``grad_norm``, ``clamped`` (``F.cosine_similarity``, eps=1e-8, float32) and
    ``unclamped`` (the per-sample cosine), on the same synthetic credit (true mean cosine 0.5).
    """
    import pandas as pd

    rows = []
    for g in grad_norms:
        r = cosine_eps_pitfall(grad_norm=g, seed=seed)
        rows.append({"grad_norm": r.details["median_ref_norm"], "clamped": r.wrong, "unclamped": r.right})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------
# 3. float16 underflow of the BP reference
# ---------------------------------------------------------------------------------------
def _cos_noclamp(a: torch.Tensor, b: torch.Tensor) -> float:
    """Plain a.b/(|a||b|) per sample in float64, no guard at all, mean over samples (0/0 -> nan)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean().item()


def fp16_underflow_pitfall(seed: int = 0, stream_scale: float = 3e7) -> PitfallResult:
    with _one_thread():
        # terminal LayerNorm; the residual stream blown up: the terminal LN divides the gradient by ||h||
        model = build_model("resmlp", (16,), 4, seed=seed, width=32, depth=2, embed_scale=stream_scale)
        g_ = generator(seed, "pitfall-data")
        x = torch.randn(8, 16, generator=g_)
        y = torch.randint(0, 4, (8,), generator=g_)
        hs, grads, _ = bp_grads(model, x, y)                  # float32 backward pass
    g = grads[-1]
    ghat = g.double() / g.double().norm(dim=1, keepdim=True)
    noise = torch.randn(g.shape, generator=g_, dtype=torch.float64)
    credit = ghat + noise / noise.norm(dim=1, keepdim=True)   # a credit at ~45 degrees to the reference

    g16, gbf = g.half(), g.bfloat16()
    wrong = _cos_noclamp(credit, g16)
    right = {"float32": _cos_noclamp(credit, g), "bfloat16": _cos_noclamp(credit, gbf)}
    return PitfallResult(
        "3", "float16 underflows the BP reference", wrong, right,
        "g.half(), then cos = a.g/(|a||g|)",
        "the same cosine of the float32 g and of g.bfloat16()",
        f"The real BP gradient at h_L is ~{g.abs().median().item():.1e} per component (||h_L|| ~ "
        f"{hs[-1].norm(dim=1).median().item():.1e}); float16's smallest subnormal is ~6e-8, so "
        f"{(g16 == 0).double().mean().item():.0%} of it rounds to 0 and the unclamped cosine is 0/0 = nan. "
        "bfloat16 has float32's exponent range and keeps the cosine.",
        {"median_abs_component": g.abs().median().item(),
         "median_ref_norm": g.double().norm(dim=1).median().item(),
         "median_h_L_norm": hs[-1].double().norm(dim=1).median().item(),
         "fp16_zero_fraction": (g16 == 0).double().mean().item(),
         "bf16_zero_fraction": (gbf == 0).double().mean().item()})


# ---------------------------------------------------------------------------------------
# 4. fresh feedback matrices
# ---------------------------------------------------------------------------------------
def _dfa_trained(seed: int, steps: int = 100, lr: float = 1e-2, n: int = 256, d_in: int = 32,
                 width: int = 32, depth: int = 2, classes: int = 10):
    """A tiny ResMLP (no terminal LN) trained by faeval's own DFA rule on a Gaussian-cluster task,
    full batch, with Adam (faeval's fused AdamW without weight decay); returns the model, the rule
    and the data."""
    g_ = generator(seed, "pitfall-data")
    centers = torch.randn(classes, d_in, generator=g_)
    y = torch.randint(0, classes, (n,), generator=g_)
    x = centers[y] + torch.randn(n, d_in, generator=g_)
    model = build_model("resmlp", (d_in,), classes, seed=seed, width=width, depth=depth, out_ln=False)
    rule = build_method("dfa", model, seed=seed)
    opt = adamw(rule.param_groups(lr), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        opt.zero_grad()
        rule.step(x, y)
        opt.step()
    model.eval()
    return model, rule, x, y


def fresh_feedback_pitfall(n_draws: int = 10, seed: int = 0) -> PitfallResult:
    with _one_thread():
        model, rule, x, y = _dfa_trained(seed)
        _, grads, _ = bp_grads(model, x, y)
        trained = gamma_per_layer(rule.credit(x, y), grads)
        null = null_calibration(grads, lambda gen: rule.credit(x, y, feedback=rule.draw_feedback(gen)),
                                n_draws=n_draws, seed=seed)
    draws = torch.tensor(null["draws"], dtype=torch.float64)[:, 1:].mean(1)   # deep mean per draw
    wrong, right = draws.mean().item(), trained.deep_mean()
    std = draws.std().item()
    with torch.no_grad():
        acc = (model(x).argmax(-1) == y).double().mean().item()
    return PitfallResult(
        "4", "Gamma with fresh instead of training-time feedback", wrong, right,
        f"deep-mean Gamma (layers 1..L) with fresh Bs, mean over {n_draws} draws",
        "deep-mean Gamma with the training-time Bs",
        f"A DFA-trained ResMLP (width 32, 2 blocks, no terminal LN, 100 full-batch Adam steps, train accuracy "
        f"{acc:.0%}) aligns with its own feedback: deep Gamma "
        f"{right:+.3f} with the training Bs vs {wrong:+.3f} +- {std:.3f} with fresh Bs (same checkpoint, same "
        "e_T). Without the saved Bs the measurement is the chance level.",
        {"fresh_std": std, "per_layer_trained": trained.mean, "per_layer_fresh_mean": null["mean"],
         "per_layer_fresh_std": null["std"], "train_accuracy": acc})


# ---------------------------------------------------------------------------------------
# 5, 6, 6.5: one checkpoint with the documented per-layer pattern
# ---------------------------------------------------------------------------------------
# Construction inputs (target per-sample alignment of the credit with the BP gradient, per layer),
# shaped like the documented DFA s42 checkpoint: l0 ~ +0.43, hidden layers small and mostly negative.
_TARGET_ALIGNMENT = (0.43, -0.06, -0.04, 0.08, -0.03)


def _layered_checkpoint(seed: int, n: int = 128, width: int = 128):
    """A random-init ResMLP (4 blocks) and a credit whose layer-l entry is c_l * g_hat + noise."""
    depth = len(_TARGET_ALIGNMENT) - 1
    with _one_thread():
        model = build_model("resmlp", (32,), 10, seed=seed, width=width, depth=depth)
        g_ = generator(seed, "pitfall-data")
        x = torch.randn(n, 32, generator=g_)
        y = torch.randint(0, 10, (n,), generator=g_)
        _, grads, _ = bp_grads(model, x, y)
    credit = []
    for c, g in zip(_TARGET_ALIGNMENT, grads):
        gd = g.double()
        ghat = gd / gd.norm(dim=1, keepdim=True)
        z = torch.randn(gd.shape, generator=g_, dtype=torch.float64)
        z = z / z.norm(dim=1, keepdim=True)
        scale = torch.exp(0.5 * torch.randn(n, 1, generator=g_, dtype=torch.float64))  # uneven credit norms
        credit.append(scale * (c * ghat + math.sqrt(1 - c * c) * z))
    return grads, credit


def aggregation_pitfall(seed: int = 0) -> PitfallResult:
    grads, credit = _layered_checkpoint(seed)
    per_layer = gamma_per_layer(credit, grads).mean
    aggs = gamma_aggregations(credit, grads)
    spread = max(aggs.values()) - min(aggs.values())
    flip = min(aggs.values()) < 0 < max(aggs.values())
    return PitfallResult(
        "5", "one number, four aggregations", aggs, per_layer,
        "gamma_aggregations: 4 single-number strategies", "per-layer Gamma (mean over samples), l0..L",
        f"On one checkpoint (a ResMLP whose credit is built to align +{_TARGET_ALIGNMENT[0]} at l0 and weakly, "
        f"mostly negatively, at l1..L) the four defensible aggregates span {min(aggs.values()):+.3f} .. "
        f"{max(aggs.values()):+.3f} (spread {spread:.3f})"
        + (", with a sign flip" if flip else "") + ". Only the per-layer values are unambiguous.",
        {"spread": spread, "sign_flip": flip, "construction_alignment": list(_TARGET_ALIGNMENT)})


def layer0_dominance_pitfall(seed: int = 0) -> PitfallResult:
    grads, credit = _layered_checkpoint(seed)
    G = gamma_per_layer(credit, grads)
    wrong, hidden = G.layer_mean(), G.deep_mean()
    return PitfallResult(
        "6", "layer 0 dominates the layer mean", wrong, {"per_layer": G.mean, "hidden_only_mean": hidden},
        "mean over layers 0..L of per-layer Gamma", "per-layer Gamma and the hidden-only mean (layers 1..L)",
        f"On the checkpoint of pitfall 5, layer 0 (the embedding output, Gamma {G.mean[0]:+.3f}) lifts the "
        f"all-layer mean to {wrong:+.3f} while the hidden layers average {hidden:+.3f}: the headline number "
        f"describes the embedding only.",
        {"layer0": G.mean[0], "hidden_only_mean": hidden})


def _naive_gamma_with_fallback(credit: Sequence[torch.Tensor] | None, grads: Sequence[torch.Tensor]) -> dict:
    """ANTI-PATTERN (kept only to reproduce pitfall 6.5): substitutes the BP gradient for missing credit."""
    note = ""
    if credit is None:
        credit, note = grads, "aux state missing: fell back to BP gradient"
    per = [per_sample_cosine(a, g).mean().item() for a, g in zip(credit, grads)]
    return {"Gamma": sum(per) / len(per), "per_layer": per, "Gamma_note": note}


def self_cosine_fallback_pitfall(seed: int = 0) -> PitfallResult:
    grads, _ = _layered_checkpoint(seed)
    naive = _naive_gamma_with_fallback(None, grads)
    try:
        gamma_per_layer(None, grads)
        right = "no error (BUG: expected MissingAuxStateError)"
    except MissingAuxStateError:
        right = "N/A (MissingAuxStateError raised)"
    return PitfallResult(
        "6.5", "silent self-cosine fallback", naive["Gamma"], right,
        "naive helper that substitutes the BP gradient when the Bs are missing",
        "diagnostics.gamma_per_layer(None, grads)",
        "With the feedback matrices not saved, the fallback measures cos(g, g) and reports a perfect Gamma "
        f"({naive['Gamma']:.6f}), flagged only in a side note; the only honest value is N/A.",
        {"naive_per_layer": naive["per_layer"], "naive_note": naive["Gamma_note"]})


# ---------------------------------------------------------------------------------------
# 7. EP's credit below float32's resolution
# ---------------------------------------------------------------------------------------
def ep_precision_pitfall(seed: int = 0, embed_scale: float = 1000.0) -> PitfallResult:
    with _one_thread():
        g_ = generator(seed, "pitfall-data")
        x = torch.randn(64, 16, generator=g_)
        y = torch.randint(0, 4, (64,), generator=g_)
        model = build_model("resmlp", (16,), 4, seed=seed, width=32, depth=2, embed_scale=embed_scale)
        hs, grads, _ = bp_grads(copy.deepcopy(model).double(), x.double(), y)      # the exact reference
        ep = build_method("ep", model)
        a32 = ep.credit(x, y)                                                      # the phases in float32
        resolution = ep.last_resolution
        a64 = build_method("ep64", model).credit(x, y)                             # the same phases in float64
    wrong, right = (gamma_per_layer(a, grads).deep_mean() for a in (a32, a64))
    agree = gamma_per_layer(a32, a64).deep_mean()
    h_L = hs[-1].norm(dim=1).median().item()
    return PitfallResult(
        "7", "EP's credit below float32's resolution", wrong, right,
        "deep-mean Gamma of EP's credit, free and nudged phases in float32 (rule 'ep')",
        "the same credit with the phases in float64 (rule 'ep64'), same model and batch",
        f"An untrained ResMLP (width 32, 2 blocks) with its embedding scaled by {embed_scale:g} has ||h_L|| ~ "
        f"{h_L:.2g}, the paper's scale. EP's credit is the nudged state minus the free one; the nudge moves the "
        f"states by less than float32 can represent at that size (the displacement spans "
        f"{', '.join(f'{r:.2g}' for r in resolution)} rounding units of h_1..h_L), so the float32 credit keeps "
        f"Gamma {wrong:+.3f} of the float64 credit's {right:+.3f} before a single training step.",
        {"median_h_L_norm": h_L, "resolution": resolution, "cos_f32_f64": agree})


def run_all(seed: int = 0) -> list[PitfallResult]:
    """All eight reproducers, in catalog order."""
    return [norm_dim_pitfall(), cosine_eps_pitfall(seed=seed), fp16_underflow_pitfall(seed=seed),
            fresh_feedback_pitfall(seed=seed), aggregation_pitfall(seed=seed), layer0_dominance_pitfall(seed=seed),
            self_cosine_fallback_pitfall(seed=seed), ep_precision_pitfall(seed=seed)]


#: the details the mechanisms table shows: (pitfall number, detail key, label)
DETAILS = [("2", "median_ref_norm", "median ||g|| of the reference"),
           ("2", "ratio_right_over_wrong", "right / wrong cosine"),
           ("3", "fp16_zero_fraction", "float16 gradient entries that became 0"),
           ("3", "bf16_zero_fraction", "bfloat16 gradient entries that became 0"),
           ("4", "fresh_std", "fresh-feedback Gamma std over draws"),
           ("5", "spread", "spread of the four aggregations (max - min)"),
           ("5", "sign_flip", "the aggregations disagree in sign"),
           ("6", "layer0", "layer 0 Gamma"),
           ("6", "hidden_only_mean", "hidden-only mean (layers 1..L)"),
           ("7", "median_h_L_norm", "median ||h_L|| of the scaled model"),
           ("7", "cos_f32_f64", "cosine of the float32 credit with the float64 one (layers 1..L)")]


def details_table(results: list[PitfallResult]):
    """The mechanisms behind the wrong numbers, as the reproducers recorded them (:data:`DETAILS`): one row
    each, labelled ``"<number>: <what>"``."""
    import pandas as pd

    by = {r.number: r for r in results}
    return pd.Series({f"{n}: {label}": by[n].details[key] for n, key, label in DETAILS}, name="measured").to_frame()
