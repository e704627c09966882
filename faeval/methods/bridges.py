"""The bridge network shared by State Bridge and Credit Bridge."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import MissingAuxStateError
from ..seeds import seeded
from .base import LocalRule, check_range


class BridgeNet(nn.Module):
    """MLP on [LN(h_l), t_l, s] -> ``out_dim``: G_psi of State Bridge, V_phi of Credit Bridge.

    ``in_dims`` are the flattened sizes of the states it reads. When they are all
    equal (ResMLP, ViT) one input layer serves every depth, which then enters only
    through t_l = l / L; when they differ (the CNN's stages) each depth gets its own
    LayerNorm and input layer. ``layers`` counts the linear layers (input, hidden...,
    output); GELU between them. ``cond_dim`` is the size of the conditioning code s
    (0 for none).
    """

    def __init__(self, in_dims: list[int], out_dim: int, cond_dim: int, hidden: int = 256, layers: int = 3) -> None:
        super().__init__()
        check_range("hidden", hidden, isinstance(hidden, int) and hidden >= 1, "an integer >= 1")
        check_range("layers", layers, isinstance(layers, int) and layers >= 2, "an integer >= 2 (input and output)")
        self.shared = len(set(in_dims)) == 1
        dims = in_dims[:1] if self.shared else in_dims
        self.ln = nn.ModuleList([nn.LayerNorm(d) for d in dims])
        self.inp = nn.ModuleList([nn.Linear(d, hidden) for d in dims])
        self.t_embed = nn.Linear(1, hidden)
        self.s_embed = nn.Linear(cond_dim, hidden) if cond_dim else None
        body: list[nn.Module] = []
        for _ in range(layers - 2):
            body += [nn.GELU(), nn.Linear(hidden, hidden)]
        body += [nn.GELU(), nn.Linear(hidden, out_dim)]
        self.body = nn.Sequential(*body)

    def forward(self, hs: list[torch.Tensor], depths: list[int], t: list[float], s: torch.Tensor | None
                ) -> list[torch.Tensor]:
        """Outputs for states ``hs`` at depths ``depths`` (indices into ``in_dims``) and times ``t``.

        All states go through the body as one batch; returns one (B, out_dim) tensor per state.
        """
        B = hs[0].shape[0]
        if self.shared:
            z = self.inp[0](self.ln[0](torch.cat([h.flatten(1) for h in hs])))
        else:
            z = torch.cat([self.inp[d](self.ln[d](h.flatten(1))) for h, d in zip(hs, depths)])
        tt = torch.tensor(t, dtype=z.dtype, device=z.device).repeat_interleave(B).unsqueeze(1)
        z = z + self.t_embed(tt)
        if self.s_embed is not None:
            z = z + self.s_embed(s).repeat(len(hs), 1)
        return list(self.body(z).split(B))


def build_bridge(seed: int, device, dtype, **kw) -> BridgeNet:
    """A BridgeNet whose initial weights come from the ``"bridge-net"`` stream of ``seed``
    (the global RNG is left as it was)."""
    with seeded(seed, "bridge-net"):
        net = BridgeNet(**kw)
    return net.to(device=device, dtype=dtype)


class BridgeRule(LocalRule):
    """What State Bridge and Credit Bridge share: building, training, saving and loading a BridgeNet."""

    net: BridgeNet | None = None
    ungroupable = "it trains a network of its own (a bridge) beside the model"

    def _setup_bridge(self, **net_kw) -> None:
        """Remember how to build the rule's BridgeNet (its weights come from the run seed's ``"bridge-net"`` stream)."""
        p = next(self.model.parameters())
        self._net_kw, self._device, self._dtype = net_kw, p.device, p.dtype

    def _new_net(self) -> BridgeNet:
        return build_bridge(self.seed, self._device, self._dtype, **self._net_kw)

    def aux_parameters(self):
        return list(self.net.parameters()) if self.net is not None else []

    @staticmethod
    def _cpu_state(net: nn.Module) -> dict:
        return {k: v.detach().cpu() for k, v in net.state_dict().items()}

    def _load_net(self, state: dict, key: str, what: str) -> BridgeNet:
        if not state or key not in state:
            raise MissingAuxStateError(f"method {self.name!r}: the auxiliary state has no {key!r} ({what})")
        net = self._new_net()
        try:
            net.load_state_dict(state[key])
        except RuntimeError as e:
            raise ValueError(f"method {self.name!r}: the saved {what} does not fit this model: {e}") from None
        return net
