"""Datasets: the generated 12-bit SZT task, MNIST and CIFAR-10 through torchvision, synthetic images.

    from pipeline.config import DataConfig
from pipeline.registry import Registry

DATASETS = Registry("dataset")
register_dataset = DATASETS.register
    from pipeline.data import load_dataset
    data = load_dataset(DataConfig(dataset="szt"))
    data.x_train.shape  # (3276, 12)

Datasets are registered by name (`DATASETS`); a config's `data.factory = "package.module:fn"`
names a function of one's own with the signature `(cfg: DataConfig) -> SplitData`, where
`cfg.options` holds its free keywords. Every built-in dataset comes back as float32 inputs in
[0, 1] (SZT: bits 0/1), int64 labels, and for each sample its index in the source dataset, so
the archive can record exactly which samples the MI estimates use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig
from pipeline.errors import KnownFailure
from pipeline.registry import Registry

DATASETS = Registry("dataset")
register_dataset = DATASETS.register

# Icosahedron neighbour lists and antipodal pairs of docs/science.md, section 2.
SZT_NEIGHBOURS = {
    0: [1, 3, 5, 10, 11], 1: [0, 2, 3, 4, 11], 2: [1, 3, 4, 8, 9], 3: [0, 1, 2, 8, 10],
    4: [1, 2, 6, 9, 11], 5: [0, 6, 7, 10, 11], 6: [4, 5, 7, 9, 11], 7: [5, 6, 8, 9, 10],
    8: [2, 3, 7, 9, 10], 9: [2, 4, 6, 7, 8], 10: [0, 3, 5, 7, 8], 11: [0, 1, 4, 5, 6],
}
SZT_ANTIPODES = [(0, 9), (1, 7), (2, 5), (3, 6), (4, 10), (8, 11)]


class DataError(KnownFailure, RuntimeError):
    """Dataset files are missing or unreadable; the message says where to put them."""


@dataclass(frozen=True)
class SplitData:
    """Train and test tensors of one dataset, with source indices for provenance."""

    x_train: np.ndarray
    y_train: np.ndarray
    index_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    index_test: np.ndarray
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def szt_patterns() -> tuple[np.ndarray, np.ndarray]:
    """All 4096 12-bit patterns (binary counting order, column 0 most significant) and labels.

    Returns
    -------
    x : (4096, 12) uint8
    y : (4096,) int64, 1 iff w + 0.0194 n1 - 0.2136 n2 - 0.3301 n3 > 4.1699
    """
    codes = np.arange(4096)
    x = ((codes[:, None] >> (11 - np.arange(12))[None, :]) & 1).astype(np.uint8)
    neighbour_pairs = sorted({(min(a, b), max(a, b)) for a, ns in SZT_NEIGHBOURS.items() for b in ns})
    xi = x.astype(np.int64)
    w = xi.sum(axis=1)
    n1 = sum(xi[:, a] * xi[:, b] for a, b in neighbour_pairs)
    n3 = sum(xi[:, a] * xi[:, b] for a, b in SZT_ANTIPODES)
    n2 = w * (w - 1) // 2 - n1 - n3
    score = w + 0.0194 * n1 - 0.2136 * n2 - 0.3301 * n3
    y = (score > 4.1699).astype(np.int64)
    return x, y


def _shuffled_split(n: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(train_fraction * n))
    return np.sort(order[:n_train]), np.sort(order[n_train:])


def _limit(index: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if limit <= 0 or limit >= len(index):
        return index
    return np.sort(np.random.default_rng(seed + 1).choice(index, limit, replace=False))


def _torchvision(cfg: DataConfig, train: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision import datasets

    root = Path(cfg.root)
    name = {"mnist": "MNIST", "cifar10": "CIFAR10"}[cfg.dataset]
    where = {
        "mnist": f"{root}/MNIST/raw/ (train-images-idx3-ubyte.gz, t10k-images-idx3-ubyte.gz, ...)",
        "cifar10": f"{root}/cifar-10-batches-py/ (data_batch_1..5, test_batch)",
    }[cfg.dataset]
    try:
        ds = getattr(datasets, name)(str(root), train=train, download=cfg.download)
    except (RuntimeError, OSError) as err:
        if cfg.dataset == "mnist" and (found := _mnist_raw_split(root, train)) is not None:
            return found
        hint = "" if cfg.download else " or set data.download = true where the internet is reachable"
        split = "train" if train else "test"
        raise DataError(
            f"{name} {split} split not found under {root}: put the files in {where}{hint}. "
            f"With only the test split present, set data.source_split = 'test'. ({err})"
        ) from None
    data = np.asarray(ds.data)
    if data.ndim == 3:  # MNIST (N, 28, 28) -> (N, 1, 28, 28)
        data = data[:, None]
    else:  # CIFAR (N, 32, 32, 3) -> (N, 3, 32, 32)
        data = data.transpose(0, 3, 1, 2)
    x = data.astype(np.float32) / 255.0
    y = np.asarray(ds.targets, dtype=np.int64)
    return x, y


def _mnist_raw_split(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """One MNIST split from its raw idx files alone (torchvision's class wants all four).

    Uses torchvision's own idx readers; gzip files are decompressed into a temporary folder.
    """
    import gzip
    import tempfile

    from torchvision.datasets.mnist import read_image_file, read_label_file

    prefix = "train" if train else "t10k"
    raw = root / "MNIST" / "raw"
    names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name in names:
            if (raw / name).exists():
                paths.append(raw / name)
            elif (raw / f"{name}.gz").exists():
                target = Path(tmp) / name
                target.write_bytes(gzip.decompress((raw / f"{name}.gz").read_bytes()))
                paths.append(target)
            else:
                return None
        images = read_image_file(str(paths[0])).numpy()
        labels = read_label_file(str(paths[1])).numpy()
    return images[:, None].astype(np.float32) / 255.0, labels.astype(np.int64)


def synthetic_images(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Class-conditional images: a pixelwise uniform prototype per class plus pixel noise, in [0, 1]."""
    rng = np.random.default_rng(cfg.split_seed + 12345)
    n, k = cfg.synthetic_samples, cfg.n_classes
    prototypes = rng.uniform(0.2, 0.8, size=(k, *cfg.synthetic_shape)).astype(np.float32)
    y = rng.integers(0, k, size=n).astype(np.int64)
    noise = rng.normal(0.0, 0.15, size=(n, *cfg.synthetic_shape)).astype(np.float32)
    x = np.clip(prototypes[y] + noise, 0.0, 1.0)
    return x, y


def split_dataset(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: DataConfig) -> SplitData:
    """A shuffled train/test split of one array of samples (`train_fraction`, `split_seed`)."""
    i_tr, i_te = _shuffled_split(len(y), cfg.train_fraction, cfg.split_seed)
    i_tr = _limit(i_tr, cfg.max_train, cfg.split_seed)
    i_te = _limit(i_te, cfg.max_test, cfg.split_seed)
    return SplitData(x[i_tr], y[i_tr], i_tr, x[i_te], y[i_te], i_te, n_classes)


@register_dataset("szt")
def szt(cfg: DataConfig) -> SplitData:
    """The 4096 12-bit patterns of Shwartz-Ziv & Tishby, shuffled into train and test."""
    x, y = szt_patterns()
    return split_dataset(x.astype(np.float32), y, 2, cfg)


@register_dataset("synthetic")
def synthetic(cfg: DataConfig) -> SplitData:
    """Class-conditional images of `synthetic_shape` (CIFAR-shaped data without files)."""
    x, y = synthetic_images(cfg)
    return split_dataset(x, y, cfg.n_classes, cfg)


@register_dataset("mnist")
@register_dataset("cifar10")
def torchvision_dataset(cfg: DataConfig) -> SplitData:
    """MNIST or CIFAR-10 from `root`: the native split, or one source split divided in two."""
    if cfg.source_split != "native":
        x_all, y_all = _torchvision(cfg, train=cfg.source_split == "train")
        return split_dataset(x_all, y_all, 10, cfg)
    x_tr, y_tr = _torchvision(cfg, train=True)
    x_te, y_te = _torchvision(cfg, train=False)
    # Native splits: indices count the train split first, then the test split.
    i_tr = _limit(np.arange(len(y_tr)), cfg.max_train, cfg.split_seed)
    i_te = _limit(np.arange(len(y_te)), cfg.max_test, cfg.split_seed)
    return SplitData(x_tr[i_tr], y_tr[i_tr], i_tr, x_te[i_te], y_te[i_te], i_te + len(y_tr), n_classes=10)


DATASETS.seal()  # the built-ins above: a user's register_dataset picks another name


def load_dataset(cfg: DataConfig) -> SplitData:
    """The dataset of `cfg`: a registered name, or the function `cfg.factory` names."""
    name = cfg.factory or cfg.dataset
    data = DATASETS.get(name)(cfg)
    if not isinstance(data, SplitData):
        raise DataError(f"dataset factory {name!r} returned {type(data).__name__}; it must return "
                        "pipeline.data.SplitData (x_train, y_train, index_train, x_test, ...)")
    return data
