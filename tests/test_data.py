"""Tests of faeval.data on small files written in the real IDX and CIFAR pickle formats."""
from __future__ import annotations

import gzip
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from faeval import data
from faeval.data import DATASETS, Dataset, load_dataset

IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616])


@pytest.fixture(autouse=True)
def isolated_search(monkeypatch, tmp_path):
    """No test sees the user's FAEVAL_DATA, cache or system datasets."""
    monkeypatch.delenv("FAEVAL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(data, "_SYSTEM_DIRS", {})


# --------------------------------------------------------------------------- writers


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    """Write ``array`` (uint8) as an IDX file: magic 0x0000080N, big-endian dims, bytes."""
    magic = 0x0800 + array.ndim
    header = magic.to_bytes(4, "big") + np.array(array.shape, ">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def make_idx_arrays(seed: int, n_train: int = 50, n_test: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.permutation(np.arange(n_test) % 10).astype(np.uint8),
    }
    arrays["x_train"][:, 0, 0] = 7  # one pixel constant in training (per_pixel normalisation)
    return arrays


def write_idx_folder(folder: Path, arrays: dict[str, np.ndarray], compress=("x_train", "y_train")) -> Path:
    """Training files gzipped and test files raw by default, so both formats are read."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_NAMES.items():
        write_idx(folder / stem, arrays[key], key in compress)
    return folder


@pytest.fixture
def idx(tmp_path):
    arrays = make_idx_arrays(seed=1)
    return write_idx_folder(tmp_path / "idx", arrays), arrays


def write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official batches are Python-2 pickles


@pytest.fixture
def cifar10(tmp_path):
    """A ``cifar-10-batches-py`` folder of five 20-image training batches and a 20-image test batch."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "c10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    raw = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, 20)]
        write_pickle(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": images,
                                     b"filenames": [b"x.png"] * 20})
        raw[name] = (images, labels)
    return folder, raw


# --------------------------------------------------------------------------- IDX


