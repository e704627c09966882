"""The run store: train a configuration once, load it every later time.

``experiment(**config)`` trains or loads. A run is keyed by its canonical config
(:func:`faeval.config.canonical_config`: every default filled in, so ``width=256``
and leaving the width out are the same run) plus the cache version, hashed. Its
directory holds

* ``config.json``: the canonical config, its hash, the cache version, and facts that
  are not part of the key (device, torch version, the data's provenance, how long it took);
* ``history.json``: the per-epoch records of :func:`faeval.train.fit` (each record's
  :class:`~faeval.snapshot.Snapshot` as a dict);
* ``checkpoint.pt``: the model's weights and the rule's auxiliary state (feedback
  matrices, bridge networks, EMA targets).

Writes are atomic: the files are written into a temporary directory that is renamed
into place only when all three are complete, so an interrupted run leaves no entry
that reads as complete. The store lives in ``results/`` (git-ignored), or
``$FAEVAL_RESULTS``, or the ``results=`` argument.
"""
from __future__ import annotations

import functools
import json
import os
import pickle
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .config import CACHE_VERSION, canonical_config, code_of, config_hash
from .data import load_dataset
from .methods import build_method
from .models import build_model
from .protocol import Monitor
from .train import Run, fit, history_from_json, history_to_json
from .usercode import RegisteredAgainWarning

__all__ = ["experiment", "load_run", "load_meta", "load_history", "list_runs", "results_dir", "run_dir", "load_data",
           "build_run", "DamagedRunError", "train_and_store", "store_run", "monitor_for", "default_device",
           "train_seconds"]


def results_dir(results: str | os.PathLike | None = None) -> Path:
    """The store's directory: ``results``, else ``$FAEVAL_RESULTS``, else ``./results``."""
    return Path(results or os.environ.get("FAEVAL_RESULTS") or "results")


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
    return load_dataset(name, root=root, device=device, seed=seed, **json.loads(data_json))


def load_data(cfg: dict, device: str = "cpu", data_root: str | None = None):
    """The dataset of canonical config ``cfg`` (shared with the runs that read the same data)."""
    return _dataset(cfg["dataset"], json.dumps(cfg["data"], sort_keys=True), cfg["seed"], str(device), data_root)


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
    return train_and_store(cfg, results, retrain, device or default_device(), data_root, progress)


def train_and_store(cfg: dict, results, retrain: bool, device: str, data_root, progress: bool) -> Run:
    """Train the single run of canonical config ``cfg`` with ``fit`` and store it."""
    model, method, ds = build_run(cfg, device, data_root)
    start = time.perf_counter()
    run = fit(model, method, ds, cfg["epochs"], cfg["seed"], batch_size=cfg["batch_size"], lr=cfg["lr"],
              weight_decay=cfg["weight_decay"], lr_fb=cfg["lr_fb"], eval_n=cfg["eval_n"], monitor=monitor_for(cfg),
              progress=progress, config=cfg, precision=cfg.get("precision", "float32"))
    return store_run(run, cfg, ds, device, time.perf_counter() - start, run_dir(cfg, results), retrain)


