"""Fixed random-magnitude sign-concordant feedback (Liao et al. 2016; BioTorch's ``frsf``): B = abs(R0) * sign(W)."""
from __future__ import annotations

import torch

from .base import register_method
from .layerwise import LayerwiseRule


@register_method("frsf")
class FRSF(LayerwiseRule):
    """B = abs(R0) * sign(W): R0 drawn once (a random matrix, as ``fa_layer``'s B), the signs read from the
    current weights at every forward."""

    def backward_matrix(self, i, W, R):
        return R.abs() * torch.sign(W)
