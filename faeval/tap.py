"""Reading a model: its hidden states h_0..h_L and the loss from each of them (:class:`Tap`).

A faeval layered model is read directly; a model with the original artifact's contract
(``blocks``, ``out_head``, ``forward(x, return_hidden=True)``) through that contract, after a
check; any other ``nn.Module`` through forward hooks on the sub-modules named by ``layers=[...]``.
The diagnostics (:mod:`faeval.diagnostics`), the snapshot (:mod:`faeval.snapshot`) and the
protocol read every model through a Tap; :func:`check_xy` and :func:`check_against_model` refuse
an eval set that does not fit it.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Sequence

import torch
import torch.nn as nn

from .models import reduce_state

__all__ = ["Tap", "submodules", "check_xy", "check_against_model", "eval_mode", "float64_tap"]


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


class _ReturnHiddenModel:
    """Adapter for the original artifact's model contract (reference quick-start).

    A model with ``.blocks`` (ModuleList whose blocks return the residual branch),
    ``.out_head``, optional ``.out_ln``, and ``forward(x, return_hidden=True) ->
    (logits, [h_0..h_L])``. The rest of the forward pass from h_l is rebuilt as
    ``h + block(h)`` (``h = block(h)`` when ``residual_add`` is False) followed by
    ``out_head(out_ln(h))``; :meth:`check` verifies that this reproduces the
    model's own logits before any number is reported.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.residual = bool(getattr(model, "residual_add", getattr(model, "residual", True)))

    def states(self, x):
        logits, hs = self.model(x, return_hidden=True)
        return list(hs), logits

    def run_from(self, l: int, h: torch.Tensor) -> torch.Tensor:
        for blk in list(self.model.blocks)[l:]:
            h = h + blk(h) if self.residual else blk(h)
        ln = getattr(self.model, "out_ln", None)
        return self.model.out_head(ln(h) if ln is not None else h)

    def check(self, x: torch.Tensor) -> None:
        with eval_mode(self.model), torch.no_grad():
            hs, logits = self.states(x[:8])
            if len(hs) != len(self.model.blocks) + 1:
                raise TypeError(f"forward(x, return_hidden=True) returned {len(hs)} hidden states for "
                                f"{len(self.model.blocks)} blocks; expected h_0..h_L. Pass layers=[...] instead.")
            again = self.run_from(0, hs[0])
        if not torch.allclose(again, logits, rtol=1e-4, atol=1e-5 * (1 + logits.abs().max().item())):
            raise TypeError(
                "this model's forward is not h_{l+1} = h_l + blocks[l](h_l) followed by out_head(out_ln(h_L)), "
                "so the protocol cannot re-run it from a hidden state. Pass layers=[names of the sub-modules "
                "whose outputs are the hidden states] instead.")


class Tap:
    """Uniform access to a model's hidden states h_0..h_L and to the loss from each of them.

    * A faeval layered model (``embed``, ``blocks``, ``readout``; see
      :mod:`faeval.models`) is read directly.
    * A model with the original artifact's contract (``blocks``, ``out_head``,
      optional ``out_ln``, ``forward(x, return_hidden=True)``) is read through its
      hidden list, after a check that re-running it from h_0 gives its logits.
    * With ``layers=[module names]`` any ``nn.Module`` works: the hidden states are
      those modules' outputs (in the order given), captured by forward hooks.

    ``token`` and ``spatial`` say how a 3-D (transformer) or 4-D (conv) state is
    read as a (B, d) vector for norms: the cls token and channel means by default.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None,
                 token: str = "cls", spatial: str = "mean") -> None:
        self.model = model
        self.token, self.spatial = token, spatial
        self.modules = None
        self.layered = model
        if layers is None:
            if not all(hasattr(model, a) for a in ("embed", "blocks", "readout")):
                if hasattr(model, "blocks") and hasattr(model, "out_head") and _accepts_return_hidden(model):
                    self.layered = _ReturnHiddenModel(model)
                else:
                    missing = [a for a in ("embed", "blocks", "readout") if not hasattr(model, a)]
                    raise TypeError(
                        f"{type(model).__name__} lacks the layered interface ({', '.join(missing)} missing) and the "
                        "blocks/out_head/forward(x, return_hidden=True) contract. Pass layers=[names of the "
                        f"sub-modules whose outputs are the hidden states], e.g. layers={_example_layers(model)!r}.")
            n = len(model.blocks) + 1
        else:
            if len(layers) < 1:
                raise ValueError("layers= must name at least one sub-module")
            self.modules = submodules(model, layers)
            n = len(layers)
        self.layer_names = list(layers) if layers is not None else [f"h{l}" for l in range(n)]
        self._checked = not isinstance(self.layered, _ReturnHiddenModel)

    @property
    def n_layers(self) -> int:
        return len(self.layer_names)

    def reduce(self, h: torch.Tensor) -> torch.Tensor:
        """The (B, d) vector that norms and stability read from a state or a gradient."""
        return reduce_state(h, token=self.token, spatial=self.spatial)

    def states(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Hidden states (full tensors, in the autograd graph when grad is on) and logits."""
        if self.modules is None:
            if not self._checked:
                self.layered.check(x)
                self._checked = True
            return self.layered.states(x)
        captured: dict[int, torch.Tensor] = {}

        def make_hook(i):
            def hook(_mod, _inp, out):
                if i in captured:
                    raise RuntimeError(f"layer {self.layer_names[i]!r} ran twice in one forward pass; "
                                       "tap a module that is called once")
                captured[i] = out
            return hook

        handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(self.modules)]
        try:
            logits = self.model(x)
        finally:
            for h in handles:
                h.remove()
        return [captured[i] for i in range(self.n_layers)], logits

    def logits_with_delta(self, x: torch.Tensor, l: int, hs: list[torch.Tensor] | None,
                          delta: torch.Tensor) -> torch.Tensor:
        """Logits when hidden state l is replaced by h_l + delta (everything downstream recomputed)."""
        if self.modules is None:
            return self.layered.run_from(l, hs[l] + delta)
        handle = self.modules[l].register_forward_hook(lambda _m, _i, out: out + delta)
        try:
            return self.model(x)
        finally:
            handle.remove()


