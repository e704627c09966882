"""Batch-wise random-magnitude sign-concordant feedback (Liao et al. 2016; BioTorch's ``brsf``): B = abs(R) * sign(W),
R redrawn at every forward."""
from __future__ import annotations

import torch

from ..seeds import generator
from .base import register_method
from .layerwise import LayerwiseRule


@register_method("brsf")
class BRSF(LayerwiseRule):
    """B = abs(R) * sign(W) with R redrawn (as ``fa_layer``'s B is drawn) at every forward pass, from the run's
    own ``"feedback-redraw"`` stream; the stream's position is saved with checkpoints. The stored
    matrices are the last draw (what the angle is read from)."""

    relative_cost = 1.7       # benchmarks/step_cost.py, 2026-12-07 (its redraw of every layer's magnitudes)
    streams = ("redraw",)
    ungroupable = "it redraws its feedback magnitudes from a random stream at every forward pass"

    def __init__(self, model, **common) -> None:
        self.redraw = generator(int(common.get("seed", 0)), "feedback-redraw")
        super().__init__(model, **common)

    def refresh(self):
        self.feedback = self.draw_feedback(self.redraw)

    def backward_matrix(self, i, W, R):
        return R.abs() * torch.sign(W)
