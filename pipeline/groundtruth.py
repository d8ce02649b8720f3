"""Samples with known mutual information, for testing estimators (docs/science.md, section 6).

    from pipeline.groundtruth import gaussian_pair, bump_images
    a, b = gaussian_pair(n=5000, mi_bits=2.0, dim=3, seed=0)   # I(a;b) = 2 bits exactly
    images = bump_images(a)                                    # 16x16, still 2 bits with b

MI is invariant under injective maps, so maps of each side (per-coordinate monotone functions,
rotations, rendering latents as images) keep the true value.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr
from scipy.stats import special_ortho_group

LN2 = np.log(2.0)


def gaussian_pair(n: int, mi_bits: float, dim: int, seed: int = 0,
                  rotate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Standard normal (a, b) in `dim` dimensions each with I(a;b) = `mi_bits`.

    The information is split evenly over `dim` coordinate pairs, rho = sqrt(1 - exp(-2 I / dim))
    with I in nats; with `rotate`, independent random rotations of each side spread it over all
    coordinates.
    """
    rng = np.random.default_rng(seed)
    rho = np.sqrt(1.0 - np.exp(-2.0 * mi_bits * LN2 / dim))
    a = rng.standard_normal((n, dim))
    b = rho * a + np.sqrt(1.0 - rho**2) * rng.standard_normal((n, dim))
    if rotate and dim > 1:
        a = a @ special_ortho_group.rvs(dim, random_state=rng)
        b = b @ special_ortho_group.rvs(dim, random_state=rng)
    return a, b


INJECTIVE_MAPS = {
    "identity": lambda v, rng: v,
    "normal_cdf": lambda v, rng: ndtr(v),
    "asinh": lambda v, rng: np.arcsinh(v),
    "half_cube": lambda v, rng: v * np.abs(v) ** 0.5,
    "rotation": lambda v, rng: v @ special_ortho_group.rvs(v.shape[1], random_state=rng)
    if v.shape[1] > 1 else -v,
}


def apply_map(name: str, v: np.ndarray, seed: int = 0) -> np.ndarray:
    return INJECTIVE_MAPS[name](v, np.random.default_rng(seed + 99))


def bump_images(latent: np.ndarray, size: int = 16) -> np.ndarray:
    """(n, 1, size, size) images of a Gaussian bump, a smooth injective function of 2-4 latents.

    Coordinates 0, 1: the centre c = normal CDF of the latent; 2: the bump's width; 3: its
    brightness. pixel = brightness * exp(-10 ||p - c||^2 / width^2), p on a [0, 1]^2 grid.
    """
    m = latent.shape[1]
    if not 2 <= m <= 4:
        raise ValueError("bump images take 2 to 4 latent dimensions")
    u = ndtr(latent)
    grid = (np.arange(size) + 0.5) / size
    px, py = np.meshgrid(grid, grid, indexing="xy")
    width = 0.6 + 0.8 * u[:, 2] if m > 2 else np.ones(len(u))
    bright = 0.5 + u[:, 3] if m > 3 else np.ones(len(u))
    d2 = (px[None] - u[:, 0, None, None]) ** 2 + (py[None] - u[:, 1, None, None]) ** 2
    images = bright[:, None, None] * np.exp(-10.0 * d2 / width[:, None, None] ** 2)
    return images[:, None].astype(np.float64)


def rectangle_images(latent: np.ndarray, size: int = 32, sharpness: float = 40.0) -> np.ndarray:
    """(n, 1, size, size) soft-edged rectangles, a smooth injective function of 2-4 latents.

    Coordinates 0, 1: the centre (normal CDF, kept inside the frame); 2, 3: width and height
    (default 0.3). Edges are logistic with the given sharpness so pixels vary smoothly.
    """
    m = latent.shape[1]
    if not 2 <= m <= 4:
        raise ValueError("rectangle images take 2 to 4 latent dimensions")
    u = ndtr(latent)
    cx, cy = 0.25 + 0.5 * u[:, 0], 0.25 + 0.5 * u[:, 1]
    w = 0.15 + 0.3 * u[:, 2] if m > 2 else np.full(len(u), 0.3)
    h = 0.15 + 0.3 * u[:, 3] if m > 3 else np.full(len(u), 0.3)
    grid = (np.arange(size) + 0.5) / size

    def soft_box(centre: np.ndarray, half: np.ndarray) -> np.ndarray:
        lo = 1 / (1 + np.exp(-sharpness * (grid[None] - (centre - half)[:, None])))
        hi = 1 / (1 + np.exp(sharpness * (grid[None] - (centre + half)[:, None])))
        return lo * hi

    images = soft_box(cy, h / 2)[:, :, None] * soft_box(cx, w / 2)[:, None, :]
    return images[:, None].astype(np.float64)
