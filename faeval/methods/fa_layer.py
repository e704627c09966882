"""Feedback alignment layer by layer (Lillicrap et al. 2016; BioTorch's ``fa``): a fixed random B per layer."""
from __future__ import annotations

from .base import register_method
from .layerwise import LayerwiseRule


@register_method("fa_layer")
class FALayer(LayerwiseRule):
    """Every Linear/Conv2d layer sends its input gradient back through a fixed random B of its weight's
    shape, drawn once (:meth:`~faeval.methods.layerwise.LayerwiseRule.random_like`). Unlike the block-level
    ``fa`` (a d x d chain standing in for each whole block), the skip paths, norms and activations
    stay exact: only the layers' transposes are replaced."""
