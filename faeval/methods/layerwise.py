"""Layer-wise feedback: the forward kept, each Linear/Conv2d layer's backward matrix replaced (BioTorch's family).

A :class:`LayerwiseRule` is BP with one change: the gradient a ``nn.Linear`` or ``nn.Conv2d`` layer
sends back to its *input* goes through a matrix B of the weight's shape instead of W itself (for a
convolution, the input-gradient convolution with kernel B). Everything else stays exact: the
weight's own gradient (delta x^T), the bias's, and every LayerNorm, BatchNorm, activation, pooling
and residual addition. A subclass says only how its B is made (:meth:`LayerwiseRule.draw`, once,
and :meth:`LayerwiseRule.backward_matrix`, at every forward) and, for rules whose B learns, how it
moves after each step (``after_step``).

The replacement is scoped: :meth:`LayerwiseRule.replaced_backward` hooks every such layer for the
duration of one forward (a pre-hook detaches the layer's input; a forward hook re-attaches it
through B) and removes the hooks on exit, so the model itself is never changed and the BP
reference, which differentiates the same model, sees the exact backward. Its Gamma is what reaches
each hidden state h_l through the replaced backward, against BP's gradient there.

Scale conventions (``convention=``), where the rules' papers and BioTorch differ:

* ``"matched"`` (default): B's random entries are Gaussian with the standard deviation of the
  layer's own weights when the rule is built (at initialisation), and uSF's scale is that same
  standard deviation (Xiao et al. 2018 scale sign feedback by the initialisation's spread);
* ``"biotorch"``: BioTorch's configs: random entries Xavier-uniform, uSF's scale the Xavier standard
  deviation sqrt(2 / (fan_in + fan_out)).

The book's assumptions page ("Layer-wise rules") lists these choices.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

from ..diagnostics import bp_grads
from ..seeds import generator
from .base import UnsupportedArchError, check_range, load_tensors
from .bp import BP

__all__ = ["LayerwiseRule", "feedback_layers", "matrix_angle", "CONVENTIONS"]

CONVENTIONS = ("matched", "biotorch")
#: layers with weights whose backward a layer-wise rule cannot replace: a model holding one is refused
_UNHANDLED = (nn.Conv1d, nn.Conv3d, nn.modules.conv._ConvTransposeNd, nn.MultiheadAttention, nn.Bilinear,
              nn.RNNBase)


def feedback_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ``nn.Linear`` and ``nn.Conv2d`` of ``model``, in module order.

    A model with a weight layer whose backward cannot be replaced here (Conv1d/3d, transposed
    convolutions, ``nn.MultiheadAttention``'s fused projections, recurrent layers) is refused: its
    backward would silently stay exact.
    """
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, _UNHANDLED):
            raise UnsupportedArchError(
                f"layer {name!r} ({type(mod).__name__}): layer-wise rules replace the backward of nn.Linear and "
                "nn.Conv2d only, and this layer's would stay exact; build the model from Linear/Conv2d layers")
        if isinstance(mod, nn.Conv2d) and (mod.padding_mode != "zeros" or isinstance(mod.padding, str)):
            raise UnsupportedArchError(f"layer {name!r}: a Conv2d with padding {mod.padding!r} and padding_mode "
                                       f"{mod.padding_mode!r}; layer-wise rules need integer zero padding")
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            out.append((name, mod))
    if not out:
        raise UnsupportedArchError("the model has no nn.Linear or nn.Conv2d layer whose backward a layer-wise rule "
                                   "could replace")
    return out


def matrix_angle(B: torch.Tensor, W: torch.Tensor) -> float:
    """The angle in degrees between B and W, both flattened (BioTorch's alignment metric): 0 means B is W's
    direction, 90 orthogonal. B stands where W^T stands in the backward pass, so this is the angle
    between B^T and W^T."""
    b, w = B.detach().flatten().double(), W.detach().flatten().double()
    c = (b @ w) / (b.norm() * w.norm()).clamp_min(1e-300)
    return math.degrees(math.acos(float(c.clamp(-1.0, 1.0))))


