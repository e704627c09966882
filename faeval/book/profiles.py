"""Named experiment sizes: ``smoke``, ``quick`` and ``paper``.

A notebook's ``parameters`` cell names a profile plus optional overrides, and
every experiment size it uses comes from here, never from a number typed into a
cell. The runs each chapter trains are declared once, in :mod:`faeval.book.experiments`:

>>> P = get_profile("smoke", seeds=[42])
>>> P.sizes["penalty"]["lambdas"], P.config("dfa", 42)["width"]
((0.0, 0.01), 32)
>>> sorted(P.plan("penalty")["sweep"])[:2]      # {(lambda, seed): config}
[(0.0, 42), (0.01, 42)]

``P.experiment("penalty")`` trains (or loads) those runs: ``{part: {key: Run}}``.

* ``smoke``: seconds per notebook on 2 CPU cores, for tests and CI. It proves the
  code path, not the science.
* ``quick``: Fashion-MNIST with the paper's recipe, the default, sized for a 2-core
  CPU. The calibration appendix (``notebooks/07_calibration.ipynb``) adopts a change
  of the recipe (label noise, augmentation, another task, ...) only where DFA fires
  D1 or D2 within the horizon on every seed while BP passes; on three seeds no
  candidate qualifies, so the quick profile changes nothing but the data set and the
  sizes. Where a finding of the paper does not show at this horizon, the chapters say
  so and the discrepancies appendix measures why. Every deviation from the paper's
  recipe is listed in :attr:`Profile.deviations` and on the book's assumptions page.
* ``paper``: the paper's settings (CIFAR-10 with crop/flip augmentation, 100
  epochs, seeds 42/123/456, 30 epochs for the penalty sweep). Meant for a GPU.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..config import CACHE_VERSION, canonical_config, rebase
from ..data import DATASETS
from ..methods import METHODS
from ..models import ARCHS
from ..names import check_known
from ..schedule import fit_many, train_until_stable
from ..store import default_device, load_data, run_dir
from .experiments import plan, planned_runs

__all__ = ["Profile", "PROFILES", "get_profile", "profile_from", "PARAMETERS"]


@dataclass(frozen=True)
class Profile:
    """The sizes of every experiment in the book at one profile.

    ``base`` holds the run-config keys shared by every run (dataset and its
    options, architecture and its options, optimiser settings); :meth:`config`
    adds a method, a seed and per-experiment overrides. ``seeds``, ``epochs`` and
    ``methods`` are the notebooks' common parameters; ``sizes`` holds one mapping per
    chapter (its key in :data:`faeval.book.experiments.EXPERIMENTS`) with that chapter's
    own sizes.
    """

    name: str
    description: str
    base: Mapping
    seeds: tuple[int, ...]
    epochs: int                              # audit, temporal, cross-architecture, FA vs DFA
    methods: tuple[str, ...]                 # the audit's learning rules (the frozen baseline is added)
    sizes: Mapping[str, Mapping] = field(default_factory=dict)
    deviations: tuple[str, ...] = ()         # from the paper's recipe, shown in the book
    device: str | None = None
    results: str | None = None
    progress: bool = True
    overrides: Mapping = field(default_factory=dict)   # what get_profile changed (the claims record it)

    # ------------------------------------------------------------------ runs
    def config(self, method: str, seed: int, **overrides) -> dict:
        """The run config of ``method`` at ``seed`` (``epochs`` defaults to the profile's).

        An override that changes the architecture drops the base's model options
        (width, depth, ...), and one that changes the dataset drops the base's dataset
        options (label noise, normalisation, ...): they belong to what was replaced.
        """
        return {**rebase(self.base, overrides), "epochs": self.epochs, **overrides, "method": method, "seed": seed}

    def plan(self, chapter: str) -> dict[str, dict]:
        """The run configs chapter ``chapter`` asks for: ``{part: {key: config}}`` (:mod:`faeval.book.experiments`)."""
        return plan(chapter, self)

    def experiment(self, chapter: str) -> dict[str, dict]:
        """Chapter ``chapter``'s runs, ``{part: {key: Run}}``, loaded from the store or trained.

        The runs the store lacks train through :func:`faeval.schedule.train_until_stable` (again while the
        chapter's plan grows as its runs are stored) and :func:`faeval.schedule.fit_many`:
        runs that differ only in seed or penalty as one vectorised model where the rule allows
        it, and on a CPU spread over one process per core.
        """
        def configs() -> list[dict]:
            return [cfg for runs in self.plan(chapter).values() for cfg in runs.values()]

        fresh = {run_dir(c, self.results) for c in
                 train_until_stable(configs, results=self.results, device=self.device, progress=self.progress)}
        parts = self.plan(chapter)           # every run stored now: fit_many loads them
        flat = [(part, key, cfg) for part, runs in parts.items() for key, cfg in runs.items()]
        loaded = fit_many([cfg for _, _, cfg in flat], results=self.results, device=self.device, progress=False)
        out: dict[str, dict] = {part: {} for part in parts}
        for (part, key, _), run in zip(flat, loaded):
            run.from_cache = run.path not in fresh
            out[part][key] = run
        return out

    def dataset(self, seed: int | None = None, **overrides):
        """The profile's dataset (as the runs of ``seed`` see it), loaded once per process."""
        seed = self.seeds[0] if seed is None else seed
        return load_data(canonical_config(**self.config("bp", seed, **overrides)), device=self._device())

    def eval_data(self, n: int | None = None, **overrides):
        """``(x, y)``: the first ``n`` test samples of the profile's dataset (default ``eval_n``)."""
        ds = self.dataset(**overrides)
        return ds.eval_batch(min(n or self.base.get("eval_n", 1280), ds.n_test))

    def _device(self) -> str:
        return self.device or default_device()

    def planned_runs(self, chapters=None) -> list[dict]:
        """The canonical configs of every run the book's chapters (or those named in ``chapters``) declare at
        this profile, deduplicated (what ``python -m faeval.book prepare [--chapters ...]`` trains)."""
        return planned_runs(self, chapters)

    def parameters(self) -> dict:
        """What a result measured at this profile was measured with: the profile's name, every
        override given to :func:`get_profile` and the run store's cache version."""
        return {"profile": self.name, "overrides": dict(self.overrides), "cache_version": CACHE_VERSION}

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
_ASSAY = ("dfa", "fa", "ep")


def _sizes(*, cross_arch, penalty_epochs, lambdas, depths, assay_epochs, calibration_steps, ep_sweep,
           horizon_factor=3) -> dict:
    """One mapping per chapter (the keys of faeval.book.experiments.EXPERIMENTS that have sizes)."""
    return {"cross_arch": {"archs": cross_arch},        # label -> overrides of ``base`` (may set epochs)
            "penalty": {"epochs": penalty_epochs, "lambdas": lambdas, "lam_on": 1e-2},   # lambdas include 0
            "fa_vs_dfa": {"depths": depths, "assay_epochs": assay_epochs, "assay_methods": _ASSAY},
            "calibration": {"steps": calibration_steps},
            "discrepancies": {"horizon_factor": horizon_factor, "pairing_epochs": 3, "pairing_seeds": 2,
                              "ep_sweep": ep_sweep},
            "paper_ep": {"embed_scale": _PAPER_EP_SCALE},
            "head_mechanism": {"label_noise": _MECHANISM_NOISE}}


#: the fractions of training labels replaced at random in the head mechanism's prediction test: tasks a trained head
#: cannot fit as easily as the clean one (faeval.book.mechanism)
_MECHANISM_NOISE = (0.2, 0.4)


#: the embedding scale that puts the untrained ResMLP d=256 at the paper's ||h_L|| on Fashion-MNIST (about 4.4e3 at
#: initialisation, mid-way in the paper's 3-8e3; 9 at scale 1): the ``paper_ep`` runs (faeval.book.experiments)
_PAPER_EP_SCALE = 500.0


def _ep_sweep(subset: int, epochs: int, betas=(0.01, 0.1, 0.5, 1.0), steps=(2, 5, 10, 20)) -> dict:
    return {"subset": subset, "epochs": epochs, "betas": betas, "steps": steps}

PROFILES: dict[str, Profile] = {p.name: p for p in [
    Profile(
        name="smoke",
        description="seconds per notebook: proves the code path, not the science",
        base={"dataset": "fashion-mnist", "subset": 512, "arch": "resmlp", "width": 32, "depth": 4,
              **_RECIPE, "eval_n": 256},
        seeds=(42, 123), epochs=2, methods=_AUDIT,
        sizes=_sizes(penalty_epochs=2, lambdas=(0.0, 1e-2), depths=(2, 4), assay_epochs=2, calibration_steps=8,
                     ep_sweep=_ep_sweep(256, 1, betas=(0.1, 1.0), steps=(2, 10)), horizon_factor=2,
                     cross_arch={
            "ResMLP d=32": {},
            "ResMLP d=64": {"width": 64},
            "ResMLP d=32, no terminal LN": {"out_ln": False},
            "ViT-Mini": {"arch": "vit", "width": 32, "subset": 256},
            "SmallCNN": {"arch": "cnn", "subset": 256, "channels": [4, 8, 8], "hidden": 16},
            "SmallResNet": {"arch": "resnet", "subset": 256, "channels": 8},
            "StudentNet (synthetic)": {"arch": "studentnet", "dataset": "synthetic", "width": 32, "d": 32,
                                       "n_train": 512, "n_test": 256},
        }),
        deviations=("a 512-sample subset of Fashion-MNIST, width 32, 2 epochs",),
    ),
    Profile(
        name="quick",
        description="Fashion-MNIST with the paper's recipe, sized for a 2-core CPU (see the calibration appendix)",
        base={"dataset": "fashion-mnist", "arch": "resmlp", "width": 256, "depth": 4,
              **_RECIPE, "eval_n": 1280},
        seeds=(42, 123, 456), epochs=8, methods=_AUDIT,
        sizes=_sizes(penalty_epochs=8, lambdas=_LAMBDAS, depths=(2, 4, 8), assay_epochs=3, calibration_steps=3752,
                     ep_sweep=_ep_sweep(10000, 2), cross_arch={
            "ResMLP d=256": {},
            "ResMLP d=512": {"width": 512},
            "ResMLP d=256, no terminal LN": {"out_ln": False},
            "ViT-Mini": {"arch": "vit", "width": 128, "subset": 10000, "epochs": 4},
            "SmallCNN": {"arch": "cnn", "subset": 5000, "epochs": 4},
            "SmallResNet": {"arch": "resnet", "subset": 5000, "epochs": 4},
            "StudentNet (synthetic)": {"arch": "studentnet", "dataset": "synthetic", "epochs": 24},
        }),
        deviations=(
            "Fashion-MNIST (28x28x1, flattened to 784) instead of CIFAR-10 (3072), no augmentation",
            "8 epochs (3,752 steps) instead of 100; the penalty sweep also 8 instead of 30",
            "ViT-Mini: a 10,000-image training subset, 4 epochs; SmallCNN and SmallResNet: 5,000 images, "
            "4 epochs",
        ),
    ),
    Profile(
        name="paper",
        description="the paper's settings: CIFAR-10, 100 epochs, seeds 42/123/456 (meant for a GPU)",
        base={"dataset": "cifar10", "augment": True, "arch": "resmlp", "width": 256, "depth": 4,
              **_RECIPE, "eval_n": 1280},
        seeds=(42, 123, 456), epochs=100, methods=_AUDIT,
        sizes=_sizes(penalty_epochs=30, lambdas=_LAMBDAS, depths=(2, 4, 6, 8, 12), assay_epochs=5,
                     calibration_steps=9400, ep_sweep=_ep_sweep(10000, 2), horizon_factor=2, cross_arch={
            "ResMLP d=256": {},
            "ResMLP d=512, L=2": {"width": 512, "depth": 2},
            "ResMLP d=256, no terminal LN": {"out_ln": False},
            "ViT-Mini": {"arch": "vit", "width": 128},
            "SmallCNN": {"arch": "cnn"},
            "SmallResNet": {"arch": "resnet"},
            "StudentNet (synthetic)": {"arch": "studentnet", "dataset": "synthetic", "epochs": 80},
        }),
    ),
]}


def get_profile(name: str = "quick", *, dataset: str | None = None, arch: str | None = None,
                methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                epochs: int | None = None, device: str | None = None, results_dir: str | None = None,
                progress: bool = True, **base_overrides) -> Profile:
    """Profile ``name`` with a notebook's overrides applied and checked.

    An unknown profile, dataset, architecture or method raises ``ValueError``
    naming the valid values. Other keyword arguments override run-config keys of
    ``base`` (e.g. ``width=512``); ``canonical_config`` rejects unknown ones.
    """
    check_known("profile", name, PROFILES)
    p = PROFILES[name]
    given = {"dataset": dataset, "arch": arch, "methods": methods, "seeds": seeds, "epochs": epochs}
    overrides = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in {**given, **base_overrides}.items()
                 if v is not None}
    base = dict(p.base)
    if dataset is not None:
        check_known("dataset", dataset, DATASETS)
        base = {**rebase(base, {"dataset": dataset}), "dataset": dataset}
    if arch is not None:
        check_known("arch", arch, ARCHS)
        base = {**rebase(base, {"arch": arch}), "arch": arch}
    base.update(base_overrides)
    changes: dict = {"base": base, "device": device, "results": results_dir, "progress": progress,
                     "overrides": overrides}
    if methods is not None:
        for m in methods:
            check_known("method", m, METHODS)
        changes["methods"] = tuple(methods)
    if seeds is not None:
        if isinstance(seeds, int) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise ValueError(f"seeds={seeds!r}: give a non-empty list of integers, e.g. [42, 123]")
        changes["seeds"] = tuple(seeds)
    if epochs is not None:
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs={epochs!r}: must be an integer >= 1")
        changes["epochs"] = epochs
        changes["sizes"] = {**p.sizes, "penalty": {**p.sizes["penalty"], "epochs": epochs}}
    p = dataclasses.replace(p, **changes)
    canonical_config(**p.config("bp", p.seeds[0]))     # every base key must be a valid option
    return p


#: a chapter's papermill parameters, each passed to :func:`get_profile` (``None``: the profile's value)
PARAMETERS = ("profile", "dataset", "arch", "methods", "seeds", "epochs", "device", "results_dir")


def profile_from(namespace: Mapping) -> Profile:
    """A chapter's profile from its papermill parameters (the names of :data:`PARAMETERS` in
    ``namespace``, a notebook's ``globals()``; a missing one is ``None``), printed as the chapter's
    first output: the one call that sets a chapter up after its parameters cell.

    >>> profile_from({"profile": "smoke", "seeds": [7]}).seeds
    profile 'smoke'...
    (7,)
    """
    if "profile" not in namespace:
        raise ValueError("no 'profile' parameter: a chapter's parameters cell sets profile = 'quick' (or another "
                         f"of {', '.join(PROFILES)}) and the other parameters {', '.join(PARAMETERS[1:])}")
    p = get_profile(namespace["profile"], **{k: namespace.get(k) for k in PARAMETERS[1:]})
    print(p)
    return p
