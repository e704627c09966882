"""Datasets as tensors on the run's device, with batches drawn by index slices.

``load_dataset(name, ...)`` returns a :class:`Dataset` holding the whole train
and test split as tensors (``x`` float32 shaped ``(N, *input_shape)``, ``y``
int64). ``Dataset.batches`` walks a permutation drawn from a ``torch.Generator``
seeded from ``(seed, epoch)``; there is no DataLoader.

Names (:data:`DATASETS`):

* ``fashion-mnist``, ``mnist``: the standard IDX files (optionally gzipped).
* ``cifar10``, ``cifar100``: the standard python-pickle folders.
* ``synthetic``: the teacher-student task of StudentNet, generated in memory.

Files are searched for in ``root``, ``root/<name>``, ``$FAEVAL_DATA/<name>``,
``$FAEVAL_DATA``, the user cache ``($XDG_CACHE_HOME or ~/.cache)/faeval/<name>``
and, for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist`` (Debian package
``dataset-fashion-mnist``).

Every random choice (subset, label noise, batch order, augmentation, random
targets, synthetic data) comes from its own seeded generator, so the same
arguments give the same tensors and batches on every run.
"""
from __future__ import annotations

import copy
import dataclasses
import gzip
import inspect
import os
import pickle
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .seeds import generator

__all__ = ["DATASETS", "Dataset", "load_dataset", "dataset_files", "dataset_options", "train_size", "test_size"]

DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "synthetic")

# Independent random streams (faeval.seeds): each draw has a purpose name of its own.
_BATCHES, _AUGMENT, _TARGETS = "data-order", "augment", "random-targets"
_SUBSET, _LABEL_NOISE, _EVAL, _SYNTHETIC = "subset", "label-noise", "eval-subset", "synthetic"


def _generator(seed: int, stream: str, index: int | str | None = None) -> torch.Generator:
    """A CPU ``torch.Generator`` for one random stream of ``seed`` (``index``: e.g. the epoch)."""
    return generator(seed, stream if index is None else f"{stream}/{index}")


# --------------------------------------------------------------------------- Dataset


@dataclasses.dataclass
class Dataset:
    """A train/test split held as tensors on one device.

    ``augment`` and ``random_targets`` are the defaults that :meth:`batches`
    uses for training batches; ``info`` records how the data were made
    (files read, normalisation, options, class counts).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple
    name: str
    info: dict = dataclasses.field(default_factory=dict)
    augment: bool = False
    random_targets: bool = False

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def n_test(self) -> int:
        return self.x_test.shape[0]

    def batches(self, batch_size: int = 128, seed: int = 0, epoch: int = 0, train: bool = True,
                drop_last: bool = False, augment: bool | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` minibatches of one epoch.

        Training batches follow a permutation drawn from a generator seeded
        from ``(seed, epoch)``; the same generator then drives augmentation
        (random crop with padding 4 and horizontal flip, see
        :func:`_crop_and_flip`) and, when ``random_targets`` is set, the fresh
        i.i.d. random labels of every batch (the random-target assay). Test batches
        (``train=False``) come in file order and are never augmented.
        ``augment=None`` uses the dataset's default.

        The whole epoch's random draws are made up front, batch by batch in the
        order the batches use them, and moved to the data's device in one copy:
        the loop over batches never copies from the host (on a GPU such a copy
        would wait for the queued steps).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be a positive integer")
        if not train and augment:
            raise ValueError("augment=True with train=False: test data are never augmented")
        augment = train and (self.augment if augment is None else augment)
        if augment and self.x_train.dim() != 4:
            raise ValueError(f"augment=True: {self.name!r} is not an image dataset "
                             f"(input shape {self.input_shape})")
        random_targets = train and self.random_targets
        x, y = (self.x_train, self.y_train) if train else (self.x_test, self.y_test)
        n = x.shape[0]
        order = torch.randperm(n, generator=_generator(seed, _BATCHES, epoch)) if train else torch.arange(n)
        g_aug, g_tgt = _generator(seed, _AUGMENT, epoch), _generator(seed, _TARGETS, epoch)
        stop = n - n % batch_size if drop_last else n
        sizes = [min(batch_size, n - start) for start in range(0, stop, batch_size)]
        draws: dict[str, list[torch.Tensor]] = {"rows": [], "cols": [], "labels": []}
        for b in sizes:
            if augment:
                rows, cols = _crop_and_flip_indices(b, *x.shape[2:], g_aug)
                draws["rows"].append(rows)
                draws["cols"].append(cols)
            if random_targets:
                draws["labels"].append(torch.randint(self.num_classes, (b,), generator=g_tgt))
        on_device = {k: torch.cat(v).to(x.device).split(sizes) for k, v in draws.items() if v}
        order = order.to(x.device)
        for i, start in enumerate(range(0, stop, batch_size)):
            idx = order[start:start + sizes[i]]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            if augment:
                xb = _gather_crops(xb, on_device["rows"][i], on_device["cols"][i])
            if random_targets:
                yb = on_device["labels"][i].to(y.dtype)
            yield xb, yb

    def eval_batch(self, n: int, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed evaluation batch of ``n`` test samples.

        ``seed=None`` gives the first ``n`` test samples; an integer seed gives
        a seeded random choice of ``n`` test samples (still the same every call).
        """
        if not 1 <= n <= self.n_test:
            raise ValueError(f"n={n}: must be between 1 and n_test={self.n_test}")
        if seed is None:
            return self.x_test[:n], self.y_test[:n]
        idx = torch.randperm(self.n_test, generator=_generator(seed, _EVAL))[:n]
        idx = idx.to(self.x_test.device)
        return self.x_test[idx], self.y_test[idx]

    def to(self, device) -> Dataset:
        """A copy with every tensor on ``device``."""
        tensors = {f: getattr(self, f).to(device) for f in ("x_train", "y_train", "x_test", "y_test")}
        return dataclasses.replace(self, info=copy.deepcopy(self.info), **tensors)


