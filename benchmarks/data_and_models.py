"""Data loading and model throughput on this machine (issue 2 targets).

Prints:
* Fashion-MNIST load time, cold (first load in this process) and warm (best of 3): target <= 2 s warm;
* the batch iterator's cost as a fraction of one ResMLP BP training step: target <= 5%;
* forward+backward throughput of each architecture in samples/s (batch 128).

Run: .venv/bin/python benchmarks/data_and_models.py
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from _timing import best_of

from faeval import build_model, load_dataset


def main() -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    t = time.perf_counter()
    ds = load_dataset("fashion-mnist")
    cold = time.perf_counter() - t
    warm = best_of(lambda: load_dataset("fashion-mnist"))
    print(f"fashion-mnist load: cold {cold:.2f} s, warm {warm:.2f} s (target <= 2 s warm: "
          f"{'met' if warm <= 2 else 'MISSED'})")

    # iterator cost per batch vs one BP step of ResMLP d=256
    n_batches = len(range(0, ds.n_train, 128))
    t_iter = best_of(lambda: sum(1 for _ in ds.batches(128, seed=0, epoch=0))) / n_batches
    model = build_model("resmlp", ds.input_shape, 10, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    batches = [b for _, b in zip(range(60), ds.batches(128, seed=1))]

    def steps():
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

    steps()
    t_step = best_of(steps) / len(batches)
    met = "met" if t_iter / t_step <= 0.05 else "MISSED"
    print(f"batch iterator: {t_iter * 1e6:.0f} us/batch; ResMLP BP step: {t_step * 1e3:.2f} ms; "
          f"iterator = {t_iter / t_step:.1%} of a step (target <= 5%: {met})")

    print("forward+backward throughput, batch 128:")
    for arch, shape in [("resmlp", (1, 28, 28)), ("resmlp", (3, 32, 32)), ("vit", (3, 32, 32)),
                        ("cnn", (3, 32, 32)), ("studentnet", (128,))]:
        m = build_model(arch, shape, 10, seed=0)
        x, y = torch.randn(128, *shape), torch.randint(0, 10, (128,))

        def fb(m=m, x=x, y=y):
            m.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()

        fb()
        reps = 5 if arch in ("vit", "cnn") else 20
        sec = best_of(lambda fb=fb, reps=reps: [fb() for _ in range(reps)], repeat=2) / reps
        print(f"  {arch:<10} input {str(shape):<12} {128 / sec:>9,.0f} samples/s")


if __name__ == "__main__":
    main()
