"""A model of your own as a faeval layered model, so that every rule trains it.

``FAProtocol(net, x, y, layers=[...])`` judges any ``nn.Module``; to *train* one with
``dfa``, ``fa``, ``ep`` or a bridge, name its parts and :func:`layered` presents it as
a :class:`~faeval.models.LayeredModel` (``embed``, ``blocks``, readout), sharing the
module's parameters: training the adapter trains your module.

>>> import torch, torch.nn as nn, faeval
>>> class Res(nn.Module):                        # a block that adds its own skip, as most code does
...     def __init__(self, d):
...         super().__init__()
...         self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
...     def forward(self, h):
...         return h + self.mlp(h)
>>> class Net(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.stem, self.res1, self.res2 = nn.Linear(8, 16), Res(16), Res(16)
...         self.norm, self.head = nn.LayerNorm(16), nn.Linear(16, 3)
...     def forward(self, x):
...         return self.head(self.norm(self.res2(self.res1(self.stem(x)))))
>>> net = Net()
>>> model = faeval.layered(net, embed="stem", blocks=["res1", "res2"], readout=["norm", "head"], input_shape=(8,))
>>> rule = faeval.build_method("dfa", model, seed=0)
>>> [tuple(a.shape) for a in rule.credit(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))]
[(4, 16), (4, 16), (4, 16)]

What the parts mean:

* ``embed``: the module (or modules, in order) from the input to h_0;
* ``blocks``: one module per block, h_l to h_{l+1}. With ``residual=True`` (the default)
  each block either adds its own skip, ``h + f(h)`` (``skip="block"``; the rules read the
  branch as f_l(h) = block(h) - h), or is the branch alone and the module's forward adds
  the skip (``skip="model"``). Left out, both are tried and the one that reproduces the
  module's forward is used (``model.skip`` says which);
* ``readout``: the modules from h_L to the logits, the last an ``nn.Linear`` (its
  ``out_features`` are the classes); the ones before it play the terminal LayerNorm;
* ``pool``: a function the forward applies to h_L before the readout modules
  (e.g. ``lambda h: h[:, 0]`` for a cls token), if any.

The constructor checks on a batch that these parts compose into the module's own
forward (same logits), and refuses the model with the difference and the fix when they
do not (under either skip convention, when ``skip`` is left out). For the run store,
register a subclass whose constructor builds your module (``@faeval.register_arch``; see
:class:`Layered`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from .models import LayeredModel
from .tap import submodules

__all__ = ["layered", "Layered"]


class _Mismatch(Exception):
    """The parts do not reproduce the module's forward (the reason; the constructor words the error)."""


