"""The run store: train a configuration once, load it every later time.

``experiment(**config)`` trains or loads. A run is keyed by its canonical config
(every default filled in, so ``width=256`` and leaving the width out are the same
run) plus :data:`CACHE_VERSION`, hashed. Its directory holds

* ``config.json``: the canonical config, its hash, the cache version, and facts that
  are not part of the key (device, torch version, the data's provenance, how long it took);
* ``history.json``: the per-epoch records of :func:`faeval.train.fit`;
* ``checkpoint.pt``: the model's weights and the rule's auxiliary state (feedback
  matrices, bridge networks, EMA targets).

Writes are atomic: the files are written into a temporary directory that is renamed
into place only when all three are complete, so an interrupted run leaves no entry
that reads as complete. The store lives in ``results/`` (git-ignored), or
``$FAEVAL_RESULTS``, or the ``results=`` argument.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from . import data as data_mod
from .many import group_runs
from .methods import build_method, method_hparams
from .models import ARCHS, ResMLP, SmallCNN, StudentNet, ViTMini, build_model
from .protocol import Monitor
from .train import Run, fit

log = logging.getLogger("faeval")

__all__ = ["CACHE_VERSION", "experiment", "fit_many", "canonical_config", "config_hash", "train_size", "load_run",
           "list_runs", "results_dir", "run_dir"]

#: bump when a change to training or to the history format makes stored runs stale
CACHE_VERSION = 2      # 2: fused AdamW kernel (rounding-level change of every trajectory)

TOP = {"arch": "resmlp", "method": "bp", "dataset": "fashion-mnist", "epochs": 1, "seed": 0, "batch_size": 128,
       "lr": 1e-3, "weight_decay": 0.01, "lr_fb": 1e-3, "eval_n": 1280, "stop_on": []}
_MODEL_CLASSES = {"resmlp": ResMLP, "vit": ViTMini, "cnn": SmallCNN, "studentnet": StudentNet}
_NOT_KEYED_MODEL = ("d_input", "input_shape", "num_classes", "act")
_NOT_KEYED_METHOD = ("seed", "init_aux", "predictor")
_DATA_COMMON = {"subset": None, "label_noise": 0.0, "random_targets": False}


def results_dir(results: str | os.PathLike | None = None) -> Path:
    """The store's directory: ``results``, else ``$FAEVAL_RESULTS``, else ``./results``."""
    return Path(results or os.environ.get("FAEVAL_RESULTS") or "results")


def _defaults(fn, skip) -> dict:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items()
            if n not in skip and n != "self" and p.default is not inspect.Parameter.empty}


def _data_defaults(name: str) -> dict:
    if name not in data_mod._LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(data_mod.DATASETS)}")
    loader = data_mod._LOADERS[name]
    own = {n: p.default for n, p in inspect.signature(loader).parameters.items() if p.kind == p.KEYWORD_ONLY}
    return {**_DATA_COMMON, **own}


def canonical_config(**config) -> dict:
    """The full config of a run: top-level settings plus ``model``, ``hparams`` and ``data`` dicts.

    Flat keys are routed by name: a hyperparameter of the rule goes to ``hparams``,
    a model option to ``model``, a dataset option to ``data`` (nested dicts work
    too). Every default is filled in. An unknown key raises, listing the valid ones.
    """
    cfg = {k: config.pop(k, v) for k, v in TOP.items()}
    if cfg["arch"] not in ARCHS:
        raise ValueError(f"unknown arch {cfg['arch']!r}; valid archs: {', '.join(sorted(ARCHS))}")
    hp_def = {k: v for k, v in method_hparams(cfg["method"]).items() if k not in _NOT_KEYED_METHOD}
    model_def = model_options(cfg["arch"])
    data_def = _data_defaults(cfg["dataset"])
    parts = {"hparams": dict(config.pop("hparams", None) or {}), "model": dict(config.pop("model", None) or {}),
             "data": dict(config.pop("data", None) or {})}
    for key in list(config):
        for part, defaults in (("hparams", hp_def), ("model", model_def), ("data", data_def)):
            if key in defaults:
                parts[part][key] = config.pop(key)
                break
    owner = {"hparams": f"method {cfg['method']!r}", "model": f"arch {cfg['arch']!r}",
             "data": f"dataset {cfg['dataset']!r}"}
    for part, defaults in (("hparams", hp_def), ("model", model_def), ("data", data_def)):
        unknown = sorted(set(parts[part]) - set(defaults))
        if unknown:
            raise TypeError(f"{part} key(s) {', '.join(map(repr, unknown))} are not options of {owner[part]}; "
                            f"valid: {', '.join(sorted(defaults))}")
    if config:
        valid = sorted({*TOP, *hp_def, *model_def, *data_def})
        raise TypeError(f"unknown config key(s) {', '.join(map(repr, sorted(config)))} for method {cfg['method']!r}, "
                        f"arch {cfg['arch']!r}, dataset {cfg['dataset']!r}; valid keys: {', '.join(valid)}")
    cfg["stop_on"] = sorted(cfg["stop_on"])
    for part, defaults in (("hparams", hp_def), ("model", model_def), ("data", data_def)):
        cfg[part] = {k: _like(defaults[k], v) for k, v in {**defaults, **parts[part]}.items()}
    cfg.update({k: _like(TOP[k], cfg[k]) for k in TOP})
    json.dumps(cfg)   # raises for a value that cannot be keyed (e.g. a function)
    return cfg


