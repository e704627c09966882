"""State Bridge: credit through a learned predictor of the terminal state."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .base import check_range, error_signal, register_method, state_shapes
from .bridges import BridgeRule

Predictor = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


@register_method("state_bridge")
class StateBridge(BridgeRule):
    """a_l = d/dh_l CE(readout(G_psi(h_l, t_l, s)), y) for l < L; a_L = the true dCE/dh_L.

    G_psi (a :class:`BridgeNet`, conditioned on s = e_T when ``cond="eT"``) predicts
    h_L from h_l and trains on the normalised MSE ||G - h_L||^2 / ||h_L||^2 (per
    sample, mean over samples and layers) at ``lr_fb``. The credit is the terminal
    loss pulled back through G's Jacobian instead of the network's. ``predictor``
    replaces G by any callable ``(h_l, l, s) -> h_L`` (nothing is then trained or
    saved); the true forward map gives exactly the BP gradient.
    """

    relative_cost = 2.3
    not_keyed = ("seed", "init_aux", "predictor")     # a callable standing in for G cannot be keyed

    needs_top_grad = True

    def __init__(self, model, *, hidden: int = 256, layers: int = 3, cond: str = "eT",
                 predictor: Predictor | None = None, **common) -> None:
        super().__init__(model, **common)
        check_range("cond", cond, cond in ("eT", "none"), "'eT' or 'none'")
        self.shapes = state_shapes(model)
        self.cond = cond
        self.predictor = predictor
        self._setup_bridge(in_dims=[math.prod(s) for s in self.shapes[:-1]], out_dim=math.prod(self.shapes[-1]),
                           cond_dim=model.out_head.out_features if cond == "eT" else 0, hidden=hidden, layers=layers)
        self.net = self._new_net() if (self.init_aux and predictor is None) else None
        self._bridge_loss = None

    def _predict(self, hs: list[torch.Tensor], s: torch.Tensor) -> list[torch.Tensor]:
        L = self.model.depth
        if self.predictor is not None:
            return [self.predictor(h, l, s) for l, h in enumerate(hs)]
        net = self._need("net", "state-bridge network G_psi")
        out = net(hs, list(range(L)), [l / L for l in range(L)], s if self.cond == "eT" else None)
        return [o.view(len(o), *self.shapes[-1]) for o in out]

    def local_credit(self, states, logits, y, top_grad):
        s = error_signal(logits, y)
        with torch.enable_grad():
            hs = [h.detach().requires_grad_() for h in states[:-1]]
            preds = self._predict(hs, s)
            ce = sum(F.cross_entropy(self.model.readout(p), y) for p in preds)
            train_net = self.net is not None and self.model.training   # not when credit() asks
            credit = list(torch.autograd.grad(ce, hs, retain_graph=train_net))
        if train_net:
            target = states[-1].detach().flatten(1)
            den = target.pow(2).sum(1).clamp_min(1e-30)
            self._bridge_loss = torch.stack(
                [((p.flatten(1) - target).pow(2).sum(1) / den).mean() for p in preds]).mean()
        return credit + [top_grad]

    def aux_loss(self):
        loss, self._bridge_loss = self._bridge_loss, None
        return {} if loss is None else {"bridge_loss": loss}

    def aux_state(self):
        if self.predictor is not None:
            return {}
        return {"net": self._cpu_state(self._need("net", "state-bridge network G_psi"))}

    def load_aux_state(self, state):
        if self.predictor is not None:
            return
        self.net = self._load_net(state, "net", "state-bridge network G_psi")
