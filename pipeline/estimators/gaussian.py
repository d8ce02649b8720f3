"""Gaussian-copula mutual information (Ince et al. 2017), with the exact small-sample correction.

    from pipeline.estimators.gaussian import gaussian_mutual_information
    gaussian_mutual_information(a, b)               # bits; 1-D integer b = labels

Each coordinate is replaced by the normal quantile of its rank (`copula=True`), and MI is read
from the covariance: I(A;B) = (log det S_A + log det S_B - log det S_AB) / 2, each log det
corrected by its expectation under the Gaussian (a Wishart sum of digammas), so the estimate of
an independent pair is centred on 0. With labels, I(T;Y) = H(T) - sum_y p(y) H(T | Y = y) from
Gaussian entropies of each class. It is exact for Gaussian pairs and any monotone map of their
coordinates, and reads only the dependence a Gaussian copula carries: on heavy-tailed pairs
(Student-t) it misses the part the shared scale adds, and on dependence no correlation sees
(y = x^2) it reads 0. Accuracy per family: docs/estimators.md, section "Accuracy by family".
"""

from __future__ import annotations

import numpy as np
from scipy.special import digamma

from pipeline.estimators._common import LOG2, as_labels, as_samples, is_discrete, same_length
from pipeline.estimators.knn import normal_scores


def _varying(a: np.ndarray) -> np.ndarray:
    """The columns that vary: a constant one (a dead unit) carries no information."""
    return a[:, np.ptp(a, axis=0) > 0]


def corrected_log_det(a: np.ndarray) -> float:
    """log det of the covariance of `a` (n, d), minus its Wishart bias: unbiased for Gaussians.

    E[log det S] = log det C + sum_{i=1..d} psi((n - i) / 2) + d log(2 / (n - 1)) for the
    sample covariance S of n Gaussian samples with covariance C.
    """
    n, d = a.shape
    if d == 0:
        return 0.0
    if n <= d + 1:
        raise ValueError(f"a Gaussian estimate of {d} dimensions needs more than {d + 1} samples, got {n}; "
                         "use fewer dimensions (a PCA) or more samples")
    sign, log_det = np.linalg.slogdet(np.atleast_2d(np.cov(a, rowvar=False)))
    if sign <= 0 or not np.isfinite(log_det):
        raise ValueError(f"the covariance of these {d} dimensions is singular (a column is a linear "
                         "combination of others); drop the redundant columns or use another method")
    bias = digamma((n - np.arange(1, d + 1)) / 2).sum() + d * np.log(2 / (n - 1))
    return float(log_det - bias)


def _prepare(a: np.ndarray, name: str, copula: bool) -> np.ndarray:
    a = _varying(as_samples(a, name))
    return normal_scores(a) if copula else a


def gaussian_mutual_information(a: np.ndarray, b: np.ndarray, copula: bool = True) -> float:
    """I(A;B) in bits of the Gaussian copula (or, with `copula=False`, of the Gaussian) of (A, B).

    Parameters
    ----------
    a, b : (n, ...) arrays, or b (n,) integer labels.
    copula : bool
        Normal scores of each coordinate first (default): invariant to monotone maps of each
        coordinate. False: the covariance of the raw values (exact for Gaussian data only).

    Not clipped at 0: with the correction, an independent pair reads 0 on average, either side.
    """
    n = same_length(a=a, b=b)
    sa = _prepare(a, "a", copula)
    if is_discrete(b):
        labels = as_labels(b)
        conditional = 0.0
        for label in np.unique(labels):
            rows = labels == label
            conditional += rows.sum() / n * corrected_log_det(sa[rows])
        return (corrected_log_det(sa) - conditional) / 2 / LOG2
    sb = _prepare(b, "b", copula)
    joint = np.hstack([sa, sb])
    return (corrected_log_det(sa) + corrected_log_det(sb) - corrected_log_det(joint)) / 2 / LOG2


def gaussian_information_plane(x: np.ndarray, t: np.ndarray, y: np.ndarray,
                               copula: bool = True) -> dict[str, float]:
    """I(X;T) and I(T;Y) in bits of the Gaussian copula (see gaussian_mutual_information).

    A deterministic layer has infinite I(X;T); this method reads the log of how nearly linear
    the map is, and fails on a singular covariance (more columns than samples, duplicated units).
    """
    same_length(x=x, t=t, y=y)
    return {"I_XT": gaussian_mutual_information(x, t, copula),
            "I_TY": gaussian_mutual_information(t, as_labels(y), copula)}
