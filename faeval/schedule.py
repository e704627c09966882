"""Many runs at once: load what the store holds, train the rest in groups or processes.

:func:`fit_many` is the one entry point. Runs that differ only in seed or penalty
weight can train together as one vectorised model (:mod:`faeval.many`, the default
on a GPU); on a CPU the rest are spread over one-thread worker processes, and with
``executor=`` they go to any :class:`concurrent.futures.Executor`, such as a Dask
cluster's (:func:`dask_executor`). Every job trains its runs and writes them into the
run store (:mod:`faeval.store`); the results are then loaded from there, in the order
asked for. A job that fails is reported with its config once every other job has
finished and stored its runs (:class:`RunFailedError`).

>>> import tempfile
>>> runs = fit_many([dict(method="bp", epochs=1, seed=s, dataset="synthetic", width=16, depth=2,
...                       n_train=512, n_test=64, d=32, eval_n=64) for s in (0, 1)],
...                 results=tempfile.mkdtemp(), progress=False)
>>> [r.config["seed"] for r in runs], all(r.history[-1]["epoch"] == 1 for r in runs)
([0, 1], True)
"""
from __future__ import annotations

import heapq
import json
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import torch
from tqdm import tqdm

from . import many
from .config import canonical_config, test_size, train_size
from .methods import METHODS, PACKAGE_METHODS, method_class
from .models import ARCHS, PACKAGE_ARCHS, arch_class
from .store import (
    DamagedRunError,
    build_run,
    default_device,
    distinguishing_options,
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

__all__ = ["fit_many", "train_until_stable", "group_key", "group_runs", "default_workers", "dask_executor",
           "exit_on_sigterm", "RunFailedError", "ship", "install"]


class RunFailedError(RuntimeError):
    """Some of ``fit_many``'s jobs raised; the others finished and are stored. ``failures`` holds
    ``(config, exception)`` for every run of a failed job."""

    def __init__(self, failures: list[tuple[dict, BaseException]], total: int) -> None:
        self.failures = failures
        lines = [f"{describe(cfg)}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                 for cfg, e in failures]
        super().__init__(f"{len(failures)} of {total} runs failed (the others are stored):\n  " + "\n  ".join(lines))


def describe(cfg: dict) -> str:
    """A run config in one line: rule, architecture, data, seed, epochs and the options that differ from
    the defaults."""
    opts = distinguishing_options(cfg)
    return (f"{cfg['method']} on {cfg['arch']}, {cfg['dataset']}, seed {cfg['seed']}, {cfg['epochs']} epochs"
            + (f" ({opts})" if opts else ""))


def group_key(cfg: dict) -> str:
    """What must be equal for two runs to train in one vectorised group: everything but the seed (and
    the data a seed draws) and the rule's ``group_free`` hyperparameters (the penalty weight)."""
    free = method_class(cfg["method"]).group_free
    rest = {k: v for k, v in cfg.items() if k != "seed"}
    rest["hparams"] = {k: v for k, v in cfg["hparams"].items() if k not in free}
    return json.dumps(rest, sort_keys=True)


def train_until_stable(plan: Callable[[], Sequence[Mapping]], *, results=None, **fit_kw) -> list[dict]:
    """Train what ``plan()`` asks for and the store lacks, then ask again, until it asks for nothing new: a
    plan may grow as its runs are stored (a sequential plan adds seeds once it has read the first ones).
    ``fit_kw`` go to :func:`fit_many`. Returns the canonical configs of the runs it trained. A pass whose
    runs are still missing from the store afterwards raises instead of training them again."""
    trained: list[dict] = []
    last = None
    while True:
        todo = [c for c in map(lambda c: canonical_config(**c), plan()) if not run_dir(c, results).is_dir()]
        if not todo:
            return trained
        if todo == last:
            raise RuntimeError(f"{len(todo)} runs were trained but are not in the store at {results_dir(results)}; "
                               "check that nothing else moves or deletes its entries")
        if last is not None:
            log.info("the plan grew by %d runs now that the others are stored", len(todo))
        fit_many(todo, results=results, **fit_kw)
        trained += todo
        last = todo


def fit_many(configs: Sequence[Mapping], *, results=None, retrain: bool = False, progress: bool = True,
             device: str | None = None, data_root: str | None = None, group: bool | None = None,
             workers: int | None = None, executor: Executor | None = None) -> list[Run]:
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
    trains in this process. Processes start by default only in Jupyter, ``python -c``,
    ``python -m faeval`` and ``python -m faeval.book``: a script passes ``workers=N`` itself, and
    must then guard its top level with ``if __name__ == "__main__":`` (Python re-imports it in
    every worker).
    Worker processes stop within a second when this process ends, by a signal or an
    exception, and an interrupted run leaves no entry in the store.

    ``executor``: any :class:`concurrent.futures.Executor` takes the jobs instead, e.g. a
    Dask cluster's (:func:`dask_executor`, or ``distributed.Client(...).get_executor()``).
    The store (``results``) must then be a path every worker sees (a shared file system);
    each worker trains on its own default device unless ``device`` is given, and grouping is
    off unless ``group=True``. Two workers that train the same run leave one complete entry.

    A job that raises does not stop the others: once they have finished and stored their
    runs, :class:`RunFailedError` names every failed run's config and error.
    Returns the runs in the order of ``configs``.
    """
    job_device = device if executor is not None else None   # workers elsewhere pick their own by default
    device = device or default_device()
    plan = _plan(configs, results, retrain, device, data_root, group, workers, executor)
    _dispatch(plan, results, retrain, device, job_device, data_root, progress, executor)
    return _load(plan, device)


@dataclass
class _Plan:
    """What :func:`fit_many` trains, and where: the runs asked for, those to train, and their jobs."""

    cfgs: list[dict]                      # canonical configs, in the order asked for
    paths: list[Path]                     # their store entries
    todo: dict[Path, int]                 # entry to train -> the first index asking for it
    jobs: list[list[int]]                 # jobs for worker processes or the executor (indices into cfgs)
    here: list[list[int]]                 # jobs to train in this process
    code: dict[tuple, bytes | None]       # job -> the classes its worker needs (ship)
    workers: int

    def configs_of(self, idx: Sequence[int]) -> list[dict]:
        return [self.cfgs[i] for i in idx]


def _plan(configs, results, retrain: bool, device: str, data_root, group: bool | None, workers: int | None,
          executor: Executor | None) -> _Plan:
    """The runs to train, grouped into jobs (largest first), and the workers that take them."""
    cfgs = [canonical_config(**dict(c)) for c in configs]
    paths = [run_dir(cfg, results) for cfg in cfgs]
    todo: dict[Path, int] = {}
    for i, path in enumerate(paths):
        if path not in todo and (retrain or not path.is_dir()):
            todo[path] = i
    group = (device != "cpu" and executor is None) if group is None else group
    keys = _group_keys(cfgs, list(todo.values()), group, "cpu" if executor else device, data_root)
    jobs = sorted(group_runs(keys), key=lambda idx: -sum(_cost(cfgs[i]) for i in idx))
    if workers is None and executor is None:   # processes cost seconds to start: only worth it for more than a few
        small = sum(_cost(cfgs[i]) for idx in jobs for i in idx) < _WORTH_PROCESSES     # seconds of work
        workers = default_workers(len(jobs)) if device == "cpu" and not small and _spawn_is_safe() else 1
    elsewhere = executor is not None or (workers > 1 and len(jobs) > 1)
    code, here = _ship_user_code(jobs, cfgs) if elsewhere else ({}, jobs)   # user-defined rules travel with their jobs
    return _Plan(cfgs, paths, todo, [idx for idx in jobs if tuple(idx) in code], here, code, workers or 0)


def _dispatch(plan: _Plan, results, retrain: bool, device: str, job_device: str | None, data_root, progress: bool,
              executor: Executor | None) -> None:
    """Train the plan's jobs, each storing its runs: on the executor or in worker processes, then those that
    stay in this process."""
    if executor is not None:
        root = str(results_dir(results).resolve())
        _run_jobs(lambda idx: executor.submit(_run_job, plan.configs_of(idx), root, retrain, job_device, data_root,
                                              False, code=plan.code[tuple(idx)]), plan.jobs, plan.cfgs,
                  "runs (executor)", progress, workers=0)
    elif plan.jobs:
        _run_jobs_in_processes(plan, results, retrain, device, data_root, progress)
    if plan.here:
        _run_jobs(lambda idx: _done(_run_job, plan.configs_of(idx), results, retrain, device, data_root, progress),
                  plan.here, plan.cfgs, None, progress)


def _group_keys(cfgs: list[dict], todo: list[int], group: bool, device: str, data_root) -> dict[int, str | None]:
    """Each run's :func:`group_key`, or None where it trains on its own (grouping off, or its rule or model
    cannot be grouped: asked once per key, of a run built on ``device``; the reason is logged)."""
    keys: dict[int, str | None] = {}
    verdicts: dict[str, str | None] = {}
    for i in todo:
        key = group_key(cfgs[i])
        if group and key not in verdicts:
            verdicts[key] = ("the vectorised step has no reduced precision" if "precision" in cfgs[i] else
                             many.why_not_groupable(build_run(cfgs[i], device, data_root)[1]))
        why = verdicts[key] if group else "grouping is off (group=False)"
        keys[i] = None if why else key
        if why and group and len(todo) > 1:
            log.info("training %s seed %s on its own: %s", cfgs[i]["method"], cfgs[i]["seed"], why)
    return keys


def _load(plan: _Plan, device: str) -> list[Run]:
    """Every run of the plan from the store, in the order asked for (each entry read once); every damaged
    entry is named at once."""
    runs: dict[Path, Run] = {}
    damaged: list[str] = []
    for path in plan.paths:
        if path not in runs:
            try:
                runs[path] = load_run(path, device=device)
            except DamagedRunError as e:
                damaged.append(str(e))
                continue
            runs[path].from_cache = path not in plan.todo
    if damaged:
        raise DamagedRunError(f"{len(damaged)} of {len(set(plan.paths))} stored runs cannot be read back:\n  "
                              + "\n  ".join(damaged))
    return [runs[p] for p in plan.paths]


def _spawn_is_safe() -> bool:
    """Whether worker processes may start by default: in Jupyter/IPython, ``python -c`` and faeval's
    own command lines (``python -m faeval``, ``python -m faeval.book``). A script run as
    ``python script.py`` is re-imported by every spawned worker, which re-runs its top level unless
    it is guarded by ``if __name__ == "__main__":``; such scripts train in-process unless they ask
    for ``workers=N`` themselves."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", "")
    return getattr(main, "__file__", None) is None or (name.split(".")[0] == "faeval" and name.endswith(".__main__"))


