"""Backpropagation, and the frozen-blocks baseline of D3."""
from __future__ import annotations

import torch.nn.functional as F

from ..diagnostics import bp_grads
from .base import Method, ce_stats, register_method


@register_method("bp")
class BP(Method):
    """End-to-end backprop of the mean cross-entropy (plus the penalty, when set).

    Its credit is the BP gradient itself, so its Gamma is 1 by construction.
    """

    ungroupable = None

    def loss(self, x, y):
        m = self.model
        hs, logits = m.states(x)
        ce = F.cross_entropy(logits, y)
        loss, stats = ce, ce_stats(ce, logits, y)
        if self.penalised:
            pen = self._penalty_term([hs[l + 1] - hs[l] if self.block_trains(l) else None for l in range(m.depth)])
            if pen is not None:
                loss = loss + pen
                stats["penalty"] = pen.detach()
        return loss, stats

    def credit(self, x, y):
        return bp_grads(self.model, x, y)[1]


@register_method("frozen")
class Frozen(BP):
    """The D3 baseline: blocks frozen at init; embedding, out_ln and out_head trained with BP."""

    relative_cost = 0.65      # only the embedding, terminal LN and head train

    def __init__(self, model, *, seed: int = 0, penalty: float = 0.0, init_aux: bool = True,
                 head_lr: float = 1.0) -> None:
        super().__init__(model, seed=seed, penalty=penalty, trainable_blocks=0, init_aux=init_aux, head_lr=head_lr)
