"""The theoretical information-bottleneck curve of a known joint distribution p(x, y).

    from pipeline.ib import ib_curve
    points = ib_curve(p_x, p_y_given_x, betas=np.logspace(-1, 3, 40))   # (I_XT, I_TY) in bits

The iterative IB algorithm (Tishby, Pereira & Bialek 1999): for each beta, iterate
p(t|x) ~ p(t) exp(-beta KL[p(y|x) || p(y|t)]), p(t) = sum_x p(x) p(t|x),
p(y|t) = sum_x p(y|x) p(t|x) p(x) / p(t), from a seeded random start, annealing beta upwards so
each solution starts from the previous one.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp, xlogy


def _mi_bits(p_joint: np.ndarray) -> float:
    pa = p_joint.sum(1, keepdims=True)
    pb = p_joint.sum(0, keepdims=True)
    ratio = np.divide(p_joint, pa * pb, out=np.ones_like(p_joint), where=p_joint > 0)
    return float(xlogy(p_joint, ratio).sum() / np.log(2))


def ib_point(p_x: np.ndarray, p_y_given_x: np.ndarray, beta: float, p_t_given_x: np.ndarray,
             iterations: int = 300, tol: float = 1e-10) -> tuple[float, float, np.ndarray]:
    """Iterate the IB equations at one beta from `p_t_given_x`; returns I(X;T), I(T;Y), p(t|x)."""
    eps = 1e-300
    q = p_t_given_x
    for _ in range(iterations):
        p_t = p_x @ q
        p_y_given_t = (q * p_x[:, None]).T @ p_y_given_x / np.maximum(p_t[:, None], eps)
        # KL[p(y|x) || p(y|t)] for every (x, t)
        kl = (xlogy(p_y_given_x, p_y_given_x).sum(1)[:, None]
              - p_y_given_x @ np.log(np.maximum(p_y_given_t, eps)).T)
        log_q = np.log(np.maximum(p_t, eps))[None, :] - beta * kl
        new = np.exp(log_q - logsumexp(log_q, axis=1, keepdims=True))
        if np.abs(new - q).max() < tol:
            q = new
            break
        q = new
    joint_xt = q * p_x[:, None]
    joint_ty = joint_xt.T @ p_y_given_x
    return _mi_bits(joint_xt), _mi_bits(joint_ty), q


def ib_curve(p_x: np.ndarray, p_y_given_x: np.ndarray, betas: np.ndarray,
             n_clusters: int | None = None, seed: int = 0) -> np.ndarray:
    """(len(betas), 2) array of (I(X;T), I(T;Y)) in bits along increasing beta."""
    n_x = len(p_x)
    n_t = n_clusters or n_x
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(n_t), size=n_x)
    points = []
    for beta in np.sort(betas):
        i_xt, i_ty, q = ib_point(p_x, p_y_given_x, float(beta), q)
        points.append((i_xt, i_ty))
    return np.asarray(points)
