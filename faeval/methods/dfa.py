"""Direct feedback alignment (Nokland 2016): a_l = e_T B_l with fixed Gaussian B_l."""
from __future__ import annotations

import math

from .base import FeedbackRule, UnsupportedArchError, error_signal, register_method, state_shapes


@register_method("dfa")
class DFA(FeedbackRule):
    """Each hidden state h_l gets a_l = e_T B_l / B, with B_l ~ N(0, 1) of shape (classes, numel(h_l)).

    The matrices are drawn from ``seed`` when the rule is built (right after the
    model) and saved with every checkpoint. Defined on every architecture: a
    state of any shape is flattened, and the credit takes the state's shape.
    """

    feedback_std = 1.0

    def __init__(self, model, **common) -> None:
        super().__init__(model, **common)
        self.shapes = state_shapes(model)
        self.num_classes = model.out_head.out_features
        self._init_feedback()

    def feedback_shapes(self):
        return [(self.num_classes, math.prod(s)) for s in self.shapes]

    def credit_from(self, feedback, states, logits, y, top_grad):
        return direct_feedback(feedback, self.shapes, logits, y)


def direct_feedback(feedback, shapes, logits, y):
    """DFA's credit a_l = e_T B_l / B for states of per-sample ``shapes`` (also Credit Bridge's warm-up)."""
    e = error_signal(logits, y) / len(y)
    return [(e @ B).view(len(y), *s) for B, s in zip(feedback, shapes)]


@register_method("dfa_input_credit")
class DFAInputCredit(DFA):
    """DFA with the other credit pairing: block l trains on the credit of its *input* state,
    a_l = e B_l, instead of its output's a_{l+1} (the embedding keeps a_0).

    A probe of the discrepancies appendix: which pairing gives the paper's per-layer
    pattern of early Gamma. Gamma is read as for DFA (a_l at h_l against the BP gradient
    there); only which block each a_l trains differs. Needs states of equal shape.
    """

    def check_model(self, model):
        if not model.equal_width:
            raise UnsupportedArchError(f"dfa_input_credit pairs block l with the credit of its input state, "
                                       f"which needs states of one shape; arch {model.arch!r} changes shape")

    def training_credit(self, credit):
        return [credit[0], *credit[:-1]]
