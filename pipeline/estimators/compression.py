"""Stochastic network plus lossy compression (Butakov et al. 2023).

    from pipeline.estimators.compression import compression_information_plane
    compression_information_plane(x, t, y, noise=1e-3, dim=4)

Noise makes the MI of a deterministic layer finite (T = f(x) + noise, seeded for
reproducibility); each side is compressed to `dim` dimensions (PCA fitted on these samples, or
a small torch autoencoder), and MI comes from the compressed samples: by KSG, by kNN entropies
(I(A;B) = H(A) + H(B) - H(A, B), or I(T;Y) = H(T) - sum_y p(y) H(T | Y=y) for labels), or by
a flow model (`flow.py`), the default for two autoencoder codes.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from pipeline.estimators._common import (
    EstimateWarning,
    adam,
    as_labels,
    as_samples,
    is_discrete,
    one_torch_thread,
    same_length,
    torch_seeded,
)
from pipeline.estimators.flow import flow_mutual_information
from pipeline.estimators.knn import kl_entropy, ksg_mutual_information, weighted_kl_entropy

NOISE_MODES = ("relative", "absolute")
COMPRESSORS = ("auto", "pca", "autoencoder", "conv_autoencoder", "none")
AUTOENCODERS = ("autoencoder", "conv_autoencoder")  # the compressors that train a network
ENTROPIES = ("auto", "ksg", "flow", "kl", "wkl")
# A side whose compressor reconstructs less than this share of its variance is flagged. The
# rule, fixed before any held-out family was measured: samples rendered without noise from a few
# latents are reconstructed almost exactly by a code that keeps every latent (relative error 1e-3
# on 4-latent bumps, `autoencoder_compress`), so losing more than 1% of the variance means the
# code dropped or folded part of what the sample carries.
MIN_KEPT = 0.99


class CompressionWarning(EstimateWarning):
    """A compressor kept less than MIN_KEPT of a side's variance, or the flow read far below KSG on
    the same codes: the estimate may be low."""


def flow_disagrees(flow_bits: float, ksg_bits: float) -> bool:
    """Whether the flow read lower than KSG on the same codes by more than the accuracy table's
    tolerance, max(0.15 bit, 20%) of KSG's value.

    KSG on warped codes of a few dimensions reads low, and the flow is there to recover what
    it misses (docs/estimators.md, "Compression limits"): a flow far below KSG has failed to fit
    the codes, whatever they kept: on held-out gratings a code that kept 99.5% of the images'
    variance gave a flow of 0.18 bit for 1.5, where KSG on the same codes read 1.27
    (docs/estimators.md, "Images of held-out families").
    """
    return flow_bits < ksg_bits - max(0.15, 0.2 * ksg_bits)


class Codes(NamedTuple):
    """A side's compressed samples and the share of its variance they reconstruct (1.0 uncompressed)."""

    values: np.ndarray
    kept: float


def kept_share(total: float, residual: float) -> float:
    """1 - residual / total: the sum of squared reconstruction errors against the sum of squares
    of the centred samples."""
    return float(1.0 - residual / total) if total > 0 else 1.0


class CodesMI(NamedTuple):
    """The MI of two sides' codes in bits, and where the flow model ran, its reading and KSG's."""

    bits: float
    flow: float | None = None
    ksg: float | None = None


def distrust_reasons(kept: dict[str, float], mi: CodesMI) -> list[str]:
    """Why an estimate from these codes may be low: each side (by name) whose code kept less than
    MIN_KEPT of its variance, and a flow far below KSG on the same codes (`flow_disagrees`)."""
    reasons = [f"the code of {side} reconstructs only {share:.3f} of its variance (below {MIN_KEPT}); "
               "raise dim" for side, share in kept.items() if share < MIN_KEPT]
    if mi.flow is not None and flow_disagrees(mi.flow, mi.ksg):
        reasons.append(f"the flow read {mi.flow:.3f} bits where KSG on the same codes reads {mi.ksg:.3f}: "
                       "the flow did not fit the codes, and KSG reads low on warped codes")
    return reasons


def add_noise(a: np.ndarray, noise: float, mode: str, rng: np.random.Generator) -> np.ndarray:
    """x + noise * x * N(0, 1) (Butakov et al.'s code) or x + N(0, noise^2) (Goldfeld et al.)."""
    if mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {mode!r}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    eps = rng.standard_normal(a.shape)
    return a + noise * (a * eps if mode == "relative" else eps)