def _crop_and_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` plus random horizontal flip, per sample.

    The images are already normalised, so the zero padding is the *mean* pixel
    value rather than black (torchvision pads before normalising). Offsets and
    flips come from ``g`` (:func:`_crop_and_flip_indices`); the crop and flip are
    one gather by advanced indexing (:func:`_gather_crops`), so there is no loop
    over samples.
    """
    rows, cols = _crop_and_flip_indices(x.shape[0], x.shape[2], x.shape[3], g, pad)
    return _gather_crops(x, rows.to(x.device), cols.to(x.device), pad)


def _crop_and_flip_indices(b: int, h: int, w: int, g: torch.Generator, pad: int = 4
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The padded image's rows (b, h) and columns (b, w) that ``b`` random crops and flips keep."""
    top = torch.randint(2 * pad + 1, (b, 1), generator=g)
    left = torch.randint(2 * pad + 1, (b, 1), generator=g)
    flip = torch.rand(b, 1, generator=g) < 0.5
    cols = torch.arange(w).expand(b, w)
    cols = torch.where(flip, w - 1 - cols, cols)
    return top + torch.arange(h), left + cols


def _gather_crops(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, pad: int = 4) -> torch.Tensor:
    b, c = x.shape[:2]
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


# --------------------------------------------------------------------------- entry point


def load_dataset(name: str, root=None, device="cpu", subset: int | None = None, seed: int = 0,
                 **kw) -> Dataset:
    """Load dataset ``name`` into tensors on ``device``.

    Options for every dataset: ``subset=N`` keeps a seeded random choice of N
    training samples (the test set is untouched); ``label_noise=p`` (0 <= p <= 1)
    replaces a seeded fraction p of the training labels by uniformly random
    classes (a replaced label may by chance equal the old one; ``p=1`` gives fixed random
    labels, one per sample); ``random_targets=True`` makes training batches carry fresh
    random labels instead (new ones every batch).
    Each dataset adds its own options: see ``_load_idx``, ``_load_cifar`` and
    ``_load_synthetic``. An unknown option raises ``TypeError``.
    """
    loader = _loader(name)
    label_noise = kw.pop("label_noise", 0.0)
    random_targets = bool(kw.pop("random_targets", False))
    options = [p for p, v in inspect.signature(loader).parameters.items() if v.kind == v.KEYWORD_ONLY]
    unknown = sorted(set(kw) - set(options))
    if unknown:
        raise TypeError(f"load_dataset({name!r}) got unknown option(s) {', '.join(map(repr, unknown))}; "
                        f"valid options: subset, seed, label_noise, random_targets, {', '.join(options)}")
    if subset is not None and (not isinstance(subset, (int, np.integer)) or subset <= 0):
        raise ValueError(f"subset={subset!r}: must be a positive integer at most the training-set size")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise={label_noise!r}: must satisfy 0 <= label_noise <= 1")

    start = time.perf_counter()
    ds = loader(name, root, seed, **kw)
    if subset is not None:
        _take_subset(ds, int(subset), seed)
    if label_noise > 0:
        _add_label_noise(ds, float(label_noise), seed)
    ds.random_targets = random_targets
    ds.info.update(name=name, seed=seed, subset=subset, label_noise=label_noise,
                   random_targets=random_targets, options=dict(kw),
                   load_seconds=time.perf_counter() - start)
    return ds.to(device)


def _take_subset(ds: Dataset, n: int, seed: int) -> None:
    """Keep a seeded random choice of ``n`` training samples (in place)."""
    if n > ds.n_train:
        raise ValueError(f"subset={n}: must be between 1 and the training-set size {ds.n_train}")
    idx = torch.randperm(ds.n_train, generator=_generator(seed, _SUBSET))[:n]
    ds.x_train, ds.y_train = ds.x_train[idx], ds.y_train[idx]


def _add_label_noise(ds: Dataset, p: float, seed: int) -> None:
    """Replace a seeded fraction ``p`` of the training labels by random classes (in place)."""
    g = _generator(seed, _LABEL_NOISE)
    n_noisy = round(p * ds.n_train)
    idx = torch.randperm(ds.n_train, generator=g)[:n_noisy]
    new = torch.randint(ds.num_classes, (n_noisy,), generator=g)
    changed = int((ds.y_train[idx] != new).sum())
    ds.y_train = ds.y_train.clone()
    ds.y_train[idx] = new
    ds.info["label_noise_replaced"] = n_noisy
    ds.info["label_noise_changed"] = changed


# --------------------------------------------------------------------------- file search


# Folders that system packages install into (Debian: dataset-fashion-mnist).
_SYSTEM_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}


def _search_dirs(name: str, root) -> list[Path]:
    """Folders searched for ``name``'s files, in order (see the module docstring)."""
    dirs = []
    if root is not None:
        dirs += [Path(root), Path(root) / name]
    env = os.environ.get("FAEVAL_DATA")
    if env:
        dirs += [Path(env) / name, Path(env)]
    dirs.append(_cache_dir(name))
    if name in _SYSTEM_DIRS:
        dirs.append(_SYSTEM_DIRS[name])
    return dirs


def dataset_files(name: str, root=None) -> list[Path]:
    """The files :func:`load_dataset` reads for ``name``, found where it looks for them (the module docstring);
    none for ``synthetic``. A dataset whose files are missing raises the ``FileNotFoundError`` that loading it
    would, naming every folder searched."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    if name == "synthetic":
        return []
    if name in _CIFAR:
        folder, spec = _find_cifar(name, root, download=False), _CIFAR[name]
        return [folder / f for f in spec["train"] + spec["test"]]
    return list(_find_idx(name, root).values())


def _cache_dir(name: str) -> Path:
    """``($XDG_CACHE_HOME or ~/.cache)/faeval/<name>``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "faeval" / name


def _missing_files_error(name: str, searched: list[Path], wanted: str, fix: str) -> FileNotFoundError:
    paths = "\n".join(f"  {p}" for p in searched)
    return FileNotFoundError(f"{name}: could not find {wanted}. Searched, in order:\n{paths}\nFix: {fix}")


# --------------------------------------------------------------------------- IDX (Fashion-MNIST, MNIST)

_IDX_FILES = {
    "x_train": ("train-images-idx3-ubyte", 2051),
    "y_train": ("train-labels-idx1-ubyte", 2049),
    "x_test": ("t10k-images-idx3-ubyte", 2051),
    "y_test": ("t10k-labels-idx1-ubyte", 2049),
}


def _find_idx(name: str, root) -> dict[str, Path]:
    """The first searched folder holding all four IDX files (raw preferred to ``.gz``)."""
    searched = _search_dirs(name, root)
    for folder in searched:
        found = {}
        for key, (stem, _) in _IDX_FILES.items():
            path = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
            if path is not None:
                found[key] = path
        if len(found) == len(_IDX_FILES):
            return found
    files = ", ".join(f"{stem}[.gz]" for stem, _ in _IDX_FILES.values())
    fix = f"set FAEVAL_DATA (or pass root=) to a folder holding {files}"
    if name == "fashion-mnist":
        fix = f"run `sudo apt-get install -y dataset-fashion-mnist`, or {fix}"
    raise _missing_files_error(name, searched, f"the four IDX files ({files})", fix)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file of unsigned bytes, checking its magic number and byte count."""
    try:
        raw = path.read_bytes()
        raw = bytearray(gzip.decompress(raw) if path.suffix == ".gz" else raw)  # writable for torch
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read ({err}); the file is corrupt or truncated, "
                         "replace it with a fresh copy") from err
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated, only {len(raw)} bytes, shorter than the IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: wrong magic number {found} (expected {magic}); "
                         "this is not the IDX file the name says")
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(np.int64)
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header promises {' x '.join(map(str, dims))} = {expected} bytes of data "
                         f"but the file holds {len(raw) - header}; the file is truncated or corrupt")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _load_idx(name: str, root, seed: int, *, normalize: str = "global", augment: bool = False) -> Dataset:
    """Fashion-MNIST / MNIST from IDX files; ``x`` shaped ``(N, 1, 28, 28)``.

    ``normalize``: ``"global"`` subtracts the training set's mean pixel value
    and divides by its std; ``"per_pixel"`` does so per pixel, where a pixel
    whose training std is below 1e-6 (constant in training) is only centred:
    its std is set to 1 rather than clamped, since dividing by ~0 would turn a
    test image that lights that pixel into huge values (pixels with small but
    nonzero std still amplify test deviations; Fashion-MNIST has test values
    up to ~280 this way); ``"none"`` scales to [0, 1]. Pixel values are first
    scaled to [0, 1]; the statistics used are recorded in ``info["normalize"]``.
    ``augment`` sets the default of ``Dataset.batches``.
    """
    if normalize not in ("global", "per_pixel", "none"):
        raise ValueError(f"normalize={normalize!r}: valid values are 'global', 'per_pixel', 'none'")
    paths = _find_idx(name, root)
    arrays = {key: _read_idx(paths[key], magic) for key, (_, magic) in _IDX_FILES.items()}
    for split in ("train", "test"):
        nx, ny = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if nx != ny:
            raise ValueError(f"{paths[f'x_{split}']} holds {nx} images but {paths[f'y_{split}']} "
                             f"holds {ny} labels")
    x_train, x_test = (torch.from_numpy(arrays[k]).to(torch.float32).div_(255.0).unsqueeze(1)
                       for k in ("x_train", "x_test"))
    stats = _standardise(x_train, x_test, normalize)
    y_train, y_test = (torch.from_numpy(arrays[k]).long() for k in ("y_train", "y_test"))
    _check_labels(y_train, y_test, 10, paths["y_train"])
    info = {"files": {k: str(p) for k, p in paths.items()}, "normalize": stats}
    return Dataset(x_train, y_train, x_test, y_test, 10, (1, 28, 28), name, info, augment=augment)


def _standardise(x_train: torch.Tensor, x_test: torch.Tensor, mode: str) -> dict:
    """Standardise both splits in place with statistics of ``x_train``; return them."""
    if mode == "none":
        return {"kind": "none", "scale": "x / 255"}
    if mode == "global":
        std, mean = torch.std_mean(x_train, correction=0)
        for x in (x_train, x_test):
            x.sub_(mean).div_(std)
        return {"kind": "global", "mean": mean.item(), "std": std.item()}
    std, mean = torch.std_mean(x_train, dim=0, keepdim=True, correction=0)
    constant = std < 1e-6
    std[constant] = 1.0
    for x in (x_train, x_test):
        x.sub_(mean).div_(std)
    return {"kind": "per_pixel", "mean_of_means": mean.mean().item(), "std_floor": 1e-6,
            "constant_pixels": int(constant.sum())}


def _check_labels(y_train: torch.Tensor, y_test: torch.Tensor, num_classes: int, where) -> None:
    for y in (y_train, y_test):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"{where}: labels outside 0..{num_classes - 1} "
                             f"(found {int(y.min())}..{int(y.max())})")


# --------------------------------------------------------------------------- CIFAR-10 / CIFAR-100

_CIFAR = {
    "cifar10": {"folder": "cifar-10-batches-py", "torchvision": "CIFAR10", "classes": 10,
                "label_key": b"labels", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"],
                "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
    "cifar100": {"folder": "cifar-100-python", "torchvision": "CIFAR100", "classes": 100,
                 "label_key": b"fine_labels", "train": ["train"], "test": ["test"],
                 "mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762)},
}


def _find_cifar(name: str, root, download: bool) -> Path:
    """The folder holding ``name``'s pickle batches; downloads it with torchvision if asked."""
    spec = _CIFAR[name]
    searched = [p for base in _search_dirs(name, root) for p in (base / spec["folder"], base)]
    for folder in searched:
        if all((folder / f).is_file() for f in spec["train"] + spec["test"]):
            return folder
    target = Path(root) if root is not None else _cache_dir(name)
    wanted = f"the `{spec['folder']}` pickle batches"
    put = (f"put the extracted `{spec['folder']}` folder (from the official python-version archive) "
           "under root= or $FAEVAL_DATA")
    if not download:
        raise _missing_files_error(name, searched, wanted, f"{put}, or pass download=True with torchvision "
                                   f"installed (it downloads into {target})")
    try:
        import torchvision
    except ImportError as err:
        raise _missing_files_error(name, searched, wanted, "download=True needs torchvision, which is not "
                                   f"importable here; install it, or {put}") from err
    getattr(torchvision.datasets, spec["torchvision"])(str(target), train=True, download=True)
    return target / spec["folder"]


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch: uint8 images ``(N, 3, 32, 32)`` and int64 labels.

    Only load batches from a trusted source: unpickling can run code.
    """
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as err:  # pickle raises many types on a damaged file
        raise ValueError(f"{path}: cannot unpickle ({type(err).__name__}: {err}); "
                         "the file is corrupt or truncated, replace it with a fresh copy") from err
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: not a CIFAR batch (expected a dict with keys b'data' and {label_key!r})")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: expected uint8 data of shape (N, 3072) and N labels, "
                         f"found {data.dtype} {data.shape} and {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar(name: str, root, seed: int, *, download: bool = False, augment: bool = False) -> Dataset:
    """CIFAR-10 / CIFAR-100 (fine labels) from the python-pickle batches; ``x`` shaped ``(N, 3, 32, 32)``.

    Pixels are scaled to [0, 1] and standardised per channel with the usual
    published constants. ``augment`` sets the default of ``Dataset.batches``.
    """
    spec = _CIFAR[name]
    folder = _find_cifar(name, root, download)
    mean = torch.tensor(spec["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"]).view(1, 3, 1, 1)
    split = {}
    for part in ("train", "test"):
        batches = [_read_cifar_batch(folder / f, spec["label_key"]) for f in spec[part]]
        x = torch.from_numpy(np.concatenate([b[0] for b in batches])).to(torch.float32).div_(255.0)
        split[part] = (x.sub_(mean).div_(std), torch.from_numpy(np.concatenate([b[1] for b in batches])))
    _check_labels(split["train"][1], split["test"][1], spec["classes"], folder)
    info = {"files": str(folder),
            "normalize": {"kind": "per_channel", "mean": spec["mean"], "std": spec["std"]}}
    return Dataset(*split["train"], *split["test"], spec["classes"], (3, 32, 32), name, info,
                   augment=augment)


# --------------------------------------------------------------------------- synthetic teacher-student


def _load_synthetic(name: str, root, seed: int, *, d: int = 128, depth: int = 4, alpha: float = 1.0,
                    n_train: int = 20000, n_test: int = 5000, num_classes: int = 10) -> Dataset:
    """The teacher-student task of StudentNet; ``x`` shaped ``(N, d)``.

    Inputs x ~ N(0, I_d). The teacher is a residual net
    ``h_{l+1} = h_l + W_l phi_alpha(h_l)`` with ``W_l`` Gaussian scaled by
    1/sqrt(d) and ``phi_alpha(z) = (1 - alpha) z + alpha tanh(z)``; the label is
    the argmax of a Gaussian ``(num_classes, d)`` readout of the final state.
    Teacher, training inputs and test inputs come from three generators of
    ``seed``, so the teacher does not depend on the sample counts. Class counts
    are recorded in ``info``; a warning says when a class is nearly absent.
    """
    checks = {"d": d >= 1, "depth": depth >= 0, "alpha": 0.0 <= alpha <= 1.0, "n_train": n_train >= 1,
              "n_test": n_test >= 1, "num_classes": num_classes >= 2}
    ranges = {"d": ">= 1", "depth": ">= 0", "alpha": "in [0, 1]", "n_train": ">= 1", "n_test": ">= 1",
              "num_classes": ">= 2"}
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"{key}={locals()[key]!r}: must be {ranges[key]}")
    g = _generator(seed, _SYNTHETIC, "teacher")
    weights = [torch.randn(d, d, generator=g) / d ** 0.5 for _ in range(depth)]
    readout = torch.randn(num_classes, d, generator=g)

    def teacher(x: torch.Tensor) -> torch.Tensor:
        h = x
        for w in weights:
            h = h + ((1 - alpha) * h + alpha * torch.tanh(h)) @ w.T
        return (h @ readout.T).argmax(dim=1)

    x_train = torch.randn(n_train, d, generator=_generator(seed, _SYNTHETIC, "x-train"))
    x_test = torch.randn(n_test, d, generator=_generator(seed, _SYNTHETIC, "x-test"))
    y_train, y_test = teacher(x_train), teacher(x_test)
    counts = torch.bincount(y_train, minlength=num_classes)
    if int(counts.min()) < 0.1 * n_train / num_classes:
        warnings.warn(f"synthetic task (seed={seed}): a class holds only {int(counts.min())} of {n_train} "
                      f"training samples (class counts {counts.tolist()})", stacklevel=3)
    info = {"teacher": {"d": d, "depth": depth, "alpha": alpha, "num_classes": num_classes},
            "normalize": {"kind": "none", "note": "inputs are already standard normal"},
            "class_counts_train": counts.tolist(),
            "class_counts_test": torch.bincount(y_test, minlength=num_classes).tolist()}
    return Dataset(x_train, y_train, x_test, y_test, num_classes, (d,), name, info)


# Every loader takes (name, root, seed, *, its own options) and returns a CPU Dataset.
_LOADERS = {"fashion-mnist": _load_idx, "mnist": _load_idx,
            "cifar10": _load_cifar, "cifar100": _load_cifar, "synthetic": _load_synthetic}

#: training-set sizes of the standard files (a subset, or the synthetic task's n_train, overrides them)
_TRAIN_SIZES = {"fashion-mnist": 60000, "mnist": 60000, "cifar10": 50000, "cifar100": 50000}
_TEST_SIZES = {"fashion-mnist": 10000, "mnist": 10000, "cifar10": 10000, "cifar100": 10000}

_COMMON_OPTIONS = {"subset": None, "label_noise": 0.0, "random_targets": False}


def _loader(name: str):
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return _LOADERS[name]


def dataset_options(name: str) -> dict:
    """The options of dataset ``name`` with their defaults (every dataset's, then its own).

    >>> dataset_options("fashion-mnist")
    {'subset': None, 'label_noise': 0.0, 'random_targets': False, 'normalize': 'global', 'augment': False}
    """
    own = {n: p.default for n, p in inspect.signature(_loader(name)).parameters.items() if p.kind == p.KEYWORD_ONLY}
    return {**_COMMON_OPTIONS, **own}


def train_size(name: str, options: dict) -> int:
    """How many training samples dataset ``name`` with ``options`` holds, without loading it.

    >>> train_size("cifar10", {"subset": None}), train_size("fashion-mnist", {"subset": 5000})
    (50000, 5000)
    """
    if options.get("subset"):
        return int(options["subset"])
    if name == "synthetic":
        return int(options.get("n_train", dataset_options(name)["n_train"]))
    _loader(name)
    return _TRAIN_SIZES[name]


def test_size(name: str, options: dict) -> int:
    """How many test samples dataset ``name`` with ``options`` holds (a subset keeps the whole test split).

    >>> test_size("fashion-mnist", {"subset": 5000}), test_size("synthetic", {"n_test": 256})
    (10000, 256)
    """
    if name == "synthetic":
        return int(options.get("n_test", dataset_options(name)["n_test"]))
    _loader(name)
    return _TEST_SIZES[name]
