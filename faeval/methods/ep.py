"""Feedforward equilibrium propagation (the book's assumptions page, "Learning rules")."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LocalRule, check_range, register_method


def _has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@register_method("ep")
class EP(LocalRule):
    """Credit from the contrast between a free and a nudged phase on the hidden states.

    Energy (summed over samples): E(h) = 1/2 sum_l ||h_{l+1} - F_l(h_l)||^2, where
    F_l is block l with its skip (``model.block_forward``). The free phase is the
    ordinary forward pass (E = 0). The nudged phase starts there and takes ``steps``
    gradient steps of size ``step_size`` on E + beta * CE(readout(h_L), y) over
    h_1..h_L, with h_0 fixed by the embedding. Credit (mean-loss scale):
    a_l = -(h_l^nudge - h_l^free) / (beta B) for l >= 1, and for the embedding the
    EP contrast dE/dh_0 at the nudged state / (beta B). Blocks then train on
    <f_l(h_l^free), a_{l+1}> like every local rule. Costs ``steps`` forward-backward
    passes per training step on top of the local update. Defined on every
    architecture (the energy only needs ``block_forward``).

    The displacement credit follows the BP gradient while the block Jacobians are
    small and the phase is short: early steps carry the nudge backwards through the
    transposed Jacobians; run to convergence, the displacements also accumulate
    forward and drift from the gradient (the prediction errors are what converge to
    it). Plain gradient descent diverges when ``step_size`` exceeds about 2 over the
    energy's curvature, which grows with the blocks; each training step records
    ``relax_ratio`` (the gradient norm of the nudged objective at the last step over
    that at the first): far above 1 means the nudged phase diverged.
    """

    ungroupable = "it relaxes its states with torch.autograd.grad in an inner loop, which cannot be vectorised"

    @classmethod
    def step_cost(cls, hparams) -> float:
        """6.3 BP steps at the default 10 nudged steps, 80% of it in the nudged phase (``benchmarks/precision.py``)."""
        return 1.26 + 0.504 * hparams.get("steps", 10)
    #: the first relaxation step reads only the nudge (the energy's gradient is zero at the free states)
    skip_free_energy = True

    def __init__(self, model, *, beta: float = 0.1, steps: int = 10, step_size: float = 0.2, **common) -> None:
        super().__init__(model, **common)
        check_range("beta", beta, beta > 0, "> 0 (the nudging strength)")
        check_range("steps", steps, isinstance(steps, int) and steps >= 1, "an integer >= 1 (nudged-phase steps)")
        check_range("step_size", step_size, step_size > 0, "> 0 (the nudged-phase step size)")
        self.beta, self.steps, self.step_size = float(beta), int(steps), float(step_size)

    def energy(self, states: list[torch.Tensor], upto: int | None = None) -> torch.Tensor:
        """E = 1/2 sum_{l < upto} ||h_{l+1} - F_l(h_l)||^2, summed over samples (``upto`` defaults to L)."""
        m = self.model
        upto = m.depth if upto is None else upto
        return sum(0.5 * (states[l + 1] - m.block_forward(l, states[l])).pow(2).sum() for l in range(upto))

    def nudged_states(self, states: list[torch.Tensor], y: torch.Tensor) -> list[torch.Tensor]:
        """h_1..h_L after the nudged phase, starting from the free states.

        At the first step the states are the free ones, where every energy term and its gradient
        are exactly zero: only the nudge's gradient at h_L is computed then (one pass through the
        blocks fewer, same numbers). A model with batch norm in training mode takes the full first
        pass, as each pass through it also moves its running statistics.
        """
        h0 = states[0].detach()
        hn = [h.detach() for h in states[1:]]
        norms = []
        skip_first = self.skip_free_energy and not (self.model.training and _has_batchnorm(self.model))
        with torch.enable_grad():
            for k in range(self.steps):
                hn = [h.requires_grad_() for h in hn]
                if k == 0 and skip_first:
                    nudge = self.beta * F.cross_entropy(self.model.readout(hn[-1]), y, reduction="sum")
                    grads = [torch.zeros_like(h) for h in hn[:-1]] + [torch.autograd.grad(nudge, hn[-1])[0]]
                else:
                    total = self.energy([h0, *hn]) + self.beta * F.cross_entropy(
                        self.model.readout(hn[-1]), y, reduction="sum")
                    grads = torch.autograd.grad(total, hn)
                if k in (0, self.steps - 1):
                    norms.append(torch.sqrt(sum(g.pow(2).sum() for g in grads)).detach())
                hn = [(h - self.step_size * g).detach() for h, g in zip(hn, grads)]
        self._relax_ratio = norms[-1] / norms[0].clamp_min(1e-30)
        return [h.detach() for h in hn]

    def step_stats(self):
        return {"relax_ratio": self._relax_ratio,
                "credit_resolution": min(r for r in self._resolution if r is not None)}

    @staticmethod
    def resolution(free: list[torch.Tensor], nudged: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per hidden state: the median over samples of ||h_nudge - h_free|| / (eps ||h_free||), eps the machine
        epsilon of the states' dtype: how many rounding units of the state the displacement (the credit, times
        beta B) spans. Near 1 the displacement is the size of the states' own rounding and the credit is mostly
        noise; the float32 credit's cosine with the exact one is above 0.99 wherever the exact displacement
        spans 30 units or more (``faeval.book.ep_precision``, ``benchmarks/ep_precision.py``)."""
        out = []
        for hf, hn in zip(free, nudged):
            eps = torch.finfo(hf.dtype).eps
            d, h = (t.detach().flatten(1).norm(dim=1) for t in (hn - hf, hf))
            out.append((d / (eps * h).clamp_min(torch.finfo(hf.dtype).tiny)).median())
        return out

    @property
    def last_resolution(self) -> list[float | None]:
        """:meth:`resolution` of each hidden state h_1..h_L in the last credit this rule computed; None for a state
        the nudge cannot reach in ``steps`` steps (it moves one state further down per step, so only the top
        ``steps`` states receive credit at all)."""
        return [None if r is None else float(r) for r in self._resolution]

    def credit_resolution(self, x: torch.Tensor, y: torch.Tensor) -> list[float | None]:
        """:attr:`last_resolution` on the batch ``(x, y)`` (the model in eval mode, as :meth:`credit` runs it)."""
        self.credit(x, y)
        return self.last_resolution

    def local_credit(self, states, logits, y, top_grad):
        hn = self.nudged_states(states, y)
        reached = len(hn) - self.steps           # h_1..h_L: the nudge reaches the top `steps` of them
        self._resolution = [None if i < reached else r for i, r in enumerate(self.resolution(states[1:], hn))]
        scale = 1.0 / (self.beta * len(y))
        with torch.enable_grad():
            h0 = states[0].detach().requires_grad_()
            a0 = torch.autograd.grad(self.energy([h0, hn[0]], upto=1), h0)[0] * scale
        return [a0] + [(hf - h) * scale for h, hf in zip(hn, states[1:])]
