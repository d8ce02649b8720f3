"""Input checks and small helpers shared by every estimator family."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from pipeline.entropy import entropy_of_counts  # noqa: F401  (re-exported for the estimators)

LOG2 = math.log(2.0)


_GLOBAL_RNG = threading.RLock()


@contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """torch's global RNG seeded for the block and restored after it, so an estimator whose
    layers initialise from it is reproducible and leaves the caller's random state alone.
    One thread at a time: keep the block short (building layers, not training them)."""
    with _GLOBAL_RNG, torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


_THREADS = threading.Lock()
_single_thread_users = 0
_threads_before = 1


@contextmanager
def one_torch_thread(device: str = "cpu") -> Iterator[None]:
    """torch's CPU operations on one thread for the block (nothing on other devices), then the
    count found before; safe when blocks in several threads overlap (the last one out restores).

    Training on one thread makes a network independent of the machine's core count: the sums of
    a convolution's gradient are split by thread, so the same seed gave codes differing by 5e-6
    after 200 steps on 1 and 2 threads, and the difference grows with training.
    """
    global _single_thread_users, _threads_before
    if torch.device(device).type != "cpu":
        yield
        return
    with _THREADS:
        if _single_thread_users == 0:
            _threads_before = torch.get_num_threads()
            torch.set_num_threads(1)
        _single_thread_users += 1
    try:
        yield
    finally:
        with _THREADS:
            _single_thread_users -= 1
            if _single_thread_users == 0:
                torch.set_num_threads(_threads_before)


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam with the multi-tensor update on every device (torch uses it by default on CUDA only).

    Each element gets the arithmetic of the per-tensor loop, so the trained networks are the
    same (`tests/test_estimators.py::test_multi_tensor_adam_trains_the_same_networks`); the
    loop's dozens of small operations per parameter were 15% of a flow step on 2 CPU cores.
    """
    return torch.optim.Adam(params, lr=lr, foreach=True)


def as_samples(a: np.ndarray, name: str, min_samples: int = 2) -> np.ndarray:
    """(n, ...) array -> (n, features) float64, rejecting NaN/inf and too few samples."""
    return np.ascontiguousarray(sample_rows(a, name, min_samples), dtype=np.float64)


def sample_rows(a: np.ndarray, name: str, min_samples: int = 2) -> np.ndarray:
    """(n, ...) array -> (n, features) in its own numeric dtype (no float64 copy of a large
    layer), rejecting NaN/inf and too few samples as `as_samples` does."""
    arr = np.asarray(a)
    if arr.ndim == 0:
        raise ValueError(f"{name} must have a sample axis, got a scalar")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.reshape(arr.shape[0], -1)
    if arr.shape[0] < min_samples:
        raise ValueError(f"{name} has {arr.shape[0]} samples; this method needs at least {min_samples}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has no features")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(f"{name} contains NaN or inf in {bad} of {arr.shape[0]} samples "
                         "(a diverged run?); estimates need finite values")
    return arr


def as_labels(y: np.ndarray, name: str = "y") -> np.ndarray:
    """1-D integer labels -> int64 codes 0..K-1."""
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.dtype.kind not in "biu":
        whole = arr.dtype.kind == "f" and bool(np.isfinite(arr).all()) and bool((arr == np.round(arr)).all())
        raise ValueError(f"{name} must be a 1-D integer label array, got shape {arr.shape} "
                         f"dtype {arr.dtype}" + (f"; its values are whole numbers: pass {name}.astype(int)"
                                                 if whole and arr.ndim == 1 else ""))
    return np.unique(arr, return_inverse=True)[1].astype(np.int64)


class EstimateWarning(UserWarning):
    """An estimate where its method is known to read wrong; the message says why and what to do."""


def is_discrete(b: np.ndarray) -> bool:
    arr = np.asarray(b)
    return arr.ndim == 1 and arr.dtype.kind in "biu"


def same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"sample counts differ: {lengths}; pass the same samples in the same order")
    return next(iter(lengths.values()))


def squared_distances(h: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances of (..., n, d) rows: (..., n, n), clamped at 0."""
    sq = (h * h).sum(-1)
    d2 = (sq[..., :, None] + sq[..., None, :] - 2.0 * (h @ h.transpose(-1, -2))).clamp_min_(0.0)
    d2.diagonal(dim1=-2, dim2=-1).zero_()
    return d2


def row_symbols(values: np.ndarray) -> np.ndarray:
    """Integer id per distinct row (rows compared as raw bytes)."""
    values = np.ascontiguousarray(values)
    rows = values.view(np.dtype((np.void, values.dtype.itemsize * values.shape[1]))).ravel()
    return np.unique(rows, return_inverse=True)[1].ravel()


def discrete_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in I(A;B) in bits of two symbol sequences."""
    _, a_codes = np.unique(a, return_inverse=True)
    _, b_codes = np.unique(b, return_inverse=True)
    return codes_mutual_information(a_codes, b_codes)


def codes_mutual_information(a_codes: np.ndarray, b_codes: np.ndarray) -> float:
    """Plug-in I(A;B) in bits of non-negative integer codes (gaps allowed: empty bins add 0)."""
    joint = a_codes.astype(np.int64) * (int(b_codes.max()) + 1) + b_codes
    h_a = entropy_of_counts(np.bincount(a_codes))
    h_b = entropy_of_counts(np.bincount(b_codes))
    # Counts of the joint symbols by sorting, not bincount: with 4096 distinct inputs and layer
    # states the joint code ranges over 4096^2 values and bincount allocated 16M bins a call.
    # np.unique returns the same non-zero counts in the same (ascending) order: equal sums.
    h_ab = entropy_of_counts(np.unique(joint, return_counts=True)[1])
    return h_a + h_b - h_ab