def test_idx_shapes_dtypes_and_exact_labels(idx):
    folder, arrays = idx
    ds = load_dataset("mnist", root=folder)
    assert ds.x_train.shape == (50, 1, 28, 28) and ds.x_test.shape == (20, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert (ds.n_train, ds.n_test, ds.num_classes, ds.input_shape) == (50, 20, 10, (1, 28, 28))
    assert ds.y_train.tolist() == arrays["y_train"].tolist()
    assert ds.y_test.tolist() == arrays["y_test"].tolist()
    assert ds.info["files"]["x_train"].endswith("train-images-idx3-ubyte.gz")
    assert ds.info["files"]["x_test"].endswith("t10k-images-idx3-ubyte")


def test_gzipped_and_raw_files_give_identical_tensors(tmp_path):
    arrays = make_idx_arrays(seed=3)
    gz = load_dataset("mnist", root=write_idx_folder(tmp_path / "gz", arrays, compress=tuple(IDX_NAMES)))
    raw = load_dataset("mnist", root=write_idx_folder(tmp_path / "raw", arrays, compress=()))
    assert torch.equal(gz.x_train, raw.x_train) and torch.equal(gz.x_test, raw.x_test)
    assert torch.equal(gz.y_train, raw.y_train)


def test_global_normalisation_uses_train_statistics(idx):
    folder, arrays = idx
    ds = load_dataset("mnist", root=folder)
    assert abs(ds.x_train.mean().item()) < 1e-4
    assert abs(ds.x_train.std(correction=0).item() - 1.0) < 1e-4
    stats = ds.info["normalize"]
    assert stats["kind"] == "global"
    assert stats["mean"] == pytest.approx(arrays["x_train"].mean() / 255, abs=1e-6)
    assert stats["std"] == pytest.approx(arrays["x_train"].std() / 255, abs=1e-6)
    expected_test = (arrays["x_test"] / 255 - stats["mean"]) / stats["std"]
    np.testing.assert_allclose(ds.x_test[:, 0].numpy(), expected_test, atol=1e-5)


def test_per_pixel_and_no_normalisation(idx):
    folder, arrays = idx
    ds = load_dataset("mnist", root=folder, normalize="per_pixel")
    per_pixel_mean = ds.x_train.mean(dim=0)
    per_pixel_std = ds.x_train.std(dim=0, correction=0)
    assert per_pixel_mean.abs().max().item() < 1e-5
    assert ds.info["normalize"]["constant_pixels"] == 1
    # the constant pixel is centred only (std set to 1), every other pixel has std 1
    assert per_pixel_std[0, 0, 0].item() == 0.0
    assert (per_pixel_std.flatten()[1:] - 1).abs().max().item() < 1e-4
    expected = (arrays["x_test"][:, 0, 0].astype(int) - 7) / 255
    assert ds.x_test[:, 0, 0, 0].numpy() == pytest.approx(expected, abs=1e-6)

    plain = load_dataset("mnist", root=folder, normalize="none")
    np.testing.assert_array_equal(plain.x_train[:, 0].numpy(), (arrays["x_train"] / 255).astype(np.float32))
    assert 0.0 <= plain.x_test.min().item() and plain.x_test.max().item() <= 1.0


def test_search_order(tmp_path, monkeypatch):
    in_root = write_idx_folder(tmp_path / "root", make_idx_arrays(seed=10))
    in_env = write_idx_folder(tmp_path / "env", make_idx_arrays(seed=11))
    in_env_sub = write_idx_folder(tmp_path / "env2" / "mnist", make_idx_arrays(seed=12))
    in_cache = write_idx_folder(tmp_path / "cache" / "faeval" / "mnist", make_idx_arrays(seed=13))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def labels_of(folder):
        return load_dataset("mnist", root=folder).y_train.tolist()

    assert load_dataset("mnist").y_train.tolist() == labels_of(in_cache)
    monkeypatch.setenv("FAEVAL_DATA", str(in_env))
    assert load_dataset("mnist").y_train.tolist() == labels_of(in_env) != labels_of(in_cache)
    assert load_dataset("mnist", root=in_root).y_train.tolist() != labels_of(in_env)
    assert load_dataset("mnist", root=in_root).info["files"]["x_train"].startswith(str(in_root))
    # $FAEVAL_DATA/<name> comes before $FAEVAL_DATA itself
    monkeypatch.setenv("FAEVAL_DATA", str(tmp_path / "env2"))
    assert load_dataset("mnist").info["files"]["y_train"].startswith(str(in_env_sub))
    # root/<name> is searched too
    found = load_dataset("mnist", root=tmp_path / "env2").info["files"]["y_train"]
    assert found.startswith(str(in_env_sub))


def test_truncated_files_are_rejected_naming_the_file(tmp_path):
    arrays = make_idx_arrays(seed=4)
    folder = write_idx_folder(tmp_path / "raw", arrays, compress=())
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated") as err:
        load_dataset("mnist", root=folder)
    assert "39200" in str(err.value) and "39100" in str(err.value)  # 50*28*28 promised, 39100 present

    folder = write_idx_folder(tmp_path / "gz", arrays, compress=tuple(IDX_NAMES))
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-8])  # cut the gzip trailer
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", root=folder)


def test_wrong_magic_and_count_mismatch_are_rejected(tmp_path):
    arrays = make_idx_arrays(seed=5)
    folder = write_idx_folder(tmp_path / "magic", arrays)
    write_idx(folder / "t10k-images-idx3-ubyte", arrays["y_test"], compress=False)  # a label file
    wrong = r"t10k-images-idx3-ubyte: wrong magic number 2049 \(expected 2051\)"
    with pytest.raises(ValueError, match=wrong):
        load_dataset("mnist", root=folder)

    arrays["y_test"] = arrays["y_test"][:19]
    folder = write_idx_folder(tmp_path / "count", arrays)
    with pytest.raises(ValueError, match="holds 20 images but .* holds 19 labels"):
        load_dataset("mnist", root=folder)


def test_missing_files_message_lists_searched_paths_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("FAEVAL_DATA", str(tmp_path / "envdata"))
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion-mnist", root=tmp_path / "nowhere")
    message = str(err.value)
    for searched in (tmp_path / "nowhere", tmp_path / "nowhere" / "fashion-mnist",
                     tmp_path / "envdata" / "fashion-mnist", tmp_path / "envdata",
                     tmp_path / "empty-cache" / "faeval" / "fashion-mnist"):
        assert f"  {searched}\n" in message
    assert "sudo apt-get install -y dataset-fashion-mnist" in message
    assert "FAEVAL_DATA" in message and "train-images-idx3-ubyte" in message


