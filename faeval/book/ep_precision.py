"""EP's credit against float32's resolution: where the difference of two nearly equal states stops resolving.

EP's credit for hidden state l >= 1 is a_l = -delta_l / (beta B), with delta_l = h_l^nudge - h_l^free. The
nudge moves a sample's state by the gradient of that sample's own loss (B times the mean-loss gradient g_l the
BP reference reads) times beta and times the relaxation's gain c_l = ||a_l|| / ||g_l||: c_l depends on beta,
the steps, the step size and the layer's distance from the top (1.16, 0.54 and 0.19 for the three states of a
depth-3 model at the defaults), and not on the state scale. So per sample

    ||delta_l|| = c_l * beta * B * ||g_l||,

while float32 rounds each state to about eps32 * ||h_l|| (eps32 = 2^-23 = 1.19e-7), and every relaxation step
rounds again. The credit's resolution is the ratio of the two,

    R_l = c_l * beta * B * ||g_l|| / (eps32 * ||h_l||).

With pre-LN blocks and a terminal LayerNorm, ||g_l|| falls like 1/||h_l||, so R_l falls like 1/||h_l||^2.
Measured over 288 layers and settings (``benchmarks/ep_precision.py``: scales 1 to 3000, beta 0.03 to 0.3,
10 and 30 steps of 0.1 and 0.2), R alone sets the float32 credit's cosine with the exact one: above 0.99
wherever R_l >= :data:`RESOLVED` (30), about 0.5 to 1 around R_l = 1, and below 0.11 wherever R_l <= 0.01.
:func:`scaled_model` scales a model's embedding so that an
untrained model sits at a trained one's state scale.
"""
from __future__ import annotations

import copy

import torch

from ..diagnostics import bp_grads, gamma_per_layer, per_sample_l2
from ..methods.ep import EP
from ..models import build_model
from ..protocol import CREDIT_RESOLUTION_WARN

__all__ = ["EPS32", "RESOLVED", "SCALES", "scaled_model", "measure", "scale_sweep"]

#: float32's machine epsilon (the spacing of float32 numbers just above 1)
EPS32 = torch.finfo(torch.float32).eps
#: the resolution R_l above which float32 keeps EP's credit (cosine with the exact credit above 0.99, measured);
#: the protocol's report warns below it
RESOLVED = CREDIT_RESOLUTION_WARN


def scaled_model(input_shape, num_classes: int, *, scale: float, seed: int = 42, width: int = 256,
                 depth: int = 4, arch: str = "resmlp") -> torch.nn.Module:
    """A fresh model whose embedding's weights and bias are multiplied by ``scale`` (the architecture's
    ``embed_scale``): every hidden state grows by about ``scale`` (the blocks are pre-LN), which puts an untrained
    model at a trained one's state scale."""
    return build_model(arch, tuple(input_shape), num_classes, seed=seed, width=width, depth=depth, embed_scale=scale)


def measure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, beta: float = 0.1, steps: int = 10,
            step_size: float = 0.2, rule: type[EP] = EP, **labels) -> list[dict]:
    """One row per hidden state l >= 1: the median ||h_l|| and BP gradient ||g_l|| (float64, mean-loss scale), the
    relaxation's gain c_l (median ||a_l|| / ||g_l|| of the float64 credit), the resolution R_l of the module
    docstring (median over samples) and the one ``rule`` measures itself on the float32 model (``R measured``,
    what the protocol's report shows: the float32 displacement over eps ||h||), Gamma of the credit computed in
    float64 and of the one ``rule`` computes on the float32 model (both against the float64 BP gradient), and the
    float32 credit's agreement with the float64 one (mean per-sample cosine; median relative error). ``labels``
    are copied into every row."""
    m64 = copy.deepcopy(model).double()
    x64 = x.double()
    hs, bp, _ = bp_grads(m64, x64, y)
    kw = dict(beta=beta, steps=steps, step_size=step_size)
    a64 = EP(m64, **kw).credit(x64, y)
    r32 = rule(model, **kw)
    a32 = r32.credit(x, y)
    own = r32.last_resolution
    g64, g32, agree = (gamma_per_layer(a, ref).mean for a, ref in ((a64, bp), (a32, bp), (a32, a64)))
    B = len(y)
    rows = []
    for l in range(1, len(hs)):
        h, g, a = per_sample_l2(hs[l]), per_sample_l2(bp[l]), per_sample_l2(a64[l])
        gain = a / g
        err = per_sample_l2(a32[l].double() - a64[l]) / a.clamp_min(1e-300)
        rows.append({**labels, "beta": beta, "steps": steps, "step_size": step_size, "layer": l,
                     "h": h.median().item(), "g": g.median().item(), "gain": gain.median().item(),
                     "R": (gain * beta * B * g / (EPS32 * h)).median().item(), "R measured": own[l - 1],
                     "Gamma f64": g64[l], "Gamma f32": g32[l], "cos(f32, f64)": agree[l],
                     "rel. error": err.median().item()})
    return rows


#: the embedding scales of the book's resolution table: ||h_L|| from about 9 to about 3e4 (ResMLP d=256)
SCALES = (1.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


def scale_sweep(x: torch.Tensor, y: torch.Tensor, *, scales=SCALES, seed: int = 42, width: int = 256,
                depth: int = 4, **kw):
    """:func:`measure` on fresh models at each embedding scale of ``scales`` (EP's defaults unless ``kw`` sets
    beta, steps or step_size), as a DataFrame with a ``scale`` column."""
    import pandas as pd

    classes = int(y.max()) + 1
    return pd.DataFrame([row for scale in scales for row in measure(
        scaled_model(tuple(x.shape[1:]), classes, scale=scale, seed=seed, width=width, depth=depth), x, y,
        scale=scale, **kw)])
