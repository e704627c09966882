"""Learning rules that exist only as probes of the discrepancies appendix (registered when the book's
experiments are declared, never by ``import faeval``).

``dfa_input_credit``: DFA with the other credit pairing, the probe of which pairing gives the
paper's per-layer pattern of early Gamma (:mod:`faeval.book.discrepancies`).
"""
from __future__ import annotations

from ..methods import UnsupportedArchError, register_method
from ..methods.dfa import DFA

__all__ = ["DFAInputCredit"]


@register_method("dfa_input_credit")
class DFAInputCredit(DFA):
    """DFA with the other credit pairing: block l trains on the credit of its *input* state,
    a_l = e B_l, instead of its output's a_{l+1} (the embedding keeps a_0).

    Gamma is read as for DFA (a_l at h_l against the BP gradient there); only which block each
    a_l trains differs. Needs states of equal shape.
    """

    def check_model(self, model):
        if not model.equal_width:
            raise UnsupportedArchError(f"dfa_input_credit pairs block l with the credit of its input state, "
                                       f"which needs states of one shape; arch {model.arch!r} changes shape")

    def training_credit(self, credit):
        return [credit[0], *credit[:-1]]
