"""One training step in float32 against the same step with ``precision="bfloat16"`` (issue 26, lever 1).

Setting: the quick profile's shapes on Fashion-MNIST (a 4,096-sample subset: the step does not depend on it),
batch 128, one thread, each rule with its AdamW as ``faeval.fit`` steps it; ``bfloat16`` wraps the rule's
step in ``torch.autocast("cpu", dtype=torch.bfloat16)`` exactly as ``fit(precision="bfloat16")`` does. The two
precisions of a case alternate block by block (3 blocks each), so that the host's drift hits both alike; the
ratio is the sum of the float32 blocks over the sum of the bfloat16 blocks.

Then EP's step split into its nudged phase (``EP.nudged_states``) and the rest, in float32.

Runtime: about 3 minutes on one core of the 2-core CI machine.
Run: .venv/bin/python benchmarks/precision.py [case ...]   (a case is an arch or a rule name, e.g. ep vit)
"""
from __future__ import annotations

import sys
import time

import torch

import faeval
from faeval.train import adamw

CASES = [("resmlp", "bp", {}), ("resmlp", "dfa", {}), ("resmlp", "fa", {}), ("resmlp", "ep", {}),
         ("resmlp", "state_bridge", {}), ("resmlp", "credit_bridge", {}), ("resmlp", "dfa", {"width": 512}),
         ("vit", "dfa", {"width": 128}), ("cnn", "dfa", {}), ("resnet", "dfa", {})]


class Stepper:
    def __init__(self, ds, arch, rule, options):
        self.ds = ds
        self.model = faeval.build_model(arch, tuple(ds.x_train.shape[1:]), 10, seed=0, **options)
        self.rule = faeval.build_method(rule, self.model, seed=0)
        self.opt = adamw(self.rule.param_groups(1e-3), lr=1e-3, weight_decay=0.01)
        aux = self.rule.aux_parameters()
        self.opt_fb = adamw(aux, lr=1e-3, weight_decay=0.01) if aux else None
        self.rule.start_training(10**6)
        self.batches = self.ds.batches(128, seed=0, epoch=1)

    def next_batch(self):
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = self.ds.batches(128, seed=0, epoch=2)
            return next(self.batches)

    def steps(self, n: int, low: bool) -> float:
        t = time.perf_counter()
        for _ in range(n):
            x, y = self.next_batch()
            self.opt.zero_grad(set_to_none=True)
            if self.opt_fb is not None:
                self.opt_fb.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
                self.rule.step(x, y)
            self.opt.step()
            if self.opt_fb is not None:
                self.opt_fb.step()
            self.rule.after_step()
        return time.perf_counter() - t


def side_by_side(ds, arch, rule, options, n: int, blocks: int = 3) -> tuple[float, float]:
    """(float32, bfloat16) seconds per step, alternating blocks of ``n`` steps."""
    a, b = Stepper(ds, arch, rule, options), Stepper(ds, arch, rule, options)
    a.steps(2, False)
    b.steps(2, True)
    ta = tb = 0.0
    for _ in range(blocks):
        ta += a.steps(n, False)
        tb += b.steps(n, True)
    return ta / (blocks * n), tb / (blocks * n)


def ep_split(ds, n: int = 20) -> tuple[float, float]:
    """EP's float32 step: (seconds in the nudged phase, seconds in the whole step), per step."""
    s = Stepper(ds, "resmlp", "ep", {})
    inner, relax = s.rule.nudged_states, [0.0]

    def timed(*a, **k):
        t = time.perf_counter()
        out = inner(*a, **k)
        relax[0] += time.perf_counter() - t
        return out
    s.steps(2, False)
    s.rule.nudged_states = timed
    total = s.steps(n, False)
    return relax[0] / n, total / n


def main() -> None:
    torch.set_num_threads(1)
    ds = faeval.load_dataset("fashion-mnist", subset=4096)
    chosen = [c for c in CASES if not sys.argv[1:] or c[0] in sys.argv[1:] or c[1] in sys.argv[1:]]
    print(f"torch {torch.__version__}, 1 thread; ms per training step, float32 vs bfloat16 autocast")
    print(f"{'arch':8s} {'rule':14s} {'options':16s} {'float32':>9s} {'bfloat16':>9s} {'speed-up':>9s}")
    for arch, rule, options in chosen:
        n = 10 if rule == "ep" or arch != "resmlp" or options else 30
        f32, b16 = side_by_side(ds, arch, rule, options, n)
        print(f"{arch:8s} {rule:14s} {str(options):16s} {1e3 * f32:9.1f} {1e3 * b16:9.1f} {f32 / b16:8.2f}x",
              flush=True)
    if not sys.argv[1:] or "ep" in sys.argv[1:]:
        relax, total = ep_split(ds)
        print(f"EP (float32): nudged phase {1e3 * relax:.1f} of {1e3 * total:.1f} ms per step "
              f"({100 * relax / total:.0f}%)")


if __name__ == "__main__":
    main()
