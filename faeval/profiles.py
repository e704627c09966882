"""Named experiment sizes: ``smoke``, ``quick`` and ``paper``.

A notebook's ``parameters`` cell names a profile plus optional overrides, and
every experiment size it uses comes from here, never from a number typed into a
cell::

    P = get_profile("quick", seeds=[42])
    runs = P.train(P.methods)              # {(method, seed): Run}, through the run store
    sweep = P.sweep("dfa", "penalty", P.penalty_lambdas)   # {(lambda, seed): Run}

* ``smoke``: seconds per notebook on 2 CPU cores, for tests and CI. It proves the
  code path, not the science.
* ``quick``: Fashion-MNIST, the default. Its sizes come from the calibration in
  ``notebooks/07_calibration.ipynb`` (``benchmarks/calibrate_quick.py``): with the
  paper's exact recipe DFA's residual stream grows too slowly on Fashion-MNIST for
  D1/D2 to fire on a CPU budget, so the quick profile replaces 40% of the training
  labels at random, which keeps the error signal large as CIFAR-10 does. Every
  deviation from the paper's recipe is listed in :attr:`Profile.deviations` and on
  the book's assumptions page.
* ``paper``: the paper's settings (CIFAR-10 with crop/flip augmentation, 100
  epochs, seeds 42/123/456, 30 epochs for the penalty sweep). Meant for a GPU.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Profile", "PROFILES", "get_profile"]


@dataclass(frozen=True)
class Profile:
    """The sizes of every experiment in the book at one profile.

    ``base`` holds the run-config keys shared by every run (dataset and its
    options, architecture and its options, optimiser settings); :meth:`config`
    adds a method, a seed and per-experiment overrides.
    """

    name: str
    description: str
    base: Mapping
    seeds: tuple[int, ...]
    epochs: int                              # audit, temporal, cross-architecture, FA vs DFA
    methods: tuple[str, ...]                 # the audit's learning rules (the frozen baseline is added)
    penalty_epochs: int
    penalty_lambdas: tuple[float, ...]       # includes 0 (vanilla)
    cross_arch: Mapping[str, Mapping]        # label -> overrides of ``base`` (may set epochs)
    depths: tuple[int, ...]                  # FA vs DFA depth sweep (at the base width)
    assay_epochs: int                        # random-target assay
    assay_methods: tuple[str, ...]
    calibration_steps: int                   # horizon of the calibration runs
    deviations: tuple[str, ...] = ()         # from the paper's recipe, shown in the book
    device: str | None = None
    results: str | None = None
    progress: bool = True
    extra: Mapping = field(default_factory=dict)

    # ------------------------------------------------------------------ runs
    def config(self, method: str, seed: int, **overrides) -> dict:
        """The run config of ``method`` at ``seed`` (``epochs`` defaults to the profile's).

        An override that changes the architecture drops the base's model options
        (width, depth, ...), and one that changes the dataset drops the base's dataset
        options (label noise, normalisation, ...): they belong to what was replaced.
        """
        return {**_rebase(self.base, overrides), "epochs": self.epochs, **overrides, "method": method, "seed": seed}

    def run(self, method: str, seed: int | None = None, **overrides):
        """Train (or load from the store) one run; ``seed`` defaults to the first seed."""
        from .store import experiment

        seed = self.seeds[0] if seed is None else seed
        return experiment(results=self.results, device=self.device, progress=self.progress,
                          **self.config(method, seed, **overrides))

    def runs(self, specs: Mapping) -> dict:
        """``{key: Run}`` for ``specs = {key: (method, seed, overrides)}``.

        Stored runs are loaded; the rest train through :func:`faeval.store.fit_many`:
        runs that differ only in seed or penalty as one vectorised model where the rule
        allows it, and on a CPU spread over one process per core.
        """
        keys = list(specs)
        configs = [self.config(m, s, **dict(o)) for m, s, o in (specs[k] for k in keys)]
        return dict(zip(keys, self._many(configs)))

    def train(self, methods: Iterable[str], seeds: Iterable[int] | None = None, **overrides) -> dict:
        """``{(method, seed): Run}`` for every method and seed."""
        seeds = self.seeds if seeds is None else seeds
        return self.runs({(m, s): (m, s, overrides) for m in methods for s in seeds})

    def sweep(self, method: str, key: str, values: Iterable, seeds: Iterable[int] | None = None,
              **overrides) -> dict:
        """``{(value, seed): Run}``: ``method`` with ``key=value`` for every value and seed (e.g. a
        penalty sweep)."""
        seeds = self.seeds if seeds is None else seeds
        return self.runs({(v, s): (method, s, {**overrides, key: v}) for v in values for s in seeds})

    def _many(self, configs: list[dict]) -> list:
        from .store import fit_many

        return fit_many(configs, results=self.results, device=self.device, progress=self.progress)

    def dataset(self, seed: int | None = None, **overrides):
        """The profile's dataset (as the runs of ``seed`` see it), loaded once per process."""
        from .store import canonical_config, load_data

        seed = self.seeds[0] if seed is None else seed
        return load_data(canonical_config(**self.config("bp", seed, **overrides)), device=self._device())

    def eval_data(self, n: int | None = None, **overrides):
        """``(x, y)``: the first ``n`` test samples of the profile's dataset (default ``eval_n``)."""
        ds = self.dataset(**overrides)
        return ds.eval_batch(min(n or self.base.get("eval_n", 1280), ds.n_test))

    def _device(self) -> str:
        import torch

        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def frozen_acc(self, seed: int | None = None, **overrides) -> float:
        """Test accuracy of the frozen-blocks baseline (D3's reference) at this profile."""
        return self.run("frozen", seed, **overrides).test_acc

    def planned_runs(self) -> list[dict]:
        """The run configs the book's notebooks ask the store for at this profile, deduplicated.

        Used to estimate a profile's cost (``benchmarks/throughput.py``); a test checks that
        it names exactly the runs the smoke book stores.
        """
        from .calibration import CANDIDATES, run_config
        from .store import canonical_config, config_hash

        first = self.seeds[:1]
        wanted = [self.config(m, s) for m in (*self.methods, "frozen") for s in self.seeds]        # audit, temporal
        wanted += [self.config(m, first[0], **o) for o in self.cross_arch.values() for m in ("bp", "dfa")]
        wanted += [self.config("dfa", s, epochs=self.penalty_epochs, penalty=lam)
                   for lam in self.penalty_lambdas for s in self.seeds]
        lam_on = 1e-2 if 1e-2 in self.penalty_lambdas else max(self.penalty_lambdas)
        wanted += [self.config(m, s, epochs=self.penalty_epochs, penalty=lam)
                   for m in ("bp", "frozen") for lam in (0.0, lam_on) for s in self.seeds if m == "bp" or lam == 0]
        wanted += [self.config(m, first[0], depth=L) for m in ("frozen", "fa", "dfa") for L in self.depths]
        wanted += [self.config(m, first[0], epochs=self.assay_epochs, random_targets=True) for m in self.assay_methods]
        sub = {"subset": self.base["subset"]} if self.base.get("subset") else {}
        wanted += [run_config(c, m, steps=self.calibration_steps, seed=first[0], **sub)
                   for c in CANDIDATES for m in ("dfa", "bp", "frozen")]
        seen, out = set(), []
        for cfg in wanted:
            c = canonical_config(**cfg)
            h = config_hash(c)
            if h not in seen:
                seen.add(h)
                out.append(c)
        return out

    def summary(self) -> str:
        lines = [f"profile {self.name!r}: {self.description}",
                 f"  runs: {_fmt_cfg(self.base)}; seeds {list(self.seeds)}; {self.epochs} epochs",
                 f"  audit rules: {', '.join(self.methods)} (+ frozen baseline)"]
        lines += [f"  deviation from the paper: {d}" for d in self.deviations]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _fmt_cfg(cfg: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in cfg.items())


_RECIPE = {"batch_size": 128, "lr": 1e-3, "weight_decay": 0.01, "lr_fb": 1e-3}
_AUDIT = ("bp", "fa", "ep", "dfa", "state_bridge", "credit_bridge")
_LAMBDAS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)