def default_device() -> str:
    """``cuda`` when a GPU is available, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_run(cfg: dict, device: str, data_root: str | None = None):
    """(model, method, dataset) of canonical config ``cfg``, fresh from its seed."""
    ds = load_data(cfg, device, data_root)
    model = build_model(cfg["arch"], ds.input_shape, ds.num_classes, seed=cfg["seed"], **cfg["model"]).to(device)
    method = build_method(cfg["method"], model, seed=cfg["seed"], **cfg["hparams"])
    return model, method, ds


def monitor_for(cfg: dict) -> Monitor | None:
    """The Monitor that stops the run of canonical config ``cfg`` (None when ``stop_on`` is empty)."""
    return Monitor(stop_on=cfg["stop_on"]) if cfg["stop_on"] else None


def store_run(run: Run, cfg: dict, ds, device, seconds: float, path: Path, replace: bool, **extra) -> Run:
    """Write a trained run into the store at ``path`` (atomically) and return it with its path set."""
    meta = {"config": cfg, "hash": config_hash(cfg), "cache_version": CACHE_VERSION,
            "input_shape": list(ds.input_shape), "num_classes": ds.num_classes, "stopped": run.stopped,
            "device": str(device), "torch": torch.__version__, "train_seconds": seconds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "data_info": _jsonable(ds.info), **extra}
    _write_run(path, meta, run, replace=replace)
    run.path = path
    return run


def _jsonable(o):
    return json.loads(json.dumps(o, default=str))


def _write_run(path: Path, meta: dict, run: Run, replace: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        (tmp / "history.json").write_text(json.dumps(history_to_json(run.history), indent=1))
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


class DamagedRunError(ValueError):
    """A run directory of the store that cannot be read back (a truncated checkpoint, unreadable JSON)."""


def load_run(path: str | os.PathLike, device: str | None = None) -> Run:
    """Load a stored run: model weights, the rule with its auxiliary state, and the history.

    A directory whose files cannot be read back raises :class:`DamagedRunError`, naming the
    directory and the fix (delete it, or train again with ``retrain=True`` / ``--retrain``).
    """
    path = Path(path)
    missing = [f for f in ("config.json", "history.json", "checkpoint.pt") if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete faeval run ({', '.join(missing)} missing); "
                                "delete it and train again")
    meta = load_meta(path)
    if meta.get("cache_version") != CACHE_VERSION:
        raise ValueError(f"{path} was stored with cache version {meta.get('cache_version')}, this faeval uses "
                         f"{CACHE_VERSION}: train again (experiment(..., retrain=True))")
    cfg = meta["config"]
    _warn_if_other_code(path, cfg)
    device = device or default_device()
    try:
        ckpt = torch.load(path / "checkpoint.pt", map_location=device, weights_only=True)
        model = build_model(cfg["arch"], meta["input_shape"], meta["num_classes"], **cfg["model"]).to(device)
        model.load_state_dict(ckpt["model"])
        model.eval()
        method = build_method(cfg["method"], model, seed=cfg["seed"], init_aux=False, **cfg["hparams"])
        method.load_aux_state(ckpt["aux"])
    except (OSError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as e:
        raise _damaged(path, "checkpoint.pt", e) from None
    return Run(model, method, load_history(path), cfg, meta.get("stopped"), path, from_cache=True)


def load_meta(path: str | os.PathLike) -> dict:
    """A stored run's ``config.json`` (its config, hash, cache version, ``stopped`` and the facts beside them).
    A damaged file raises :class:`DamagedRunError`."""
    path = Path(path)
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise _damaged(path, "config.json", e) from None


def load_history(path: str | os.PathLike) -> list:
    """A stored run's history alone (its :class:`~faeval.train.EpochRecord` list), without building its
    model: what reading a run's curves or verdicts needs. A damaged file raises :class:`DamagedRunError`."""
    path = Path(path)
    try:
        return history_from_json(json.loads((path / "history.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _damaged(path, "history.json", e) from None


def _warn_if_other_code(path: Path, cfg: dict) -> None:
    """Warn when the rule or architecture registered now is not the code that trained the stored run: the
    weights and history are the old code's, the loaded rule (its credit, for Γ) is the new one's."""
    try:
        now = code_of(cfg["method"], cfg["arch"])
    except ValueError:
        return                                   # not registered in this session: building it says so
    then = cfg.get("code", {})
    changed = [f"{kind} {cfg[kind]!r}" for kind in ("method", "arch") if now.get(kind) != then.get(kind)]
    if changed:
        warnings.warn(f"{path.name}: {' and '.join(changed)} registered now is not the code that trained this "
                      f"run (fingerprint {then or 'faeval'} -> {now or 'faeval'}); its weights and history are the "
                      "old code's", RegisteredAgainWarning, stacklevel=3)


def _damaged(path: Path, file: str, err: Exception) -> DamagedRunError:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return DamagedRunError(f"{path}: the stored run is damaged ({file}: {type(err).__name__}: {first}); delete "
                           f"that folder, or train it again with retrain=True (python -m faeval train ... --retrain)")


def train_seconds(cfg: dict, results=None) -> float | None:
    """How long the stored run of canonical config ``cfg`` trained (``None``: not in the store)."""
    meta = run_dir(cfg, results) / "config.json"
    return json.loads(meta.read_text()).get("train_seconds") if meta.is_file() else None


def distinguishing_options(cfg: dict) -> str:
    """The settings of a stored run's config that differ from the defaults of its rule, model and data
    (besides method, arch, dataset, seed and epochs), e.g. ``"width=512, label_noise=0.4"``: what tells
    two runs of one rule apart in a listing.

    >>> from faeval.config import canonical_config
    >>> distinguishing_options(canonical_config(method="dfa", width=512, label_noise=0.4, epochs=3))
    'width=512, label_noise=0.4'
    """
    try:
        base = canonical_config(method=cfg["method"], arch=cfg["arch"], dataset=cfg["dataset"])
    except (TypeError, ValueError, KeyError):      # e.g. a rule registered in a session that is not this one
        return "?"
    out = [f"{k}={v}" for k, v in cfg.items()
           if k not in ("method", "arch", "dataset", "seed", "epochs", "model", "hparams", "data", "code")
           and v != base.get(k)]
    for part in ("model", "hparams", "data"):
        out += [f"{k}={v}" for k, v in cfg.get(part, {}).items() if v != base[part].get(k)]
    return ", ".join(out)


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
                     "seed": cfg["seed"], "options": distinguishing_options(cfg), "epochs": last.get("epoch"),
                     "test_acc": last.get("test_acc"),
                     "max_growth": last.get("diag", {}).get("max_block_growth"),   # the stored JSON of a Snapshot
                     "g_L": last.get("diag", {}).get("g_L"), "stopped": meta.get("stopped"),
                     "user_code": ", ".join(f"{k} {v}" for k, v in cfg.get("code", {}).items()),
                     "created": meta.get("created"), "current": meta.get("cache_version") == CACHE_VERSION})
    return sorted(rows, key=lambda r: r["created"] or "")
