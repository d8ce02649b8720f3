"""A researcher's own network, dataset and estimator, as the tests and configs name them.

    model.factory = "tests.own_models:build"     data.factory = "tests.own_models:dataset"
    method = "tests.own_models:gaussian_information_plane"   (also registered as "own_gaussian")
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.config import DataConfig, ModelConfig
from pipeline.data import SplitData, split_dataset
from pipeline.estimators import register_estimator


class PairOut(nn.Module):
    """Returns (features, gate): a tuple-returning module, as LSTMs and attention layers do."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(width, width)

    def forward(self, h):
        z = self.proj(h)
        return torch.tanh(z), torch.sigmoid(z)


class Tower(nn.Module):
    """Nested submodules: a conv stem, a block holding a tuple-returning module, a linear head."""

    def __init__(self, channels: int = 3, n_classes: int = 3, side: int = 6):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU())
        self.block = nn.ModuleDict({"flat": nn.Flatten(), "pair": PairOut(channels * side * side)})
        self.head = nn.Linear(channels * side * side, n_classes)

    def forward(self, x):
        h = self.block["flat"](self.stem(x))
        features, gate = self.block["pair"](h)
        return self.head(features * gate)


def build(input_shape: tuple[int, ...], n_classes: int, cfg: ModelConfig) -> Tower:
    return Tower(cfg.options.get("channels", 3), n_classes, input_shape[-1])


def blobs(n: int = 300, side: int = 6, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class sets the row of a bright bar, on uniform noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    x = rng.uniform(0, 0.5, size=(n, 1, side, side)).astype(np.float32)
    for c in range(n_classes):
        x[y == c, 0, 2 * c % side, :] += 1.0
    return x, y.astype(np.int64)


def dataset(cfg: DataConfig) -> SplitData:
    x, y = blobs(cfg.options.get("n", 300))
    return split_dataset(x, y, 3, cfg)


def gaussian_mi(a: np.ndarray, b: np.ndarray, ridge: float) -> float:
    """I(A;B) in bits of Gaussians with the samples' covariance: 0.5 log2 |Caa||Cbb| / |C|."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    c = np.cov(np.hstack([a, b]), rowvar=False) + ridge * np.eye(a.shape[1] + b.shape[1])
    k = a.shape[1]
    logdet = [np.linalg.slogdet(m)[1] for m in (c[:k, :k], c[k:, k:], c)]
    return float((logdet[0] + logdet[1] - logdet[2]) / (2 * np.log(2)))


@register_estimator("own_gaussian", outputs={"calls": ("epochs of the chain so far", "1")},
                    carry={"calls": "calls_before"})
def gaussian_information_plane(x: np.ndarray, t: np.ndarray, y: np.ndarray, ridge: float = 1e-3,
                               calls_before: float = 0.0) -> dict[str, float]:
    """Gaussian MI of the flattened arrays (y one-hot); `calls` counts the chain's epochs."""
    onehot = np.eye(int(y.max()) + 1)[y]
    return {"I_XT": gaussian_mi(x, t, ridge), "I_TY": gaussian_mi(t, onehot, ridge),
            "calls": calls_before + 1}


def broken(cfg: DataConfig) -> SplitData:
    """A dataset factory with a bug: an unexpected failure, not a known one."""
    raise RuntimeError("a bug in the researcher's loader")