def test_system_folder_is_searched_last_for_fashion_mnist(tmp_path, monkeypatch):
    system = write_idx_folder(tmp_path / "usr-share", make_idx_arrays(seed=6))
    monkeypatch.setattr(data, "_SYSTEM_DIRS", {"fashion-mnist": system})
    ds = load_dataset("fashion-mnist")
    assert ds.name == "fashion-mnist" and ds.info["files"]["x_test"].startswith(str(system))
    with pytest.raises(FileNotFoundError):
        load_dataset("mnist")


# --------------------------------------------------------------------------- argument errors


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'fashion_mnist'") as err:
        load_dataset("fashion_mnist")
    assert "'fashion-mnist'" not in str(err.value) and "fashion-mnist" in str(err.value)
    assert all(name in str(err.value) for name in DATASETS)


@pytest.mark.parametrize("kw, match", [
    ({"subset": 0}, "subset=0: must be a positive integer"),
    ({"subset": 51}, "subset=51: must be between 1 and the training-set size 50"),
    ({"label_noise": 1.5}, r"label_noise=1.5: must satisfy 0 <= label_noise <= 1"),
    ({"label_noise": -0.1}, r"0 <= label_noise <= 1"),
    ({"normalize": "minmax"}, "valid values are 'global', 'per_pixel', 'none'"),
])
def test_invalid_option_values(idx, kw, match):
    with pytest.raises(ValueError, match=match):
        load_dataset("mnist", root=idx[0], **kw)


def test_unknown_option_is_a_type_error_naming_it(idx):
    with pytest.raises(TypeError, match="unknown option.*'normalise'.*valid options:.*normalize"):
        load_dataset("mnist", root=idx[0], normalise="global")
    with pytest.raises(TypeError, match="'augment'"):
        load_dataset("synthetic", augment=True)
    with pytest.raises(ValueError, match="alpha=2.0: must be in"):
        load_dataset("synthetic", alpha=2.0, n_train=10, n_test=10)


# --------------------------------------------------------------------------- batches


