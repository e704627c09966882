"""EP's credit against float32's resolution (issue 39, item 1): the table behind faeval.book.ep_precision.

Setting: ResMLP d=256, L=4, seed 42, 256 Fashion-MNIST test images (random data of the same shape when the
files are missing), untrained, with the embedding's weights and bias multiplied by ``scale`` so that the
states sit at a trained model's scale. For each scale, beta, step count and step size: per hidden state, the
resolution R_l = c_l beta B ||g_l|| / (eps32 ||h_l||) (faeval.book.ep_precision), Gamma of EP's credit
computed in float64 and in float32 (against the float64 BP gradient), and the float32 credit's cosine with
the float64 one. Then the formula's check: every row with R >= 30 should keep cos > 0.99, every row with
R <= 0.01 should fall under 0.11; and the cosine per decade of R.

Run: .venv/bin/python benchmarks/ep_precision.py [--scales 1 10 100 300 1000 3000] [--n 256]
Measured 2026-12-07 on the 2-core CPU host: see benchmarks/README.md ("EP's credit resolution").
"""
from __future__ import annotations

import argparse
import itertools
import math
import time

import pandas as pd
import torch
from protocol_cost import _data

from faeval.book import ep_precision as X


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scales", type=float, nargs="+", default=[1, 10, 100, 300, 1000, 3000])
    ap.add_argument("--betas", type=float, nargs="+", default=[0.03, 0.1, 0.3])
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--step-sizes", type=float, nargs="+", default=[0.1, 0.2])
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    _, _, x_test, y_test, src = _data()
    x, y = x_test[:args.n].flatten(1), y_test[:args.n]
    print(f"torch {torch.__version__}, data: {src}, {args.n} images; ResMLP d=256 L=4 seed 42")
    t0 = time.perf_counter()
    rows = []
    for scale in args.scales:
        model = X.scaled_model(tuple(x.shape[1:]), 10, scale=scale, seed=42)
        for beta, steps, size in itertools.product(args.betas, args.steps, args.step_sizes):
            rows += X.measure(model, x, y, beta=beta, steps=steps, step_size=size, scale=scale)
    t = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 500)
    main_setting = t[(t.beta == 0.1) & (t.steps == 10) & (t.step_size == 0.2)]
    print("\nat EP's defaults (beta 0.1, 10 steps of 0.2), per layer:")
    print(main_setting[["scale", "layer", "h", "g", "gain", "R", "Gamma f64", "Gamma f32", "cos(f32, f64)",
                        "rel. error"]].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print("\nthe smallest layer's R and cos per setting (all settings):")
    low = t.loc[t.groupby(["scale", "beta", "steps", "step_size"]).R.idxmin()]
    print(low[["scale", "beta", "steps", "step_size", "layer", "h", "R", "Gamma f64", "Gamma f32",
               "cos(f32, f64)"]].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    hi, lo = t[t.R >= X.RESOLVED], t[t.R <= 0.01]
    print(f"\nformula check over {len(t)} rows: R >= {X.RESOLVED:g}: {len(hi)} rows, "
          f"{int((hi['cos(f32, f64)'] <= 0.99).sum())} with cos <= 0.99 (min {hi['cos(f32, f64)'].min():.4f}); "
          f"R <= 0.01: {len(lo)} rows, {int((lo['cos(f32, f64)'] >= 0.11).sum())} with cos >= 0.11 "
          f"(max {lo['cos(f32, f64)'].max():.3f})")
    decade = t.R.apply(lambda r: math.floor(math.log10(r)))
    print("cos(f32, f64) per decade of R:")
    print(t.groupby(decade)["cos(f32, f64)"].agg(["count", "min", "median", "max"]).to_string(
        float_format=lambda v: f"{v:.4f}"))
    mid = t[(t.R > 0.01) & (t.R < X.RESOLVED)]
    print(f"in between (0.01 < R < {X.RESOLVED:g}): {len(mid)} rows, cos {mid['cos(f32, f64)'].min():.3f} to "
          f"{mid['cos(f32, f64)'].max():.3f}")
    print(f"gain c_l spread across scales at fixed setting and layer (max/min): "
          f"{t.groupby(['beta', 'steps', 'step_size', 'layer']).gain.agg(lambda g: g.max() / g.min()).max():.4f}")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
