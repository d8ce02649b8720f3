"""KDE bounds (Kolchinsky & Tracey, used by Saxe et al.): T = h(X) + N(0, s2 I).

    from pipeline.estimators.kde import kde_information_plane
    kde_information_plane(x, t, y, noise_variance=0.1, bound="upper")

The entropy of the Gaussian mixture (1/P) sum_j N(h_j, s2 I) is bounded above by the pairwise-KL
estimate and below by the Bhattacharyya one (docs/science.md, section 4). I(X;T) = H(T) - H(T|X);
I(T;Y) = H(T) - sum_y p(y) H(T|Y=y) with the same bound inside each class, which makes it a
difference of bounds, not itself a bound. Computed in nats, returned in bits.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.estimators._common import LOG2, as_labels, as_samples, row_symbols, same_length

BOUNDS = ("upper", "lower")


def kernel_variance(noise_variance: float, bound: str) -> float:
    """The variance in the mixture kernel: s2 for the KL bound, 4 s2 for the Bhattacharyya one
    (whose kernel is exp(-d2 / (8 s2)))."""
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    if not noise_variance > 0:
        raise ValueError(f"noise_variance must be positive, got {noise_variance}")
    return noise_variance if bound == "upper" else 4.0 * noise_variance


TILE = 1024  # rows per tile: memory is O(TILE^2 + n), not O(n^2)


def weighted_components(t: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of `t` and, per row, how many samples of each class sit on it.

    Identical rows (saturated units, discrete inputs) are one mixture component with a weight:
    the sums below run over distinct rows, with the same value as over all samples.
    """
    symbols = row_symbols(t)
    _, first = np.unique(symbols, return_index=True)
    counts = np.zeros((len(first), labels.max() + 1))
    np.add.at(counts, (symbols, labels), 1.0)
    return t[first], counts


def class_kernel_sums(h: torch.Tensor, counts: torch.Tensor, variance: float,
                      tile: int = TILE) -> torch.Tensor:
    """S[u, c] = sum_v exp(-|h_u - h_v|^2 / (2 variance)) counts[v, c], tile by tile.

    The kernel is symmetric: each off-diagonal tile is exponentiated once and serves both its
    rows and its columns, half the exponentials of the full matrix. The diagonal term is
    exp(0) = 1, the largest of each row, so the sums can neither overflow nor vanish: plain sums
    replace a logsumexp.
    """
    m = len(h)
    sq = (h * h).sum(1)
    out = torch.zeros((m, counts.shape[1]), dtype=h.dtype, device=h.device)
    starts = range(0, m, tile)
    for a in starts:
        rows = slice(a, min(a + tile, m))
        for b in starts[a // tile:]:
            cols = slice(b, min(b + tile, m))
            d2 = torch.addmm(sq[None, cols], h[rows], h[cols].T, alpha=-2.0).add_(sq[rows, None])
            kernel = d2.clamp_min_(0.0).mul_(-0.5 / variance).exp_()
            if a == b:
                kernel.diagonal().fill_(1.0)
            out[rows] += kernel @ counts[cols]
            if a != b:
                out[cols] += kernel.T @ counts[rows]
    return out


def mean_log_mixture(weights: torch.Tensor, mass: torch.Tensor, size: torch.Tensor | int) -> float:
    """sum_u w_u log(mass_u / size_u) / sum_u w_u, nats: the mean over samples of the log of
    their mixture density's sum, each distinct row standing for its `weights` samples."""
    return float((weights * torch.log(mass / size)).sum() / weights.sum())


def kde_entropy(t: np.ndarray, noise_variance: float = 0.1, bound: str = "upper",
                device: str = "cpu") -> float:
    """Bound on H(T) in bits of the mixture of N(t_i, noise_variance I) over the rows of `t`."""
    variance = kernel_variance(noise_variance, bound)
    rows = as_samples(t, "t")
    distinct, counts = weighted_components(rows, np.zeros(len(rows), dtype=np.int64))
    weights = torch.as_tensor(counts, device=device)
    sums = class_kernel_sums(torch.as_tensor(distinct, device=device), weights, variance)[:, 0]
    # -mean_i log[(1/P) sum_j exp(-d2_ij / (2 variance))] plus the per-component entropy.
    mean_log = mean_log_mixture(weights[:, 0], sums, len(rows))
    h_nats = 0.5 * rows.shape[1] * (math.log(2 * math.pi * noise_variance) + 1) - mean_log
    return h_nats / LOG2


def kde_information_plane(x: np.ndarray, t: np.ndarray, y: np.ndarray, noise_variance: float = 0.1,
                          bound: str = "upper", device: str = "cpu") -> dict[str, float]:
    """I(X;T) and I(T;Y) in bits from KDE bounds on the noisy layer T + N(0, s2 I).

    Parameters
    ----------
    x : (n, ...) inputs; only their count is used (each row is one mixture component).
    t : (n, ...) layer outputs, any trailing shape.
    y : (n,) integer labels.
    noise_variance : float
        s2 of the added Gaussian noise (Saxe et al.: 0.1; their code also uses 1e-3 and 0.05).
    bound : {"upper", "lower"}
        Pairwise-KL upper bound or Bhattacharyya lower bound.
    device : {"cpu", "cuda"}
    """
    variance = kernel_variance(noise_variance, bound)
    n = same_length(x=x, t=t, y=y)
    as_samples(x, "x")
    labels = as_labels(y)
    distinct, counts = weighted_components(as_samples(t, "t"), labels)
    counts = torch.as_tensor(counts, device=device)  # (distinct rows, classes)
    sums = class_kernel_sums(torch.as_tensor(distinct, device=device), counts, variance)
    # H(T) - H(T|X): the per-component entropy (d/2)(ln 2 pi s2 + 1) cancels; each distinct row
    # stands for its samples, whose kernel mass is the sum over the classes.
    i_xt = -mean_log_mixture(counts.sum(1), sums.sum(1), n)
    # sum_y p(y) H(T|Y=y) with the bound inside each class: the mean over all samples of the
    # log mixture over the sample's own class.
    held = counts > 0
    h_t_given_y = -mean_log_mixture(counts[held], sums[held], counts.sum(0).expand_as(counts)[held])
    return {"I_XT": i_xt / LOG2, "I_TY": (i_xt - h_t_given_y) / LOG2}
