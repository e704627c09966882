"""Equilibrium propagation with its credit resolved: the free and nudged phases in float64.

EP's credit a_l = -(h_l^nudge - h_l^free) / (beta B) is the difference of two nearly equal states. In
float32 the difference carries the states' rounding error, about eps32 * ||h_l|| per sample (eps32 =
1.2e-7), while the displacement the nudge makes shrinks as the states grow (with pre-LN blocks and a
terminal LayerNorm, the loss's gradient at h_l falls like 1/||h_l||). At the paper's ||h_L|| (3-8e3)
the rounding is the larger of the two, and the credit is mostly noise (:mod:`faeval.book.ep_precision`).

``ep64`` runs the same energy, the same nudge and the same steps as :class:`~faeval.methods.ep.EP`, in
float64: the embedding's output is cast up (exactly), the free states are recomputed from it in float64
(so the energy is exactly zero at the free states, as the first relaxation step assumes), the nudged
phase relaxes them, and the credit is cast back to the run's dtype (a relative rounding only). Where
float32 resolves the credit, ``ep64`` gives EP's numbers to float32's tolerance (tested); its price is the
float64 arithmetic of the phases: 1.55 times EP's step (``benchmarks/step_cost.py``). The blocks still train
in the run's dtype, on their own float32 free states.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .base import UnsupportedArchError, register_method
from .ep import EP, _has_batchnorm


@contextmanager
def _in_float64(model: torch.nn.Module):
    """``model``'s parameters and buffers in float64 for the block, back in their own dtypes after (exactly:
    every float32 value is a float64 value). Gradients are left where they are. The phases change no parameter,
    so only a buffer's value is copied back (a buffer the passes moved keeps its new value)."""
    saved = []
    for is_buffer, tensors in ((False, model.parameters()), (True, model.buffers())):
        for t in tensors:
            if t.is_floating_point() and t.dtype != torch.float64:
                saved.append((t, t.data, is_buffer))
                t.data = t.data.double()
    try:
        yield model
    finally:
        for t, data, is_buffer in saved:
            if is_buffer:
                data.copy_(t.data)
            t.data = data


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

    @classmethod
    def step_cost(cls, hparams) -> float:
        """1.55 times EP's (measured at the default 10 steps: 106 against 68 ms per step on the 2-core CPU host,
        ``benchmarks/step_cost.py --rules ep ep64``)."""
        return 1.55 * super().step_cost(hparams)

    def local_credit(self, states, logits, y, top_grad):
        dtype, m = states[0].dtype, self.model
        device = states[0].device.type
        with _in_float64(m), torch.autocast(device, enabled=False):
            with torch.no_grad():
                free = [states[0].detach().double()]
                for l in range(m.depth):
                    free.append(m.block_forward(l, free[-1]))
            credit = super().local_credit(free, None, y, None)
        return [a.to(dtype) for a in credit]