class _Branch(nn.Module):
    """f(h) = block(h) - h: the residual branch of a block that adds its own skip."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, h):
        return self.block(h) - h


class Layered(LayeredModel):
    """A user's ``nn.Module`` presented as a layered model (see :func:`layered` and the module's docs).

    To key runs in the store, register a subclass whose constructor takes ``(input_shape,
    num_classes, **options)`` and builds your module; its options become run-config keys:

    >>> import torch.nn as nn, faeval
    >>> @faeval.register_arch("plain_mlp")
    ... class PlainMLP(faeval.Layered):
    ...     def __init__(self, input_shape, num_classes, width=16):
    ...         net = nn.Sequential(nn.Linear(input_shape[0], width), nn.Tanh(), nn.Linear(width, width),
    ...                             nn.Linear(width, num_classes))
    ...         super().__init__(net, embed=["0", "1"], blocks=["2"], readout="3", input_shape=input_shape,
    ...                          residual=False)
    >>> model = faeval.build_model("plain_mlp", (8,), 3, seed=0, width=32)
    >>> model.arch, model.depth, model.residual, PlainMLP.options()
    ('plain_mlp', 1, False, {'width': 16})
    >>> del faeval.ARCHS["plain_mlp"]
    """

    arch = "layered"
    groupable = False

    def __init__(self, module: nn.Module, *, embed: str | Sequence[str], blocks: Sequence[str],
                 readout: str | Sequence[str], input_shape: Sequence[int], residual: bool = True,
                 skip: str | None = None, pool: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"layered() adapts an nn.Module; got {type(module).__name__}")
        if skip not in ("block", "model", None):
            raise ValueError(f"skip={skip!r}: must be 'block' (each block returns h + f(h)) or 'model' (each "
                             "block returns f(h) and the module's forward adds h)")
        if isinstance(blocks, str) or not blocks:
            raise ValueError("blocks= names the block modules in order, e.g. blocks=['res1', 'res2']")
        parts = _resolve(module, {"embed": embed, "blocks": blocks, "readout": readout})
        self.embed = parts["embed"][0] if len(parts["embed"]) == 1 else nn.Sequential(*parts["embed"])
        self.residual = bool(residual)
        *ln, head = parts["readout"]
        if not isinstance(getattr(head, "out_features", None), int):
            raise TypeError(f"the last readout module, {_names(readout)[-1]!r}, is a {type(head).__name__}; it must "
                            "be the classifier (an nn.Linear, whose out_features are the classes)")
        self.out_ln = (ln[0] if len(ln) == 1 else nn.Sequential(*ln)) if ln else None
        self.out_head = head
        self._pool = pool
        self.input_shape = tuple(int(s) for s in input_shape)
        if type(self).arch == "layered":          # not a registered subclass: say whose model it is
            self.arch = f"layered({type(module).__name__})"
        tried = {}
        for convention in ([skip] if skip or not self.residual else ["block", "model"]):
            self.skip = convention
            self._skip_in_block = self.residual and self.skip == "block"
            self.blocks = nn.ModuleList(_Branch(b) if self._skip_in_block else b for b in parts["blocks"])
            try:
                shapes = self._check_against(module)
                break
            except _Mismatch as e:
                tried[self.skip] = str(e)
        else:
            what = "; ".join(f"with skip={k!r}, {v}" if len(tried) > 1 else v for k, v in tried.items())
            raise ValueError(self._mismatch(module, what)) from None
        self.equal_width = len(set(shapes)) == 1

    def block_forward(self, l: int, h: torch.Tensor) -> torch.Tensor:
        if self._skip_in_block:       # the module's own block: h_{l+1} exactly as its forward computes it
            return self.blocks[l].block(h)
        return super().block_forward(l, h)

    def reduce_readout(self, h: torch.Tensor) -> torch.Tensor:
        return h if self._pool is None else self._pool(h)

    def _check_against(self, module: nn.Module) -> list[tuple[int, ...]]:
        """Compose the parts on a batch and compare with ``module``'s own logits; the state shapes."""
        p = next(module.parameters(), None)
        g = torch.Generator().manual_seed(0)        # a fixed probe batch, not one of the run's random streams
        x = torch.randn((4, *self.input_shape), generator=g).to(device=p.device if p is not None else "cpu",
                                                                   dtype=p.dtype if p is not None else None)
        was = module.training
        module.eval()
        try:
            with torch.no_grad():
                try:
                    want = module(x)
                except RuntimeError as e:
                    raise ValueError(f"layered({type(module).__name__}): the module's own forward cannot take samples "
                                     f"of input_shape={self.input_shape} ({str(e).splitlines()[0]}); pass the shape "
                                     "of one sample of your data") from None
                try:
                    hs, got = self.states(x)
                except RuntimeError as e:
                    raise _Mismatch(f"running the parts failed: {str(e).splitlines()[0]}") from None
        finally:
            module.train(was)
        if not torch.is_tensor(want) or want.shape != got.shape:
            shape = tuple(want.shape) if torch.is_tensor(want) else type(want).__name__
            raise _Mismatch(f"the parts give logits of shape {tuple(got.shape)}, the module's forward {shape}")
        diff = (got - want).abs().max().item()
        if not diff <= 1e-5 * (1 + want.abs().max().item()):
            raise _Mismatch(f"their logits differ from the module's own by up to {diff:.3g}")
        return [tuple(h.shape[1:]) for h in hs]

    def _mismatch(self, module: nn.Module, what: str) -> str:
        return (f"layered({type(module).__name__}): embed -> blocks -> readout does not reproduce the module's "
                f"forward ({what}). Check the order of blocks=, whether each block adds its own skip "
                "(skip='block') or the forward adds it (skip='model', or residual=False for no skip), and "
                "whether the forward does something between h_L and the readout modules (pass pool=)")


def layered(module: nn.Module, *, embed: str | Sequence[str], blocks: Sequence[str], readout: str | Sequence[str],
            input_shape: Sequence[int], residual: bool = True, skip: str | None = None,
            pool: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Layered:
    """``module`` as a layered model whose parts are its sub-modules of the given names (see :mod:`faeval.adapt`).

    ``input_shape`` is one sample's shape. ``skip`` left out: the skip convention that
    reproduces the forward (``model.skip``). Raises ``ValueError`` when a name is not a
    sub-module (listing the names there are) or the parts do not compose into the module's
    own forward on a batch.
    """
    return Layered(module, embed=embed, blocks=blocks, readout=readout, input_shape=input_shape,
                   residual=residual, skip=skip, pool=pool)


def _names(spec: str | Sequence[str]) -> list[str]:
    return [spec] if isinstance(spec, str) else list(spec)


def _resolve(module: nn.Module, specs: dict[str, str | Sequence[str]]) -> dict[str, list[nn.Module]]:
    """Each part's sub-modules of ``module`` (an unknown name raises, listing the names there are)."""
    names = {part: _names(spec) for part, spec in specs.items()}
    for part, ns in names.items():
        if not ns:
            raise ValueError(f"{part}= names no module")
    found = iter(submodules(module, [n for ns in names.values() for n in ns], root_ok=False))
    return {part: [next(found) for _ in ns] for part, ns in names.items()}