def default_workers(jobs: int) -> int:
    """How many worker processes ``fit_many`` starts by default for ``jobs`` jobs on this machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if jobs <= 2 * cores and jobs % cores:
        return jobs
    return min(jobs, cores)


#: below this total _cost (about 15 s of BP training on 2 cores) fit_many trains in its own process
_WORTH_PROCESSES = 300_000


def _cost(cfg: dict) -> float:
    """A run's estimated cost: its training steps and its epoch records (one more than its epochs), in units of a
    BP step on one sample of ResMLP d=256 (``benchmarks/eta_replay.py`` checks it against a store's runs)."""
    arch = arch_class(cfg["arch"])
    steps = cfg["epochs"] * train_size(cfg) * method_class(cfg["method"]).step_cost(cfg["hparams"])
    return arch.step_cost(cfg["model"]) * (steps + (cfg["epochs"] + 1) * test_size(cfg) * arch.eval_cost)


def cost_kind(cfg: dict) -> tuple[str, str]:
    """The runs whose observed speed :class:`RemainingTime` applies to each other: one architecture and rule."""
    return cfg["arch"], cfg["method"]


def ship(configs: Iterable[Mapping]) -> bytes | None:
    """The classes that canonical ``configs`` need and a worker that imports faeval afresh lacks, serialised
    (``None`` when ``import faeval`` registers every one of them): rules and architectures defined outside
    faeval (by value for a notebook's, by reference for a module's), and those of a module ``import faeval``
    does not load (the book's probe rules)."""
    classes = {}
    for cfg in configs:
        for kind, registry, package in (("method", METHODS, PACKAGE_METHODS), ("arch", ARCHS, PACKAGE_ARCHS)):
            if package.get(cfg[kind]) is not registry[cfg[kind]]:
                classes[kind, cfg[kind]] = registry[cfg[kind]]
    if not classes:
        return None
    return cloudpickle.dumps(classes)


def install(blob: bytes | None) -> None:
    """Register the classes of :func:`ship` in this process (a worker), replacing any of the same name."""
    if blob is None:
        return
    for (kind, name), cls in pickle.loads(blob).items():
        (METHODS if kind == "method" else ARCHS)[name] = cls


def _ship_user_code(jobs: list[list[int]], cfgs: list[dict]) -> tuple[dict[tuple, bytes | None], list[list[int]]]:
    """``({job: serialised user classes}, jobs to train here)``: each job's rules and architectures defined
    outside faeval (:func:`ship`), for a worker that imports faeval afresh. A job whose
    classes cannot be serialised trains in this process instead, and the log says why."""
    code, here = {}, []
    for idx in jobs:
        try:
            code[tuple(idx)] = ship([cfgs[i] for i in idx])
        except Exception as e:       # cloudpickle raises many kinds (PicklingError, TypeError, ...)
            here.append(idx)
            log.warning("training %s in this process: its code cannot be sent to a worker (%s: %s)",
                        describe(cfgs[idx[0]]), type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    return code, here


def _run_job(cfgs: list[dict], results, retrain: bool, device: str | None, data_root, progress: bool,
             threads: int | None = None, code: bytes | None = None) -> list[str]:
    """Train one job (a single run, or a group as one vectorised model) and store its runs. A run
    that another process stored meanwhile is kept, not trained again (unless ``retrain``). ``code``:
    the user classes the job needs (:func:`ship`), registered here first."""
    install(code)
    if threads:
        torch.set_num_threads(threads)
    device = device or default_device()
    stored = [str(run_dir(c, results)) for c in cfgs if not retrain and run_dir(c, results).is_dir()]
    cfgs = [c for c in cfgs if retrain or not run_dir(c, results).is_dir()]
    if not cfgs:
        return stored
    if len(cfgs) == 1:
        return stored + [str(train_and_store(cfgs[0], results, retrain, device, data_root, progress).path)]
    start = time.perf_counter()
    c0 = cfgs[0]
    log.info("training %d %s runs together (seeds %s, penalties %s)", len(cfgs), c0["method"],
             [c["seed"] for c in cfgs], [c["hparams"].get("penalty") for c in cfgs])

    def build(idx):
        built = [build_run(cfgs[i], device, data_root) for i in idx]
        return ([b[0] for b in built], [b[1] for b in built], [b[2] for b in built],
                [cfgs[i]["seed"] for i in idx], [cfgs[i] for i in idx])

    def train(models, methods, datasets, seeds, group_cfgs):
        return many.fit_group(models, methods, datasets, c0["epochs"], seeds, batch_size=c0["batch_size"], lr=c0["lr"],
                         weight_decay=c0["weight_decay"], eval_n=c0["eval_n"],
                         monitors=[monitor_for(c) for c in group_cfgs], progress=progress, configs=group_cfgs)

    trained = many.fit_group_splitting(build, list(range(len(cfgs))), train)
    seconds = (time.perf_counter() - start) / len(cfgs)
    return stored + [str(store_run(run, cfgs[i], load_data(cfgs[i], device, data_root), device, seconds,
                                   run_dir(cfgs[i], results), retrain, trained_with=len(trained)).path)
                     for i, run in trained.items()]


def _done(fn: Callable, *args) -> Future:
    """``fn(*args)`` run now, as a finished future (the in-process path shares the executors' bookkeeping)."""
    fut: Future = Future()
    try:
        fut.set_result(fn(*args))
    except Exception as e:        # a KeyboardInterrupt stops everything; an error stops only its job
        fut.set_exception(e)
    return fut


def _run_jobs(submit: Callable[[list[int]], Future], jobs: list[list[int]], cfgs: list[dict], desc: str | None,
              progress: bool, workers: int = 1) -> None:
    """Submit every job, wait for all of them, then raise :class:`RunFailedError` for those that failed.

    The progress bar advances by each job's estimated cost (:func:`_cost`), not by its count, and
    shows the time left as :class:`RemainingTime` estimates it for ``workers`` parallel workers."""
    costs = [sum(_cost(cfgs[i]) for i in idx) for idx in jobs]
    eta = RemainingTime(costs, workers, kinds=[cost_kind(cfgs[idx[0]]) for idx in jobs])
    bar = _CostBar(eta, sum(map(len, jobs)), desc or "runs", progress and desc is not None)
    failures: list[tuple[dict, BaseException]] = []
    try:
        futures = {submit(idx): k for k, idx in enumerate(jobs)}
        pending, last = set(futures), time.monotonic()
        while pending:
            done, pending = wait(pending, timeout=_TICK, return_when=FIRST_COMPLETED)
            now = time.monotonic()
            for fut in sorted(done, key=futures.get):
                k = futures[fut]
                eta.finished(k, now, since=last)
                err = fut.exception()
                if err is not None:
                    failures += [(cfgs[i], err) for i in jobs[k]]
                    log.error("failed: %s: %s: %s", "; ".join(describe(cfgs[i]) for i in jobs[k]),
                              type(err).__name__, err)
                bar.runs_done += len(jobs[k])
            for fut in sorted(pending, key=futures.get):      # in the order the workers take them
                if fut.running():
                    eta.started(futures[fut], now)
            bar.show(now)
            last = now
    finally:
        bar.close()
    if failures:
        raise RunFailedError(failures, sum(map(len, jobs))) from failures[0][1]


#: seconds between two refreshes of the progress bar while jobs run
_TICK = 5.0


class RemainingTime:
    """The time left of many jobs on ``workers`` parallel workers, from each job's estimated cost.

    A job's seconds are its cost over the speed (cost per second of one worker) observed on the finished
    jobs of its kind (``kinds``, e.g. its architecture and rule), or on all finished jobs while none of its
    kind has finished: the estimate corrects the cost model by the rate it observes, kind by kind. A running
    job has done as much as its running time at that speed says (at most 95% of it); the time left replays
    the rest of the queue, in order, on the workers as they come free, so the tail of a long last job
    counts in full. Before the first job finishes, or with ``workers=0`` (not known), :meth:`remaining` is
    ``None``.

    A job counts as running from the first :meth:`started` while fewer than ``workers`` run (a
    process pool marks one more job running than it runs: the one queued next).

    >>> eta = RemainingTime([40.0, 20.0, 20.0, 20.0], workers=2)
    >>> eta.started(0, 0.0); eta.started(1, 0.0); eta.finished(1, 10.0); eta.started(2, 10.0)
    >>> eta.remaining(10.0)        # 2 a second: job 0 needs 10 more seconds, job 2 needs 10, then job 3
    20.0
    >>> eta = RemainingTime([40.0, 20.0, 20.0, 20.0], workers=2, kinds=["ep", "bp", "bp", "ep"])
    >>> eta.started(0, 0.0); eta.started(1, 0.0); eta.finished(1, 10.0); eta.started(2, 10.0)
    >>> eta.finished(0, 40.0); eta.started(3, 40.0)
    >>> eta.remaining(40.0)        # ep ran at 1 a second: job 3 needs 20 more (job 2, bp at 2 a second, is late)
    20.0
    """

    def __init__(self, costs: Sequence[float], workers: int, kinds: Sequence[Hashable] | None = None) -> None:
        self.costs, self.workers = list(costs), workers
        self.kinds = list(kinds) if kinds is not None else [None] * len(self.costs)
        self.start: dict[int, float] = {}
        self.end: dict[int, float] = {}

    def running(self) -> list[int]:
        return [k for k in self.start if k not in self.end]

    def started(self, job: int, t: float) -> None:
        if job not in self.start and len(self.running()) < max(1, self.workers):
            self.start[job] = t

    def finished(self, job: int, t: float, since: float | None = None) -> None:
        """Job ``job`` ended at ``t``; one never seen running started at ``since`` (the last look) or ``t``."""
        self.start.setdefault(job, t if since is None else since)
        self.end.setdefault(job, t)

    def speed(self, jobs: Iterable[int] | None = None) -> float | None:
        """Cost per second of one worker, from the finished ``jobs`` (all by default; ``None`` before the first)."""
        jobs = list(self.end if jobs is None else jobs)
        secs = sum(self.end[k] - self.start[k] for k in jobs)
        return sum(self.costs[k] for k in jobs) / secs if jobs and secs > 0 else None

    def _speeds(self) -> list[float] | None:
        """Every job's speed: its kind's observed one, else all finished jobs' (``None`` before the first)."""
        v = self.speed()
        if v is None:
            return None
        by_kind: dict[Hashable, list[int]] = {}
        for k in self.end:
            by_kind.setdefault(self.kinds[k], []).append(k)
        of_kind = {kind: self.speed(jobs) or v for kind, jobs in by_kind.items()}
        return [of_kind.get(kind, v) for kind in self.kinds]

    def done(self, t: float) -> float:
        """The cost done by time ``t``: the finished jobs' and the running jobs' estimated share."""
        v = self._speeds() or [0.0] * len(self.costs)
        return (sum(self.costs[k] for k in self.end)
                + sum(min(v[k] * (t - self.start[k]), 0.95 * self.costs[k]) for k in self.running()))

    def remaining(self, t: float) -> float | None:
        """Seconds until the last job ends, as the queue replays on the workers (``None``: unknown yet)."""
        v = self._speeds()
        if v is None or self.workers < 1:
            return None
        busy = self.running()
        free = [max(self.costs[k] / v[k] - (t - self.start[k]), 0.05 * self.costs[k] / v[k]) for k in busy]
        free += [0.0] * (self.workers - len(free))
        queued = [c / v[k] for k, c in enumerate(self.costs) if k not in self.end and k not in busy]
        return max(free + in_order(queued, free)[1])


def in_order(durations: Sequence[float], free: Sequence[float]) -> tuple[list[float], list[float]]:
    """``(starts, ends)`` of jobs that run in the order given, each on the first worker to come free (``free``:
    when each worker comes free), as a process pool runs a queue.

    >>> in_order([3.0, 1.0, 1.0, 2.0], free=[0.0, 0.0])
    ([0.0, 0.0, 1.0, 2.0], [3.0, 1.0, 2.0, 4.0])
    """
    heap = list(free)
    heapq.heapify(heap)
    starts, ends = [], []
    for d in durations:
        t = heapq.heappop(heap)
        starts.append(t)
        ends.append(t + d)
        heapq.heappush(heap, t + d)
    return starts, ends


class _CostBar:
    """A tqdm bar over the jobs' estimated cost, reading ``k/n runs, elapsed, about T left``."""

    def __init__(self, eta: RemainingTime, runs: int, desc: str, enabled: bool) -> None:
        self.eta, self.runs, self.runs_done, self.desc = eta, runs, 0, desc
        self.t0 = time.monotonic()
        self.bar = progress_bar(sum(eta.costs), desc, enabled, unit="cost",
                                bar_format="{desc} {percentage:3.0f}%|{bar}|")
        self.show(self.t0)

    def show(self, now: float) -> None:
        left = self.eta.remaining(now)
        self.bar.n = min(self.eta.done(now), self.bar.total)
        clock = tqdm.format_interval
        self.bar.set_description_str(f"{self.desc}: {self.runs_done}/{self.runs} runs, {clock(now - self.t0)} "
                                     "elapsed" + (f", about {clock(left)} left" if left is not None else ""),
                                     refresh=True)

    def close(self) -> None:
        self.bar.close()


def _worker_init(threads: int, level: int, parent: int) -> None:
    torch.set_num_threads(threads)
    logging.getLogger("faeval").setLevel(level)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="faeval-parent-watch", daemon=True).start()


def _exit_with_parent(parent: int, every: float = 0.5) -> None:
    """End this worker process once its parent is gone (killed, or ended without stopping its workers):
    an orphaned worker would otherwise train on, unseen. A run it was training leaves no store entry."""
    while True:
        time.sleep(every)
        if os.getppid() != parent:
            os._exit(70)


def _run_jobs_in_processes(plan: _Plan, results, retrain, device, data_root, progress: bool) -> None:
    workers = plan.workers
    threads = max(1, torch.get_num_threads() // workers)
    root = str(results_dir(results).resolve())
    log.info("training %d job(s) (%d runs) in %d processes of %d thread(s)", len(plan.jobs),
             sum(map(len, plan.jobs)), workers, threads)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(threads, log.getEffectiveLevel(), os.getpid()))
    try:
        _run_jobs(lambda idx: pool.submit(_run_job, plan.configs_of(idx), root, retrain, device, data_root, False,
                                          threads, plan.code[tuple(idx)]), plan.jobs, plan.cfgs,
                  f"runs ({workers} processes)", progress, workers)
    except BaseException:       # an interrupt, a signal turned into SystemExit, a failed job: no worker trains on
        _stop_workers(pool)
        raise
    pool.shutdown()


def _stop_workers(pool) -> None:
    """Cancel a process pool's pending jobs and end its workers now (their runs in progress are lost, not stored)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


def exit_on_sigterm() -> None:
    """Make SIGTERM (a job scheduler stopping a build) end this process as an exception would, so that
    :func:`fit_many` stops its worker processes first instead of leaving them training."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def dask_executor(address: str, timeout: float = 5.0) -> Executor:
    """The executor of a running Dask scheduler at ``address`` (e.g. ``"tcp://10.0.0.5:8786"``), for
    ``fit_many(..., executor=...)``.

    Needs the ``cluster`` extra (``pip install -e '.[cluster]'``: ``dask[distributed]``). An address
    that does not answer within ``timeout`` seconds raises ``ConnectionError`` naming it.
    """
    try:
        from distributed import Client
    except ImportError:
        raise ImportError("a Dask scheduler needs the 'cluster' extra: pip install -e '.[cluster]' (it installs "
                          "dask[distributed])") from None
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError) as e:
        raise ConnectionError(f"no Dask scheduler answered at {address!r} within {timeout:g} s ({type(e).__name__}: "
                              f"{e}); start one (`dask scheduler`, then `dask worker ADDRESS`) or check the "
                              "address") from None
    return client.get_executor()


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
