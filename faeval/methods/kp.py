"""Kolen-Pollack (Akrout et al. 2019): B receives W's update and both decay, so W - B shrinks by (1 - decay) a step."""
from __future__ import annotations

import torch

from .base import check_range, register_method
from .layerwise import LayerwiseRule


@register_method("kp")
class KolenPollack(LayerwiseRule):
    """Kolen-Pollack: dW = -eta delta x^T - lambda W and dB = -eta delta x^T - lambda B, so that
    W - B decays by (1 - lambda) at every step whatever the gradients are.

    Stored: the difference D = W - B (its initial value W_0 - B_0, with B_0 a random matrix as
    ``fa_layer``'s), so B = W - D at every forward and after each optimiser step D <- (1 - decay) D.
    This is the rule's W - B dynamics exactly, with any optimiser: B moves by W's own update (the
    run's AdamW step, its weight decay included) plus decay * (W - B). KP's extra decay of W itself is
    not added (W trains as under every other rule). ``decay`` (per step; default 1e-3) shrinks D by
    e^-3.75 over the quick profile's 3,752 steps (the paper's ImageNet runs: 1e-5 a step over 450,000).
    """

    def __init__(self, model, *, decay: float = 1e-3, **common) -> None:
        check_range("decay", decay, 0 <= decay <= 1, "in [0, 1] (the per-step decay of W - B)")
        self.decay = float(decay)
        super().__init__(model, **common)

    def draw(self, W, gen):
        return W - self.random_like(W, gen)

    def backward_matrix(self, i, W, D):
        return W - D

    @torch.no_grad()
    def after_step(self):
        for D in self._need("feedback", "feedback matrices"):
            D.mul_(1.0 - self.decay)