def model_options(arch: str) -> dict:
    """The keyed options of architecture ``arch`` with their defaults."""
    if arch not in _MODEL_CLASSES:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(sorted(_MODEL_CLASSES))}")
    return _defaults(_MODEL_CLASSES[arch].__init__, _NOT_KEYED_MODEL)


def _like(default, value):
    """An int given where the default is a float becomes that float (so lr=1 and lr=1.0 are one run)."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def config_hash(cfg: dict) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of ``cfg`` and the cache version."""
    blob = json.dumps({"cache_version": CACHE_VERSION, **cfg}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_dir(cfg: dict, results=None) -> Path:
    """Where the run of canonical config ``cfg`` is stored."""
    name = f"{cfg['method']}_{cfg['arch']}_{cfg['dataset']}_s{cfg['seed']}_{config_hash(cfg)}"
    return results_dir(results) / name


def _dataset(name: str, data_json: str, seed: int, device: str, root: str | None):
    """The run's dataset, loaded once per process for every run that reads the same data.

    The seed only matters to a seeded subset, label noise and the synthetic teacher; other
    runs share seed 0's copy instead of holding one copy per seed in memory.
    """
    opts = json.loads(data_json)
    seeded = name == "synthetic" or opts.get("subset") is not None or opts.get("label_noise", 0) > 0
    return _load(name, data_json, seed if seeded else 0, device, root)


@functools.lru_cache(maxsize=4)
def _load(name: str, data_json: str, seed: int, device: str, root: str | None):
    return data_mod.load_dataset(name, root=root, device=device, seed=seed, **json.loads(data_json))


def load_data(cfg: dict, device: str = "cpu", data_root: str | None = None):
    """The dataset of canonical config ``cfg`` (shared with the runs that read the same data)."""
    return _dataset(cfg["dataset"], json.dumps(cfg["data"], sort_keys=True), cfg["seed"], str(device), data_root)


#: training-set sizes of the standard files (a subset or the synthetic task's n_train overrides)
_TRAIN_SIZES = {"fashion-mnist": 60000, "mnist": 60000, "cifar10": 50000, "cifar100": 50000}


def train_size(cfg: dict) -> int:
    """How many training samples canonical config ``cfg`` trains on, without loading the data."""
    if cfg["data"].get("subset"):
        return int(cfg["data"]["subset"])
    if cfg["dataset"] == "synthetic":
        return int(cfg["data"]["n_train"])
    return _TRAIN_SIZES[cfg["dataset"]]


def experiment(*, results=None, retrain: bool = False, progress: bool = True, device: str | None = None,
               data_root: str | None = None, **config) -> Run:
    """Train the run that ``config`` describes, or load it from the store.

    ``config`` takes ``arch``, ``method``, ``dataset``, ``epochs``, ``seed``,
    ``batch_size``, ``lr``, ``weight_decay``, ``lr_fb``, ``eval_n``, ``stop_on``
    (diagnostics that stop the run, e.g. ``["D1"]``) and any option of the rule, the
    model or the dataset (``penalty=1e-2``, ``width=512``, ``subset=20000``, ...).
    ``device``, ``results``, ``data_root`` and ``progress`` do not change the run and
    are not part of its key. ``retrain=True`` trains again and replaces the entry.
    """
    cfg = canonical_config(**config)
    path = run_dir(cfg, results)
    if path.is_dir() and not retrain:
        return load_run(path, device=device)
    return _train_and_store(cfg, results, retrain, device or _default_device(), data_root, progress)


def _train_and_store(cfg: dict, results, retrain: bool, device: str, data_root, progress: bool) -> Run:
    """Train the single run of canonical config ``cfg`` with ``fit`` and store it."""
    model, method, ds = _build(cfg, device, data_root)
    start = time.perf_counter()
    run = fit(model, method, ds, cfg["epochs"], cfg["seed"], batch_size=cfg["batch_size"], lr=cfg["lr"],
              weight_decay=cfg["weight_decay"], lr_fb=cfg["lr_fb"], eval_n=cfg["eval_n"], monitor=_monitor(cfg),
              progress=progress, config=cfg)
    return _store(run, cfg, ds, device, time.perf_counter() - start, run_dir(cfg, results), retrain)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _build(cfg: dict, device: str, data_root: str | None):
    """(model, method, dataset) of canonical config ``cfg``, fresh from its seed."""
    ds = load_data(cfg, device, data_root)
    model = build_model(cfg["arch"], ds.input_shape, ds.num_classes, seed=cfg["seed"], **cfg["model"]).to(device)
    method = build_method(cfg["method"], model, seed=cfg["seed"], **cfg["hparams"])
    return model, method, ds


def _monitor(cfg: dict):
    return Monitor(stop_on=cfg["stop_on"]) if cfg["stop_on"] else None


def _store(run: Run, cfg: dict, ds, device, seconds: float, path: Path, replace: bool, **extra) -> Run:
    meta = {"config": cfg, "hash": config_hash(cfg), "cache_version": CACHE_VERSION,
            "input_shape": list(ds.input_shape), "num_classes": ds.num_classes, "stopped": run.stopped,
            "device": str(device), "torch": torch.__version__, "train_seconds": seconds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "data_info": _jsonable(ds.info), **extra}
    _write_run(path, meta, run, replace=replace)
    run.path = path
    return run


#: the config keys that may differ within a vectorised group (besides the data a seed draws)
_GROUP_FREE = ("seed",)
_GROUP_FREE_HPARAMS = ("penalty",)


def _group_key(cfg: dict) -> str:
    rest = {k: v for k, v in cfg.items() if k not in _GROUP_FREE}
    rest["hparams"] = {k: v for k, v in cfg["hparams"].items() if k not in _GROUP_FREE_HPARAMS}
    return json.dumps(rest, sort_keys=True)


def fit_many(configs: Sequence[Mapping], *, results=None, retrain: bool = False, progress: bool = True,
             device: str | None = None, data_root: str | None = None, group: bool | None = None,
             workers: int | None = None) -> list[Run]:
    """Train (or load) every run of ``configs``; runs that differ only in seed or penalty train together.

    Stored runs are loaded. With ``group=True`` (the default on a GPU) the rest are
    grouped by everything but the seed and the penalty weight, and each group of two
    or more runs whose rule and architecture allow it trains as one vectorised model
    (:func:`faeval.many.fit_group`): same results as one by one, up to floating-point
    rounding. A run that cannot be grouped trains on its own, and the reason is logged
    (logger ``"faeval"``); a group that runs out of device memory is split and retried.

    On a CPU grouping is off by default (``benchmarks/throughput.py`` on this project's
    2-core CPU: a group of 3 runs trains at 0.75-0.80x the speed of the same runs one
    after another), and the runs are spread over ``workers`` processes of one thread each
    instead. A single run already keeps both cores busy, which bounds the gain: two
    1-thread processes step 1.41-1.50x as fast as one run on 2 threads, and three 8-epoch
    seeds (BP or DFA) finished 1.20-1.24x sooner than one after another, process start-up
    included (two measurements each). The default is one process per core, or one per run
    when there are at most twice as many runs as cores and they do not divide evenly; a
    request that amounts to a few seconds of training stays in this process. Each job
    stores its runs; ``workers=1`` trains in this process. Processes start by default only
    in Jupyter, ``python -c`` and ``python -m faeval``: a script passes ``workers=N``
    itself, and must then guard its top level with ``if __name__ == "__main__":`` (Python
    re-imports it in every worker).
    Returns the runs in the order of ``configs``.
    """
    from .many import why_not_groupable

    cfgs = [canonical_config(**dict(c)) for c in configs]
    paths = [run_dir(cfg, results) for cfg in cfgs]
    todo: dict[Path, int] = {}                     # run dir -> first index asking for it
    for i, path in enumerate(paths):
        if path not in todo and (retrain or not path.is_dir()):
            todo[path] = i
    device = device or _default_device()
    group = device != "cpu" if group is None else group
    keys: dict[int, str | None] = {}
    verdicts: dict[str, str | None] = {}           # runs of one group key share the answer: one build per key
    for i in todo.values():
        key = _group_key(cfgs[i])
        if group and key not in verdicts:
            verdicts[key] = why_not_groupable(_build(cfgs[i], device, data_root)[1])
        why = verdicts[key] if group else "grouping is off (group=False)"
        keys[i] = None if why else key
        if why and group and len(todo) > 1:
            log.info("training %s seed %s on its own: %s", cfgs[i]["method"], cfgs[i]["seed"], why)
    jobs = sorted(group_runs(keys), key=lambda idx: -sum(_cost(cfgs[i]) for i in idx))
    if workers is None:      # processes cost seconds to start: only worth it for more than a few seconds of work
        small = sum(_cost(cfgs[i]) for idx in jobs for i in idx) < _WORTH_PROCESSES
        workers = _default_workers(len(jobs)) if device == "cpu" and not small and _spawn_is_safe() else 1
    if workers > 1 and len(jobs) > 1:
        _run_jobs_in_processes(jobs, cfgs, results, retrain, device, data_root, workers, progress)
    else:
        for idx in jobs:
            _run_job([cfgs[i] for i in idx], results, retrain, device, data_root, progress)
    runs: dict[Path, Run] = {}
    for path in paths:
        if path not in runs:
            runs[path] = load_run(path, device=device)
            runs[path].from_cache = path not in todo
    return [runs[p] for p in paths]


def _spawn_is_safe() -> bool:
    """Whether worker processes may start by default: in Jupyter/IPython, ``python -c`` and
    ``python -m faeval``. A script run as ``python script.py`` is re-imported by every spawned
    worker, which re-runs its top level unless it is guarded by ``if __name__ == "__main__":``;
    such scripts train in-process unless they ask for ``workers=N`` themselves."""
    import sys

    main = sys.modules.get("__main__")
    return getattr(main, "__file__", None) is None or getattr(main.__spec__, "name", "") == "faeval.__main__"


def _default_workers(jobs: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if jobs <= 2 * cores and jobs % cores:
        return jobs
    return min(jobs, cores)


#: below this total _cost (about 15 s of BP training on 2 cores) fit_many trains in its own process
_WORTH_PROCESSES = 300_000

#: rough cost of a training step relative to BP (benchmarks/step_cost.py), to start long jobs first
_STEP_COST = {"ep": 6.3, "credit_bridge": 3.5, "state_bridge": 2.3, "frozen": 0.65}


def _cost(cfg: dict) -> float:
    n = train_size(cfg)
    width = cfg["model"].get("width", 256) or 256
    scale = {"vit": 40.0, "cnn": 50.0}.get(cfg["arch"], (width / 256) ** 2)
    return cfg["epochs"] * n * _STEP_COST.get(cfg["method"], 1.0) * scale


def _run_job(cfgs: list[dict], results, retrain: bool, device: str, data_root, progress: bool,
             threads: int | None = None) -> list[str]:
    """Train one job (a single run, or a group as one vectorised model) and store its runs."""
    from .many import fit_group, fit_group_splitting

    if threads:
        torch.set_num_threads(threads)
    if len(cfgs) == 1:
        return [str(_train_and_store(cfgs[0], results, retrain, device, data_root, progress).path)]
    start = time.perf_counter()
    c0 = cfgs[0]
    log.info("training %d %s runs together (seeds %s, penalties %s)", len(cfgs), c0["method"],
             [c["seed"] for c in cfgs], [c["hparams"].get("penalty") for c in cfgs])

    def build(idx):
        built = [_build(cfgs[i], device, data_root) for i in idx]
        return ([b[0] for b in built], [b[1] for b in built], [b[2] for b in built],
                [cfgs[i]["seed"] for i in idx], [cfgs[i] for i in idx])

    def train(models, methods, datasets, seeds, group_cfgs):
        return fit_group(models, methods, datasets, c0["epochs"], seeds, batch_size=c0["batch_size"], lr=c0["lr"],
                         weight_decay=c0["weight_decay"], eval_n=c0["eval_n"],
                         monitors=[_monitor(c) for c in group_cfgs], progress=progress, configs=group_cfgs)

    trained = fit_group_splitting(build, list(range(len(cfgs))), train)
    seconds = (time.perf_counter() - start) / len(cfgs)
    return [str(_store(run, cfgs[i], load_data(cfgs[i], device, data_root), device, seconds,
                       run_dir(cfgs[i], results), retrain, trained_with=len(trained)).path)
            for i, run in trained.items()]


def _worker_init(threads: int, level: int) -> None:
    torch.set_num_threads(threads)
    logging.getLogger("faeval").setLevel(level)


def _run_jobs_in_processes(jobs, cfgs, results, retrain, device, data_root, workers: int, progress: bool) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from .train import _progress

    threads = max(1, torch.get_num_threads() // workers)
    root = str(results_dir(results).resolve())
    log.info("training %d job(s) (%d runs) in %d processes of %d thread(s)", len(jobs), sum(map(len, jobs)),
             workers, threads)
    bar = _progress(sum(map(len, jobs)), f"runs ({workers} processes)", progress, unit="run")
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


def _jsonable(o):
    return json.loads(json.dumps(o, default=str))


def _write_run(path: Path, meta: dict, run: Run, replace: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        (tmp / "history.json").write_text(json.dumps(run.history, indent=1))
        torch.save({"format": 1, "model": run.model.state_dict(), "aux": run.method.aux_state()},
                   tmp / "checkpoint.pt")
        if replace and path.exists():
            old = path.with_name(f".old-{path.name}-{os.getpid()}")
            path.rename(old)
            shutil.rmtree(old)
        try:
            tmp.rename(path)
        except OSError:
            if not path.is_dir():      # another process stored the same run meanwhile: keep theirs
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def load_run(path: str | os.PathLike, device: str | None = None) -> Run:
    """Load a stored run: model weights, the rule with its auxiliary state, and the history."""
    path = Path(path)
    missing = [f for f in ("config.json", "history.json", "checkpoint.pt") if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete faeval run ({', '.join(missing)} missing); "
                                "delete it and train again")
    meta = json.loads((path / "config.json").read_text())
    if meta.get("cache_version") != CACHE_VERSION:
        raise ValueError(f"{path} was stored with cache version {meta.get('cache_version')}, this faeval uses "
                         f"{CACHE_VERSION}: train again (experiment(..., retrain=True))")
    cfg = meta["config"]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = torch.load(path / "checkpoint.pt", map_location=device, weights_only=True)
    model = build_model(cfg["arch"], meta["input_shape"], meta["num_classes"], **cfg["model"]).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    method = build_method(cfg["method"], model, seed=cfg["seed"], init_aux=False, **cfg["hparams"])
    method.load_aux_state(ckpt["aux"])
    history = json.loads((path / "history.json").read_text())
    return Run(model, method, history, cfg, meta.get("stopped"), path, from_cache=True)


def list_runs(results=None) -> list[dict]:
    """One summary dict per complete run in the store, oldest first."""
    rows = []
    root = results_dir(results)
    if not root.is_dir():
        return rows
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not (p / "config.json").is_file():
            continue
        meta = json.loads((p / "config.json").read_text())
        hist = json.loads((p / "history.json").read_text()) if (p / "history.json").is_file() else []
        cfg = meta["config"]
        last = hist[-1] if hist else {}
        rows.append({"run": p.name, "method": cfg["method"], "arch": cfg["arch"], "dataset": cfg["dataset"],
                     "seed": cfg["seed"], "epochs": last.get("epoch"), "test_acc": last.get("test_acc"),
                     "max_growth": last.get("diag", {}).get("max_block_growth"),
                     "g_L": last.get("diag", {}).get("g_L"), "stopped": meta.get("stopped"),
                     "created": meta.get("created"), "current": meta.get("cache_version") == CACHE_VERSION})
    return sorted(rows, key=lambda r: r["created"] or "")