PROFILES: dict[str, Profile] = {p.name: p for p in [
    Profile(
        name="smoke",
        description="seconds per notebook: proves the code path, not the science",
        base={"dataset": "fashion-mnist", "subset": 512, "arch": "resmlp", "width": 32, "depth": 4,
              **_RECIPE, "eval_n": 256},
        seeds=(42, 123), epochs=2, methods=_AUDIT,
        penalty_epochs=2, penalty_lambdas=(0.0, 1e-2),
        cross_arch={
            "ResMLP d=32": {},
            "ResMLP d=64": {"width": 64},
            "ResMLP d=32, no terminal LN": {"out_ln": False},
            "ViT-Mini": {"arch": "vit", "width": 32, "subset": 256},
            "SmallCNN": {"arch": "cnn", "subset": 256, "channels": [4, 8, 8], "hidden": 16},
            "StudentNet (synthetic)": {"arch": "studentnet", "dataset": "synthetic", "width": 32, "d": 32,
                                       "n_train": 512, "n_test": 256},
        },
        depths=(2, 4), assay_epochs=2, assay_methods=("dfa", "fa", "ep"),
        calibration_steps=8,
        deviations=("a 512-sample subset of Fashion-MNIST, width 32, 2 epochs",),
    ),
    Profile(
        name="quick",
        description="Fashion-MNIST with 40% label noise, sized for a 2-core CPU (see the calibration appendix)",
        base={"dataset": "fashion-mnist", "label_noise": 0.4, "arch": "resmlp", "width": 256, "depth": 4,
              **_RECIPE, "eval_n": 1280},
        seeds=(42, 123), epochs=8, methods=_AUDIT,
        penalty_epochs=8, penalty_lambdas=_LAMBDAS,
        cross_arch={
            "ResMLP d=256": {},
            "ResMLP d=512": {"width": 512},
            "ResMLP d=256, no terminal LN": {"out_ln": False},
            "ViT-Mini": {"arch": "vit", "width": 128, "subset": 10000, "epochs": 4},
            "SmallCNN": {"arch": "cnn", "subset": 5000, "epochs": 4},
            "StudentNet (synthetic)": {"arch": "studentnet", "dataset": "synthetic", "epochs": 24},
        },
        depths=(2, 4, 8), assay_epochs=3, assay_methods=("dfa", "fa", "ep"),
        calibration_steps=3752,
        deviations=(
            "Fashion-MNIST (28x28x1, flattened to 784) instead of CIFAR-10 (3072), no augmentation",
            "40% of the training labels replaced by random classes (the test set is clean)",
            "8 epochs (3,752 steps) instead of 100; the penalty sweep also 8 instead of 30",
            "2 seeds (42, 123) instead of 3",
            "ViT-Mini: a 10,000-image training subset, 4 epochs; SmallCNN: 5,000 images, 4 epochs",
        ),
    ),
    Profile(
        name="paper",
        description="the paper's settings: CIFAR-10, 100 epochs, seeds 42/123/456 (meant for a GPU)",
        base={"dataset": "cifar10", "augment": True, "arch": "resmlp", "width": 256, "depth": 4,
              **_RECIPE, "eval_n": 1280},
        seeds=(42, 123, 456), epochs=100, methods=_AUDIT,
        penalty_epochs=30, penalty_lambdas=_LAMBDAS,
        cross_arch={
            "ResMLP d=256": {},
            "ResMLP d=512, L=2": {"width": 512, "depth": 2},
            "ResMLP d=256, no terminal LN": {"out_ln": False},
            "ViT-Mini": {"arch": "vit", "width": 128},
            "SmallCNN": {"arch": "cnn"},
            "StudentNet (synthetic)": {"arch": "studentnet", "dataset": "synthetic", "epochs": 80},
        },
        depths=(2, 4, 6, 8, 12), assay_epochs=5, assay_methods=("dfa", "fa", "ep"),
        calibration_steps=9400,
    ),
]}


