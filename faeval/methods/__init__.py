"""Learning rules: one small file per rule, and a registry.

``build_method(name, model, **hparams)`` builds a rule by name;
``@register_method(name)`` adds one (also from a notebook cell). See
:mod:`faeval.methods.base` for the interface and the shared conventions.

Where each rule is defined:

========================  =============================================
``bp``, ``frozen``        every architecture
``dfa``, ``ep``           every architecture
``ep64``                  every architecture without batch norm (EP, phases in float64)
``fa``                    architectures with equal-width states (resmlp, studentnet, vit)
``state_bridge``          every architecture
``credit_bridge``         every architecture
``drtp``                  every architecture
``fa_layer``, ``usf``,    every architecture whose weight layers are nn.Linear / nn.Conv2d
``frsf``, ``brsf``,       (the layer-wise family, :mod:`faeval.methods.layerwise`: the
``kp``, ``wm``            backward of each such layer replaced)
========================  =============================================

``penalty`` needs a residual model (it penalises the residual branch).
"""
from . import bp, brsf, credit_bridge, dfa, drtp, ep, ep64, fa, fa_layer, frsf, kp, state_bridge, usf, wm  # noqa: F401
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
from .layerwise import LayerwiseRule

#: the rules ``import faeval`` registers, as it registers them: a fresh worker process has these, and
#: :func:`faeval.schedule.ship` sends it any other a run needs
PACKAGE_METHODS: dict[str, type[Method]] = dict(METHODS)

__all__ = ["METHODS", "Method", "LocalRule", "FeedbackRule", "UnsupportedArchError", "build_method",
           "method_class", "method_hparams", "register_method", "BridgeNet", "LayerwiseRule", "PACKAGE_METHODS"]