def pca_compress(a: np.ndarray, dim: int, return_kept: bool = False) -> np.ndarray | Codes:
    """Projection on the `dim` leading principal components of these samples.

    With `return_kept`, a `Codes` with the share of the variance the projection keeps.
    """
    centred = a - a.mean(axis=0)
    if a.shape[1] <= dim:
        scores = centred
    elif a.shape[1] > a.shape[0]:  # wide data: scores from the n x n Gram matrix, not d x d
        eigval, eigvec = np.linalg.eigh(centred @ centred.T)
        top = np.argsort(eigval)[::-1][:dim]
        scores = eigvec[:, top] * np.sqrt(np.clip(eigval[top], 0, None))
    else:
        eigval, eigvec = np.linalg.eigh(centred.T @ centred)
        scores = centred @ eigvec[:, ::-1][:, :dim]
    if not return_kept:
        return scores
    total = float((centred ** 2).sum())
    return Codes(scores, kept_share(total, total - float((scores ** 2).sum())))


def on_one_thread(train: Callable) -> Callable:
    """An autoencoder function run with torch on one CPU thread (`one_torch_thread`; its
    `device` argument says whether it is on the CPU): its codes then do not depend on the
    machine's core count, and `compress_sides` trains two of them at once.

    The price is one side alone: the conv autoencoder of 32x32 rectangles takes 75 s on one
    thread (docs/benchmarks.md, section images) against 49 s on two (images bench at ae7e5b1),
    and machines with more cores lose more. Two sides gain: a default call on 16x16 bumps took
    96 s against 114 s with the sides one after the other on two threads (both at 6bc9555, in
    the same hour). The estimate stage's workers run one thread anyway."""
    signature = inspect.signature(train)

    @functools.wraps(train)
    def single_threaded(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        with one_torch_thread(bound.arguments["device"]):
            return train(*args, **kwargs)
    return single_threaded


def _fit_autoencoder(build, data: torch.Tensor, loss_of, steps: int, batch: int, lr: float,
                     generator: torch.Generator, candidates: int = 1) -> tuple[nn.Module, nn.Module]:
    """Train (encoder, decoder) pairs from `build()` by Adam with a one-cycle schedule; the best pair.

    With several `candidates`, each trains for the first half of the schedule, and the one with
    the lowest loss on all samples then finishes it. Some initialisations settle in a folded
    code that more training does not undo: on 32x32 rectangles of 4 latents, 2 of 5 seeds of
    the convolutional autoencoder ended with twice the reconstruction error of the others and
    kept 0.4-0.7 bit less of 3 (docs/estimators.md, "Compression limits"); halfway through, their
    loss is already 1.6-2.6 times the good ones'.
    """
    if steps < 1:
        raise ValueError(f"the autoencoder needs at least one training step (ae_steps), got {steps}")
    if candidates < 1:
        raise ValueError(f"the autoencoder needs at least one candidate (ae_candidates), got {candidates}")
    runs = []
    # layers initialise from torch's global RNG: seeded by the generator's seed, then restored
    with torch_seeded(generator.initial_seed()):
        for _ in range(candidates):
            encoder, decoder = build()
            optimizer = adam([*encoder.parameters(), *decoder.parameters()], lr)
            runs.append((encoder, decoder, optimizer,
                         torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)))

    def train(run: tuple, n_steps: int) -> None:
        encoder, decoder, optimizer, schedule = run
        for _ in range(n_steps):
            rows = torch.randint(len(data), (min(batch, len(data)),), generator=generator).to(data.device)
            loss = loss_of(encoder, decoder, data[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()

    def full_loss(run: tuple) -> float:
        with torch.no_grad():
            return sum(float(loss_of(run[0], run[1], part)) * len(part) for part in data.split(1000))

    done = steps // 2 if candidates > 1 else 0
    if done:
        for run in runs:
            train(run, done)
        best = min(runs, key=full_loss)
    else:
        best = runs[0]
    train(best, steps - done)
    return best[0], best[1]


@on_one_thread
def autoencoder_compress(a: np.ndarray, dim: int, seed: int = 0, steps: int = 3000,
                         hidden: int = 128, pre_dim: int = 32, batch: int = 500, lr: float = 3e-3,
                         candidates: int = 1, device: str = "cpu",
                         return_kept: bool = False) -> np.ndarray | Codes:
    """Codes of a small fully-connected autoencoder trained on these samples (seeded).

    The samples are first projected on their `pre_dim` leading principal components: smooth
    images keep nearly all their variance there, and the network then costs the same for a
    16x16 image and a VGG feature map. Training is `steps` Adam steps on random batches with a
    one-cycle learning-rate schedule; SiLU units keep the code a smooth function of the input.
    Measured on 16x16 bump images of 4 latents (docs/estimators.md): 3000 steps reach a
    relative reconstruction error of 1e-3 (about 10 s on 2 CPU cores), and 10000 steps 7e-5
    without changing the MI estimate by more than 0.05 bit. `candidates` > 1 trains several
    initialisations and finishes the best (`_fit_autoencoder`). With `return_kept`, a `Codes`
    with the share of the samples' variance the decoder reconstructs (the principal components
    left out count as lost).
    """
    generator = torch.Generator().manual_seed(seed)
    reduced = pca_compress(a, pre_dim)
    scale = max(reduced[:, 0].std(), 1e-12)
    data = torch.as_tensor(reduced / scale, dtype=torch.float32, device=device)
    d = data.shape[1]

    def build() -> tuple[nn.Module, nn.Module]:
        encoder = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                nn.Linear(hidden, dim)).to(device)
        decoder = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                nn.Linear(hidden, d)).to(device)
        return encoder, decoder

    def loss_of(enc: nn.Module, dec: nn.Module, xb: torch.Tensor) -> torch.Tensor:
        return ((dec(enc(xb)) - xb) ** 2).mean()

    encoder, decoder = _fit_autoencoder(build, data, loss_of, steps, batch, lr, generator, candidates)
    with torch.no_grad():
        codes = encoder(data)
        residual = float(((decoder(codes) - data).double() ** 2).sum()) * scale ** 2
    codes = codes.double().cpu().numpy()
    if not return_kept:
        return codes
    total = float(((a - a.mean(axis=0)) ** 2).sum())
    return Codes(codes, kept_share(total, total - float((reduced ** 2).sum()) + residual))


