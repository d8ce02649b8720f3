"""Matrix-based Renyi alpha-entropy with tensor kernels (Sanchez Giraldo; Yu; Wickstrom et al.).

    from pipeline.estimators.renyi import renyi_information_plane
    out = renyi_information_plane(x, t, y, sigma_t="alignment", sigma_prev=None)
    out["I_XT"], out["I_TY"], out["sigma_t"]   # carry out["sigma_t"] to the next epoch

Gram matrices K_ij = k(t_i, t_j) over batches of N samples, A = K / tr K, and
S_alpha(A) = log2(sum_i lambda_i(A)^alpha) / (1 - alpha). Convolutional outputs are compared
with the tensor kernel exp(-||X_i - X_j||_F^2 / (2 sigma^2)): an RBF on the flattened tensor.
All batches are processed at once: one batched Gram, one batched symmetric eigensolver.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch

from pipeline.estimators._common import as_labels, as_samples, same_length, squared_distances

SIGMA_CONVENTIONS = ("gaussian", "wickstrom")
ALIGNMENT_BLOCK = 2**18  # floats per block of the width search (1 MB: within a core's L2 cache)
ALIGNMENT_GROUPS = 64  # runs of sorted pair distances that bound the scores (alignment_bounds)
# squared distances up to this are searched in float32 by the width search: its candidates reach
# 10x the mean distance, so 2 x 100 x the largest squared distance stays below float32's 3.4e38
FLOAT32_DISTANCE_LIMIT = 1e33


def kernel_scale(convention: str) -> float:
    """c in exp(-d2 / (c sigma^2)): 2 for "gaussian", 1 for "wickstrom"."""
    if convention not in SIGMA_CONVENTIONS:
        raise ValueError(f"sigma_convention must be one of {SIGMA_CONVENTIONS}, got {convention!r}")
    return 2.0 if convention == "gaussian" else 1.0


def rbf_gram(d2: torch.Tensor, sigma: float | torch.Tensor, convention: str = "gaussian") -> torch.Tensor:
    """exp(-d2 / (2 sigma^2)) ("gaussian") or exp(-d2 / sigma^2) ("wickstrom")."""
    return torch.exp(-d2 / (kernel_scale(convention) * sigma * sigma))


def label_gram(labels: torch.Tensor) -> torch.Tensor:
    """Same-class indicator (the limit of an RBF of width 0.1 on one-hot labels)."""
    return (labels[..., :, None] == labels[..., None, :]).to(torch.float64)


def normalise(k: torch.Tensor) -> torch.Tensor:
    return k / torch.diagonal(k, dim1=-2, dim2=-1).sum(-1)[..., None, None]


def matrix_entropy(a: torch.Tensor, alpha: float = 1.01) -> torch.Tensor:
    """S_alpha of trace-normalised Gram matrices (..., N, N), in bits.

    alpha = 2 uses the closed form -log2 sum_ij A_ij^2; alpha = 1 the Shannon limit. Otherwise
    eigenvalues from a symmetric solver in float64, tiny negative ones clipped to 0.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if alpha == 2:
        return -torch.log2((a * a).sum(dim=(-2, -1)))
    lam = torch.linalg.eigvalsh(a.to(torch.float64)).clamp_min(0.0)
    lam = lam / lam.sum(-1, keepdim=True)
    if alpha == 1:
        return -(torch.where(lam > 0, lam * torch.log2(lam), torch.zeros_like(lam))).sum(-1)
    return torch.log2((lam ** alpha).sum(-1)) / (1.0 - alpha)


