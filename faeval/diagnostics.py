"""Per-layer measurements behind the protocol (the book's protocol chapter).

Numerics rules, by construction:

* every norm is a per-sample L2 norm followed by a named aggregate (the
  *median* over samples unless a function's name says otherwise);
* cosines are computed in float64 with no epsilon clamp (a 1e-30 guard only
  against division by exactly zero), and are returned next to the norm of the
  reference vector, so a reference at the numerical floor stays visible;
* BP reference gradients are taken in float32 or float64, never float16;
* Gamma is per layer; each aggregate says how it aggregated.

A model is read through :class:`Tap`: a faeval layered model directly, or any
``nn.Module`` through forward hooks on named sub-modules (``layers=[...]``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import MissingAuxStateError
from .seeds import generator
from .tap import Tap, check_xy, eval_mode, float64_tap

__all__ = [
    "per_sample_l2", "median_per_sample_l2", "per_sample_cosine", "output_error", "error_consistency",
    "median_hidden_norms", "bp_grads", "median_bp_grad_norms", "max_block_growth", "direction_stability",
    "gamma_per_layer", "gamma_of", "GammaResult", "gamma_aggregations", "perturbation_rho", "nudging",
    "parameter_drift", "drift_record", "null_calibration", "measure", "stability_of",
    "deep_mean", "layer_mean", "no_credit", "no_credit_layers", "NO_CREDIT",
]

_TINY = 1e-30   # guards a division by exactly zero; never a clamp that changes a real value
#: a layer receives *no credit* when every sample's credit norm is at most this fraction of the
#: median per-sample BP-gradient norm there (exact zero included): its Gamma is undefined (NaN,
#: shown as "no credit"), not 0, and every Gamma aggregate leaves it out
NO_CREDIT = 1e-6


def no_credit(credit: torch.Tensor, grad: torch.Tensor) -> bool:
    """Whether ``credit`` (per-sample rows) is no credit at all against the BP gradient ``grad``."""
    cn = credit.detach().flatten(1).double().norm(dim=1)
    gn = grad.detach().flatten(1).double().norm(dim=1)
    return bool(cn.max() <= NO_CREDIT * gn.median())


def _layer_gamma(per_sample: torch.Tensor, none: bool) -> float:
    return math.nan if none else per_sample.mean().item()


# ---------------------------------------------------------------------------------------
# Norms and cosines
# ---------------------------------------------------------------------------------------
def per_sample_l2(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm over every non-batch dimension, in float64: shape (B,)."""
    return t.detach().flatten(1).double().norm(dim=1)


def median_per_sample_l2(t: torch.Tensor) -> float:
    """Median over samples of the per-sample L2 norm (inf if any sample is non-finite)."""
    return _median_inf(per_sample_l2(t))


