"""Architectures behind one layered interface.

Every model exposes the same skeleton so that every learning rule and every
diagnostic works on every architecture:

* ``model.embed(x) -> h0``
* ``model.blocks``: an ``nn.ModuleList``; block ``l`` maps ``h_l`` to ``h_{l+1}``.
  For residual models the block returns only the branch ``f_l(h_l)`` and the
  model adds the skip (``h_{l+1} = h_l + f_l(h_l)``); ``model.residual`` says which.
* ``model.readout(h_L) -> logits``: terminal LayerNorm ``out_ln`` (``None`` when
  absent) then ``out_head``.
* ``model.states(x) -> (hs, logits)`` with ``hs = [h0, ..., hL]``.
* ``model.run_from(l, h_l) -> logits``: the rest of the forward pass from layer ``l``.
* ``model.reduce_state(h) -> (B, d)``: the vector the diagnostics read from a
  state (the cls token of a transformer, channel means of a 4-D feature map).

Architectures live in one registry, :data:`ARCHS`. ``@register_arch(name)`` adds a
:class:`LayeredModel` subclass (also from a notebook cell); its constructor takes
``(input_shape, num_classes, **options)``, and what the rest of faeval asks of it is
declared on the class: ``residual``, ``equal_width`` (every state has one shape, as
FA's d x d feedback chain needs), ``groupable`` (runs may train as one vectorised
group), :meth:`LayeredModel.options` (the keyword options and their defaults, which
the run store keys) and :meth:`LayeredModel.step_cost`.

>>> model = build_model("resmlp", (1, 28, 28), 10, seed=0, width=32, depth=2)
>>> hs, logits = model.states(torch.zeros(3, 1, 28, 28))
>>> [tuple(h.shape) for h in hs], tuple(logits.shape)
([(3, 32), (3, 32), (3, 32)], (3, 10))
>>> ARCHS["resmlp"] is ResMLP, arch_class("vit").options()["width"]
(True, 128)
"""
from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .names import check_known
from .seeds import seeded
from .usercode import warn_if_changed

__all__ = [
    "ARCHS", "LayeredModel", "ResMLP", "ViTMini", "SmallCNN", "StudentNet",
    "ResidualBlock", "PhiAlpha", "build_model", "reduce_state", "register_arch", "arch_class",
]


def reduce_state(h: torch.Tensor, token: str = "cls", spatial: str = "mean") -> torch.Tensor:
    """Turn one hidden state into a (B, d) matrix for the diagnostics.

    3-D states (B, tokens, d) use the first (cls) token (``token="cls"``) or the
    token mean (``token="mean"``); 4-D states (B, C, H, W) are averaged over
    space (``spatial="mean"``) or flattened (``spatial="flatten"``).
    """
    if h.dim() == 2:
        return h
    if h.dim() == 3:
        if token == "cls":
            return h[:, 0]
        if token == "mean":
            return h.mean(dim=1)
        raise ValueError(f"token={token!r}: valid values are 'cls', 'mean'")
    if h.dim() == 4:
        if spatial == "mean":
            return h.mean(dim=(2, 3))
        if spatial == "flatten":
            return h.flatten(1)
        raise ValueError(f"spatial={spatial!r}: valid values are 'mean', 'flatten'")
    return h.flatten(1)


