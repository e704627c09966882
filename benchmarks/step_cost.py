"""Per-step cost of every learning rule relative to BP (issue 3 targets), measured in one run.

Setting: ResMLP d=256, L=4, Fashion-MNIST batches of 128 (random data of the same
shape when the files are missing), AdamW on the model and on the rule's own
networks, exactly as faeval.fit steps. Rules are timed round-robin (each repeat
times every rule once) so that machine drift hits all of them alike; the per-step
time is the median over repeats of the mean over a block of steps.

Prints, per rule: ms/step, ratio to BP and its target, FLOPs per step (counted by
torch's flop registry: matmuls, convolutions, attention) and the achieved GFLOP/s next to
this machine's fp32 matmul peak (a 2048^3 matmul, best of 5). Then the per-epoch
diagnostic snapshot (1,280 eval samples, with Gamma of the rule's credit) as a
fraction of one training epoch of the same rule. The quick profile's epoch is set by
issue 7; until then the epoch is a full Fashion-MNIST epoch (469 steps).

Run: .venv/bin/python benchmarks/step_cost.py [--steps 30] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from _timing import best_of
from protocol_cost import _data
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from faeval import build_method, build_model
from faeval.snapshot import snapshot

RULES = ["bp", "dfa", "fa", "ep", "ep64", "state_bridge", "credit_bridge", "frozen",
         "drtp", "fa_layer", "usf", "frsf", "brsf", "kp", "wm"]


def target(name: str, rule) -> tuple[float | None, str]:
    if name in ("dfa", "drtp"):
        return 1.1, "<= 1.1x"
    if name in ("fa_layer", "usf", "frsf", "brsf", "kp", "wm"):      # BP's step with hooks (and B's update)
        return 1.3, "<= 1.3x"
    if name == "fa":
        return 1.2, "<= 1.2x"
    if name in ("state_bridge", "credit_bridge"):
        return 3.0, "<= 3x"
    if name == "ep":
        return 1.0 + rule.steps, f"<= 1 + {rule.steps} (nudged steps)"
    if name == "ep64":                  # EP's phases at float64's price, about twice float32's
        return 2 * (1.0 + rule.steps), f"<= 2 (1 + {rule.steps})"
    return None, ""


class Stepper:
    """One rule on its own model, stepped as faeval.fit steps it."""

    def __init__(self, name, shape, seed=0):
        self.model = build_model("resmlp", shape, 10, seed=seed, width=256, depth=4)
        self.rule = build_method(name, self.model, seed=seed)
        self.rule.start_training(1)      # a schedule past any warm-up (Credit Bridge's): the steady-state step
        self.opt = torch.optim.AdamW(self.rule.parameters(), lr=1e-3, weight_decay=0.01)
        aux = self.rule.aux_parameters()
        self.opt_fb = torch.optim.AdamW(aux, lr=1e-3, weight_decay=0.01) if aux else None

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        if self.opt_fb:
            self.opt_fb.zero_grad(set_to_none=True)
        self.rule.step(x, y)
        self.opt.step()
        if self.opt_fb:
            self.opt_fb.step()
        self.rule.after_step()


class CountFlops(TorchDispatchMode):
    """Sum torch's registered FLOP formulas over every op run inside the context.

    (torch's FlopCounterMode also tracks modules with hooks that reject the
    ``autograd.grad`` calls on leaf tensors that the local rules make.)
    """

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


class RecordMatmuls(TorchDispatchMode):
    """Record every matrix multiply of a step (op, argument shapes and strides) to replay them alone."""

    OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.OPS:
            spec = [(tuple(a.shape), a.stride()) if torch.is_tensor(a) else a for a in args]
            self.calls.append((func, spec, kwargs, flop_registry[func._overloadpacket](*args, **kwargs,
                                                                                      out_val=None)))
        return func(*args, **kwargs)


def replay_matmuls(calls):
    """A function running the recorded matmuls on fresh tensors of the same shapes and strides; its FLOPs."""
    g = torch.Generator().manual_seed(0)
    prepared = []
    for func, spec, kwargs, _ in calls:
        args = [torch.empty_strided(a[0], a[1]).normal_(generator=g) if isinstance(a, tuple) and a and
                isinstance(a[0], tuple) else a for a in spec]
        prepared.append((func, args, kwargs))

    def run():
        for func, args, kwargs in prepared:
            func(*args, **kwargs)
    return run, sum(c[3] for c in calls)


def round_robin(steppers: dict, batches, repeats: int) -> dict[str, float]:
    """Median seconds per step of each stepper, timed in turn (each repeat times every one once, so that
    machine drift hits all alike)."""
    times = {n: [] for n in steppers}
    for _ in range(repeats):
        for n, s in steppers.items():
            t = time.perf_counter()
            for xb, yb in batches:
                s.step(xb, yb)
            times[n].append((time.perf_counter() - t) / len(batches))
    return {n: statistics.median(v) for n, v in times.items()}


def matmul_peak_gflops(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / best_of(lambda: a @ b, repeat=5, warmup=True) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=5, help="round-robin repeats")
    ap.add_argument("--rules", nargs="+", default=RULES, choices=RULES, metavar="RULE",
                    help="time only these rules (bp is always timed: the ratios read it)")
    args = ap.parse_args()
    rules = ["bp", *(r for r in args.rules if r != "bp")]
    x_train, y_train, x_test, y_test, src = _data()
    shape = tuple(x_train.shape[1:])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, data: {src}; ResMLP d=256 L=4, batch 128")
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak (2048^3): {peak:.0f} GFLOP/s")

    steppers = {n: Stepper(n, shape) for n in rules}
    g = torch.Generator().manual_seed(0)
    batches = [(x_train[i], y_train[i]) for i in torch.randint(0, len(x_train), (args.steps, 128), generator=g)]
    flops = {}
    for n, s in steppers.items():               # warm-up, and one counted step
        for xb, yb in batches[:3]:
            s.step(xb, yb)
        with CountFlops() as fc:
            s.step(*batches[0])
        flops[n] = fc.total
    per_step = round_robin(steppers, batches, args.repeats)

    print(f"\n{'rule':14s} {'ms/step':>8s} {'x BP':>6s}  {'target':24s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} "
          f"{'% peak':>6s}")
    for n in rules:
        ratio = per_step[n] / per_step["bp"]
        lim, text = target(n, steppers[n].rule)
        verdict = "" if lim is None else ("ok" if ratio <= lim else "MISSED")
        gf = flops[n] / 1e9
        print(f"{n:14s} {1e3 * per_step[n]:8.2f} {ratio:6.2f}  {text + ' ' + verdict:24s} {gf:10.3f} "
              f"{gf / per_step[n]:8.1f} {100 * gf / per_step[n] / peak:5.0f}%")

    # the BP step against the matmul peak at its own shapes: the same matmuls, replayed alone
    with RecordMatmuls() as rec:
        steppers["bp"].step(*batches[0])
    run_mm, mm_flops = replay_matmuls(rec.calls)
    mm_time = best_of(run_mm, repeat=20, warmup=True)
    shape_peak = mm_flops / mm_time / 1e9
    bp_rate = flops["bp"] / 1e9 / per_step["bp"]
    print(f"\nBP step against the matmul peak at its own shapes ({len(rec.calls)} matmuls, {mm_flops / 1e9:.3f} "
          f"GFLOP, replayed alone: {1e3 * mm_time:.2f} ms, {shape_peak:.0f} GFLOP/s): the step reaches "
          f"{bp_rate:.0f} GFLOP/s, {100 * bp_rate / shape_peak:.0f}% (target >= 60%); the matmuls are "
          f"{100 * mm_time / per_step['bp']:.0f}% of the step's time")

    # changes, each measured side by side with the path it replaced (round-robin, same batches)
    print("\nchanges, new vs old path, in this run:")
    if "ep" in steppers:
        ep_old = Stepper("ep", shape)
        ep_old.rule.skip_free_energy = False
        t = round_robin({"new": steppers["ep"], "old": ep_old}, batches, args.repeats)
        new, old = t["new"], t["old"]
        print(f"  EP, first relaxation step reads only the nudge (same numbers): {1e3 * new:.2f} vs "
              f"{1e3 * old:.2f} ms/step, {old / new:.2f}x")

    x_eval, y_eval = x_test[:1280], y_test[:1280]
    steps_per_epoch = -(-len(x_train) // 128)
    print(f"\nper-epoch snapshot (1,280 eval samples, Gamma included) vs one epoch of the same rule "
          f"({steps_per_epoch} steps; target <= 10%)")
    for n in rules:
        s = steppers[n]
        snap = best_of(lambda s=s: snapshot(s.model, x_eval, y_eval, credit_fn=s.rule.credit), repeat=3,
                       warmup=True)
        epoch = per_step[n] * steps_per_epoch
        frac = snap / epoch
        print(f"{n:14s} snapshot {snap:6.3f} s  epoch {epoch:6.1f} s  {100 * frac:5.1f}%  "
              f"{'ok' if frac <= 0.10 else 'MISSED'}")


if __name__ == "__main__":
    main()
