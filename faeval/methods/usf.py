"""Uniform sign-concordant feedback (Liao, Leibo & Poggio 2016; BioTorch's ``usf``): B = s sign(W)."""
from __future__ import annotations

import torch

from .base import register_method
from .layerwise import LayerwiseRule


@register_method("usf")
class USF(LayerwiseRule):
    """B = s * sign(W), recomputed from the current weights at every forward. The stored matrix holds
    s (the layer's :meth:`~faeval.methods.layerwise.LayerwiseRule.scale` when the rule is built) in
    every entry, so that the scale survives a checkpoint while W moves."""

    def draw(self, W, gen):
        return torch.full_like(W, self.scale(W))

    def backward_matrix(self, i, W, R):
        return R * torch.sign(W)