def label_entropy(labels: torch.Tensor, alpha: float = 1.01) -> torch.Tensor:
    """S_alpha of the trace-normalised same-class Gram of each batch (..., N), in closed form:
    its eigenvalues are the class proportions n_c / N (a block of ones per class)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    p = torch.nn.functional.one_hot(labels).sum(-2).to(torch.float64) / labels.shape[-1]
    if alpha == 1:
        return -(torch.where(p > 0, p * torch.log2(p), torch.zeros_like(p))).sum(-1)
    return torch.log2((p ** alpha).sum(-1)) / (1.0 - alpha)


def joint_entropy(a: torch.Tensor, b: torch.Tensor, alpha: float = 1.01) -> torch.Tensor:
    return matrix_entropy(normalise(a * b), alpha)


def matrix_mutual_information(ka: torch.Tensor, kb: torch.Tensor, alpha: float = 1.01) -> torch.Tensor:
    """I_alpha(A;B) = S(A) + S(B) - S(A, B) of (unnormalised) Gram matrices, bits."""
    a, b = normalise(ka), normalise(kb)
    return matrix_entropy(a, alpha) + matrix_entropy(b, alpha) - joint_entropy(a, b, alpha)


def alignment_sigma(d2: torch.Tensor, k_labels: torch.Tensor, n_candidates: int = 300,
                    convention: str = "gaussian", groups: int = ALIGNMENT_GROUPS) -> torch.Tensor:
    """Per batch, the width maximising <K_sigma, K_Y>_F / (||K_sigma||_F ||K_Y||_F).

    Candidates: linspace(0.3, 10 * mean pairwise distance, n_candidates). The Gram matrices are
    symmetric with a unit diagonal, so the sums run over the pairs i < j only, in float32: the
    arg max needs no more precision. Most candidates are ruled out without their exponentials:
    with the pairs sorted by distance into `groups` runs, each run's terms lie between those at
    its two ends, which bounds every candidate's score from both sides (`alignment_bounds`). A
    candidate whose upper bound falls short of the best lower bound by more than the float32
    rounding of a score cannot hold the arg max; the others are scored exactly, so the chosen
    width is the one scoring every candidate gives.
    """
    n = d2.shape[-1]
    rows, cols = torch.triu_indices(n, n, offset=1, device=d2.device)
    # distances a power of two 4^-m apart from their own, so that a diverged layer's (1e19 and
    # more) fit float32; the scaling is exact, so every candidate scores as without it
    m = _halved_exponent(float(d2.max()) / FLOAT32_DISTANCE_LIMIT)
    pair_d2 = (d2[:, rows, cols] * 4.0**-m).float()  # (b, P)
    pair_y = k_labels[:, rows, cols].float()
    mean_distance = torch.sqrt(pair_d2).mean(-1)  # (b,)
    steps = torch.linspace(0.0, 1.0, n_candidates, device=d2.device)
    first = 0.3 * 2.0**-m
    candidates = first + steps[None, :] * (10.0 * mean_distance[:, None] - first)  # (b, c)
    scale = kernel_scale(convention)
    norm_y = torch.sqrt(2.0 * pair_y.sum(-1) + n)
    low, high = alignment_bounds(pair_d2, pair_y, candidates, scale, norm_y, n, groups)
    margin = 4.0 * pair_d2.shape[-1] * 2.0**-24 + 1e-6  # float32 rounding of a score, relative
    alive = high >= low.max(1, keepdim=True).values * (1.0 - margin)
    score = torch.full_like(candidates, -torch.inf)
    step = max(1, ALIGNMENT_BLOCK // pair_d2.shape[-1])
    for b in range(len(candidates)):
        # rbf_gram's arithmetic on a few candidates at a time: each (step, P) block stays in
        # the cache while it is exponentiated and summed
        index = torch.nonzero(alive[b]).squeeze(1)
        for start in range(0, len(index), step):
            c = index[start:start + step]
            sigma = candidates[b, c][:, None]
            k = torch.div(-pair_d2[b][None, :], scale * sigma * sigma).exp_()
            inner = 2.0 * (k * pair_y[b][None, :]).sum(-1) + n
            norm_k = torch.sqrt(2.0 * k.square_().sum(-1) + n)
            score[b, c] = inner / (norm_k * norm_y[b])
    return candidates.gather(1, score.argmax(1, keepdim=True)).squeeze(1).to(d2.dtype) * 2.0**m


def finite_distances(d2: torch.Tensor, name: str) -> torch.Tensor:
    """`d2`, refused where squares of values beyond about 1e154 overflowed float64."""
    if not bool(torch.isfinite(d2).all()):
        raise ValueError(f"{name}'s squared distances overflow float64 (values beyond about 1e154): "
                         f"rescale {name}, or record it as float32")
    return d2


def _halved_exponent(ratio: float) -> int:
    """The least m >= 0 with ratio <= 4^m."""
    return max(0, math.ceil(math.log2(ratio) / 2)) if ratio > 1 else 0


def alignment_bounds(pair_d2: torch.Tensor, pair_y: torch.Tensor, candidates: torch.Tensor,
                     scale: float, norm_y: torch.Tensor, n: int, groups: int,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds (b, c) on every candidate's alignment score, in float64.

    The pairs of each batch sorted by distance are cut into `groups` runs of consecutive
    pairs; within a run exp(-d / (scale sigma^2)) lies between its values at the run's largest
    and smallest distance, so sum_same k and sum_all k^2 are bounded by run counts times those.
    """
    d, order = pair_d2.double().sort(-1)
    same = pair_y.double().gather(-1, order)
    edges = torch.linspace(0, d.shape[-1], groups + 1, device=d.device).round().long().unique()
    near, far = d[:, edges[:-1]], d[:, edges[1:] - 1]  # (b, g)
    count = (edges[1:] - edges[:-1]).double()
    same_total = torch.nn.functional.pad(same.cumsum(-1), (1, 0))
    same_count = same_total[:, edges[1:]] - same_total[:, edges[:-1]]
    rate = 1.0 / (scale * candidates.double() ** 2)[..., None]  # (b, c, 1)
    k_near, k_far = torch.exp(-rate * near[:, None, :]), torch.exp(-rate * far[:, None, :])
    inner_low = 2.0 * (k_far * same_count[:, None, :]).sum(-1) + n
    inner_high = 2.0 * (k_near * same_count[:, None, :]).sum(-1) + n
    norm_low = torch.sqrt(2.0 * (k_far.square() * count).sum(-1) + n)
    norm_high = torch.sqrt(2.0 * (k_near.square() * count).sum(-1) + n)
    y = norm_y.double()[:, None]
    return inner_low / (norm_high * y), inner_high / (norm_low * y)


