"""Timing helpers shared by the benchmarks and scripts/gpu_check.py (not a benchmark itself)."""
from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

import faeval as fe
from faeval.config import train_size
from faeval.many import why_not_groupable
from faeval.schedule import group_key
from faeval.train import adamw


def best_of(fn: Callable[[], object], repeat: int = 3, warmup: bool = False) -> float:
    """Best wall time of ``repeat`` calls of ``fn`` in seconds (after one untimed call if ``warmup``)."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def sync(device) -> None:
    """Wait for the device's queued work (a CUDA timing means nothing without it)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def input_shape(cfg: dict) -> tuple:
    """The per-sample input shape of canonical config ``cfg``'s dataset (read from its name, no files)."""
    if cfg["dataset"] == "synthetic":
        return (cfg["data"].get("d", 128),)
    return (1, 28, 28) if cfg["dataset"] in ("fashion-mnist", "mnist") else (3, 32, 32)


class Stepper:
    """One run of canonical config ``cfg`` taking training steps as :func:`faeval.fit` takes them (its AdamW
    groups, the rule's own networks, ``after_step``; ``precision="bfloat16"`` under ``torch.autocast``), on one
    fixed batch of random data of the config's input shape: a step's cost does not depend on the pixels."""

    def __init__(self, cfg: dict, device, precision: str = "float32", batch: int = 128, num_classes: int = 10):
        self.device = torch.device(device)
        shape = input_shape(cfg)
        self.model = fe.build_model(cfg["arch"], shape, num_classes, seed=cfg["seed"], **cfg["model"]).to(device)
        self.rule = fe.build_method(cfg["method"], self.model, seed=cfg["seed"], **cfg["hparams"])
        self.rule.start_training(10 ** 6)     # a schedule past any warm-up (Credit Bridge's): the steady-state step
        self.opt = adamw(self.rule.param_groups(cfg["lr"]), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        aux = self.rule.aux_parameters()
        self.opt_fb = adamw(aux, lr=cfg["lr_fb"], weight_decay=cfg["weight_decay"]) if aux else None
        g = torch.Generator().manual_seed(0)          # a fixed probe batch, not one of a run's random streams
        self.x = torch.randn(batch, *shape, generator=g).to(device)
        self.y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
        self.low = None if precision == "float32" else getattr(torch, precision)

    def step(self) -> dict:
        """One training step; returns the rule's statistics (still on the device)."""
        self.opt.zero_grad(set_to_none=True)
        if self.opt_fb is not None:
            self.opt_fb.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.low or torch.bfloat16, enabled=self.low is not None):
            stats = self.rule.step(self.x, self.y)
        self.opt.step()
        if self.opt_fb is not None:
            self.opt_fb.step()
        self.rule.after_step()
        return stats

    def seconds_per_step(self, steps: int, warmup: int = 2) -> float:
        for _ in range(warmup):
            self.step()
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return (time.perf_counter() - start) / steps


def run_steps(cfg: dict) -> int:
    """Training steps of the run of canonical config ``cfg``."""
    return cfg["epochs"] * math.ceil(train_size(cfg) / cfg["batch_size"])


def projection(planned: Sequence[dict], device, steps: int, group_speedup: float, batch: int = 128,
               warmup: int = 2) -> dict:
    """The training time of every run of ``planned`` (canonical configs) from per-step times measured here
    (``steps`` timed steps of ``batch`` samples, after ``warmup`` untimed ones, per kind of run: rule,
    architecture, model options, hyperparameters, input shape; the runs' own batch is 128, and a smaller one
    times the code path, not the cost), once with every run alone and once with the runs that ``fit_many``
    groups (two or more of one :func:`group_key` whose rule can be grouped) sped up by ``group_speedup``.
    Returns seconds (``alone``, ``grouped``, ``by_method``) and the number of ``kinds`` timed."""
    cache: dict = {}
    groups: dict = defaultdict(list)
    by_method: dict = defaultdict(float)
    alone = 0.0
    for cfg in planned:
        kind = (cfg["method"], cfg["arch"], str(sorted(cfg["model"].items())), str(sorted(cfg["hparams"].items())),
                input_shape(cfg))
        if kind not in cache:
            stepper = Stepper(cfg, device, batch=batch)
            cache[kind] = (stepper.seconds_per_step(steps, warmup), why_not_groupable(stepper.rule))
        per_step, why = cache[kind]
        t = run_steps(cfg) * per_step
        alone += t
        by_method[cfg["method"]] += t
        groups[None if why else group_key(cfg)].append(t)
    grouped = sum(sum(ts) / (group_speedup if key is not None and len(ts) > 1 else 1.0) for key, ts in groups.items())
    return {"alone": alone, "grouped": grouped, "by_method": dict(by_method), "kinds": len(cache)}
