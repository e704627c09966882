"""Direct feedback alignment (Nokland 2016): a_l = e_T B_l with fixed Gaussian B_l."""
from __future__ import annotations

import math

from .base import FeedbackRule, error_signal, register_method, state_shapes


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

