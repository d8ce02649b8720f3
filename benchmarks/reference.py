"""Plain numpy/scipy implementations of the estimators' formulas, the way papers' code writes them.

`make bench` (sections speed and memory) times infoplane's estimators against these on the same
arrays in the same process, and the tests check that both give the same values. Each is the
textbook form: full distance matrices, a loop over classes, no blocking, no reuse.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

LOG2 = math.log(2.0)


def kde_reference(t: np.ndarray, y: np.ndarray, noise_variance: float = 0.1,
                  bound: str = "upper") -> dict[str, float]:
    """Kolchinsky & Tracey's pairwise bounds as Saxe et al.'s code computes them (bits)."""
    t = np.asarray(t, dtype=np.float64).reshape(len(t), -1)
    variance = noise_variance if bound == "upper" else 4.0 * noise_variance

    def mean_log_mixture(d2: np.ndarray) -> float:
        return float(np.mean(logsumexp(-d2 / (2 * variance), axis=1) - math.log(len(d2))))

    d2 = cdist(t, t, "sqeuclidean")
    i_xt = -mean_log_mixture(d2)
    h_t_given_y = 0.0
    for c in np.unique(y):
        member = y == c
        h_t_given_y -= member.mean() * mean_log_mixture(d2[np.ix_(member, member)])
    return {"I_XT": i_xt / LOG2, "I_TY": (i_xt - h_t_given_y) / LOG2}


def _renyi_entropy(a: np.ndarray, alpha: float) -> float:
    lam = np.clip(np.linalg.eigvalsh(a), 0.0, None)
    lam = lam / lam.sum()
    return float(np.log2((lam ** alpha).sum()) / (1.0 - alpha))


def _normalise(k: np.ndarray) -> np.ndarray:
    return k / np.trace(k)


def renyi_reference(x: np.ndarray, t: np.ndarray, y: np.ndarray, batches: np.ndarray,
                    sigma_x: float, n_candidates: int = 300, alpha: float = 1.01,
                    width: float | None = None) -> dict[str, float]:
    """Wickstrom et al.'s matrix-based Renyi with the kernel-alignment width (or a fixed `width`),
    batch by batch with a Python loop over the candidate widths and one eigensolver call per
    matrix (Gaussian convention exp(-d^2 / (2 sigma^2)), no smoothing)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    t = np.asarray(t, dtype=np.float64).reshape(len(t), -1)
    i_xt, i_ty, widths = [], [], []
    for batch in (batches if width is None else []):
        d2_t = cdist(t[batch], t[batch], "sqeuclidean")
        k_y = (y[batch][:, None] == y[batch][None, :]).astype(np.float64)
        mean_distance = np.sqrt(d2_t[np.triu_indices(len(batch), 1)]).mean()
        best, best_sigma = -np.inf, None
        for sigma in np.linspace(0.3, 10 * mean_distance, n_candidates):
            k = np.exp(-d2_t / (2 * sigma * sigma))
            score = (k * k_y).sum() / (np.linalg.norm(k) * np.linalg.norm(k_y))
            if score > best:
                best, best_sigma = score, sigma
        widths.append(best_sigma)
    width = float(np.mean(widths)) if width is None else width
    for batch in batches:
        a_x = _normalise(np.exp(-cdist(x[batch], x[batch], "sqeuclidean") / (2 * sigma_x ** 2)))
        a_t = _normalise(np.exp(-cdist(t[batch], t[batch], "sqeuclidean") / (2 * width ** 2)))
        a_y = _normalise((y[batch][:, None] == y[batch][None, :]).astype(np.float64))
        s_t = _renyi_entropy(a_t, alpha)
        i_xt.append(_renyi_entropy(a_x, alpha) + s_t - _renyi_entropy(_normalise(a_x * a_t), alpha))
        i_ty.append(s_t + _renyi_entropy(a_y, alpha) - _renyi_entropy(_normalise(a_t * a_y), alpha))
    return {"I_XT": float(np.mean(i_xt)), "I_TY": float(np.mean(i_ty)), "sigma_t": width}


def ksg_reference(a: np.ndarray, b: np.ndarray, k: int = 5, jitter: float = 1e-10,
                  seed: int = 0) -> float:
    """KSG-1 in bits as NPEET computes it (one cKDTree query per side, one thread), on the same
    preprocessing as infoplane's default (normal scores, then `jitter` of standard normal noise)."""
    from scipy.spatial import cKDTree
    from scipy.special import digamma, ndtri
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    sides = []
    for v in (a, b):
        v = np.asarray(v, dtype=np.float64).reshape(len(v), -1)
        scores = ndtri(rankdata(v, axis=0) / (len(v) + 1))
        sides.append(scores + jitter * rng.standard_normal(scores.shape))
    xa, xb = sides
    n = len(xa)
    eps = cKDTree(np.hstack([xa, xb])).query(np.hstack([xa, xb]), k=k + 1, p=np.inf)[0][:, k]
    strict = np.nextafter(eps, 0)
    n_a = cKDTree(xa).query_ball_point(xa, strict, p=np.inf, return_length=True)
    n_b = cKDTree(xb).query_ball_point(xb, strict, p=np.inf, return_length=True)
    mi = digamma(k) + digamma(n) - np.mean(digamma(n_a) + digamma(n_b))
    return max(float(mi), 0.0) / LOG2


def binning_reference(t: np.ndarray, y: np.ndarray, n_bins: int = 30) -> dict[str, float]:
    """Shwartz-Ziv & Tishby's binning: digitize every unit, count distinct rows with np.unique
    (every input distinct, so I(X;T) = H(T))."""
    t = np.asarray(t, dtype=np.float64).reshape(len(t), -1)
    binned = np.clip(np.floor((t + 1) / 2 * n_bins), 0, n_bins - 1)

    def entropy(rows: np.ndarray) -> float:
        p = np.unique(rows, axis=0, return_counts=True)[1] / len(rows)
        return float(-(p * np.log2(p)).sum())

    h_t = entropy(binned)
    return {"I_XT": h_t, "I_TY": h_t + entropy(y[:, None]) - entropy(np.hstack([binned, y[:, None]]))}
