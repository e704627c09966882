"""Direct random target projection (Frenkel, Lefebvre & Bol 2021): the one-hot target, not the error, projected."""
from __future__ import annotations

import torch

from .base import register_method
from .dfa import DFA


@register_method("drtp")
class DRTP(DFA):
    """Each hidden state h_l gets a_l = -y* B_l / B: the one-hot target y* projected by DFA's fixed B_l
    (same shapes, same draw). The target stands in for the error: its sign on the true class is what
    the error's is (p_c - 1 < 0), and it needs no forward pass to the output, which is DRTP's point.
    The sign convention is immaterial in distribution (B and -B are equally likely). out_ln and
    out_head train on the true loss, as under every local rule.

    Unlike DFA's error, this signal does not shrink as the network learns, and its class-independent
    part (the mean of B's rows) reaches every block's bias alike. DRTP's papers use saturating units,
    where such pushes stop; faeval's pre-LN blocks are unbounded, so the rule grows the stream
    without limit. The chapter "More rules under the protocol" measures what that does."""

    def credit_from(self, feedback, states, logits, y, top_grad):
        target = torch.zeros_like(logits).scatter(-1, y.unsqueeze(-1), 1.0)
        return [(-target / len(y) @ B).view(len(y), *s) for B, s in zip(feedback, self.shapes)]