def submodules(model: nn.Module, names: Sequence[str], *, root_ok: bool = True) -> list[nn.Module]:
    """The sub-modules of ``model`` with these (dotted) names, in order; an unknown name raises, listing the
    names there are (``root_ok=False`` also refuses ``""``, the model itself)."""
    named = dict(model.named_modules())
    unknown = [n for n in names if n not in named or (not n and not root_ok)]
    if unknown:
        valid = ", ".join(repr(n) for n in named if n)
        raise ValueError(f"no sub-module named {', '.join(map(repr, unknown))} in {type(model).__name__}; its "
                         f"module names are: {valid}")
    return [named[n] for n in names]


def _accepts_return_hidden(model: nn.Module) -> bool:
    try:
        return "return_hidden" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def float64_tap(tap: Tap) -> Tap:
    """A Tap over a float64 copy of the model (for finite differences of the loss)."""
    model = copy.deepcopy(tap.model).double()
    layers = None if tap.modules is None else tap.layer_names
    return Tap(model, layers=layers, token=tap.token, spatial=tap.spatial)


def _example_layers(model: nn.Module) -> list[str]:
    names = [n for n, m in model.named_children()]
    return names[:-1] if len(names) > 1 else names


def check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ``ValueError`` for an empty eval set, one whose inputs and labels differ in length, one
    with a non-finite input (the diagnostics would blame the model for it) or non-integer labels."""
    if len(x) == 0:
        raise ValueError("the eval set is empty: pass at least one sample")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}: they must match")
    if x.is_floating_point():
        bad = ~torch.isfinite(x.flatten(1)).all(dim=1)
        if bad.any():
            idx = bad.nonzero().flatten()
            raise ValueError(f"x holds non-finite values (NaN or inf) in {len(idx)} of {len(x)} samples (first: "
                             f"sample {int(idx[0])}): the diagnostics would report the data's fault as the "
                             f"model's; clean or drop those samples")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"y has dtype {y.dtype}: pass class indices as integers (e.g. y.long())")


def check_against_model(tap: Tap, x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ``ValueError`` when ``x``'s samples do not fit the model or ``y`` holds labels outside its
    classes (one forward pass of the first sample)."""
    try:
        with eval_mode(tap.model), torch.no_grad():
            _, logits = tap.states(x[:1])
    except RuntimeError as e:
        want = getattr(tap.model, "input_shape", None)
        hint = f"the model was built for samples of shape {tuple(want)}" if want else "check the model's input"
        raise ValueError(f"x's samples have shape {tuple(x.shape[1:])}, which the model cannot take ({hint}; "
                         f"the forward pass said: {str(e).splitlines()[0]})") from None
    classes = logits.shape[-1]
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= classes:
        raise ValueError(f"y holds labels from {lo} to {hi}, outside the model's {classes} classes: labels "
                         f"must be class indices in [0, {classes})")
