"""Weight mirroring (Akrout et al. 2019): B learns W from a mirror phase on noise after every step."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..seeds import generator
from .base import check_range, register_method
from .layerwise import LayerwiseRule


@register_method("wm")
class WeightMirror(LayerwiseRule):
    """Weight mirroring: after every training step each layer is driven with noise x (entries
    N(0, noise_std^2), ``mirror_batch`` samples from the run's ``"mirror-noise"`` stream), its
    bias-free response y = W x is read, and B moves by mirror_lr * mean(y x^T) / noise_std^2 - decay * B
    (for a convolution, the weight gradient of <y, conv(x; B)> per output position).

    Since E[y x^T] = noise_std^2 W, B's fixed point is (mirror_lr / decay) W; the defaults set
    mirror_lr = decay = 0.01 so that B relaxes to W itself at 1% a step (the paper's mirror phase:
    x = 0.1 (U - 0.5), learning rate 0.01, with its own decay). B starts as ``fa_layer``'s random draw.
    """

    streams = ("noise",)
    relative_cost = 1.4       # benchmarks/step_cost.py, 2026-12-07 (its mirror phase)

    def __init__(self, model, *, mirror_lr: float = 0.01, decay: float = 0.01, noise_std: float = 1.0,
                 mirror_batch: int = 32, **common) -> None:
        check_range("mirror_lr", mirror_lr, mirror_lr >= 0, ">= 0")
        check_range("decay", decay, 0 <= decay <= 1, "in [0, 1] (B's per-step decay)")
        check_range("noise_std", noise_std, noise_std > 0, "> 0")
        check_range("mirror_batch", mirror_batch, isinstance(mirror_batch, int) and mirror_batch >= 1,
                    "an integer >= 1")
        self.mirror_lr, self.decay, self.noise_std, self.mirror_batch = (float(mirror_lr), float(decay),
                                                                         float(noise_std), int(mirror_batch))
        self.noise = generator(int(common.get("seed", 0)), "mirror-noise")
        super().__init__(model, **common)
        self.in_shapes = _input_shapes(model, [m for _, m in self.layers])

    @torch.no_grad()
    def after_step(self):
        n, s = self.mirror_batch, self.noise_std
        for (_, mod), B, shape in zip(self.layers, self._need("feedback", "feedback matrices"), self.in_shapes):
            W = mod.weight
            x = (torch.randn((n, *shape), generator=self.noise) * s).to(device=W.device, dtype=W.dtype)
            if isinstance(mod, nn.Conv2d):
                conv = (mod.stride, mod.padding, mod.dilation, mod.groups)
                y = torch.nn.functional.conv2d(x, W, None, *conv)
                mirror = torch.nn.grad.conv2d_weight(x, W.shape, y, *conv) / (n * y.shape[-1] * y.shape[-2])
            else:
                mirror = (x @ W.T).T @ x / n
            B.mul_(1.0 - self.decay).add_(mirror, alpha=self.mirror_lr / s ** 2)


def _input_shapes(model, layers) -> list[tuple[int, ...]]:
    """Per-sample input shapes of ``layers`` (one probe forward on zeros): a Linear's as (in_features,)."""
    shapes, handles = {}, []

    def record(mod, args):
        shapes.setdefault(id(mod), tuple(args[0].shape[1:]))

    for mod in layers:
        handles.append(mod.register_forward_pre_hook(record))
    p = next(model.parameters())
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.states(torch.zeros((2, *model.input_shape), device=p.device, dtype=p.dtype))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return [(m.in_features,) if isinstance(m, nn.Linear) else shapes[id(m)] for m in layers]
