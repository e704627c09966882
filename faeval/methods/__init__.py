"""Learning rules: one small file per rule, and a registry.

``build_method(name, model, **hparams)`` builds a rule by name;
``@register_method(name)`` adds one (also from a notebook cell). See
:mod:`faeval.methods.base` for the interface and the shared conventions.

Where each rule is defined:

========================  =============================================
``bp``, ``frozen``        every architecture
``dfa``, ``ep``           every architecture
``fa``                    architectures with equal-width states (resmlp, studentnet, vit)
``state_bridge``          every architecture
``credit_bridge``         every architecture
========================  =============================================

``penalty`` needs a residual model (it penalises the residual branch).
"""
from . import bp, credit_bridge, dfa, ep, fa, state_bridge  # noqa: F401  (registers the rules)
from .base import (
                   METHODS,
                   FeedbackRule,
                   LocalRule,
                   Method,
                   UnsupportedArchError,
                   build_method,
                   method_class,
                   method_hparams,
                   register_method,
)
from .bridges import BridgeNet

#: the rules ``import faeval`` registers, as it registers them: a fresh worker process has these, and
#: :func:`faeval.schedule.ship` sends it any other a run needs
PACKAGE_METHODS: dict[str, type[Method]] = dict(METHODS)

__all__ = ["METHODS", "Method", "LocalRule", "FeedbackRule", "UnsupportedArchError", "build_method",
           "method_class", "method_hparams", "register_method", "BridgeNet", "PACKAGE_METHODS"]
