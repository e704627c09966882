"""Equilibrium propagation with its credit resolved: the free and nudged phases in float64.

EP's credit a_l = -(h_l^nudge - h_l^free) / (beta B) is the difference of two nearly equal states. In
float32 the difference carries the states' rounding error, about eps32 * ||h_l|| per sample (eps32 =
1.2e-7), while the displacement the nudge makes shrinks as the states grow (with pre-LN blocks and a
terminal LayerNorm, the loss's gradient at h_l falls like 1/||h_l||). At the paper's ||h_L|| (3-8e3)
the rounding is the larger of the two, and the credit is mostly noise (:mod:`faeval.book.ep_precision`).

``ep64`` runs the same energy, the same nudge and the same steps as :class:`~faeval.methods.ep.EP`, in
float64, on a float64 copy of the model refreshed from its current values every step (the model and the
training graph built on its parameters are never touched): the embedding's output is cast up (exactly), the
free states are recomputed from it in float64 (so the energy is exactly zero at the free states, as the first
relaxation step assumes), the nudged phase relaxes them, and the credit is cast back to the run's dtype (a
relative rounding only). Where float32 resolves the credit, ``ep64`` gives EP's numbers to float32's tolerance
(tested); its price is the float64 arithmetic of the phases: 1.74 times EP's step
(``benchmarks/step_cost.py``). The blocks still train in the run's dtype, on their own float32 free states.
"""
from __future__ import annotations

import copy

import torch

from .base import UnsupportedArchError, register_method
from .ep import EP, _has_batchnorm


def _shadow(model: torch.nn.Module, shadow: torch.nn.Module | None) -> torch.nn.Module:
    """``shadow``, a float64 copy of ``model`` (made here where None; its parameters need no gradient), refreshed
    to ``model``'s current values. The phases run on it, so the model itself, its parameters and the training
    graph built on them are never touched."""
    if shadow is None:
        shadow = copy.deepcopy(model).double()
        for p in shadow.parameters():
            p.requires_grad_(False)
            p.grad = None
    with torch.no_grad():
        for mine, theirs in ((shadow.parameters(), model.parameters()), (shadow.buffers(), model.buffers())):
            for s, t in zip(mine, theirs):
                s.copy_(t)
    shadow.train(model.training)
    return shadow


@register_method("ep64")
class EP64(EP):
    """:class:`~faeval.methods.ep.EP` with its free and nudged phases in float64, so that the credit, a difference
    of two nearly equal states, is resolved at any state scale float32 can hold (module docstring)."""

    def __init__(self, model, **kw) -> None:
        if _has_batchnorm(model):
            raise UnsupportedArchError(
                "ep64 recomputes the free phase in float64, which would move batch norm's running statistics a "
                "second time per step; use ep on a model with batch norm, or a model without it")
        super().__init__(model, **kw)
        self._float64: torch.nn.Module | None = None          # the float64 copy the phases run on (_shadow)

    @classmethod
    def step_cost(cls, hparams) -> float:
        """1.74 times EP's (measured at the default 10 steps: 91 against 52 ms per step on the 2-core CPU host,
        ``benchmarks/step_cost.py --rules ep ep64``)."""
        return 1.74 * super().step_cost(hparams)

    def local_credit(self, states, logits, y, top_grad):
        dtype, model = states[0].dtype, self.model
        m = self._float64 = _shadow(model, self._float64)
        self.model = m                       # the phases read self.model: point them at the float64 copy
        try:
            with torch.autocast(states[0].device.type, enabled=False):
                with torch.no_grad():
                    free = [states[0].detach().double()]
                    for l in range(m.depth):
                        free.append(m.block_forward(l, free[-1]))
                credit = super().local_credit(free, None, y, None)
        finally:
            self.model = model
        return [a.to(dtype) for a in credit]
