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

    def __init__(self, model, *, seed: int = 0, penalty: float = 0.0, trainable_blocks: int | None = None,
                 init_aux: bool = True) -> None:
        super().__init__(model, seed=seed, penalty=penalty, trainable_blocks=trainable_blocks, init_aux=init_aux)
        self.shapes = state_shapes(model)
        self.num_classes = model.out_head.out_features
        self._init_feedback()

    def feedback_shapes(self):
        return [(self.num_classes, math.prod(s)) for s in self.shapes]

    def credit_from(self, feedback, states, logits, y, top_grad):
        e = error_signal(logits, y) / len(y)
        return [(e @ B).view(len(y), *s) for B, s in zip(feedback, self.shapes)]
