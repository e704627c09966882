"""The credit-resolution warning on the book's stored EP runs (issue 39, item 4): how often it warns, and whether
each warning was needed.

For every stored run of ``ep`` or ``ep64`` in the run store (``--results``, default ``$FAEVAL_RESULTS``), the
trained model goes through ``FAProtocol(rule=run.method)`` on the first ``--n`` Fashion-MNIST test images: the
report warns where the credit's resolution falls below ``CREDIT_RESOLUTION_WARN`` at any hidden state. Whether a
warning was needed is measured independently, on the same model and images: the float32 credit's cosine with the
same credit computed in float64 (``faeval.book.ep_precision.measure``), lowest over h_1..h_L. A false alarm is a
warning on a run whose float32 credit keeps a cosine above 0.99 at every state; a miss is no warning on a run
whose cosine falls under 0.9 at some state.

Run: .venv/bin/python benchmarks/ep_resolution_alarms.py [--results DIR] [--n 256]
Measured 2026-12-07 on the 2-core CPU host: see benchmarks/README.md ("The credit-resolution warning").
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from faeval.book import ep_precision as X
from faeval.config import canonical_config
from faeval.protocol import CREDIT_RESOLUTION_WARN, FAProtocol
from faeval.store import list_runs, load_data, load_run, results_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=None)
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    root = results_dir(args.results)
    runs = [r for r in list_runs(root) if r["method"] in ("ep", "ep64")]
    print(f"torch {torch.__version__}; {len(runs)} stored EP runs in {root}; warning below "
          f"{CREDIT_RESOLUTION_WARN:g}; {args.n} test images each")
    t0, rows, data = time.perf_counter(), [], {}
    for entry in runs:
        run = load_run(root / entry["run"], device="cpu")
        cfg = canonical_config(**run.config)
        key = (cfg["dataset"], str(cfg["data"]))
        if key not in data:
            data[key] = load_data(cfg).eval_batch(args.n)
        x, y = data[key]
        report = FAProtocol(run.model, x, y, rule=run.method).run()
        hp = cfg["hparams"]
        exact = X.measure(run.model, x, y, beta=hp["beta"], steps=hp["steps"], step_size=hp["step_size"],
                          rule=type(run.method))
        cos = min(c for c in (r["cos(f32, f64)"] for r in exact) if c == c)   # NaN: a state with no credit
        rows.append({"run": entry["run"], "method": cfg["method"], "options": entry["options"],
                     "h_L": report.per_layer.hidden_norms[-1], "resolution": report.lowest_credit_resolution,
                     "warned": bool(report.warnings), "min cos(f32, f64)": cos,
                     "false alarm": bool(report.warnings) and cos > 0.99, "miss": not report.warnings and cos < 0.9})
    t = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_colwidth", 60, "display.max_rows", 200):
        print(t.drop(columns="run").to_string(float_format=lambda v: f"{v:.3g}"))
    print(f"\n{len(t)} runs: {int(t.warned.sum())} warned, {int(t['false alarm'].sum())} false alarms, "
          f"{int(t.miss.sum())} misses; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
