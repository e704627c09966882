"""Throughput (issue 6): our training loop, grouped runs, FLOP/s and memory, measured in one run.

On the device it runs on (CUDA when available, else CPU), with ResMLP d=256 L=4, batch 128:

(a) our per-run loop (``faeval.fit``: data resident on the device, no synchronisation in
    the step loop) against a reference loop written the way such experiments are usually
    coded (a torch DataLoader over CPU tensors, each batch moved to the device, per-step
    ``.item()`` logging), both training BP for the same steps;
(b) 3 seeds (BP and DFA) trained one after another with ``fit``, against the same runs
    as one vectorised group (``fit_group``) and through ``fit_many`` with its default for
    the device (vectorised groups on a GPU, 1-thread processes on a CPU); on a CPU it also
    prints the ceiling of running runs side by side: cores x (steps/s of a run on 1 thread) /
    (steps/s of a run on all threads): the most that training independent runs side by side can give;
(c) achieved FLOP/s (FLOPs counted by torch's formulas) against the device's measured
    fp32 matmul peak;
(d) peak memory (CUDA: max allocated; CPU: the process's peak resident set).

Then it estimates the wall time of the whole ``paper`` profile (every run its notebooks
request, ``Profile.planned_runs``) from per-step times measured here on CIFAR-shaped
random data, once with every run alone and once with the measured grouping speed-up applied
to the runs that train in groups. Timed sections use training time only (no per-epoch
diagnostics; those cost a few percent of an epoch, see step_cost.py).

Run: .venv/bin/python benchmarks/throughput.py [--steps 150] [--epochs 4] [--estimate-steps 8] [--no-estimate]
(the closing note of issue 6 used --steps 468 --epochs 8: the quick profile's run length)
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time

import torch
import torch.nn.functional as F
from _timing import projection, sync
from step_cost import CountFlops, matmul_peak_gflops
from torch.utils.data import DataLoader, TensorDataset

import faeval as fe
from faeval.book.profiles import PROFILES
from faeval.many import fit_group
from faeval.schedule import default_workers
from faeval.train import adamw, fit


def fashion_subset(n: int, device):
    try:
        ds = fe.load_dataset("fashion-mnist", subset=n if n < 60000 else None)
        src = "Fashion-MNIST"
    except FileNotFoundError:
        ds = fe.load_dataset("synthetic", d=784, n_train=n, n_test=2048)
        src = "synthetic (Fashion-MNIST not installed)"
    return ds.to(device), src


def reference_loop(model, x_cpu, y_cpu, device, steps: int) -> float:
    """Seconds per step of the usual loop: DataLoader over CPU tensors, per-step .item() logging."""
    loader = DataLoader(TensorDataset(x_cpu, y_cpu), batch_size=128, shuffle=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    log = []
    n = 0
    sync(device)
    start = time.perf_counter()
    while n < steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            log.append((loss.item(), (logits.argmax(1) == y).float().mean().item()))
            n += 1
            if n == steps:
                break
    sync(device)
    return (time.perf_counter() - start) / steps


def steps_per_second(ds, method: str, device, steps: int) -> float:
    """Training steps per second of one run (after a warm-up), at the current thread count."""
    model, rule = build(ds, method, 0, device)
    opt = adamw(rule.parameters(), lr=1e-3, weight_decay=0.01)
    batches = list(ds.batches(128, seed=0, epoch=1))
    for i in range(steps + 20):
        if i == 20:
            sync(device)
            start = time.perf_counter()
        x, y = batches[i % len(batches)]
        opt.zero_grad()
        rule.step(x, y)
        opt.step()
    sync(device)
    return steps / (time.perf_counter() - start)


def train_seconds(run) -> float:
    return sum(r["seconds"] for r in run.history)


def build(ds, method, seed, device, width=256, depth=4):
    model = fe.build_model("resmlp", ds.input_shape, ds.num_classes, seed=seed, width=width, depth=depth).to(device)
    return model, fe.build_method(method, model, seed=seed)


def _how(device) -> str:
    return "vectorised groups" if device.type != "cpu" else "1-thread processes, one per run here"


def peak_memory(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2 ** 20:.0f} MiB (CUDA max allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (peak resident set of the process)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=150, help="training steps per epoch in (a) and (b)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run in (b)")
    ap.add_argument("--estimate-steps", type=int, default=8, help="steps timed per distinct run kind for the estimate")
    ap.add_argument("--no-estimate", action="store_true", help="skip the paper-profile estimate")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = ap.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    peak = matmul_peak_gflops() if device.type == "cpu" else _cuda_peak(device)
    print(f"device: {name}; torch {torch.__version__}; fp32 matmul peak {peak:.0f} GFLOP/s")
    ds, src = fashion_subset(args.steps * 128, device)
    print(f"data: {src}, {ds.n_train} training images = {args.steps} steps of 128 per epoch; ResMLP d=256 L=4\n")

    # (a) our loop vs the reference loop, BP
    fit(*build(ds, "bp", 0, device), ds, 1, 0, progress=False, eval_n=256)        # warm-up
    ours = train_seconds(fit(*build(ds, "bp", 0, device), ds, 1, 0, progress=False, eval_n=256)) / args.steps
    ref_model = build(ds, "bp", 0, device)[0]
    ref = reference_loop(ref_model, ds.x_train.cpu(), ds.y_train.cpu(), device, args.steps)
    print(f"(a) BP per step: ours {1e3 * ours:.2f} ms, reference loop {1e3 * ref:.2f} ms -> {ref / ours:.2f}x")

    # (b) 3 seeds: one vectorised group (fit_group), and fit_many's default, vs 3 runs one after another
    seeds = (0, 1, 2)
    group_speedup, group_seconds, many_speedup = {}, {}, {}
    for method in ("bp", "dfa"):
        start = time.perf_counter()
        for s in seeds:
            fit(*build(ds, method, s, device), ds, args.epochs, s, progress=False, eval_n=256)
        alone = time.perf_counter() - start
        built = [build(ds, method, s, device) for s in seeds]
        start = time.perf_counter()
        fit_group([b[0] for b in built], [b[1] for b in built], [ds] * 3, args.epochs, list(seeds), progress=False,
                  eval_n=256)
        together = time.perf_counter() - start
        group_speedup[method], group_seconds[method] = alone / together, together
        with tempfile.TemporaryDirectory() as store:
            cfgs = [{"method": method, "seed": s, "epochs": args.epochs, "subset": ds.n_train, "eval_n": 256}
                    for s in seeds]
            start = time.perf_counter()
            fe.fit_many(cfgs, results=store, device=str(device), progress=False,
                        workers=None if device.type != "cpu" else default_workers(3))
            many = time.perf_counter() - start
        many_speedup[method] = alone / many
        print(f"(b) {method}, 3 seeds x {args.epochs} epoch(s): one by one {alone:.1f} s; one vectorised group "
              f"{together:.1f} s ({alone / together:.2f}x); fit_many default ({_how(device)}) {many:.1f} s "
              f"({alone / many:.2f}x, process start-up and data loading included)")
        if device.type == "cpu":
            cores, t_all = torch.get_num_threads(), steps_per_second(ds, method, device, 200)
            torch.set_num_threads(1)
            t_one = steps_per_second(ds, method, device, 200)
            torch.set_num_threads(cores)
            print(f"    ceiling for independent runs side by side on this CPU: one run steps {t_all:.0f}/s on "
                  f"{cores} threads, {t_one:.0f}/s on 1 thread, so {cores} runs side by side can be at most "
                  f"{cores * t_one / t_all:.2f}x one after another")

    # (c) FLOP/s
    model, rule = build(ds, "bp", 0, device)
    x, y = ds.x_train[:128], ds.y_train[:128]
    with CountFlops() as fc:
        rule.step(x, y)
    gflop = fc.total / 1e9
    grouped = 3 * gflop * args.steps * args.epochs / group_seconds["bp"]        # per-epoch records included
    print(f"(c) BP step: {gflop:.3f} GFLOP; one run {gflop / ours:.0f} GFLOP/s ({100 * gflop / ours / peak:.0f}% of "
          f"peak); a group of 3 runs {grouped:.0f} GFLOP/s ({100 * grouped / peak:.0f}% of peak)")
    print(f"(d) peak memory: {peak_memory(device)}")

    if args.no_estimate:
        return
    paper = PROFILES["paper"]
    planned = paper.planned_runs()
    # GPU: fit_many trains groupable runs as vectorised groups; CPU: every run in 1-thread processes
    factor = max(group_speedup.values()) if device.type != "cpu" else min(many_speedup.values())
    est = projection(planned, device, args.estimate_steps, factor if device.type != "cpu" else 1.0)
    grouped_s = est["grouped"] if device.type != "cpu" else est["alone"] / factor
    print(f"\npaper profile: {len(planned)} runs (CIFAR-10 for {paper.epochs} epochs, plus the appendix's "
          f"Fashion-MNIST and synthetic runs; per-step times measured here, {args.estimate_steps} steps per kind "
          f"of run, {est['kinds']} kinds)")
    for m, t in sorted(est["by_method"].items(), key=lambda kv: -kv[1]):
        print(f"  {m:14s} {t / 3600:8.2f} h")
    print(f"  every run alone, one after another: {est['alone'] / 3600:.2f} h; through fit_many ({_how(device)}, "
          f"measured speed-up {factor:.2f}x applied): {grouped_s / 3600:.2f} h on {name}")
    print("  (training steps only: per-epoch diagnostics add a few percent; notebooks' own analysis not included)")


def _cuda_peak(device, n: int = 8192) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * 10 / (time.perf_counter() - start) / 1e9


if __name__ == "__main__":
    main()