def per_sample_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a_i, b_i) per sample, float64, no epsilon clamp: shape (B,).

    ``F.cosine_similarity`` (torch 2.x) divides each vector by max(||v||, 1e-8), which
    shrinks the cosine against any reference gradient of norm below 1e-8 by
    ||g|| / 1e-8 (pitfall 2). Here each vector is divided by its own norm (guarded
    only against exact zero), so cos(v, v) = 1 at any scale.
    """
    a = a.detach().flatten(1).double()
    b = b.detach().flatten(1).double()
    if a.shape != b.shape:
        raise ValueError(f"cosine of differently shaped signals {tuple(a.shape)} vs {tuple(b.shape)}")
    an = a / a.norm(dim=1, keepdim=True).clamp_min(_TINY)
    bn = b / b.norm(dim=1, keepdim=True).clamp_min(_TINY)
    return (an * bn).sum(dim=1)


def median_hidden_norms(model: nn.Module, x: torch.Tensor, *, tap: Tap | None = None,
                        batch_size: int = 128) -> list[float]:
    """Per layer: median over samples of the per-sample L2 norm of h_l (reduced state); no labels needed."""
    tap = tap or Tap(model)
    if len(x) == 0:
        raise ValueError("the eval set is empty: pass at least one sample")
    with eval_mode(tap.model), torch.no_grad():
        rows = [[per_sample_l2(tap.reduce(h)) for h in tap.states(x[i:i + batch_size])[0]]
                for i in range(0, len(x), batch_size)]
    return [_median_inf(torch.cat(col)) for col in zip(*rows)]


def bp_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
             tap: Tap | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """BP reference: d CE(mean) / d h_l for every layer, as full tensors.

    Returns ``(hs, grads, per_sample_loss)``. The loss is the mean cross-entropy,
    so each sample's gradient is 1/B of its own loss's gradient (the paper's
    convention). The reference is taken in the model's own precision, which must
    be float32 or float64: half precision is refused (pitfall 3). For a float64
    reference, pass ``model.double()`` and float64 inputs.
    """
    hs, grads, per_sample, _ = _bp_pass(tap or Tap(model), x, y)
    return hs, grads, per_sample


def _bp_pass(tap: Tap, x: torch.Tensor, y: torch.Tensor):
    """One eval-mode forward + backward: (hs, grads, per-sample loss, logits), all detached."""
    check_xy(x, y)
    half = (torch.float16, torch.bfloat16)
    if x.dtype in half or any(p.dtype in half for p in tap.model.parameters()):
        raise ValueError("BP reference gradients must be float32 or float64; this model or input is half "
                         "precision (float16 underflows gradients near 1e-9: pitfall 3). Use model.float().")
    with eval_mode(tap.model), torch.enable_grad():
        hs, logits = tap.states(x)
        per_sample = F.cross_entropy(logits, y, reduction="none")
        grads = torch.autograd.grad(per_sample.mean(), hs, allow_unused=True)
    grads = [torch.zeros_like(h) if g is None else g for h, g in zip(hs, grads)]
    return [h.detach() for h in hs], [g.detach() for g in grads], per_sample.detach(), logits.detach()


def median_bp_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, tap: Tap | None = None,
                         batch_size: int = 128) -> list[float]:
    """Per layer: median over samples of the per-sample L2 norm of the BP gradient at h_l.

    The loss is the mean CE over disjoint batches of ``batch_size`` (the scale of
    the paper's numbers and of the D2 floor), so the result does not depend on how
    many eval samples are passed.
    """
    return measure(model, x, y, tap=tap, batch_size=batch_size)["bp_grad_norms"]


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, tap: Tap | None = None,
            batch_size: int = 128, keep_grads: bool = False,
            credit_fn: Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor]] | None = None) -> dict:
    """One pass over ``x`` in disjoint batches of ``batch_size`` (the last, shorter one included).

    Returns per-layer ``hidden_norms`` and ``bp_grad_norms`` (median over all samples
    of per-sample L2 norms of the reduced state / BP gradient of each batch's mean
    CE), the ``batch_mean_grads`` at the deepest layer (one reduced vector per full
    batch, for direction stability), the eval ``loss`` and ``acc``, the output error's
    median per-sample norm ``error_norm`` and its ``error_consistency`` (mean over full
    batches; :func:`output_error`, :func:`error_consistency`), and ``branch_norms``: per
    block, the median per-sample norm of its update h_{l+1} - h_l (None where the block
    changes the state's shape). With
    ``keep_grads`` it also returns ``grads``: the full per-layer BP gradients of all
    samples (each batch's mean-CE convention), e.g. for Gamma, whose per-sample
    cosine does not depend on the batch scale. With ``credit_fn(x, y) -> credit``
    (a learning rule's ``credit``) it also returns ``gamma_per_sample``: per layer,
    the per-sample cosine of that credit with the BP gradient, batch by batch, and
    ``no_credit``: per layer, whether the credit there is none at all (:data:`NO_CREDIT`).
    """
    tap = tap or Tap(model)
    check_xy(x, y)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    hn, gn, dirs, losses, kept, cos, cn, gfull, correct = [], [], [], [], [], [], [], [], 0
    en, cons, bn = [], [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        hs, grads, per_sample, logits = _bp_pass(tap, xb, yb)
        hn.append([per_sample_l2(tap.reduce(h)) for h in hs])
        bn.append([per_sample_l2(tap.reduce(b - a)) if a.shape == b.shape else None for a, b in zip(hs, hs[1:])])
        err = output_error(logits, yb)
        en.append(err.norm(dim=1))
        if len(xb) == batch_size:
            cons.append(error_consistency(err))
        gr = [tap.reduce(g) for g in grads]
        gn.append([per_sample_l2(g) for g in gr])
        if len(xb) == batch_size:
            dirs.append(gr[-1].double().mean(dim=0))
        losses.append(per_sample.double())
        correct += (logits.argmax(-1) == yb).sum().item()
        if keep_grads:
            kept.append(grads)
        if credit_fn is not None:
            credit = _check_credit(credit_fn(xb, yb), len(grads))
            cos.append([per_sample_cosine(a, g) for a, g in zip(credit, grads)])
            cn.append([a.detach().flatten(1).double().norm(dim=1) for a in credit])
            gfull.append([g.detach().flatten(1).double().norm(dim=1) for g in grads])
    out = {
        "hidden_norms": [_median_inf(torch.cat(col)) for col in zip(*hn)],
        "bp_grad_norms": [_median_nan(torch.cat(col)) for col in zip(*gn)],
        "batch_mean_grads": dirs,
        "loss": torch.cat(losses).mean().item(),
        "acc": correct / len(x),
        "error_norm": _median_inf(torch.cat(en)),
        "error_consistency": sum(cons) / len(cons) if cons else None,
        "branch_norms": [None if col[0] is None else _median_inf(torch.cat(col)) for col in zip(*bn)],
        "batch_size": batch_size,
        "n": len(x),
        "aggregate": f"median over samples of per-sample L2; BP gradient of the mean CE per batch of {batch_size}",
    }
    if keep_grads:
        out["grads"] = [torch.cat(col) for col in zip(*kept)]
    if credit_fn is not None:
        out["gamma_per_sample"] = [torch.cat(col) for col in zip(*cos)]
        out["no_credit"] = [bool(torch.cat(c).max() <= NO_CREDIT * torch.cat(g).median())
                            for c, g in zip(zip(*cn), zip(*gfull))]
    return out


def output_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample, the output error e = softmax(logits) - onehot(y) (float64): the CE loss's gradient at the
    logits of one sample, the signal DFA sends to every block."""
    p = torch.softmax(logits.detach().double(), dim=-1)
    return p - F.one_hot(y, p.shape[-1]).double()


def error_consistency(err: torch.Tensor) -> float:
    """How much a batch's output errors agree: ||mean_i e_i|| / mean_i ||e_i||, 1 when every sample's error
    is the same vector, about 1/sqrt(B) when they are independent with mean zero."""
    return (err.mean(0).norm() / err.norm(dim=1).mean().clamp_min(_TINY)).item()


def _median_inf(n: torch.Tensor) -> float:
    return n.median().item() if torch.isfinite(n).all() else math.inf


def _median_nan(n: torch.Tensor) -> float:
    return n.median().item() if torch.isfinite(n).all() else math.nan


def _median_or_nan(t: torch.Tensor) -> float:
    return _median_nan(per_sample_l2(t))


def max_block_growth(norms: Sequence[float]) -> float:
    """max_l ||h_{l+1}|| / ||h_l|| over consecutive layers (1.0 for < 2 layers; inf if non-finite)."""
    if len(norms) < 2:
        return 1.0
    if not all(math.isfinite(n) for n in norms):
        return math.inf
    return max(norms[l + 1] / max(norms[l], _TINY) for l in range(len(norms) - 1))


def direction_stability(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                        tap: Tap | None = None, layer: int = -1) -> float:
    """Cross-batch direction stability s (the protocol's diagnostic C).

    For each disjoint batch k, the batch-mean BP gradient at the deepest hidden
    state (reduced to (B, d)) is normalised to unit length; s is the mean pairwise
    cosine over all pairs of batches. High s means the reference is dominated by a
    sample-invariant drift. Needs at least two batches.
    """
    tap = tap or Tap(model)
    dirs = []
    for x, y in batches:
        _, grads, _ = bp_grads(model, x, y, tap=tap)
        dirs.append(tap.reduce(grads[layer]).double().mean(dim=0))
    return stability_of(dirs)


def stability_of(directions: Sequence[torch.Tensor]) -> float:
    """Mean pairwise cosine of a list of direction vectors (NaN if any is non-finite)."""
    if len(directions) < 2:
        raise ValueError("direction stability needs at least two disjoint batches")
    d = torch.stack([v.double() for v in directions])
    norms = d.norm(dim=1, keepdim=True)
    if not torch.isfinite(norms).all():
        return math.nan
    d = d / norms.clamp_min(_TINY)
    cos = d @ d.T
    iu = torch.triu_indices(len(d), len(d), offset=1)
    return cos[iu[0], iu[1]].mean().item()


# ---------------------------------------------------------------------------------------
# Gamma: credit vs BP gradient
# ---------------------------------------------------------------------------------------
@dataclass
class GammaResult:
    """Per-layer Gamma. ``mean``/``std`` are over samples of the per-sample cosine.

    ``ref_norm`` is the median per-sample L2 norm of the BP gradient each cosine was
    measured against, and ``credit_norm`` that of the credit: read a cosine
    together with its reference norm.
    """

    mean: list[float]
    std: list[float]
    ref_norm: list[float]
    credit_norm: list[float]
    per_sample: list[torch.Tensor] = field(repr=False)
    aggregate: str = "per-sample cosine, mean over samples, per layer"

    def deep_mean(self) -> float:
        """Mean over layers 1..L of the per-layer means (the embedding layer excluded; :func:`deep_mean`)."""
        return deep_mean(self.mean)

    def layer_mean(self) -> float:
        """Mean over all layers 0..L of the per-layer means (layers without credit left out)."""
        return layer_mean(self.mean)

    @property
    def no_credit(self) -> list[int]:
        """Layers that received no credit (:data:`NO_CREDIT`): their Gamma is NaN, not 0."""
        return no_credit_layers(self.mean)

    def as_dict(self) -> dict:
        return {"aggregate": self.aggregate, "mean": self.mean, "std": self.std,
                "ref_norm": self.ref_norm, "credit_norm": self.credit_norm,
                "deep_mean": self.deep_mean(), "layer_mean": self.layer_mean()}


def _check_credit(credit, n_layers: int) -> list[torch.Tensor]:
    if credit is None:
        raise MissingAuxStateError(
            "no credit signal: the rule's auxiliary state (feedback matrices / bridge networks) is missing; "
            "load the checkpoint that holds it. The BP gradient is never substituted.")
    credit = list(credit)
    if len(credit) != n_layers:
        raise ValueError(f"credit has {len(credit)} layers but the model has {n_layers} hidden states h_0..h_L")
    return credit


def gamma_per_layer(credit: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> GammaResult:
    """Gamma_l = per-sample cosine(credit_l, dL/dh_l), float64, no clamp; mean and std over samples.

    Credit and gradient are compared as full flattened per-sample tensors (all
    tokens / positions), paired at the same hidden state h_l.
    """
    credit = _check_credit(credit, len(grads))
    per = [per_sample_cosine(a, g) for a, g in zip(credit, grads)]
    return GammaResult(
        mean=[_layer_gamma(p, no_credit(a, g)) for p, a, g in zip(per, credit, grads)],
        std=[p.std(correction=0).item() for p in per],
        ref_norm=[_median_or_nan(g) for g in grads],
        credit_norm=[_median_or_nan(a) for a in credit],
        per_sample=per,
    )


def gamma_of(rule, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, tap: Tap | None = None) -> GammaResult:
    """Gamma of a learning rule on (x, y): ``rule.credit(x, y)`` against the BP gradients.

    The rule must produce its own credit from its saved auxiliary state; a rule
    without that state raises (:class:`MissingAuxStateError`), it is never
    replaced by the BP gradient (pitfall 6.5).
    """
    if not callable(getattr(rule, "credit", None)):
        raise TypeError(f"{type(rule).__name__} has no credit(x, y) method: Gamma needs the rule's own credit signal")
    _, grads, _ = bp_grads(model, x, y, tap=tap)
    return gamma_per_layer(rule.credit(x, y), grads)


def gamma_aggregations(credit: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> dict[str, float]:
    """Four defensible ways to boil per-layer Gamma down to one number (pitfall 5).

    * ``mean_over_layers``: per-sample cosine -> mean over samples -> mean over layers;
    * ``median_over_layers``: the same, median over layers;
    * ``pooled_over_batch``: one cosine of the batch-flattened credit and gradient per layer
      (samples concatenated) -> mean over layers;
    * ``batch_mean_direction``: cosine of the batch-mean credit and the batch-mean gradient
      per layer -> median over layers.

    They can disagree in sign on the same checkpoint: report per-layer values.
    """
    credit = _check_credit(credit, len(grads))
    per_layer = gamma_per_layer(credit, grads).mean
    pooled = [per_sample_cosine(a.reshape(1, -1), g.reshape(1, -1)).item() for a, g in zip(credit, grads)]
    bmean = [per_sample_cosine(a.flatten(1).mean(0, keepdim=True), g.flatten(1).mean(0, keepdim=True)).item()
             for a, g in zip(credit, grads)]
    t = torch.tensor
    return {
        "mean_over_layers": t(per_layer).mean().item(),
        "median_over_layers": t(per_layer).median().item(),
        "pooled_over_batch": t(pooled).mean().item(),
        "batch_mean_direction": t(bmean).median().item(),
    }


# ---------------------------------------------------------------------------------------
# Functional tests of a credit signal: rho and nudging
# ---------------------------------------------------------------------------------------
def perturbation_rho(model: nn.Module, x: torch.Tensor, y: torch.Tensor, credit: Sequence[torch.Tensor], *,
                     eps: float = 1e-3, n_directions: int = 32, seed: int = 0, tap: Tap | None = None,
                     layers: Sequence[int] | None = None) -> list[float]:
    """Local perturbation correlation rho_l (the protocol chapter, "Supplementary measurements").

    For M random unit directions v per sample, the predicted change <a_l, eps v>
    is compared with the true change of that sample's loss when h_l -> h_l + eps v.
    All (prediction, truth) pairs over samples and directions are pooled into one
    Pearson correlation per layer. The credit is scaled per sample by the batch
    size to match the per-sample loss (the mean-loss convention divides by B).
    Losses are evaluated on a float64 copy of the model: a change of order
    eps * ||g|| must stay above rounding even when ||g|| is near the D2 floor.
    """
    tap = float64_tap(tap or Tap(model))
    credit = _check_credit(credit, tap.n_layers)
    x = x.double() if x.is_floating_point() else x
    g = generator(seed, "perturbation-directions", x.device)
    out = []
    with eval_mode(tap.model), torch.no_grad():
        hs, logits = tap.states(x)
        base = F.cross_entropy(logits, y, reduction="none").double()
        for l in (layers if layers is not None else range(tap.n_layers)):
            a = credit[l].flatten(1).double() * len(x)
            v = torch.randn((n_directions, *hs[l].shape), generator=g, device=x.device, dtype=hs[l].dtype)
            v = v / (v.flatten(2).norm(dim=2).view(n_directions, -1, *[1] * (hs[l].dim() - 1)) + 1e-8)
            true = torch.cat([loss - base for loss in _losses_with_deltas(tap, x, y, l, hs, eps * v)]).flatten()
            pred = eps * (a.unsqueeze(0) * v.flatten(2).double()).sum(2).flatten()
            out.append(_pearson(pred, true))
    return out


def _losses_with_deltas(tap: Tap, x, y, l, hs, deltas: torch.Tensor, budget: int = 1 << 23):
    """Per-sample losses for each of k perturbations ``deltas`` (k, *h_l.shape) of h_l.

    Several perturbations go through one forward pass (the batch is repeated), as
    many at a time as fit in ``budget`` elements of the perturbed state.
    """
    per_chunk = max(1, budget // hs[l].numel())
    for i in range(0, len(deltas), per_chunk):
        d = deltas[i:i + per_chunk]
        k = len(d)
        hs_rep = None if tap.modules is not None else {l: _repeat(hs[l], k)}
        logits = tap.logits_with_delta(_repeat(x, k), l, hs_rep, d.reshape(-1, *d.shape[2:]))
        yield F.cross_entropy(logits, _repeat(y, k), reduction="none").double().view(k, -1)


def _repeat(t: torch.Tensor, k: int) -> torch.Tensor:
    """k copies of a batch stacked along the batch dimension: (k * B, ...)."""
    return t.unsqueeze(0).expand(k, *t.shape).reshape(k * t.shape[0], *t.shape[1:])


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = (a.norm() * b.norm()).item()
    return (a @ b).item() / den if den > 0 else math.nan


def nudging(model: nn.Module, x: torch.Tensor, y: torch.Tensor, credit: Sequence[torch.Tensor], *,
            etas: Sequence[float] = (1e-3, 3e-3, 1e-2), tap: Tap | None = None) -> dict[str, list[float]]:
    """Nudging test: Delta_l = L(h_l - eta a_l) - L(h_l) on the eval batch (mean CE).

    Negative Delta means a step against the credit lowers the loss (the credit is
    useful). Raw credit, not normalised; keys are str(eta). Evaluated in float64
    (see :func:`perturbation_rho`).
    """
    tap = float64_tap(tap or Tap(model))
    x = x.double() if x.is_floating_point() else x
    credit = _check_credit(credit, tap.n_layers)
    res: dict[str, list[float]] = {}
    with eval_mode(tap.model), torch.no_grad():
        hs, logits = tap.states(x)
        base = F.cross_entropy(logits, y).double().item()
        for eta in etas:
            res[str(eta)] = [
                F.cross_entropy(tap.logits_with_delta(x, l, hs, -eta * credit[l].double()), y).double().item()
                - base for l in range(tap.n_layers)]
    return res


def drift_record(model: nn.Module, init_state: dict[str, torch.Tensor]) -> dict[str, dict[str, float | None]]:
    """Per named parameter, its change from ``init_state`` in one pass: ``{"abs": {name: ||theta - theta_0||},
    "rel": {name: ||theta - theta_0|| / ||theta_0||}}``; the relative change of a tensor initialised at zero is
    None (it has none)."""
    out: dict[str, dict] = {"abs": {}, "rel": {}}
    for name, p in model.named_parameters():
        if name not in init_state:
            raise KeyError(f"parameter {name!r} is missing from the initial state")
        p0 = init_state[name].to(p.device).double()
        d, n0 = (p.detach().double() - p0).norm().item(), p0.norm().item()
        out["abs"][name], out["rel"][name] = d, (None if n0 == 0 else d / n0)
    return out


def parameter_drift(model: nn.Module, init_state: dict[str, torch.Tensor], *, relative: bool = True
                    ) -> dict[str, float | None]:
    """Per named parameter: ||theta - theta_0|| / ||theta_0|| (relative change from init; None for a tensor
    initialised at zero, which has no relative change), or ||theta - theta_0|| with ``relative=False``
    (:func:`drift_record` gives both)."""
    return drift_record(model, init_state)["rel" if relative else "abs"]


def null_calibration(grads: Sequence[torch.Tensor], draw_credit: Callable[[torch.Generator], Sequence[torch.Tensor]],
                     *, n_draws: int = 20, seed: int = 12345) -> dict[str, list[float]]:
    """Gamma under fresh random feedback: the chance level a measured Gamma must beat (pitfall 4).

    ``draw_credit(generator)`` returns the credit the rule would send with freshly
    drawn feedback matrices (same shapes, new draws). Returns per-layer mean and std
    over draws of the per-layer Gamma (mean over samples), and the draws themselves.
    """
    if n_draws < 2:
        raise ValueError(f"n_draws={n_draws}: need at least 2 draws for a mean and std")
    g = generator(seed, "null-feedback")
    draws = torch.tensor([gamma_per_layer(draw_credit(g), grads).mean for _ in range(n_draws)], dtype=torch.float64)
    return {"mean": draws.mean(0).tolist(), "std": draws.std(0).tolist(), "draws": draws.tolist(),
            "aggregate": f"per-layer Gamma (mean over samples), mean/std over {n_draws} fresh feedback draws"}


# ---------------------------------------------------------------------------------------
# The cheap per-epoch snapshot the trainer and the Monitor share
# ---------------------------------------------------------------------------------------
def deep_mean(per_layer: Sequence[float]) -> float:
    """The "deep" aggregate of a per-layer quantity: the mean over layers 1..L, the embedding
    state h_0 excluded (it can dominate an all-layer mean: pitfall 6). With one layer, that layer.
    Layers that received no credit (NaN) are left out (:func:`no_credit_layers` names them);
    NaN when none is left.

    >>> deep_mean([0.9, 0.1, 0.3])
    0.2
    >>> deep_mean([0.9, float("nan"), 0.3]), no_credit_layers([0.9, float("nan"), 0.3])
    (0.3, [1])
    """
    rest = [v for v in (list(per_layer[1:]) or list(per_layer[:1])) if not _is_nan(v)]
    return float(sum(rest) / len(rest)) if rest else math.nan


def _is_nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def layer_mean(per_layer: Sequence[float]) -> float:
    """The mean of a per-layer quantity over all layers 0..L, layers without credit (NaN) left out."""
    rest = [v for v in per_layer if not _is_nan(v)]
    return float(sum(rest) / len(rest)) if rest else math.nan


def no_credit_layers(per_layer: Sequence[float]) -> list[int]:
    """The layers whose Gamma is undefined because they received no credit (NaN entries)."""
    return [l for l, v in enumerate(per_layer) if _is_nan(v)]
