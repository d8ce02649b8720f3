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
