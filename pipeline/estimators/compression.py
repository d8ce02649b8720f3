"""Stochastic network plus lossy compression (Butakov et al. 2023).

    from pipeline.estimators.compression import compression_information_plane
    compression_information_plane(x, t, y, noise=1e-3, dim=4)

Noise makes the MI of a deterministic layer finite (T = f(x) + noise, seeded for
reproducibility); each side is compressed to `dim` dimensions (PCA fitted on these samples, or
a small torch autoencoder), and MI comes from kNN entropies of the compressed samples:
I(A;B) = H(A) + H(B) - H(A, B), or I(T;Y) = H(T) - sum_y p(y) H(T | Y=y) for labels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.estimators._common import as_labels, as_samples, is_discrete, same_length
from pipeline.estimators.knn import kl_entropy, ksg_mutual_information, weighted_kl_entropy

NOISE_MODES = ("relative", "absolute")
COMPRESSORS = ("pca", "autoencoder", "none")
ENTROPIES = ("kl", "wkl", "ksg")


def add_noise(a: np.ndarray, noise: float, mode: str, rng: np.random.Generator) -> np.ndarray:
    """x + noise * x * N(0, 1) (Butakov et al.'s code) or x + N(0, noise^2) (Goldfeld et al.)."""
    if mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {mode!r}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    eps = rng.standard_normal(a.shape)
    return a + noise * (a * eps if mode == "relative" else eps)


def pca_compress(a: np.ndarray, dim: int) -> np.ndarray:
    """Projection on the `dim` leading principal components of these samples."""
    centred = a - a.mean(axis=0)
    if a.shape[1] <= dim:
        return centred
    if a.shape[1] > a.shape[0]:  # wide data: scores from the n x n Gram matrix, not d x d
        eigval, eigvec = np.linalg.eigh(centred @ centred.T)
        top = np.argsort(eigval)[::-1][:dim]
        return eigvec[:, top] * np.sqrt(np.clip(eigval[top], 0, None))
    eigval, eigvec = np.linalg.eigh(centred.T @ centred)
    return centred @ eigvec[:, ::-1][:, :dim]


def autoencoder_compress(a: np.ndarray, dim: int, seed: int = 0, epochs: int = 200,
                         hidden: int = 256, device: str = "cpu") -> np.ndarray:
    """Latent codes of a small fully-connected autoencoder trained on these samples (seeded)."""
    torch.manual_seed(seed)
    data = torch.as_tensor(a, dtype=torch.float32, device=device)
    mean, std = data.mean(0), data.std(0).clamp_min(1e-8)
    data = (data - mean) / std
    d = data.shape[1]
    encoder = nn.Sequential(nn.Linear(d, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden // 2),
                            nn.LeakyReLU(), nn.Linear(hidden // 2, dim)).to(device)
    decoder = nn.Sequential(nn.Linear(dim, hidden // 2), nn.LeakyReLU(), nn.Linear(hidden // 2, hidden),
                            nn.LeakyReLU(), nn.Linear(hidden, d)).to(device)
    params = list(encoder.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    batch = 256
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator).to(device)
        for start in range(0, len(data), batch):
            xb = data[order[start:start + batch]]
            loss = ((decoder(encoder(xb)) - xb) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return encoder(data).double().cpu().numpy()


def compress(a: np.ndarray, dim: int, compressor: str, seed: int, device: str) -> np.ndarray:
    if compressor not in COMPRESSORS:
        raise ValueError(f"compressor must be one of {COMPRESSORS}, got {compressor!r}")
    if compressor == "none" or a.shape[1] <= dim:
        return a
    if compressor == "pca":
        return pca_compress(a, dim)
    return autoencoder_compress(a, dim, seed=seed, device=device)


def _entropy(a: np.ndarray, entropy: str, k: int, device: str) -> float:
    if entropy == "wkl" and a.shape[1] > 4:
        return weighted_kl_entropy(a, device=device)
    return kl_entropy(a, k=k, device=device)


def _mi_compressed(ca: np.ndarray, cb: np.ndarray | None, labels: np.ndarray | None, entropy: str,
                   k: int, seed: int, device: str) -> float:
    if entropy == "ksg":
        return ksg_mutual_information(ca, labels if cb is None else cb, k=k, seed=seed, device=device)
    h_a = _entropy(ca, entropy, k, device)
    if cb is not None:
        joint = np.hstack([ca, cb])
        return max(h_a + _entropy(cb, entropy, k, device) - _entropy(joint, entropy, k, device), 0.0)
    # H(T|Y=y) on the whitening of the whole sample, so the linear change cancels exactly
    conditional = 0.0
    for label in np.unique(labels):
        part = ca[labels == label]
        if len(part) <= k + 1:
            raise ValueError(f"class {label} has {len(part)} samples; kNN entropies need more than k+1")
        conditional += len(part) / len(ca) * _entropy(part, entropy, k, device)
    return max(h_a - conditional, 0.0)


def _check(entropy: str) -> None:
    if entropy not in ENTROPIES:
        raise ValueError(f"entropy must be one of {ENTROPIES}, got {entropy!r}")


def compression_mutual_information(a: np.ndarray, b: np.ndarray, noise: float = 1e-3,
                                   noise_mode: str = "relative", dim: int = 4,
                                   compressor: str = "pca", entropy: str = "ksg", k: int = 5,
                                   seed: int = 0, device: str = "cpu") -> float:
    """I(A;B) in bits: noise on each continuous side, compression to `dim`, kNN entropies.

    Parameters
    ----------
    a, b : (n, ...) arrays, or b (n,) integer labels.
    noise : float
        Noise level (Butakov et al.: 1e-3, relative).
    noise_mode : {"relative", "absolute"}
        t + noise * t * N(0, 1), or t + N(0, noise^2) (Goldfeld et al.).
    dim : int
        Dimensions kept by the compressor (papers: 4; CIFAR inputs 10).
    compressor : {"pca", "autoencoder", "none"}
    entropy : {"ksg", "kl", "wkl"}
        KSG directly on the compressed pair (default), or H(A) + H(B) - H(A, B) from
        Kozachenko-Leonenko entropies (k neighbours, after whitening; Butakov et al.), weighted
        KL where the compressed dimension exceeds 4. Default "ksg" because it was measured
        better: when PCA keeps more dimensions than the data's latent manifold has, the three KL
        entropies err differently and their difference collapses to 0 (docs/estimators.md).
    k : int
        Neighbours (default 5).
    seed : int
        Seeds the noise and the autoencoder: results are reproducible.
    """
    _check(entropy)
    same_length(a=a, b=b)
    rng = np.random.default_rng(seed)
    ca = compress(add_noise(as_samples(a, "a"), noise, noise_mode, rng), dim, compressor, seed, device)
    if is_discrete(b):
        return _mi_compressed(ca, None, as_labels(b), entropy, k, seed, device)
    cb = compress(add_noise(as_samples(b, "b"), noise, noise_mode, rng), dim, compressor, seed + 1,
                  device)
    return _mi_compressed(ca, cb, None, entropy, k, seed, device)


def compression_information_plane(x: np.ndarray, t: np.ndarray, y: np.ndarray, noise: float = 1e-3,
                                  noise_mode: str = "relative", dim: int = 4, compressor: str = "pca",
                                  input_compressor: str = "pca", input_dim: int | None = None,
                                  entropy: str = "ksg", k: int = 5, seed: int = 0,
                                  device: str = "cpu") -> dict[str, float]:
    """I(X;T) and I(T;Y) in bits for a stochastic layer T = f(X) + noise.

    The layer is noised (seeded) and compressed by `compressor` (PCA per epoch by default); the
    inputs by `input_compressor` to `input_dim` (default `dim`). Butakov et al. compressed
    inputs with an autoencoder (latent 4 on MNIST, 10 on CIFAR-10): pass
    ``input_compressor="autoencoder"``, or compress once and pass ``input_compressor="none"``.
    Inputs must be continuous: kNN entropies of a discrete input (SZT's bits) are undefined.
    Other parameters as in `compression_mutual_information`.
    """
    _check(entropy)
    same_length(x=x, t=t, y=y)
    rng = np.random.default_rng(seed)
    tn = compress(add_noise(as_samples(t, "t"), noise, noise_mode, rng), dim, compressor, seed, device)
    xc = compress(as_samples(x, "x"), input_dim or dim, input_compressor, seed + 1, device)
    labels = as_labels(y)
    return {"I_XT": _mi_compressed(xc, tn, None, entropy, k, seed, device),
            "I_TY": _mi_compressed(tn, None, labels, entropy, k, seed, device)}