def silverman_sigma(h: torch.Tensor, gamma: float | None = None) -> torch.Tensor:
    """gamma * N^(-1/(4 + d)) per batch; gamma defaults to the batch's mean per-unit std."""
    n, d = h.shape[-2], h.shape[-1]
    scale = h.std(dim=-2).mean(-1) if gamma is None else torch.full(h.shape[:-2], float(gamma),
                                                                     dtype=h.dtype, device=h.device)
    return scale.clamp_min(1e-12) * n ** (-1.0 / (4 + d))


BATCH_SIZE = 100  # the papers' batch of 100 samples
N_BATCHES = 10


def batch_count(n: int, batch_size: int = BATCH_SIZE, n_batches: int = N_BATCHES) -> int:
    """Batches `make_batches` draws from n samples: `n_batches` (0: as many as fit), at most
    n // batch_size, and one batch of all samples when fewer than `batch_size`."""
    available = n // batch_size
    if available == 0:
        return 1
    return min(n_batches, available) if n_batches > 0 else available


def label_ceiling(params: dict[str, Any], y: np.ndarray) -> float:
    """The most I_alpha(T;Y) can read on labels `y` with these parameters: the mean over the
    batches the estimator draws of S_alpha(Y) of the batch, which sits below H(Y) of all the
    labels (a batch holds fewer classes, and fewer label bits, than the split)."""
    signature = inspect.signature(renyi_information_plane).parameters.items()  # its own defaults
    p = {**{name: arg.default for name, arg in signature if arg.default is not inspect.Parameter.empty},
         **params}
    labels = torch.as_tensor(as_labels(y))
    batches = torch.as_tensor(make_batches(len(labels), p["batch_size"], p["n_batches"], p["seed"]))
    return float(label_entropy(labels[batches], p["alpha"]).mean())


def make_batches(n: int, batch_size: int, n_batches: int, seed: int) -> np.ndarray:
    """Disjoint random batches of sample indices (n_batches, batch_size)."""
    if n < batch_size:
        return np.arange(n)[None, :]
    count = batch_count(n, batch_size, n_batches)
    order = np.random.default_rng(seed).permutation(n)
    return order[: count * batch_size].reshape(count, batch_size)


