"""`torch.compile` on a training step: the compile time with a warm inductor cache and the per-step gain.

Each rule (BP, EP) runs in a fresh process twice eager and twice with every block and the embedding compiled
(`Module.compile`), the inductor's on-disk cache under the build folder (`_build/inductor`, warmed by the first
compiled process). ResMLP d=256 L=4, batch 128, 1 thread (a `prepare` worker's). Prints the first two steps'
seconds (the compile) and the mean step time of the next 58.
Run: .venv/bin/python benchmarks/compile_step.py  (about 2 minutes)
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

CACHE = os.path.join(os.path.dirname(__file__), "..", "_build", "inductor")


def one(rule: str, mode: str) -> None:
    import torch

    import faeval
    from faeval.train import adamw
    torch.set_num_threads(1)
    ds = faeval.load_dataset("fashion-mnist")
    model = faeval.build_model("resmlp", ds.input_shape, 10, seed=0, width=256, depth=4)
    method = faeval.build_method(rule, model, seed=0)
    opt = adamw(method.param_groups(1e-3), lr=1e-3, weight_decay=0.01)
    batches = [(ds.x_train[i * 128:(i + 1) * 128], ds.y_train[i * 128:(i + 1) * 128]) for i in range(60)]

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        method.step(x, y)
        opt.step()
        method.after_step()

    start = time.perf_counter()
    if mode == "compiled":
        for block in [*model.blocks, model.embed]:
            block.compile(dynamic=False)
    for x, y in batches[:2]:
        step(x, y)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for x, y in batches[2:]:
        step(x, y)
    print(f"{rule:4} {mode:9} first two steps {first:5.1f} s, then {(time.perf_counter() - start) / 58 * 1e3:6.2f} ms "
          "a step", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3:
        one(*sys.argv[1:])
    else:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.abspath(CACHE)}
        for rule in ("bp", "ep"):
            for mode in ("eager", "compiled", "eager", "compiled"):
                subprocess.run([sys.executable, __file__, rule, mode], env=env, check=True)
