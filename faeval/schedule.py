"""Many runs at once: load what the store holds, train the rest in groups or processes.

:func:`fit_many` is the one entry point. Runs that differ only in seed or penalty
weight can train together as one vectorised model (:mod:`faeval.many`, the default
on a GPU); on a CPU the rest are spread over one-thread worker processes. Every job
trains its runs and writes them into the run store (:mod:`faeval.store`); the
results are then loaded from there, in the order asked for.

>>> import tempfile
>>> runs = fit_many([dict(method="bp", epochs=1, seed=s, dataset="synthetic", width=16, depth=2,
...                       n_train=512, n_test=64, d=32, eval_n=64) for s in (0, 1)],
...                 results=tempfile.mkdtemp(), progress=False)
>>> [r.config["seed"] for r in runs], all(r.history[-1]["epoch"] == 1 for r in runs)
([0, 1], True)
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .config import canonical_config, train_size
from .models import arch_class
from .store import (
    DamagedRunError,
    build_run,
    default_device,
    load_data,
    load_run,
    monitor_for,
    results_dir,
    run_dir,
    store_run,
    train_and_store,
)
from .train import Run, progress_bar

log = logging.getLogger("faeval")

__all__ = ["fit_many", "group_key", "group_runs", "default_workers"]


#: the config keys that may differ within a vectorised group (besides the data a seed draws)
_GROUP_FREE = ("seed",)
_GROUP_FREE_HPARAMS = ("penalty",)


def group_key(cfg: dict) -> str:
    """What must be equal for two runs to train in one vectorised group: everything but the seed and
    the penalty weight."""
    rest = {k: v for k, v in cfg.items() if k not in _GROUP_FREE}
    rest["hparams"] = {k: v for k, v in cfg["hparams"].items() if k not in _GROUP_FREE_HPARAMS}
    return json.dumps(rest, sort_keys=True)


def fit_many(configs: Sequence[Mapping], *, results=None, retrain: bool = False, progress: bool = True,
             device: str | None = None, data_root: str | None = None, group: bool | None = None,
             workers: int | None = None) -> list[Run]:
    """Train (or load) every run of ``configs``; runs that differ only in seed or penalty train together.

    Stored runs are loaded. With ``group=True`` (the default on a GPU) the rest are
    grouped by :func:`group_key`, and each group of two or more runs whose rule and
    architecture allow it (:func:`faeval.many.why_not_groupable`) trains as one
    vectorised model (:func:`faeval.many.fit_group`): same results as one by one, up to
    floating-point rounding. A run that cannot be grouped trains on its own, and the
    reason is logged (logger ``"faeval"``); a group that runs out of device memory is
    split and retried.

    On a CPU grouping is off by default (slower there than the same runs one after
    another: ``benchmarks/README.md``), and the runs are spread over ``workers``
    processes of one thread each instead. A single run already keeps both cores of a
    small machine busy, which bounds that gain (measured in ``benchmarks/README.md``).
    The default is one process per core, or one per run when there are at most twice as
    many runs as cores and they do not divide evenly; a request that amounts to a few
    seconds of training stays in this process. Each job stores its runs; ``workers=1``
    trains in this process. Processes start by default only in Jupyter, ``python -c`` and
    ``python -m faeval``: a script passes ``workers=N`` itself, and must then guard its top
    level with ``if __name__ == "__main__":`` (Python re-imports it in every worker).
    Returns the runs in the order of ``configs``.
    """
    from .many import why_not_groupable

    cfgs = [canonical_config(**dict(c)) for c in configs]
    paths = [run_dir(cfg, results) for cfg in cfgs]
    todo: dict[Path, int] = {}                     # run dir -> first index asking for it
    for i, path in enumerate(paths):
        if path not in todo and (retrain or not path.is_dir()):
            todo[path] = i
    device = device or default_device()
    group = device != "cpu" if group is None else group
    keys: dict[int, str | None] = {}
    verdicts: dict[str, str | None] = {}           # runs of one group key share the answer: one build per key
    for i in todo.values():
        key = group_key(cfgs[i])
        if group and key not in verdicts:
            verdicts[key] = why_not_groupable(build_run(cfgs[i], device, data_root)[1])
        why = verdicts[key] if group else "grouping is off (group=False)"
        keys[i] = None if why else key
        if why and group and len(todo) > 1:
            log.info("training %s seed %s on its own: %s", cfgs[i]["method"], cfgs[i]["seed"], why)
    jobs = sorted(group_runs(keys), key=lambda idx: -sum(_cost(cfgs[i]) for i in idx))
    if workers is None:      # processes cost seconds to start: only worth it for more than a few seconds of work
        small = sum(_cost(cfgs[i]) for idx in jobs for i in idx) < _WORTH_PROCESSES
        workers = default_workers(len(jobs)) if device == "cpu" and not small and _spawn_is_safe() else 1
    if workers > 1 and len(jobs) > 1:
        _run_jobs_in_processes(jobs, cfgs, results, retrain, device, data_root, workers, progress)
    else:
        for idx in jobs:
            _run_job([cfgs[i] for i in idx], results, retrain, device, data_root, progress)
    runs: dict[Path, Run] = {}
    damaged: list[str] = []
    for path in paths:
        if path not in runs:
            try:
                runs[path] = load_run(path, device=device)
            except DamagedRunError as e:
                damaged.append(str(e))
                continue
            runs[path].from_cache = path not in todo
    if damaged:      # every damaged entry at once, not the first one
        raise DamagedRunError(f"{len(damaged)} of {len(set(paths))} stored runs cannot be read back:\n  "
                              + "\n  ".join(damaged))
    return [runs[p] for p in paths]


def _spawn_is_safe() -> bool:
    """Whether worker processes may start by default: in Jupyter/IPython, ``python -c`` and
    ``python -m faeval``. A script run as ``python script.py`` is re-imported by every spawned
    worker, which re-runs its top level unless it is guarded by ``if __name__ == "__main__":``;
    such scripts train in-process unless they ask for ``workers=N`` themselves."""
    import sys

    main = sys.modules.get("__main__")
    return getattr(main, "__file__", None) is None or getattr(main.__spec__, "name", "") == "faeval.__main__"


def default_workers(jobs: int) -> int:
    """How many worker processes ``fit_many`` starts by default for ``jobs`` jobs on this machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if jobs <= 2 * cores and jobs % cores:
        return jobs
    return min(jobs, cores)


