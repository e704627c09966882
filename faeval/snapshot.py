"""The cheap per-epoch snapshot the trainer and the Monitor share (:class:`Snapshot`, :func:`snapshot`).

One pass over a fixed eval batch (:func:`faeval.diagnostics.measure`) gives every per-epoch
number a run's history records: per-layer norms, max block growth, g_L, direction stability,
loss, accuracy and, with a rule's credit, per-layer Gamma.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from .diagnostics import (
    _layer_gamma,
    deep_mean,
    gamma_per_layer,
    layer_mean,
    max_block_growth,
    measure,
    no_credit_layers,
    stability_of,
)
from .tap import Tap

__all__ = ["Snapshot", "snapshot"]


@dataclass
class Snapshot:
    """The per-epoch diagnostic record on a fixed eval batch (:func:`snapshot` measures it).

    Norms follow :func:`measure` (median over samples of per-sample L2 norms, BP
    gradients of each batch's mean CE); ``gamma`` is per layer (mean over samples of
    the per-sample cosine of the rule's credit with the BP gradient; NaN at a layer that
    received no credit), ``None`` when no credit was measured. The output error's norm and consistency and the
    blocks' branch norms (:func:`~faeval.diagnostics.measure`) are None in runs stored before they were recorded.
    Stored as JSON (:meth:`to_dict` / :meth:`from_dict`).
    """

    hidden_norms: list[float]
    bp_grad_norms: list[float]
    max_block_growth: float          # D1's value
    g_L: float                       # D2's value: bp_grad_norms[-1]
    stability: float | None          # C's value (None with fewer than two full batches)
    loss: float
    acc: float
    aggregate: str
    gamma: list[float] | None = None
    batch_size: int = 128            # the eval batches whose mean CE the BP gradients are of
    error_norm: float | None = None          # median per-sample ||softmax - onehot|| (None: stored before it)
    error_consistency: float | None = None   # ||batch-mean error|| / mean per-sample ||error||
    branch_norms: list[float | None] | None = None  # per block, median per-sample ||h_{l+1} - h_l||

    @property
    def h_L(self) -> float:
        """Median per-sample norm of the deepest hidden state."""
        return self.hidden_norms[-1]

    def g_L_at(self, batch: int) -> float:
        """D2's value read at the scale of batches of ``batch`` samples.

        The per-sample BP gradient of a batch's *mean* CE is 1/B of that sample's own loss
        gradient, and in eval mode every model here treats samples independently, so the
        median per-sample norm measured on batches of ``batch_size`` reads
        ``g_L * batch_size / batch`` on batches of ``batch``: the paper's audit used 128,
        its per-epoch logs about 1,024 samples per batch (8x smaller).

        >>> Snapshot([1.0, 2.0], [1e-3, 8e-7], 2.0, 8e-7, None, 1.0, 0.5, "").g_L_at(1024)
        1e-07
        """
        return self.g_L * self.batch_size / batch

    @property
    def deep_gamma(self) -> float | None:
        """Mean of the per-layer Gamma over layers 1..L (h_0 excluded; :func:`deep_mean`); None without Gamma."""
        return None if not self.gamma else deep_mean(self.gamma)

    @property
    def layer_mean_gamma(self) -> float | None:
        """Mean of the per-layer Gamma over all layers 0..L (the status-quo headline); None without Gamma."""
        return None if not self.gamma else layer_mean(self.gamma)

    @property
    def no_credit(self) -> list[int]:
        """Layers whose credit was none at all (:data:`NO_CREDIT`): Gamma NaN, left out of every mean."""
        return [] if not self.gamma else no_credit_layers(self.gamma)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["gamma"] is None:
            del d["gamma"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Snapshot:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def snapshot(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, credit: Sequence[torch.Tensor] | None = None,
             credit_fn: Callable[[torch.Tensor, torch.Tensor], Sequence[torch.Tensor]] | None = None,
             tap: Tap | None = None, batch_size: int = 128, stability_batches: int | None = None) -> Snapshot:
    """The cheap per-epoch :class:`Snapshot`: per-layer norms, max growth, g_L, stability, loss, acc,
    and Gamma with ``credit`` for ``x`` (or ``credit_fn(x, y)``, called batch by batch, e.g. a rule's
    ``credit``). Stability reads the first ``stability_batches`` disjoint full batches (all by default).

    >>> import faeval
    >>> model = faeval.build_model("resmlp", (8,), 3, seed=0, width=16, depth=2)
    >>> snap = snapshot(model, torch.randn(256, 8), torch.randint(3, (256,)))
    >>> len(snap.hidden_norms), snap.g_L == snap.bp_grad_norms[-1], snap.gamma is None
    (3, True, True)
    """
    if credit is not None and credit_fn is not None:
        raise ValueError("pass credit= or credit_fn=, not both")
    tap = tap or Tap(model)
    m = measure(model, x, y, tap=tap, batch_size=batch_size, keep_grads=credit is not None, credit_fn=credit_fn)
    dirs = m["batch_mean_grads"][:stability_batches]
    gamma = None
    if credit is not None:
        gamma = gamma_per_layer(credit, m["grads"]).mean
    if credit_fn is not None:
        gamma = [_layer_gamma(c, none) for c, none in zip(m["gamma_per_sample"], m["no_credit"])]
    return Snapshot(hidden_norms=m["hidden_norms"], bp_grad_norms=m["bp_grad_norms"],
                    max_block_growth=max_block_growth(m["hidden_norms"]), g_L=m["bp_grad_norms"][-1],
                    stability=stability_of(dirs) if len(dirs) >= 2 else None,
                    loss=m["loss"], acc=m["acc"], aggregate=m["aggregate"], gamma=gamma, batch_size=batch_size,
                    error_norm=m["error_norm"], error_consistency=m["error_consistency"],
                    branch_norms=m["branch_norms"])