class _SendBack(torch.autograd.Function):
    """Identity on a layer's output ``out`` (computed from the detached input); its backward passes the
    gradient on to ``out`` (so W and b get their exact gradients) and sends it to the input ``x``
    through ``B``: ``g @ B`` for a linear layer, the input-gradient convolution with kernel B for a
    convolution (``conv``: its stride, padding, dilation and groups)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, out, B, conv):
        return out.view_as(out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _, B, conv = inputs
        ctx.save_for_backward(B)
        ctx.x_shape, ctx.conv = x.shape, conv

    @staticmethod
    def backward(ctx, g):
        (B,) = ctx.saved_tensors
        gx = None
        if ctx.needs_input_grad[0]:
            if ctx.conv is None:
                gx = (g @ B).reshape(ctx.x_shape)
            else:
                gx = torch.nn.grad.conv2d_input(ctx.x_shape, B, g, *ctx.conv)
        return gx, g, None, None


def _conv_args(mod: nn.Module):
    return (mod.stride, mod.padding, mod.dilation, mod.groups) if isinstance(mod, nn.Conv2d) else None


class LayerwiseRule(BP):
    """BP with every Linear/Conv2d layer's backward matrix replaced by B (the module's docs).

    A subclass overrides :meth:`draw` (the stored matrix per layer, drawn once from the run's
    ``"feedback"`` stream) and/or :meth:`backward_matrix` (B from the layer's current weight and its
    stored matrix; default: the stored matrix). The stored matrices are the rule's auxiliary state,
    saved with every checkpoint. Trains like BP otherwise (``head_lr``, ``trainable_blocks``,
    ``penalty``: the penalty's gradient also goes back through B).
    """

    ungroupable = None
    #: the names of the rule's own random streams (``torch.Generator`` attributes), saved with every checkpoint
    streams: tuple[str, ...] = ()
    relative_cost = 1.2       # benchmarks/step_cost.py, 2026-12-07: fa_layer 1.16, usf 1.26, frsf 1.20, kp 1.27
    feedback: list[torch.Tensor] | None = None

    def __init__(self, model, *, convention: str = "matched", **common) -> None:
        super().__init__(model, **common)
        check_range("convention", convention, convention in CONVENTIONS, f"one of {CONVENTIONS}")
        self.convention = convention
        self.layers = feedback_layers(model)
        self.feedback = self.draw_feedback(generator(self.seed, "feedback")) if self.init_aux else None

    # -- what a rule says ------------------------------------------------------------
    def draw(self, W: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The stored matrix of the layer whose weight is ``W`` (default: :meth:`random_like`)."""
        return self.random_like(W, gen)

    def backward_matrix(self, i: int, W: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """B of layer ``i`` from its current weight ``W`` and stored matrix ``R`` (default: ``R`` itself)."""
        return R

    # -- the conventions -------------------------------------------------------------
    def scale(self, W: torch.Tensor) -> float:
        """The standard deviation a random B of this layer has: W's own (``matched``) or Xavier's (``biotorch``)."""
        if self.convention == "biotorch":
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(W)
            return math.sqrt(2.0 / (fan_in + fan_out))
        return float(W.detach().float().std())

    def random_like(self, W: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A random matrix of W's shape with :meth:`scale`'s spread, drawn on the CPU from ``gen``: Gaussian
        (``matched``) or Xavier-uniform (``biotorch``, bound sqrt(3) times the scale)."""
        s = self.scale(W)
        if self.convention == "biotorch":
            R = torch.empty(W.shape).uniform_(-math.sqrt(3.0) * s, math.sqrt(3.0) * s, generator=gen)
        else:
            R = torch.randn(W.shape, generator=gen) * s
        return R.to(device=W.device, dtype=W.dtype)

    def draw_feedback(self, gen: torch.Generator) -> list[torch.Tensor]:
        """Every layer's stored matrix, drawn from ``gen`` in module order."""
        return [self.draw(mod.weight.detach(), gen) for _, mod in self.layers]

    # -- the replaced backward -------------------------------------------------------
    def refresh(self) -> None:
        """Called before every forward in :meth:`replaced_backward` (a rule that redraws its matrices does it here)."""

    def backward_matrices(self) -> list[torch.Tensor]:
        """Every layer's B now, from the layers' current weights and the stored matrices (no redraw)."""
        stored = self._need("feedback", "feedback matrices")
        return [self.backward_matrix(i, mod.weight.detach(), R).detach()
                for i, ((_, mod), R) in enumerate(zip(self.layers, stored))]

    @contextlib.contextmanager
    def replaced_backward(self):
        """Within this block, a forward of the model sends each layer's input gradient through its B."""
        handles, inputs = [], {}

        def pre(mod, args):
            x = args[0]
            if not (torch.is_tensor(x) and torch.is_grad_enabled()):
                return None               # no backward to replace (x.requires_grad reads False under vmap)
            inputs[id(mod)] = x
            return (x.detach(), *args[1:])

        def post(mod, args, out, B):
            x = inputs.pop(id(mod), None)
            return None if x is None else _SendBack.apply(x, out, B, _conv_args(mod))

        self.refresh()
        try:
            for (_, mod), B in zip(self.layers, self.backward_matrices()):
                handles.append(mod.register_forward_pre_hook(pre))
                handles.append(mod.register_forward_hook(lambda m, a, o, B=B: post(m, a, o, B)))
            yield
        finally:
            for h in handles:
                h.remove()

    def loss(self, x, y):
        with self.replaced_backward():
            return super().loss(x, y)

    def credit(self, x, y):
        """What reaches each hidden state h_l through the replaced backward (mean-loss scale)."""
        with self.replaced_backward():
            return bp_grads(self.model, x, y)[1]

    # -- reported --------------------------------------------------------------------
    def epoch_stats(self) -> dict[str, float]:
        """``angle/<layer>``: the angle in degrees between each layer's B and its W (:func:`matrix_angle`)."""
        return {f"angle/{name}": matrix_angle(B, mod.weight)
                for (name, mod), B in zip(self.layers, self.backward_matrices())}

    # -- auxiliary state -------------------------------------------------------------
    def group_state(self):
        return {**super().group_state(), "feedback": self._need("feedback", "feedback matrices")}

    def aux_state(self):
        return {"feedback": [R.detach().cpu() for R in self._need("feedback", "feedback matrices")],
                **{name: getattr(self, name).get_state() for name in self.streams}}

    def load_aux_state(self, state):
        self.feedback = load_tensors(self, state, "feedback", [tuple(m.weight.shape) for _, m in self.layers],
                                     "feedback matrices")
        for name in self.streams:
            if name in state:
                getattr(self, name).set_state(state[name])