def _valid(kind: str, value, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(sorted(valid))}")


def get_profile(name: str = "quick", *, dataset: str | None = None, arch: str | None = None,
                methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                epochs: int | None = None, device: str | None = None, results_dir: str | None = None,
                progress: bool = True, **base_overrides) -> Profile:
    """Profile ``name`` with a notebook's overrides applied and checked.

    An unknown profile, dataset, architecture or method raises ``ValueError``
    naming the valid values. Other keyword arguments override run-config keys of
    ``base`` (e.g. ``width=512``); ``canonical_config`` rejects unknown ones.
    """
    from .data import DATASETS
    from .methods import METHODS
    from .models import ARCHS
    from .store import canonical_config

    _valid("profile", name, list(PROFILES))
    p = PROFILES[name]
    base = dict(p.base)
    if dataset is not None:
        _valid("dataset", dataset, list(DATASETS))
        base = {**_rebase(base, {"dataset": dataset}), "dataset": dataset}
    if arch is not None:
        _valid("arch", arch, list(ARCHS))
        base = {**_rebase(base, {"arch": arch}), "arch": arch}
    base.update(base_overrides)
    changes: dict = {"base": base, "device": device, "results": results_dir, "progress": progress}
    if methods is not None:
        for m in methods:
            _valid("method", m, list(METHODS))
        changes["methods"] = tuple(methods)
    if seeds is not None:
        if isinstance(seeds, int) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise ValueError(f"seeds={seeds!r}: give a non-empty list of integers, e.g. [42, 123]")
        changes["seeds"] = tuple(seeds)
    if epochs is not None:
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs={epochs!r}: must be an integer >= 1")
        changes["epochs"] = changes["penalty_epochs"] = epochs
    p = dataclasses.replace(p, **changes)
    canonical_config(**p.config("bp", p.seeds[0]))     # every base key must be a valid option
    return p


def _rebase(base: Mapping, overrides: Mapping) -> dict:
    """``base`` without the options of an architecture or dataset that ``overrides`` replaces."""
    from .store import _data_defaults, model_options

    out = dict(base)
    if overrides.get("arch", base["arch"]) != base["arch"]:
        out = {k: v for k, v in out.items() if k not in model_options(base["arch"])}
    if overrides.get("dataset", base["dataset"]) != base["dataset"]:
        out = {k: v for k, v in out.items() if k not in _data_defaults(base["dataset"])}
    return out