def index_dataset(n: int = 103, num_classes: int = 10) -> Dataset:
    """A dataset whose x holds each sample's own index, so batches reveal the order."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1)
    y = torch.arange(n) % num_classes
    return Dataset(x, y, x[:40].clone(), y[:40].clone(), num_classes, (1,), "index")


def order(ds: Dataset, **kw) -> list[int]:
    return [int(v) for xb, _ in ds.batches(**kw) for v in xb[:, 0]]


def test_batch_order_is_seeded_and_covers_every_sample_once():
    ds = index_dataset()
    first = order(ds, batch_size=10, seed=0, epoch=0)
    assert sorted(first) == list(range(103)) and first != list(range(103))
    assert order(ds, batch_size=10, seed=0, epoch=0) == first
    assert order(ds, batch_size=10, seed=1, epoch=0) != first
    assert order(ds, batch_size=10, seed=0, epoch=1) != first
    assert order(ds, batch_size=32, seed=0, epoch=0) == first  # batch size does not change the order
    sizes = [len(xb) for xb, _ in ds.batches(batch_size=10)]
    assert sizes == [10] * 10 + [3]
    assert [len(xb) for xb, _ in ds.batches(batch_size=10, drop_last=True)] == [10] * 10
    assert order(ds, batch_size=16, train=False, seed=5) == list(range(40))
    for xb, yb in ds.batches(batch_size=10):
        assert torch.equal(yb, xb[:, 0].long() % 10)  # labels travel with their samples


def test_eval_batch_and_to():
    ds = index_dataset()
    x, y = ds.eval_batch(16)
    assert x[:, 0].tolist() == list(range(16)) and y.tolist() == [i % 10 for i in range(16)]
    xs, _ = ds.eval_batch(16, seed=3)
    assert torch.equal(xs, ds.eval_batch(16, seed=3)[0]) and not torch.equal(xs, x)
    assert len(set(xs[:, 0].tolist())) == 16
    with pytest.raises(ValueError, match="between 1 and n_test=40"):
        ds.eval_batch(41)
    ds.info["tag"] = [1]
    copy = ds.to("cpu")
    assert copy is not ds and torch.equal(copy.x_train, ds.x_train) and copy.name == "index"
    copy.info["tag"].append(2)
    assert ds.info["tag"] == [1]


def test_random_targets_are_fresh_per_epoch_and_in_range():
    ds = index_dataset(n=2000)
    ds.random_targets = True
    epochs = [torch.cat([yb for _, yb in ds.batches(batch_size=128, epoch=e)]) for e in range(2)]
    true_in_order = torch.tensor(order(ds, batch_size=128, epoch=0)) % 10
    assert all(int(y.min()) >= 0 and int(y.max()) <= 9 for y in epochs)
    assert len(set(epochs[0].tolist())) == 10
    assert (epochs[0] == true_in_order).float().mean().item() < 0.2  # chance is 0.1
    assert (epochs[0] != epochs[1]).float().mean().item() > 0.8
    assert torch.equal(epochs[0], torch.cat([yb for _, yb in ds.batches(batch_size=128, epoch=0)]))
    assert torch.equal(torch.cat([yb for _, yb in ds.batches(train=False)]), ds.y_test)


def test_random_targets_option_of_load_dataset():
    ds = load_dataset("synthetic", n_train=500, n_test=100, random_targets=True)
    assert ds.random_targets and ds.info["random_targets"] is True
    y = torch.cat([yb for _, yb in ds.batches(batch_size=500)])
    x = torch.cat([xb for xb, _ in ds.batches(batch_size=500)])
    true = ds.y_train[[int(torch.nonzero((ds.x_train == row).all(1))[0]) for row in x]]
    assert (y == true).float().mean().item() < 0.2


# --------------------------------------------------------------------------- subset and label noise


def test_subset_is_seeded_and_keeps_label_pairs():
    full = load_dataset("synthetic", n_train=1000, n_test=200)
    part = load_dataset("synthetic", n_train=1000, n_test=200, subset=100, seed=0)
    assert part.n_train == 100 and part.info["subset"] == 100
    assert torch.equal(part.x_test, full.x_test) and torch.equal(part.y_test, full.y_test)
    match = (part.x_train[:, None, :] == full.x_train[None]).all(-1)  # (100, 1000)
    assert match.sum(1).tolist() == [1] * 100
    assert torch.equal(full.y_train[match.float().argmax(1)], part.y_train)
    again = load_dataset("synthetic", n_train=1000, n_test=200, subset=100)
    assert torch.equal(again.x_train, part.x_train)


def test_label_noise_fraction_is_close_to_p():
    clean = load_dataset("synthetic", n_train=20000, n_test=1000)
    noisy = load_dataset("synthetic", n_train=20000, n_test=1000, label_noise=0.3)
    assert noisy.info["label_noise_replaced"] == 6000
    changed = (noisy.y_train != clean.y_train).float().mean().item()
    assert changed == pytest.approx(0.3 * (1 - 1 / 10), abs=0.015)  # a replaced label may stay the same
    assert noisy.info["label_noise_changed"] == int((noisy.y_train != clean.y_train).sum())
    assert torch.equal(noisy.y_test, clean.y_test) and torch.equal(noisy.x_train, clean.x_train)
    again = load_dataset("synthetic", n_train=20000, n_test=1000, label_noise=0.3)
    assert torch.equal(again.y_train, noisy.y_train)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_uses_many_classes():
    kw = {"n_train": 3000, "n_test": 500}
    a, b = load_dataset("synthetic", seed=0, **kw), load_dataset("synthetic", seed=0, **kw)
    c = load_dataset("synthetic", seed=1, **kw)
    assert a.x_train.shape == (3000, 128) and a.input_shape == (128,) and a.num_classes == 10
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train) and (a.y_test != c.y_test).any()
    counts = a.info["class_counts_train"]
    assert sum(counts) == 3000 and counts == torch.bincount(a.y_train, minlength=10).tolist()
    assert sum(n > 0 for n in counts) >= 5
    assert min(counts) > 0.2 * 3000 / 10
    assert abs(a.x_train.mean().item()) < 0.01 and abs(a.x_train.std().item() - 1) < 0.01


def test_synthetic_teacher_follows_the_stated_recursion():
    d, depth, alpha, seed = 16, 3, 0.5, 7
    ds = load_dataset("synthetic", seed=seed, d=d, depth=depth, alpha=alpha, n_train=400, n_test=100,
                      num_classes=4)
    g = data._generator(seed, data._SYNTHETIC, "teacher")
    weights = [torch.randn(d, d, generator=g) / d ** 0.5 for _ in range(depth)]
    readout = torch.randn(4, d, generator=g)
    h = ds.x_test
    for w in weights:
        h = h + ((1 - alpha) * h + alpha * torch.tanh(h)) @ w.T
    assert torch.equal((h @ readout.T).argmax(1), ds.y_test)
    # the teacher does not depend on how many samples are drawn
    bigger = load_dataset("synthetic", seed=seed, d=d, depth=depth, alpha=alpha, n_train=800, n_test=100,
                          num_classes=4)
    assert torch.equal(bigger.x_test, ds.x_test) and torch.equal(bigger.y_test, ds.y_test)


# --------------------------------------------------------------------------- CIFAR


def test_cifar10_shapes_labels_and_channel_normalisation(cifar10):
    folder, raw = cifar10
    for root in (folder.parent, folder):  # root holding the folder, or the folder itself
        ds = load_dataset("cifar10", root=root)
        assert ds.x_train.shape == (100, 3, 32, 32) and ds.x_test.shape == (20, 3, 32, 32)
        assert ds.x_train.dtype == torch.float32 and ds.y_test.dtype == torch.int64
    train_labels = [v for i in range(1, 6) for v in raw[f"data_batch_{i}"][1]]
    assert ds.y_train.tolist() == train_labels and ds.y_test.tolist() == raw["test_batch"][1]
    images = np.concatenate([raw[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    expected = (images / 255 - CIFAR10_MEAN[None, :, None, None]) / CIFAR10_STD[None, :, None, None]
    channel_means = ds.x_train.mean(dim=(0, 2, 3)).numpy()
    np.testing.assert_allclose(channel_means, expected.mean(axis=(0, 2, 3)), atol=1e-5)
    np.testing.assert_allclose(ds.x_train.numpy(), expected, atol=1e-5)
    assert ds.info["normalize"]["mean"] == (0.4914, 0.4822, 0.4465)


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(8)
    fine = {}
    for part, n in (("train", 30), ("test", 10)):
        fine[part] = [int(v) for v in rng.integers(0, 100, n)]
        write_pickle(folder / part, {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                     b"fine_labels": fine[part], b"coarse_labels": [0] * n})
    ds = load_dataset("cifar100", root=tmp_path)
    assert ds.num_classes == 100
    assert ds.y_train.tolist() == fine["train"] and ds.y_test.tolist() == fine["test"]
    assert ds.info["normalize"]["std"] == (0.2673, 0.2564, 0.2762)


def test_cifar_errors(tmp_path, cifar10):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", root=tmp_path / "nowhere")
    message = str(err.value)
    assert f"  {tmp_path / 'nowhere' / 'cifar-10-batches-py'}\n" in message
    assert "put the extracted `cifar-10-batches-py` folder" in message and "download=True" in message
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(FileNotFoundError, match="download=True needs torchvision"):
            load_dataset("cifar10", root=tmp_path / "nowhere", download=True)
    folder, _ = cifar10
    batch = folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(ValueError, match="data_batch_3: cannot unpickle"):
        load_dataset("cifar10", root=folder)


# --------------------------------------------------------------------------- augmentation


def crops_and_flips(image: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """All (2 pad + 1)^2 crops of the zero-padded image, unflipped and flipped: (2, 9, 9, C, H, W)."""
    h, w = image.shape[-2:]
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    shifts = torch.stack([torch.stack([padded[:, i:i + h, j:j + w] for j in range(2 * pad + 1)])
                          for i in range(2 * pad + 1)])
    return torch.stack([shifts, shifts.flip(-1)])


def test_augmentation_crops_and_flips_train_batches_only(cifar10):
    ds = load_dataset("cifar10", root=cifar10[0], augment=True)
    plain = torch.cat([xb for xb, _ in ds.batches(batch_size=32, seed=3, augment=False)])
    augmented = torch.cat([xb for xb, _ in ds.batches(batch_size=32, seed=3)])
    again = torch.cat([xb for xb, _ in ds.batches(batch_size=32, seed=3)])
    assert augmented.shape == plain.shape == (100, 3, 32, 32)
    assert torch.equal(augmented, again)
    assert not torch.equal(augmented, plain)
    flips, shifts = 0, 0
    for original, aug in zip(plain, augmented):
        hits = (crops_and_flips(original) == aug).flatten(3).all(-1).nonzero()
        assert len(hits) >= 1, "augmented image is not a crop/flip of its original"
        flip, i, j = hits[0].tolist()
        flips += flip
        shifts += (i, j) != (4, 4)
    assert 25 <= flips <= 75 and shifts >= 80  # flip with p=1/2; offsets uniform over 9 x 9
    test = torch.cat([xb for xb, _ in ds.batches(batch_size=32, train=False)])
    assert torch.equal(test, ds.x_test)
    with pytest.raises(ValueError, match="test data are never augmented"):
        next(ds.batches(train=False, augment=True))


def test_an_epochs_draws_made_up_front_equal_those_made_batch_by_batch(cifar10):
    """batches() draws the epoch's crops, flips and random labels before the loop (so the loop never
    copies from the host): the batches are those of drawing them batch by batch, short last batch too."""
    ds = load_dataset("cifar10", root=cifar10[0], augment=True)
    ds.random_targets = True
    got = list(ds.batches(batch_size=32, seed=3, epoch=2))
    order = torch.randperm(ds.n_train, generator=data._generator(3, data._BATCHES, 2))
    g_aug, g_tgt = data._generator(3, data._AUGMENT, 2), data._generator(3, data._TARGETS, 2)
    starts = range(0, ds.n_train, 32)
    assert len(got) == len(starts) == 4 and len(got[-1][1]) == 4
    for (xb, yb), start in zip(got, starts):
        idx = order[start:start + 32]
        assert torch.equal(xb, data._crop_and_flip(ds.x_train[idx], g_aug))
        assert torch.equal(yb, torch.randint(ds.num_classes, (len(idx),), generator=g_tgt))
    dropped = list(ds.batches(batch_size=32, seed=3, epoch=2, drop_last=True))
    assert len(dropped) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(dropped, got))


def test_crop_and_flip_includes_pure_flips_and_identities():
    x = torch.randn(2000, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = data._crop_and_flip(x, torch.Generator().manual_seed(1))
    pure_flips = (out == torch.flip(x, dims=[-1])).flatten(1).all(1).sum().item()
    identities = (out == x).flatten(1).all(1).sum().item()
    assert 3 <= pure_flips <= 30 and 3 <= identities <= 30  # expected 2000 / 162 = 12.3 each


def test_augmentation_needs_images():
    ds = load_dataset("synthetic", n_train=50, n_test=10)
    with pytest.raises(ValueError, match="not an image dataset"):
        next(ds.batches(augment=True))


# --------------------------------------------------------------------------- the real Fashion-MNIST

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (REAL_FMNIST / "train-images-idx3-ubyte.gz").exists(),
                    reason="Fashion-MNIST is not installed (sudo apt-get install -y dataset-fashion-mnist)")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(data, "_SYSTEM_DIRS", {"fashion-mnist": REAL_FMNIST})
    start = time.perf_counter()
    ds = load_dataset("fashion-mnist")
    seconds = time.perf_counter() - start
    assert seconds < 5.0
    assert (ds.n_train, ds.n_test) == (60000, 10000)
    assert ds.x_train.shape == (60000, 1, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == [6000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    assert abs(ds.x_train.mean().item()) < 1e-4 and abs(ds.x_train.std().item() - 1) < 1e-4
    assert ds.info["normalize"]["mean"] == pytest.approx(0.2860, abs=1e-3)
