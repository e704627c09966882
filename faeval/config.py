"""Run configs: every default filled in, validated, and hashed into the run store's key.

A run is described by a flat dict such as ``{"method": "dfa", "epochs": 8, "width": 512}``.
:func:`canonical_config` routes each key to where it belongs (a top-level training
setting, or an option of the rule, the architecture or the dataset), fills in every
default and refuses unknown keys, so that ``width=256`` and leaving the width out are
the same run. :func:`config_hash` hashes the canonical config together with
:data:`CACHE_VERSION`. A rule or architecture defined outside faeval adds ``code``, the
fingerprint of its code (:mod:`faeval.usercode`), so an edited class trains anew; the
package's own carry none. A run trained with reduced-precision matmuls adds ``precision``
(:data:`PRECISIONS`); float32, the default, adds nothing, so the keys of every float32 run
stay as they were.

>>> cfg = canonical_config(method="dfa", epochs=2, width=64)
>>> cfg["method"], cfg["model"]["width"], cfg["model"]["depth"], cfg["hparams"]["penalty"]
('dfa', 64, 4, 0.0)
>>> config_hash(cfg) == config_hash(canonical_config(method="dfa", epochs=2, width=64, depth=4))
True
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from .data import dataset_options
from .data import test_size as _dataset_test_size
from .data import train_size as _dataset_train_size
from .methods import method_class, method_hparams
from .models import arch_class
from .usercode import code_key

__all__ = ["CACHE_VERSION", "PRECISIONS", "TOP", "check_precision", "canonical_config", "code_of", "config_hash",
           "model_options", "rebase", "test_size", "train_size"]

#: bump when a change to training or to the history format makes stored runs stale
CACHE_VERSION = 3      # 2: fused AdamW kernel (rounding-level change of every trajectory)
#                        3: one random stream per purpose (faeval.seeds): feedback independent of the init

#: the top-level settings of every run, with their defaults
TOP = {"arch": "resmlp", "method": "bp", "dataset": "fashion-mnist", "epochs": 1, "seed": 0, "batch_size": 128,
       "lr": 1e-3, "weight_decay": 0.01, "lr_fb": 1e-3, "eval_n": 1280, "stop_on": []}

#: the precisions a run's training step may use (``precision=``): float32, or the step's matmuls under
#: ``torch.autocast`` in bfloat16 (weights, optimiser state, diagnostics and the history stay float32/float64)
PRECISIONS = ("float32", "bfloat16")

def model_options(arch: str) -> dict:
    """The keyed options of architecture ``arch`` with their defaults."""
    return arch_class(arch).options()


def _hparam_options(method: str) -> dict:
    return {k: v for k, v in method_hparams(method).items() if k not in method_class(method).not_keyed}


def canonical_config(**config) -> dict:
    """The full config of a run: top-level settings plus ``model``, ``hparams`` and ``data`` dicts.

    Flat keys are routed by name: a hyperparameter of the rule goes to ``hparams``,
    a model option to ``model``, a dataset option to ``data`` (nested dicts work
    too). Every default is filled in. An unknown key raises, listing the valid ones.
    Where the rule or the architecture is user code, ``code`` holds the fingerprint of
    the registered class's code now (a ``code`` entry passed in is replaced: the key
    names the code that trains the run).
    """
    config.pop("code", None)
    precision = check_precision(config.pop("precision", "float32"))
    cfg = {k: config.pop(k, v) for k, v in TOP.items()}
    for key, what in (("dataset", "the dataset's name and its options, e.g. dataset='fashion-mnist', "
                                  "subset=10000, label_noise=0.4"),
                      ("arch", "the architecture's name and its options, e.g. arch='resmlp', width=512"),
                      ("method", "the rule's name and its hyperparameters, e.g. method='dfa', penalty=1e-2")):
        if not isinstance(cfg[key], str):
            raise TypeError(f"{key}={type(cfg[key]).__name__} object: a run config names its parts, so that the "
                            f"store can key the run by them; pass {what}")
    defaults = {"hparams": _hparam_options(cfg["method"]), "model": model_options(cfg["arch"]),
                "data": dataset_options(cfg["dataset"])}
    parts = {part: dict(config.pop(part, None) or {}) for part in defaults}
    for key in list(config):
        for part, dflt in defaults.items():
            if key in dflt:
                parts[part][key] = config.pop(key)
                break
    owner = {"hparams": f"method {cfg['method']!r}", "model": f"arch {cfg['arch']!r}",
             "data": f"dataset {cfg['dataset']!r}"}
    for part, dflt in defaults.items():
        unknown = sorted(set(parts[part]) - set(dflt))
        if unknown:
            raise TypeError(f"{part} key(s) {', '.join(map(repr, unknown))} are not options of {owner[part]}; "
                            f"valid: {', '.join(sorted(dflt))}")
    if config:
        valid = sorted({*TOP, *(k for d in defaults.values() for k in d)})
        raise TypeError(f"unknown config key(s) {', '.join(map(repr, sorted(config)))} for method {cfg['method']!r}, "
                        f"arch {cfg['arch']!r}, dataset {cfg['dataset']!r}; valid keys: {', '.join(valid)}")
    cfg["stop_on"] = sorted(cfg["stop_on"])
    for part, dflt in defaults.items():
        cfg[part] = {k: _like(dflt[k], v) for k, v in {**dflt, **parts[part]}.items()}
    for k in arch_class(cfg["arch"]).keyed_when_set:     # keyed only off their default (stored keys unchanged)
        if k in cfg["model"] and cfg["model"][k] == defaults["model"][k]:
            del cfg["model"][k]
    cfg.update({k: _like(TOP[k], cfg[k]) for k in TOP})
    code = code_of(cfg["method"], cfg["arch"])
    if code:
        cfg["code"] = code
    if precision != "float32":
        cfg["precision"] = precision
    json.dumps(cfg)   # raises for a value that cannot be keyed (e.g. a function)
    return cfg


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ``ValueError`` naming the valid ones."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: valid precisions are {', '.join(map(repr, PRECISIONS))} "
                         "(float32, the default, or the training step's matmuls in bfloat16)")
    return precision


def code_of(method: str, arch: str) -> dict[str, str]:
    """The ``code`` entry of registered rule ``method`` on architecture ``arch`` (:func:`faeval.usercode.code_key`:
    empty for faeval's own)."""
    return code_key(method_class(method), arch_class(arch))


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


def train_size(cfg: dict) -> int:
    """How many training samples canonical config ``cfg`` trains on, without loading the data."""
    return _dataset_train_size(cfg["dataset"], cfg["data"])


def test_size(cfg: dict) -> int:
    """How many test samples (evaluated at every epoch record) canonical config ``cfg`` has, without loading them."""
    return _dataset_test_size(cfg["dataset"], cfg["data"])


def rebase(base: Mapping, overrides: Mapping) -> dict:
    """``base`` without the options of an architecture or dataset that ``overrides`` replaces.

    >>> rebase({"arch": "resmlp", "dataset": "fashion-mnist", "width": 256}, {"arch": "cnn"})
    {'arch': 'resmlp', 'dataset': 'fashion-mnist'}
    """
    out = dict(base)
    if overrides.get("arch", base["arch"]) != base["arch"]:
        out = {k: v for k, v in out.items() if k not in model_options(base["arch"])}
    if overrides.get("dataset", base["dataset"]) != base["dataset"]:
        out = {k: v for k, v in out.items() if k not in dataset_options(base["dataset"])}
    return out