def renyi_information_plane(x: np.ndarray, t: np.ndarray, y: np.ndarray, alpha: float = 1.01,
                            sigma_x: float = 8.0, sigma_t: float | str = "alignment",
                            sigma_convention: str = "gaussian", sigma_prev: float | None = None,
                            smoothing: float = 0.9, n_candidates: int = 300,
                            silverman_gamma: float | None = None, batch_size: int = BATCH_SIZE,
                            n_batches: int = N_BATCHES, seed: int = 0,
                            device: str = "cpu") -> dict[str, float]:
    """I_alpha(X;T) and I_alpha(T;Y) in bits, averaged over disjoint batches.

    Parameters
    ----------
    x, t : (n, ...) inputs (scaled to [0, 1]) and layer outputs; any trailing shape (tensor kernel).
    y : (n,) integer labels; their kernel is the same-class indicator.
    alpha : float
        Renyi order (papers: 1.01; 2 uses the closed form).
    sigma_x : float
        Input kernel width (Wickstrom et al.: 8 for MNIST in [0, 1]).
    sigma_t : float, "alignment" or "silverman"
        Layer kernel width; "alignment" maximises the kernel's alignment with the label kernel.
    sigma_convention : {"gaussian", "wickstrom"}
        exp(-d^2 / (2 sigma^2)) or Wickstrom's code's exp(-d^2 / sigma^2).
    sigma_prev : float, optional
        The previous epoch's width: a searched width is smoothed as
        ``smoothing * sigma_prev + (1 - smoothing) * sigma*`` (papers: 0.9). Carry the returned
        ``sigma_t`` to the next epoch.
    n_candidates : int
        Widths tried by the alignment search (paper: 300; later code: 100).
    batch_size, n_batches, seed : int
        Estimates on `n_batches` disjoint random batches of `batch_size` (papers: 100) are
        averaged (0 batches: as many as fit); their standard deviation (the population one,
        ddof = 0) is returned as ``I_XT_std``, ``I_TY_std``.
    device : {"cpu", "cuda"}

    Returns
    -------
    dict with I_XT, I_TY, I_XT_std, I_TY_std, sigma_t (the width used) and sigma_t_raw (before
    smoothing).
    """
    n = same_length(x=x, t=t, y=y)
    xs = torch.as_tensor(as_samples(x, "x"), device=device)
    ts = torch.as_tensor(as_samples(t, "t"), device=device)
    labels = torch.as_tensor(as_labels(y), device=device)
    batches = torch.as_tensor(make_batches(n, batch_size, n_batches, seed), device=device)
    d2_x = finite_distances(squared_distances(xs[batches]), "x")
    d2_t = finite_distances(squared_distances(ts[batches]), "t")
    k_y = label_gram(labels[batches])
    if isinstance(sigma_t, str):
        if sigma_t == "alignment":
            raw = alignment_sigma(d2_t, k_y, n_candidates, sigma_convention).mean()
        elif sigma_t == "silverman":
            raw = silverman_sigma(ts[batches], silverman_gamma).mean()
        else:
            raise ValueError(f"sigma_t must be a number, 'alignment' or 'silverman', got {sigma_t!r}")
        raw = float(raw)
        width = raw if sigma_prev is None else smoothing * sigma_prev + (1 - smoothing) * raw
    else:
        if not sigma_t > 0:
            raise ValueError(f"sigma_t must be positive, got {sigma_t}")
        raw = width = float(sigma_t)
    a_x = normalise(rbf_gram(d2_x, sigma_x, sigma_convention))
    a_t = normalise(rbf_gram(d2_t, width, sigma_convention))
    # S(X), S(T), S(X,T), S(T,Y) of every batch in one batched eigensolver call; S(Y) in closed form
    s_x, s_t, s_xt, s_ty = matrix_entropy(torch.stack([a_x, a_t, normalise(a_x * a_t),
                                                       normalise(a_t * normalise(k_y))]), alpha)
    s_y = label_entropy(labels[batches], alpha)
    i_xt = (s_x + s_t - s_xt).cpu().numpy()
    i_ty = (s_t + s_y - s_ty).cpu().numpy()
    return {"I_XT": float(i_xt.mean()), "I_TY": float(i_ty.mean()),
            "I_XT_std": float(i_xt.std()), "I_TY_std": float(i_ty.std()),
            "sigma_t": width, "sigma_t_raw": raw}


def renyi_mutual_information(a: np.ndarray, b: np.ndarray, alpha: float = 1.01, sigma_a: float = 1.0,
                             sigma_b: float = 1.0, sigma_convention: str = "gaussian",
                             batch_size: int = BATCH_SIZE, n_batches: int = N_BATCHES, seed: int = 0,
                             device: str = "cpu") -> float:
    """I_alpha(A;B) in bits with fixed widths; a 1-D integer `b` uses the label kernel."""
    n = same_length(a=a, b=b)
    batches = torch.as_tensor(make_batches(n, batch_size, n_batches, seed), device=device)
    ka = rbf_gram(squared_distances(torch.as_tensor(as_samples(a, "a"), device=device)[batches]),
                  sigma_a, sigma_convention)
    if np.asarray(b).ndim == 1 and np.asarray(b).dtype.kind in "biu":
        kb = label_gram(torch.as_tensor(as_labels(b), device=device)[batches])
    else:
        kb = rbf_gram(squared_distances(torch.as_tensor(as_samples(b, "b"), device=device)[batches]),
                      sigma_b, sigma_convention)
    return float(matrix_mutual_information(ka, kb, alpha).mean())

