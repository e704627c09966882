"""Feedback alignment (Lillicrap et al. 2016): a_l = B_l a_{l+1} with fixed d x d Gaussian B_l / sqrt(d)."""
from __future__ import annotations

from .base import FeedbackRule, UnsupportedArchError, register_method, state_shapes


@register_method("fa")
class FA(FeedbackRule):
    """Sequential random feedback. The credit at h_L is the true gradient through out_ln and
    out_head; below it a_l = B_l a_{l+1} (per token for a transformer), B_l ~ N(0, 1/d).

    Needs every hidden state to have the same shape (an architecture whose class sets
    ``equal_width = True``: ResMLP, StudentNet, ViT-Mini); the CNN's stages change
    shape, so FA is not defined there (use DFA).
    """

    needs_top_grad = True

    def __init__(self, model, **common) -> None:
        super().__init__(model, **common)
        self.width = state_shapes(model)[0][-1]
        self.feedback_std = self.width ** -0.5
        self._init_feedback()

    def check_model(self, model):
        if not model.equal_width:
            raise UnsupportedArchError(
                f"method {self.name!r} is not defined on arch {model.arch!r} (its hidden states are not vectors of "
                "one width: they change shape between stages, or are feature maps, so there is no d x d feedback "
                "chain); it needs an architecture with equal_width = True (use dfa instead)")

    def feedback_shapes(self):
        return [(self.width, self.width)] * self.model.depth

    def credit_from(self, feedback, states, logits, y, top_grad):
        credit = [top_grad]
        for B in reversed(feedback):     # a_l = B_l a_{l+1} for column vectors, i.e. rows times B_l^T
            credit.append(credit[-1] @ B.T)
        return credit[::-1]
