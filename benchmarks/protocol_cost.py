"""What the protocol costs on this machine (issue 4 targets).

Prints:
* FAProtocol.run on ResMLP d=256 with 1,280 eval samples (10 x 128): target <= 2 s;
* perturbation correlation rho (M=32, n=1024, all 5 layers) and the nudging test,
  each as a fraction of one training epoch. The epoch is a plain BP epoch of
  ResMLP d=256 on Fashion-MNIST (60k samples, batch 128, AdamW) timed here; when
  the real data are not installed it uses random data of the same shape.

Run: .venv/bin/python benchmarks/protocol_cost.py
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from _timing import best_of

from faeval import FAProtocol, build_model
from faeval import diagnostics as D
from faeval.snapshot import snapshot


def _timeit(fn, repeat=3):
    return best_of(fn, repeat=repeat, warmup=True)


def _data():
    try:
        from faeval import load_dataset
        ds = load_dataset("fashion-mnist")
        return ds.x_train, ds.y_train, ds.x_test, ds.y_test, "fashion-mnist"
    except Exception as e:  # noqa: BLE001 - a benchmark should still run without the files
        print(f"(fashion-mnist unavailable: {e.__class__.__name__}; using random data of the same shape)")
        g = torch.Generator().manual_seed(0)
        return (torch.randn(60000, 1, 28, 28, generator=g), torch.randint(0, 10, (60000,), generator=g),
                torch.randn(10000, 1, 28, 28, generator=g), torch.randint(0, 10, (10000,), generator=g), "random")


def bp_epoch_seconds(model, x, y, batch_size=128) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    perm = torch.randperm(len(x))
    t = time.perf_counter()
    for i in range(0, len(x), batch_size):
        idx = perm[i:i + batch_size]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return time.perf_counter() - t


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    x_tr, y_tr, x_te, y_te, name = _data()
    model = build_model("resmlp", (1, 28, 28), 10, seed=0)
    x_eval, y_eval = x_te[:1280], y_te[:1280]

    t_run = _timeit(lambda: FAProtocol(model, x_eval, y_eval, frozen_baseline_acc=0.8).run())
    print(f"FAProtocol.run, ResMLP d=256, 1280 eval samples: {t_run:.3f} s  (target <= 2 s: "
          f"{'met' if t_run <= 2 else 'MISSED'})")

    epoch = bp_epoch_seconds(model, x_tr, y_tr)
    print(f"one BP epoch, ResMLP d=256, {name} 60k, batch 128: {epoch:.2f} s")

    xr, yr = x_te[:1024], y_te[:1024]
    _, grads, _ = D.bp_grads(model, xr, yr)
    t_rho = _timeit(lambda: D.perturbation_rho(model, xr, yr, grads, eps=1e-3, n_directions=32), repeat=1)
    t_nudge = _timeit(lambda: D.nudging(model, xr, yr, grads), repeat=1)
    t_snap = _timeit(lambda: snapshot(model, x_eval, y_eval))
    print(f"rho (M=32, n=1024, 5 layers): {t_rho:.2f} s = {t_rho / epoch:.1%} of one epoch")
    print(f"nudging (3 etas, n=1024): {t_nudge:.3f} s = {t_nudge / epoch:.1%} of one epoch")
    print(f"per-epoch snapshot (1280 samples): {t_snap:.3f} s = {t_snap / epoch:.1%} of one epoch")


if __name__ == "__main__":
    main()