class LayeredModel(nn.Module):
    """Base class: embed -> blocks -> readout, with the hidden states exposed.

    A subclass declares what the rest of faeval asks of it as the class attributes
    below (an instance may override one where an option changes it, as ResMLP's
    ``residual=False`` does) and the class methods :meth:`options` and :meth:`step_cost`.
    """

    arch: str = "layered"
    #: blocks return a branch that the model adds to its input (h_{l+1} = h_l + f_l(h_l))
    residual: bool = True
    #: every hidden state h_0..h_L has the same shape (FA needs it for its d x d feedback)
    equal_width: bool = True
    #: runs of this architecture may train together as one vectorised model (no in-place
    #: buffer updates, such as BatchNorm's running statistics, in the forward pass)
    groupable: bool = False
    #: constructor arguments that are not run options (the store does not key them)
    not_options: tuple[str, ...] = ("input_shape", "num_classes")
    #: options added after runs were stored: the store keys them only where a run sets them off their default,
    #: so the runs stored before keep their keys
    keyed_when_set: tuple[str, ...] = ()
    #: the epoch record runs the model with its 4-D weights in channels-last layout (:func:`faeval.train.eval_layout`)
    eval_channels_last: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.out_ln: nn.Module | None = None
        self.out_head: nn.Module

    # -- the skeleton -----------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Number of blocks L (the model has L+1 hidden states h_0..h_L)."""
        return len(self.blocks)

    def block_forward(self, l: int, h: torch.Tensor) -> torch.Tensor:
        """h_{l+1} from h_l: the skip is added here for residual models."""
        out = self.blocks[l](h)
        return h + out if self.residual else out

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        h = self.reduce_readout(h)
        if self.out_ln is not None:
            h = self.out_ln(h)
        return self.out_head(h)

    def reduce_readout(self, h: torch.Tensor) -> torch.Tensor:
        """What the readout sees of h_L (identity, except the cls token for ViT)."""
        return h

    def run_from(self, l: int, h: torch.Tensor) -> torch.Tensor:
        """Logits from hidden state h_l (blocks l..L-1, then the readout)."""
        for k in range(l, self.depth):
            h = self.block_forward(k, h)
        return self.readout(h)

    def states(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Hidden states [h_0, ..., h_L] and the logits."""
        hs = [self.embed(x)]
        for l in range(self.depth):
            hs.append(self.block_forward(l, hs[-1]))
        return hs, self.readout(hs[-1])

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        hs, logits = self.states(x)
        return (logits, hs) if return_hidden else logits

    def reduce_state(self, h: torch.Tensor) -> torch.Tensor:
        return reduce_state(h)

    @property
    def has_out_ln(self) -> bool:
        return self.out_ln is not None

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, depth={self.depth}, residual={self.residual}, out_ln={self.has_out_ln}"

    # -- what the class declares --------------------------------------------------------
    @classmethod
    def options(cls) -> dict:
        """The run options of this architecture (its constructor's keyword arguments) with their defaults."""
        params = inspect.signature(cls.__init__).parameters.values()
        return {p.name: p.default for p in params
                if p.name != "self" and p.name not in cls.not_options and p.default is not inspect.Parameter.empty}

    @classmethod
    def step_cost(cls, options: dict) -> float:
        """Rough cost of a training step relative to ResMLP d=256 (to start long jobs first and for the progress
        bar's estimate; the architectures' values were measured on the quick build's Fashion-MNIST runs)."""
        return 1.0

    #: one test sample's share of an epoch record (the test split, the snapshot and the drift) relative to one
    #: training sample's step on the same model; with :meth:`step_cost`, the scheduler's estimate of a run
    eval_cost: float = 0.5


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------
#: name -> LayeredModel subclass; add one with @register_arch
ARCHS: dict[str, type[LayeredModel]] = {}


def register_arch(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`LayeredModel` subclass available as ``build_model(name, ...)``.

    The class's constructor takes ``(input_shape, num_classes, **options)``; its keyword
    options with defaults become run-config keys. Re-registering a name replaces the
    earlier class (so a notebook cell can be re-run); where the code changed, a
    :class:`~faeval.usercode.RegisteredAgainWarning` says so. An architecture defined outside
    faeval is keyed in the run store by its code too (:mod:`faeval.usercode`).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an architecture name must be a non-empty string, got {name!r}")

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, LayeredModel)):
            raise TypeError(f"@register_arch({name!r}) decorates a subclass of faeval.LayeredModel, not {cls!r}")
        cls.arch = name
        warn_if_changed("arch", name, ARCHS.get(name), cls)
        ARCHS[name] = cls
        return cls
    return deco


def arch_class(name: str) -> type[LayeredModel]:
    """The registered class of architecture ``name``; an unknown name raises, listing the valid ones."""
    check_known("arch", name, ARCHS, " (or register your own with @faeval.register_arch)")
    return ARCHS[name]


def _flat_dim(input_shape: Sequence[int] | int) -> int:
    return int(input_shape) if isinstance(input_shape, int) else int(math.prod(input_shape))


def _needs_image(arch: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(
            f"arch {arch!r} needs image inputs of shape (channels, height, width); the dataset's input "
            f"shape is {tuple(input_shape)}. Use arch='resmlp' or 'studentnet' for vector inputs.")
    return tuple(int(s) for s in input_shape)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# ResMLP
# ---------------------------------------------------------------------------------------
class FlattenLinear(nn.Linear):
    """A Linear layer that flattens its input first (parameter names stay weight/bias)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))


class PhiAlpha(nn.Module):
    """phi_alpha(z) = (1 - alpha) z + alpha tanh(z), the teacher-student task's activation."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha}: valid range is [0, 1]")
        self.alpha = float(alpha)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (1.0 - self.alpha) * z + self.alpha * torch.tanh(z)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class ResidualBlock(nn.Module):
    """Pre-LayerNorm residual branch f(h) = w2(act(w1(LN(h)))), d -> d -> d.

    ``w2.weight ~ N(0, w2_std^2)`` and ``w2.bias = 0``; ``w1`` keeps PyTorch's default
    init. The block returns the branch only; the model adds the skip.
    """

    def __init__(self, d: int, w2_std: float = 0.01, act: nn.Module | None = None) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.w1 = nn.Linear(d, d)
        self.act = act if act is not None else nn.GELU()
        self.w2 = nn.Linear(d, d)
        nn.init.normal_(self.w2.weight, mean=0.0, std=w2_std)
        nn.init.zeros_(self.w2.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act(self.w1(self.ln(h))))


@register_arch("resmlp")
class ResMLP(LayeredModel):
    """Pre-LN residual MLP: Linear embed -> L residual blocks -> out_ln -> out_head (inputs flattened).

    ``embed_scale`` multiplies the embedding's initial weights and bias (the same draws, scaled): every hidden
    state starts about that many times larger, while the pre-LN blocks and the terminal LayerNorm see the same
    normalised inputs. It is how the book puts a model at the paper's state scale (||h_L|| 3-8e3).
    """

    groupable = True
    not_options = ("input_shape", "num_classes", "act")
    keyed_when_set = ("embed_scale",)

    def __init__(self, input_shape: Sequence[int] | int, num_classes: int = 10, width: int = 256, depth: int = 4,
                 out_ln: bool = True, residual: bool = True, w2_std: float = 0.01,
                 act: Callable[[], nn.Module] | None = None, embed_scale: float = 1.0) -> None:
        super().__init__()
        if not (embed_scale > 0 and math.isfinite(embed_scale)):
            raise ValueError(f"embed_scale={embed_scale!r}: a finite number > 0 (1 keeps the initialisation)")
        self.residual = bool(residual)
        self.width = width
        self.embed = FlattenLinear(_flat_dim(input_shape), width)
        if embed_scale != 1.0:
            with torch.no_grad():
                for p in self.embed.parameters():
                    p.mul_(embed_scale)
        self.blocks = nn.ModuleList(
            [ResidualBlock(width, w2_std=w2_std, act=act() if act else None) for _ in range(depth)])
        self.out_ln = nn.LayerNorm(width) if out_ln else None
        self.out_head = nn.Linear(width, num_classes)

    @property
    def num_blocks(self) -> int:
        return self.depth

    @classmethod
    def step_cost(cls, options: dict) -> float:
        return ((options.get("width") or 256) / 256) ** 2


@register_arch("studentnet")
class StudentNet(ResMLP):
    """Student of the synthetic teacher-student task: residual, phi_alpha, no terminal LN."""

    not_options = ("input_shape", "num_classes")

    def __init__(self, input_shape: Sequence[int] | int, num_classes: int = 10, width: int = 128, depth: int = 4,
                 alpha: float = 1.0, out_ln: bool = False, w2_std: float = 0.01) -> None:
        super().__init__(input_shape, num_classes=num_classes, width=width, depth=depth, out_ln=out_ln,
                         residual=True, w2_std=w2_std, act=lambda: PhiAlpha(alpha))
        self.alpha = alpha


# ---------------------------------------------------------------------------------------
# ViT-Mini
# ---------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """Patchify with a strided conv, prepend a cls token, add learned positions -> h0 (B, T+1, d)."""

    def __init__(self, in_channels: int, image_hw: tuple[int, int], patch: int, d: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, d, kernel_size=patch, stride=patch)
        n_tokens = (image_hw[0] // patch) * (image_hw[1] // patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, n_tokens + 1, d) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.proj(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(t.shape[0], -1, -1)
        return torch.cat([cls, t], dim=1) + self.pos_embed


class TransformerBranch(nn.Module):
    """Residual branch of a pre-LN transformer block.

    f(h) = a + m with a = Attn(LN1(h)) and m = MLP(LN2(h + a)), so that
    h + f(h) is exactly the usual two-sub-layer pre-LN block.
    """

    def __init__(self, d: int, heads: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"width {d} is not divisible by heads={heads}")
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Linear(mlp_ratio * d, d))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, d)
        a = self.proj(a)
        return a + self.mlp(self.ln2(h + a))


def _choose_patch(h: int, w: int) -> int:
    for p in (4, 2, 7, 8, 1):
        if h % p == 0 and w % p == 0 and (h // p) * (w // p) <= 256:
            return p
    raise ValueError(f"no patch size in (4, 2, 7, 8, 1) tiles a {h}x{w} image; pass patch=...")


@register_arch("vit")
class ViTMini(LayeredModel):
    """ViT-Mini: d=128, 4 pre-LN blocks, cls token, terminal LN; diagnostics read the cls token."""

    def __init__(self, input_shape: Sequence[int], num_classes: int = 10, width: int = 128, depth: int = 4,
                 heads: int = 4, mlp_ratio: int = 2, patch: int | None = None, out_ln: bool = True) -> None:
        super().__init__()
        c, h, w = _needs_image(self.arch, input_shape)
        self.patch = patch or _choose_patch(h, w)
        if h % self.patch or w % self.patch:
            raise ValueError(f"patch={self.patch} does not tile a {h}x{w} image")
        self.width = width
        self.embed = PatchEmbed(c, (h, w), self.patch, width)
        self.blocks = nn.ModuleList([TransformerBranch(width, heads, mlp_ratio) for _ in range(depth)])
        self.out_ln = nn.LayerNorm(width) if out_ln else None
        self.out_head = nn.Linear(width, num_classes)

    def reduce_readout(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, 0]

    @classmethod
    def step_cost(cls, options: dict) -> float:
        return 37.0


# ---------------------------------------------------------------------------------------
# SmallCNN
# ---------------------------------------------------------------------------------------
def _conv(cin: int, cout: int, batchnorm: bool, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU())
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@register_arch("cnn")
class SmallCNN(LayeredModel):
    """Conv32 -> [Conv64+pool, Conv128+pool, FC256] -> head; no skip, no terminal LN.

    h0 is the first conv's output; blocks 1-3 are the remaining stages; the
    linear head is ``out_head``. 4-D states are read as channel means.
    """

    residual = False
    equal_width = False      # the stages change shape
    eval_channels_last = True

    def __init__(self, input_shape: Sequence[int], num_classes: int = 10, batchnorm: bool = True,
                 channels: Sequence[int] = (32, 64, 128), hidden: int = 256) -> None:
        super().__init__()
        c, h, w = _needs_image(self.arch, input_shape)
        if h < 4 or w < 4:
            raise ValueError(f"SmallCNN needs images of at least 4x4 (two 2x2 pools); got {h}x{w}")
        c1, c2, c3 = channels
        self.embed = _conv(c, c1, batchnorm, pool=False)
        flat = c3 * (h // 4) * (w // 4)
        self.blocks = nn.ModuleList([
            _conv(c1, c2, batchnorm, pool=True),
            _conv(c2, c3, batchnorm, pool=True),
            nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU()),
        ])
        self.out_head = nn.Linear(hidden, num_classes)

    @classmethod
    def step_cost(cls, options: dict) -> float:
        return 24.0


class _GlobalPool(nn.Module):
    """The readout's view of a (B, C, H, W) state: the channel means."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=(2, 3))


@register_arch("resnet")
class SmallResNet(LayeredModel):
    """A small ResNet with BatchNorm and no terminal LN (the original artifact's ``small_resnet``).

    Stem: conv 3x3 (stride 2) -> BatchNorm -> ReLU, giving h0 of shape (channels, H/2, W/2).
    Then ``depth`` basic residual blocks, h_{l+1} = h_l + f_l(h_l) with f_l = conv-BN-ReLU-conv-BN
    and the identity skip: every block keeps the shape, so no 1x1 projection is needed. The
    readout is global average pooling and a linear head. The diagnostics read 4-D states as
    channel means. FA is not defined here (its d x d feedback would be (C H W)^2).
    """

    residual = True
    equal_width = False      # states are (C, H, W) feature maps: FA's (CHW)^2 feedback is refused

    def __init__(self, input_shape: Sequence[int], num_classes: int = 10, channels: int = 32,
                 depth: int = 3) -> None:
        super().__init__()
        c, h, w = _needs_image(self.arch, input_shape)
        if depth < 1:
            raise ValueError(f"depth={depth}: SmallResNet needs at least one residual block")
        self.embed = nn.Sequential(nn.Conv2d(c, channels, 3, stride=2, padding=1), nn.BatchNorm2d(channels),
                                   nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                          nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
            for _ in range(depth))
        self.pool = _GlobalPool()
        self.out_head = nn.Linear(channels, num_classes)

    def reduce_readout(self, h: torch.Tensor) -> torch.Tensor:
        return self.pool(h)

    @classmethod
    def step_cost(cls, options: dict) -> float:
        return 13.0


def build_model(arch: str, input_shape: Sequence[int], num_classes: int, seed: int | None = None,
                **kw) -> LayeredModel:
    """Build a layered model by name (a key of :data:`ARCHS`).

    Keyword arguments are the architecture's options (``arch_class(arch).options()``:
    ``width``, ``depth``, ``out_ln``, ``residual``, ``w2_std``, ``batchnorm``, ``alpha``,
    ...). With ``seed`` the weights are drawn from that seed's ``"model-init"`` stream
    (:mod:`faeval.seeds`) without disturbing the global RNG stream.
    """
    cls = arch_class(arch)
    try:
        with seeded(seed, "model-init") if seed is not None else contextlib.nullcontext():
            model = cls(tuple(input_shape), num_classes, **kw)
    except TypeError as e:  # an unknown keyword: name the arch in the message
        raise TypeError(f"build_model({arch!r}): {e}") from None
    model.input_shape = tuple(int(s) for s in input_shape)   # the learning rules probe state shapes with it
    return model


#: the architectures ``import faeval`` registers, as it registers them: a fresh worker process has these, and
#: :func:`faeval.schedule.ship` sends it any other a run needs
PACKAGE_ARCHS: dict[str, type[LayeredModel]] = dict(ARCHS)