#: below this total _cost (about 15 s of BP training on 2 cores) fit_many trains in its own process
_WORTH_PROCESSES = 300_000

#: rough cost of a training step relative to BP (benchmarks/step_cost.py), to start long jobs first
_STEP_COST = {"ep": 6.3, "credit_bridge": 3.5, "state_bridge": 2.3, "frozen": 0.65}


def _cost(cfg: dict) -> float:
    scale = arch_class(cfg["arch"]).step_cost(cfg["model"])
    return cfg["epochs"] * train_size(cfg) * _STEP_COST.get(cfg["method"], 1.0) * scale


def _run_job(cfgs: list[dict], results, retrain: bool, device: str, data_root, progress: bool,
             threads: int | None = None) -> list[str]:
    """Train one job (a single run, or a group as one vectorised model) and store its runs."""
    from .many import fit_group, fit_group_splitting

    if threads:
        torch.set_num_threads(threads)
    if len(cfgs) == 1:
        return [str(train_and_store(cfgs[0], results, retrain, device, data_root, progress).path)]
    start = time.perf_counter()
    c0 = cfgs[0]
    log.info("training %d %s runs together (seeds %s, penalties %s)", len(cfgs), c0["method"],
             [c["seed"] for c in cfgs], [c["hparams"].get("penalty") for c in cfgs])

    def build(idx):
        built = [build_run(cfgs[i], device, data_root) for i in idx]
        return ([b[0] for b in built], [b[1] for b in built], [b[2] for b in built],
                [cfgs[i]["seed"] for i in idx], [cfgs[i] for i in idx])

    def train(models, methods, datasets, seeds, group_cfgs):
        return fit_group(models, methods, datasets, c0["epochs"], seeds, batch_size=c0["batch_size"], lr=c0["lr"],
                         weight_decay=c0["weight_decay"], eval_n=c0["eval_n"],
                         monitors=[monitor_for(c) for c in group_cfgs], progress=progress, configs=group_cfgs)

    trained = fit_group_splitting(build, list(range(len(cfgs))), train)
    seconds = (time.perf_counter() - start) / len(cfgs)
    return [str(store_run(run, cfgs[i], load_data(cfgs[i], device, data_root), device, seconds,
                       run_dir(cfgs[i], results), retrain, trained_with=len(trained)).path)
            for i, run in trained.items()]


def _worker_init(threads: int, level: int) -> None:
    torch.set_num_threads(threads)
    logging.getLogger("faeval").setLevel(level)


def _run_jobs_in_processes(jobs, cfgs, results, retrain, device, data_root, workers: int, progress: bool) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, torch.get_num_threads() // workers)
    root = str(results_dir(results).resolve())
    log.info("training %d job(s) (%d runs) in %d processes of %d thread(s)", len(jobs), sum(map(len, jobs)),
             workers, threads)
    bar = progress_bar(sum(map(len, jobs)), f"runs ({workers} processes)", progress, unit="run")
    ctx = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                 initargs=(threads, log.getEffectiveLevel())) as pool:
            futures = {pool.submit(_run_job, [cfgs[i] for i in idx], root, retrain, device, data_root, False,
                                   threads): idx for idx in jobs}
            for fut in as_completed(futures):
                fut.result()                   # a failed job raises here, naming its error
                bar.update(len(futures[fut]))
    finally:
        bar.close()


def group_runs(keys: Mapping[int, str | None]) -> list[list[int]]:
    """Indices grouped by key, in first-seen order; a ``None`` key is a group of its own."""
    groups: dict[str, list[int]] = {}
    out: list[list[int]] = []
    for i, k in keys.items():
        if k is None:
            out.append([i])
        elif k in groups:
            groups[k].append(i)
        else:
            groups[k] = [i]
            out.append(groups[k])
    return out