def pooled_images(images: torch.Tensor, largest: int) -> tuple[torch.Tensor, int, float]:
    """Images (n, C, H, W) averaged over f x f blocks, f the smallest integer with H / f and W / f at
    most `largest` (edges padded by replication), with f and the squared norm pooling lost.

    Nearest upsampling of the block means is the orthogonal projection onto block-constant
    images, so the loss is exact and adds to the error of any block-constant reconstruction.
    """
    factor = max(1, -(-max(images.shape[-2:]) // largest))
    if factor == 1:
        return images, 1, 0.0
    height, width = images.shape[-2:]
    padded = nn.functional.pad(images, (0, -width % factor, 0, -height % factor), mode="replicate")
    pooled = nn.functional.avg_pool2d(padded, factor)
    block = pooled.repeat_interleave(factor, -2).repeat_interleave(factor, -1)[..., :height, :width]
    return pooled, factor, float(((images - block).double() ** 2).sum())


@on_one_thread
def conv_autoencoder_compress(a: np.ndarray, dim: int, sample_shape: tuple[int, ...], seed: int = 0,
                              steps: int = 1500, channels: int = 16, hidden: int = 128, batch: int = 128,
                              lr: float = 2e-3, candidates: int = 3, largest: int = 32, device: str = "cpu",
                              return_kept: bool = False) -> np.ndarray | Codes:
    """Codes of a small convolutional autoencoder trained on these images (seeded).

    `a` holds the flattened samples of shape `sample_shape`, (H, W) or (C, H, W) with H, W >= 8.
    Images wider or taller than `largest` (32) pixels are first averaged over square blocks down
    to at most that size (`pooled_images`; what the blocks lose counts against the kept share),
    so a 64x64 image costs what a 32x32 one does.
    Three stride-2 convolutions and a dense layer encode, their mirror decodes; images are
    zero-padded to a multiple of 8 and the loss is taken on the original pixels only. 16
    channels and channels-last tensors: a training step (batch 128, 32x32) took 13 ms on 2 CPU
    threads, against 18 ms in the default layout and 43 ms with 32 channels. Unlike
    the dense autoencoder it sees where each pixel is, which is what resolves the edges of
    sharp shapes: on 32x32 rectangles of 4 latents at 3 bits, one seed pair gave the flow
    model 2.48 bits against 2.17 from the dense autoencoder (docs/estimators.md, "Compression
    limits"). The default `candidates=3` trains three initialisations for half the steps and
    finishes the best (`_fit_autoencoder`), about twice the time of one network; the seconds of
    each part on 2 CPU cores are in docs/benchmarks.md, section images. A GPU is the place for
    it (`device="cuda"`). With `return_kept`, a `Codes`
    with the share of the images' variance the decoder reconstructs.
    """
    shape = tuple(sample_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if not is_image(shape) or int(np.prod(shape)) != a.shape[1]:
        raise ValueError(f"compressor='conv_autoencoder' needs images (H, W) or (C, H, W) with H, W >= 8, "
                         f"got samples of shape {tuple(sample_shape)}; use compressor='autoencoder'")
    generator = torch.Generator().manual_seed(seed)
    centred = a - a.mean(axis=0)
    normalised = centred / max(float(centred.std(axis=0).max()), 1e-12)
    pooled, factor, pooling_loss = pooled_images(
        torch.as_tensor(normalised, dtype=torch.float32).reshape(len(a), *shape), largest)
    channels_in, height, width = pooled.shape[1:]
    rows, cols = -(-height // 8), -(-width // 8)  # the 8x8-downsampled grid, padded up
    images = torch.zeros(len(a), channels_in, 8 * rows, 8 * cols, dtype=torch.float32)
    images[:, :, :height, :width] = pooled
    images = images.to(device).contiguous(memory_format=torch.channels_last)

    def build() -> tuple[nn.Module, nn.Module]:
        encoder = nn.Sequential(
            nn.Conv2d(channels_in, channels, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(channels, channels, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(channels, channels, 4, 2, 1), nn.SiLU(), nn.Flatten(),
            nn.Linear(channels * rows * cols, hidden), nn.SiLU(), nn.Linear(hidden, dim)).to(device)
        decoder = nn.Sequential(
            nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, channels * rows * cols), nn.SiLU(),
            nn.Unflatten(1, (channels, rows, cols)),
            nn.ConvTranspose2d(channels, channels, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(channels, channels, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(channels, channels_in, 4, 2, 1)).to(device)
        last = torch.channels_last
        return encoder.to(memory_format=last), decoder.to(memory_format=last)

    def loss_of(encoder: nn.Module, decoder: nn.Module, xb: torch.Tensor) -> torch.Tensor:
        return ((decoder(encoder(xb)) - xb)[:, :, :height, :width] ** 2).mean()

    encoder, decoder = _fit_autoencoder(build, images, loss_of, steps, batch, lr, generator, candidates)
    codes, residual = [], 0.0
    with torch.no_grad():
        for part in images.split(1000):
            codes.append(encoder(part))
            residual += float(((decoder(codes[-1]) - part)[:, :, :height, :width].double() ** 2).sum())
    codes = torch.cat(codes).double().cpu().numpy()
    # a pooled pixel stands for factor^2 pixels; its error is orthogonal to what pooling lost
    total = float((normalised ** 2).sum())
    kept = kept_share(total, pooling_loss + factor ** 2 * residual)
    return Codes(codes, kept) if return_kept else codes


# dim="auto": the code size of an autoencoder is the samples' intrinsic dimension, at most this
# many (beyond it the flow and KSG on the codes both lose accuracy at a few thousand samples);
# PCA keeps Butakov et al.'s 4, since a linear code folds a curved manifold whatever its size.
MAX_AUTO_DIM = 8
PCA_AUTO_DIM = 4


def intrinsic_dimension(a: np.ndarray, seed: int = 0, subsample: int = 2000, pre_dim: int = 32) -> float:
    """TwoNN estimate (Facco et al. 2017) of the dimension of the manifold the samples fill.

    On `subsample` samples' leading `pre_dim` principal components: mu = r2 / r1, the ratio of
    each point's second to first neighbour distance, follows F(mu) = 1 - mu^-d on a manifold of
    dimension d; d is the slope through the origin of -log(1 - F) against log mu, fitted on the
    90% smallest ratios (the largest come from sparse regions and boundaries).
    """
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(a), min(subsample, len(a)), replace=False)
    points = torch.as_tensor(pca_compress(a[rows], pre_dim), dtype=torch.float64)
    distances = torch.cdist(points, points)
    distances.fill_diagonal_(float("inf"))
    r1, r2 = torch.topk(distances, 2, largest=False).values.T.numpy()
    mu = np.sort(r2[r1 > 0] / r1[r1 > 0])
    if len(mu) < 10:
        raise ValueError(f"dim='auto' needs at least 10 distinct samples, got {len(mu)}; pass dim")
    kept = mu[: int(0.9 * len(mu))]
    log_mu = np.log(kept)
    survival = -np.log(1 - np.arange(1, len(kept) + 1) / (len(mu) + 1))
    return float(log_mu @ survival / max(log_mu @ log_mu, 1e-300))


def code_dimension(dim: int | str, a: np.ndarray, compressor: str, seed: int = 0) -> int:
    """`dim` itself, or for "auto" the rounded `intrinsic_dimension` of `a` (1 to MAX_AUTO_DIM)
    for the autoencoders and PCA_AUTO_DIM for PCA."""
    if dim != "auto":
        if not isinstance(dim, int | np.integer) or dim < 1:
            raise ValueError(f"dim must be a positive integer or 'auto', got {dim!r}")
        return int(dim)
    if compressor not in AUTOENCODERS:
        return PCA_AUTO_DIM
    return int(np.clip(round(intrinsic_dimension(a, seed)), 1, MAX_AUTO_DIM))


def is_image(sample_shape: tuple[int, ...]) -> bool:
    """(H, W) or (C, H, W) with H, W >= 8: what the convolutional autoencoder takes."""
    return len(sample_shape) in (2, 3) and min(sample_shape[-2:]) >= 8


def resolve_compressor(compressor: str, sample_shape: tuple[int, ...]) -> str:
    """"auto": the convolutional autoencoder for images, the dense one for other samples with
    two or more trailing axes (say 512 x 2 x 2 feature maps), PCA for flat vectors.

    Measured on the 18 image cases of docs/estimators.md: PCA to 4 dimensions folds the
    manifold of images of 3 or more latents; the dense autoencoder blurs the edges of 4-latent
    rectangles (2.17 bits of 3 with the flow); the convolutional one keeps them (2.86).
    """
    if compressor not in COMPRESSORS:
        raise ValueError(f"compressor must be one of {COMPRESSORS}, got {compressor!r}")
    if compressor == "auto":
        if is_image(sample_shape):
            return "conv_autoencoder"
        return "autoencoder" if len(sample_shape) >= 2 else "pca"
    return compressor


# Autoencoder input codes by content: the estimate stage calls information_plane once per cell
# with the same inputs, and an input autoencoder (about 10 s) would otherwise be retrained
# every time.
_INPUT_CODES: dict[tuple, Codes] = {}
_INPUT_CODES_KEPT = 4


def compress(a: np.ndarray, dim: int | str, compressor: str, seed: int, device: str,
             ae_steps: int | None = None, remember: bool = False, sample_shape: tuple[int, ...] = (),
             ae_candidates: int | None = None) -> Codes:
    """`a` (n, features) to `dim` columns and the share of its variance they keep; fewer
    features than `dim` are kept as they are.

    `ae_steps` and `ae_candidates` None mean the compressor's own defaults (3000 steps and 1
    candidate dense, 1500 steps and 3 candidates convolutional).
    `compressor` is already resolved (`resolve_compressor`, on the shape before flattening);
    "conv_autoencoder" needs that shape, `sample_shape`.
    With `remember`, autoencoder codes are kept by content (the last few), so the same inputs
    are not encoded again.
    """
    if compressor not in COMPRESSORS[1:]:
        raise ValueError(f"compressor must be one of {COMPRESSORS[1:]} here, got {compressor!r}")
    if compressor == "none":
        return Codes(a, 1.0)
    # only autoencoder codes are remembered, so only they pay for hashing the inputs; the
    # requested width ("auto" included) is in the key: a hit skips the intrinsic dimension too
    key = None
    if remember and compressor in AUTOENCODERS:
        key = (hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest(), a.shape, tuple(sample_shape),
               dim, compressor, seed, device, ae_steps, ae_candidates)
    if key in _INPUT_CODES:
        return _INPUT_CODES[key]
    dim = code_dimension(dim, a, compressor, seed)
    if a.shape[1] <= dim:
        return Codes(a, 1.0)
    if compressor == "pca":
        return pca_compress(a, dim, return_kept=True)

    # None leaves each autoencoder's own default in force (its signature is the one place for it)
    options = {name: value for name, value in (("steps", ae_steps), ("candidates", ae_candidates))
               if value is not None}

    def encode() -> Codes:
        if compressor == "conv_autoencoder":
            return conv_autoencoder_compress(a, dim, sample_shape, seed=seed, device=device, return_kept=True,
                                             **options)
        return autoencoder_compress(a, dim, seed=seed, device=device, return_kept=True, **options)

    if key is None:
        return encode()
    if len(_INPUT_CODES) >= _INPUT_CODES_KEPT:
        _INPUT_CODES.pop(next(iter(_INPUT_CODES)))
    codes = encode()
    codes.values.flags.writeable = False
    _INPUT_CODES[key] = codes
    return codes


def compress_sides(jobs: list[dict[str, Any]]) -> list[Codes]:
    """`compress(**job)` for each side. Where two or more sides train an autoencoder on the CPU,
    they train at once, in threads: each on one torch thread (`on_one_thread`), so the codes
    are those of one side at a time, and on 2 cores a call with two image sides takes about the
    time of one side (docs/benchmarks.md, section images)."""
    learnt = [job["compressor"] in AUTOENCODERS and torch.device(job["device"]).type == "cpu"
              for job in jobs]
    if sum(learnt) < 2:
        return [compress(**job) for job in jobs]
    with one_torch_thread(), ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: compress(**job), jobs))


def _entropy(a: np.ndarray, entropy: str, k: int, device: str) -> float:
    if entropy == "wkl" and a.shape[1] > 4:
        return weighted_kl_entropy(a, device=device)
    return kl_entropy(a, k=k, device=device)


def _mi_compressed(ca: np.ndarray, cb: np.ndarray | None, labels: np.ndarray | None, entropy: str,
                   k: int, seed: int, device: str) -> CodesMI:
    """The MI of the codes. With the flow, the larger of its reading and KSG's on the same codes:
    both read low on autoencoder codes and neither reads high (KSG from the codes' warp, the
    flow where it underfits; docs/estimators.md, "Compression limits")."""
    if entropy == "flow" and cb is not None:
        flow = flow_mutual_information(ca, cb, seed=seed, device=device)
        ksg = ksg_mutual_information(ca, cb, k=k, seed=seed, device=device)
        return CodesMI(max(flow, ksg), flow, ksg)
    if entropy in ("ksg", "flow"):  # labels: the flow models two continuous sides only
        other = labels if cb is None else cb
        return CodesMI(ksg_mutual_information(ca, other, k=k, seed=seed, device=device))
    return CodesMI(_kl_mutual_information(ca, cb, labels, entropy, k, device))


def _kl_mutual_information(ca: np.ndarray, cb: np.ndarray | None, labels: np.ndarray | None, entropy: str,
                           k: int, device: str) -> float:
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


def resolve_entropy(entropy: str, compressors: tuple[str, ...]) -> str:
    """"auto": the flow model where both sides were coded by an autoencoder, KSG otherwise.

    `compressors` are the sides' resolved compressors (one for labels). Measured on the 18 image
    cases of docs/estimators.md: autoencoder codes are warped, and the flow keeps 16 within
    tolerance where KSG keeps 14 (it costs about 50 s more a call on 2 CPU cores); on PCA
    scores of dense layers KSG is accurate and fast.
    """
    if entropy not in ENTROPIES:
        raise ValueError(f"entropy must be one of {ENTROPIES}, got {entropy!r}")
    if entropy != "auto":
        return entropy
    return "flow" if len(compressors) == 2 and set(compressors) <= set(AUTOENCODERS) else "ksg"


def compression_mutual_information(a: np.ndarray, b: np.ndarray, noise: float = 1e-3,
                                   noise_mode: str = "relative", dim: int | str = "auto",
                                   compressor: str = "auto", entropy: str = "auto", k: int = 5,
                                   ae_steps: int | None = None, ae_candidates: int | None = None,
                                   seed: int = 0, device: str = "cpu",
                                   diagnostics: bool = False) -> float | tuple[float, dict[str, float]]:
    """I(A;B) in bits: noise on each continuous side, compression to `dim`, kNN entropies.

    Every call checks itself and warns (`CompressionWarning`) where the estimate may be low:
    when a side's code reconstructs less than `MIN_KEPT` (0.99) of its variance (the code
    dropped part of the sample), or when the flow reads far below KSG on the same codes
    (`flow_disagrees`: the flow failed to fit them, and KSG on warped codes reads low).
    `diagnostics=True` returns (bits, {"kept_a", "kept_b" (the shares), "dim_a", "dim_b" (the
    code sizes), "flow" and "ksg_on_codes" (where the flow was used), "lossy" (1.0 if flagged)}).

    Parameters
    ----------
    a, b : (n, ...) arrays, or b (n,) integer labels.
    noise : float
        Noise level (Butakov et al.: 1e-3, relative).
    noise_mode : {"relative", "absolute"}
        t + noise * t * N(0, 1), or t + N(0, noise^2) (Goldfeld et al.).
    dim : int or "auto"
        Dimensions kept by the compressor (papers: 4; CIFAR inputs 10). "auto" (default): for an
        autoencoder, each side's intrinsic dimension (`intrinsic_dimension`, TwoNN, rounded, at
        most `MAX_AUTO_DIM` = 8), so a code neither drops latents nor pads them; for PCA, 4.
    compressor : {"auto", "pca", "autoencoder", "conv_autoencoder", "none"}
        "auto" (default) follows Butakov et al.: a convolutional autoencoder for images
        ((n, H, W) or (n, C, H, W) with H, W >= 8; `conv_autoencoder_compress`; the seconds of
        a default call are in docs/benchmarks.md, section images), a dense
        one for other samples with two or more trailing axes (`autoencoder_compress`, about
        10 s a side), PCA for flat
        vectors such as dense layers. Pass images with their shape: flattened to (n, H * W)
        they are taken for a dense layer (PCA, 10 of the 18 image cases within tolerance).
    entropy : {"auto", "ksg", "flow", "kl", "wkl"}
        "auto" (default): "flow" when both sides go through the autoencoder (images),
        "ksg" otherwise (`resolve_entropy`). "flow" reads the larger of the flow model's MI
        and KSG's on the same codes (both read low on autoencoder codes, neither high).
        "ksg": KSG directly on the compressed pair, or "kl": H(A) + H(B) - H(A, B) from
        Kozachenko-Leonenko entropies (k neighbours, after whitening; Butakov et al.), weighted
        KL where the compressed dimension exceeds 4. KSG rather than the paper's KL route
        because it was measured better: when PCA keeps more dimensions than the data's latent
        manifold has, the three KL entropies err differently and their difference collapses
        to 0 (docs/estimators.md).
        "flow": the MI of a maximum-likelihood flow model of the compressed pair
        (`flow.flow_mutual_information`), which copes better with the warped codes of an
        autoencoder, at about 30 s a call on 2 CPU cores; with labels it falls back to KSG.
    k : int
        Neighbours (default 5).
    ae_steps : int or None
        Training steps of the autoencoder; None (default): 3000 dense, 1500 convolutional.
    ae_candidates : int or None
        Initialisations of the autoencoder trained for the first half of its steps; the one
        with the lowest reconstruction error finishes (`_fit_autoencoder`). None (default): 3
        convolutional (some seeds fold the code of sharp shapes and lose up to 0.7 bit), 1 dense.
        The convolutional default costs twice the training of one network.
    seed : int
        Seeds the noise and the autoencoder: results are reproducible.
    diagnostics : bool
        Also return what the codes kept and the flow's check (see above).
    """
    continuous = (a,) if is_discrete(b) else (a, b)
    compressors = [resolve_compressor(compressor, np.shape(side)[1:]) for side in continuous]
    entropy = resolve_entropy(entropy, tuple(compressors))
    same_length(a=a, b=b)
    rng = np.random.default_rng(seed)
    common = {"dim": dim, "device": device, "ae_steps": ae_steps, "ae_candidates": ae_candidates}
    codes = compress_sides([
        dict(common, a=add_noise(as_samples(side, "ab"[i]), noise, noise_mode, rng),
             compressor=side_compressor, seed=seed + i, sample_shape=np.shape(side)[1:])
        for i, (side, side_compressor) in enumerate(zip(continuous, compressors, strict=True))])
    kept = {"ab"[i]: side.kept for i, side in enumerate(codes)}
    dims = {f"dim_{'ab'[i]}": side.values.shape[1] for i, side in enumerate(codes)}
    if is_discrete(b):
        mi = _mi_compressed(codes[0].values, None, as_labels(b), entropy, k, seed, device)
    else:
        mi = _mi_compressed(codes[0].values, codes[1].values, None, entropy, k, seed, device)
    reasons = distrust_reasons(kept, mi)
    if reasons:
        warnings.warn("the estimate may be low: " + "; ".join(reasons), CompressionWarning, stacklevel=2)
    report = {**{f"kept_{side}": share for side, share in kept.items()}, **dims}
    report.update({} if mi.flow is None else {"flow": mi.flow, "ksg_on_codes": mi.ksg})
    return (mi.bits, {**report, "lossy": float(bool(reasons))}) if diagnostics else mi.bits


def compression_information_plane(x: np.ndarray, t: np.ndarray, y: np.ndarray, noise: float = 1e-3,
                                  noise_mode: str = "relative", dim: int = 4, compressor: str = "pca",
                                  input_compressor: str = "pca", input_dim: int | None = None,
                                  entropy: str = "auto", k: int = 5, ae_steps: int | None = None,
                                  ae_candidates: int | None = None, seed: int = 0,
                                  device: str = "cpu") -> dict[str, float]:
    """I(X;T) and I(T;Y) in bits for a stochastic layer T = f(X) + noise, with what the codes kept.

    Also returns `T_kept` and `X_kept`, the share of the noised layer's and of the inputs'
    variance their codes reconstruct, and `I_XT_lossy` (1.0 where either is below `MIN_KEPT`, or
    where the flow gave I(X;T) and read far below KSG on the same codes, `flow_disagrees`) and
    `I_TY_lossy` (the layer's code): the estimate is then of the compressed layer, not the layer.

    The layer is noised (seeded) and compressed by `compressor` (PCA per epoch by default, as
    Butakov et al. did for layers); the inputs by `input_compressor` to `input_dim` (default
    `dim`). Butakov et al. compressed inputs with an autoencoder (latent 4 on MNIST, 10 on
    CIFAR-10): pass ``input_compressor="autoencoder"`` (or "auto"), or compress once and pass
    ``input_compressor="none"``. The default is PCA; an input autoencoder is trained once per
    process and input array (the last few are remembered by content), not once per cell.
    Inputs must be continuous: kNN entropies of a discrete input (SZT's bits) are undefined.
    `entropy="auto"` gives KSG unless both the layer and the inputs go through the
    autoencoder (then the flow for I(X;T)). Other parameters as in
    `compression_mutual_information`.
    """
    layer_compressor = resolve_compressor(compressor, np.shape(t)[1:])
    inputs_compressor = resolve_compressor(input_compressor, np.shape(x)[1:])
    xt_entropy = resolve_entropy(entropy, (layer_compressor, inputs_compressor))
    ty_entropy = resolve_entropy(entropy, (layer_compressor,))
    same_length(x=x, t=t, y=y)
    rng = np.random.default_rng(seed)
    common = {"device": device, "ae_steps": ae_steps, "ae_candidates": ae_candidates}
    tn, xc = compress_sides([
        dict(common, a=add_noise(as_samples(t, "t"), noise, noise_mode, rng), dim=dim,
             compressor=layer_compressor, seed=seed, sample_shape=np.shape(t)[1:]),
        dict(common, a=as_samples(x, "x"), dim=input_dim or dim, compressor=inputs_compressor, seed=seed + 1,
             remember=True, sample_shape=np.shape(x)[1:])])
    labels = as_labels(y)
    i_xt = _mi_compressed(xc.values, tn.values, None, xt_entropy, k, seed, device)
    i_ty = _mi_compressed(tn.values, None, labels, ty_entropy, k, seed, device)
    return {"I_XT": i_xt.bits, "I_TY": i_ty.bits, "T_kept": tn.kept, "X_kept": xc.kept,
            "I_XT_lossy": float(bool(distrust_reasons({"x": xc.kept, "t": tn.kept}, i_xt))),
            "I_TY_lossy": float(bool(distrust_reasons({"t": tn.kept}, i_ty)))}
