"""Samples with known mutual information, for testing estimators (docs/science.md, section 6).

    from pipeline.groundtruth import gaussian_pair, render_images, student_t_pair
    a, b = gaussian_pair(n=5000, mi_bits=2.0, dim=3, seed=0)   # I(a;b) = 2 bits exactly
    images = render_images("bumps", a)                         # 16x16, still 2 bits with b
    a, b, bits = student_t_pair(n=5000, mi_bits=1.0, dim=5, dof=3)  # heavy tails, `bits` exact

MI is invariant under injective maps, so maps of each side (per-coordinate monotone functions,
rotations, rendering latents as images) keep the true value.

Families: Gaussian pairs with the information spread over every coordinate (`rotate`, dense) or
held by a few coordinate pairs (`active`, sparse); the same under injective maps
(`INJECTIVE_MAPS` per coordinate, `mixing_diffeomorphism` across them); multivariate Student-t
pairs (`student_t_pair`); and images of latents (`IMAGE_FAMILIES`), of which the estimators'
defaults were chosen on the `tuned` ones only; ellipses and dots were added after the
compression estimator's present rules were set, and were first measured with them
(docs/estimators.md, "Images of held-out families"); crosses, bars and triangles are
`reserved` for judging the next change of those rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import digamma, gammaln, ndtr
from scipy.stats import special_ortho_group

LN2 = np.log(2.0)


def gaussian_pair(n: int, mi_bits: float, dim: int, seed: int = 0,
                  rotate: bool = True, active: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Standard normal (a, b) in `dim` dimensions each with I(a;b) = `mi_bits`.

    The information is split evenly over the first `active` coordinate pairs (default all
    `dim`), rho = sqrt(1 - exp(-2 I / active)) with I in nats; the other coordinates are
    independent noise. With `rotate`, independent random rotations of each side spread it over
    all coordinates (dense correlation); `rotate=False` with a small `active` is the sparse case.
    """
    active = dim if active is None else active
    if not 1 <= active <= dim:
        raise ValueError(f"active must be between 1 and dim={dim}, got {active}")
    rng = np.random.default_rng(seed)
    rho = np.zeros(dim)
    rho[:active] = np.sqrt(1.0 - np.exp(-2.0 * mi_bits * LN2 / active))
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


def mixing_diffeomorphism(v: np.ndarray, seed: int = 0, rounds: int = 3) -> np.ndarray:
    """A smooth bijection of R^d that mixes the coordinates: `rounds` times a seeded random
    orthogonal map, then x + 0.6 sin(1.5 x) on each coordinate (derivative 1 + 0.9 cos(1.5 x) >=
    0.1, so strictly increasing). MI is unchanged; unlike `INJECTIVE_MAPS`, normal scores of each
    coordinate do not undo it, which is the warp an autoencoder's code carries.
    """
    rng = np.random.default_rng(seed)
    x = np.array(v, dtype=float)
    for _ in range(rounds):
        x = x @ np.linalg.qr(rng.standard_normal((x.shape[1], x.shape[1])))[0]
        x = x + 0.6 * np.sin(1.5 * x)
    return x


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


def _t_term(x: float) -> float:
    return float(gammaln(x / 2) - x / 2 * digamma(x / 2))


def student_t_excess(dof: float, dim_a: int, dim_b: int) -> float:
    """Bits a multivariate Student-t pair carries beyond the Gaussian of the same scale matrix.

    I = I_gauss(scale) + f(v) + f(v + m + n) - f(v + m) - f(v + n), f(x) = ln G(x/2) -
    (x/2) psi(x/2) (Arellano-Valle et al. 2013; the Student-t tasks of Czyz et al. 2023): the
    shared chi-square scale makes even uncorrelated t coordinates dependent.
    """
    nats = (_t_term(dof) + _t_term(dof + dim_a + dim_b) - _t_term(dof + dim_a) - _t_term(dof + dim_b))
    return nats / LN2


def student_t_pair(n: int, mi_bits: float, dim: int, dof: float = 3.0, seed: int = 0,
                   rotate: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """A Student-t pair (a, b) with `dof` degrees of freedom, and its exact MI in bits.

    (a, b) = (g_a, g_b) / sqrt(w) with (g_a, g_b) = `gaussian_pair(mi_bits, dim)` and one w ~
    chi2(dof) / dof per sample: the true MI is `mi_bits` plus `student_t_excess(dof, dim, dim)`.
    Heavy tails (dof = 1 is Cauchy) are where kNN estimators are known to fail.
    """
    if dof <= 0:
        raise ValueError(f"dof must be positive, got {dof}")
    g_a, g_b = gaussian_pair(n, mi_bits, dim, seed=seed, rotate=rotate)
    scale = np.sqrt(np.random.default_rng(seed + 7).chisquare(dof, size=(n, 1)) / dof)
    return g_a / scale, g_b / scale, mi_bits + student_t_excess(dof, dim, dim)


def _features(latent: np.ndarray, defaults: tuple[float, ...]) -> list[np.ndarray]:
    """The latents as uniform features in (0, 1), the unused ones at their default values."""
    m = latent.shape[1]
    if not 2 <= m <= len(defaults):
        raise ValueError(f"these images take 2 to {len(defaults)} latent dimensions, got {m}")
    u = ndtr(latent)
    return [u[:, i] if i < m else np.full(len(u), d) for i, d in enumerate(defaults)]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    grid = (np.arange(size) + 0.5) / size
    px, py = np.meshgrid(grid, grid, indexing="xy")
    return px[None], py[None]


def _blob(px, py, cx, cy, width) -> np.ndarray:
    d2 = (px - cx[:, None, None]) ** 2 + (py - cy[:, None, None]) ** 2
    return np.exp(-d2 / width[:, None, None] ** 2)


def two_blob_images(latent: np.ndarray, size: int = 32) -> np.ndarray:
    """(n, 1, size, size): a wide bright blob and a narrow dark one, 2-6 latents.

    Coordinates 0, 1: the bright blob's centre; 2, 3: the dark blob's centre; 4, 5: their
    widths. Each latent pair moves a different feature of a different size.
    """
    u = _features(latent, (0.5, 0.5, 0.3, 0.7, 0.5, 0.5))
    px, py = _grid(size)
    bright = _blob(px, py, 0.15 + 0.7 * u[0], 0.15 + 0.7 * u[1], 0.15 + 0.15 * u[4])
    dark = _blob(px, py, 0.15 + 0.7 * u[2], 0.15 + 0.7 * u[3], 0.05 + 0.07 * u[5])
    return (bright - 0.8 * dark)[:, None]


def grating_images(latent: np.ndarray, size: int = 32) -> np.ndarray:
    """(n, 1, size, size): a windowed sinusoidal grating, 2-6 latents.

    Coordinates 0: orientation (0.1 pi to 0.9 pi); 1: frequency (1.5 to 4 cycles per image);
    2: phase (0 to pi, half a period, so no two latents draw the same image); 3: contrast; 4, 5:
    the window's centre.
    """
    u = _features(latent, (0.5, 0.5, 0.5, 0.5, 0.5, 0.5))
    px, py = _grid(size)
    angle, cycles, phase = np.pi * (0.1 + 0.8 * u[0]), 1.5 + 2.5 * u[1], np.pi * u[2]
    along = px * np.cos(angle)[:, None, None] + py * np.sin(angle)[:, None, None]
    wave = np.cos(2 * np.pi * cycles[:, None, None] * along + phase[:, None, None])
    window = _blob(px, py, 0.35 + 0.3 * u[4], 0.35 + 0.3 * u[5], np.full(len(angle), 0.35))
    return ((0.3 + 0.7 * u[3])[:, None, None] * wave * window)[:, None]


def colour_bump_images(latent: np.ndarray, size: int = 16) -> np.ndarray:
    """(n, 3, size, size): one bump in colour, 2-6 latents.

    Coordinates 0, 1: the centre; 2, 3: the red and blue weights (green is their complement);
    4: the width; 5: the brightness.
    """
    u = _features(latent, (0.5, 0.5, 0.5, 0.5, 0.5, 0.5))
    px, py = _grid(size)
    shape = (0.5 + 0.5 * u[5])[:, None, None] * _blob(px, py, 0.2 + 0.6 * u[0], 0.2 + 0.6 * u[1],
                                                      0.15 + 0.15 * u[4])
    red, blue = 0.2 + 0.8 * u[2], 0.2 + 0.8 * u[3]
    weights = np.stack([red, 1.2 - 0.5 * (red + blue), blue], axis=1)
    return weights[:, :, None, None] * shape[:, None]


def stroke_images(latent: np.ndarray, size: int = 32) -> np.ndarray:
    """(n, 1, size, size): a soft line segment, 2-6 latents.

    Coordinates 0, 1: the left end (in the left half of the frame, so the ends never swap); 2,
    3: the right end; 4: the thickness; 5: the intensity.
    """
    u = _features(latent, (0.5, 0.5, 0.5, 0.5, 0.5, 0.5))
    px, py = _grid(size)
    start = np.stack([0.1 + 0.3 * u[0], 0.15 + 0.7 * u[1]], axis=1)
    end = np.stack([0.6 + 0.3 * u[2], 0.15 + 0.7 * u[3]], axis=1)
    direction = end - start
    offset_x, offset_y = px - start[:, 0, None, None], py - start[:, 1, None, None]
    along = np.clip((offset_x * direction[:, 0, None, None] + offset_y * direction[:, 1, None, None])
                    / (direction ** 2).sum(axis=1)[:, None, None], 0, 1)
    dist2 = ((offset_x - along * direction[:, 0, None, None]) ** 2
             + (offset_y - along * direction[:, 1, None, None]) ** 2)
    thickness = 0.03 + 0.05 * u[4]
    return ((0.5 + 0.5 * u[5])[:, None, None] * np.exp(-dist2 / thickness[:, None, None] ** 2))[:, None]


def ring_images(latent: np.ndarray, size: int = 24) -> np.ndarray:
    """(n, 1, size, size): a ring on a shaded background, 2-6 latents.

    Coordinates 0, 1: the ring's centre; 2: its radius; 3: its thickness; 4: the slope of the
    background's left-to-right shading; 5: the ring's brightness.
    """
    u = _features(latent, (0.5, 0.5, 0.5, 0.5, 0.5, 0.5))
    px, py = _grid(size)
    cx, cy = 0.3 + 0.4 * u[0], 0.3 + 0.4 * u[1]
    radius = (0.1 + 0.12 * u[2])[:, None, None]
    distance = np.sqrt((px - cx[:, None, None]) ** 2 + (py - cy[:, None, None]) ** 2)
    ring = np.exp(-((distance - radius) / (0.02 + 0.04 * u[3])[:, None, None]) ** 2)
    shading = (0.4 * u[4] - 0.2)[:, None, None] * (px - 0.5)
    return ((0.5 + 0.5 * u[5])[:, None, None] * ring + shading)[:, None]


def ellipse_images(latent: np.ndarray, size: int = 64) -> np.ndarray:
    """(n, 1, size, size): a soft-edged filled ellipse, 2-6 latents.

    Coordinates 0, 1: the centre; 2: the orientation (0.1 pi to 0.9 pi; the long axis always
    exceeds the short one, so no two latents draw the same ellipse); 3, 4: the long and short
    half-axes; 5: the brightness.
    """
    u = _features(latent, (0.5, 0.5, 0.5, 0.5, 0.5, 0.5))
    px, py = _grid(size)
    cx, cy, angle = 0.3 + 0.4 * u[0], 0.3 + 0.4 * u[1], np.pi * (0.1 + 0.8 * u[2])
    long, short = 0.16 + 0.1 * u[3], 0.06 + 0.06 * u[4]
    dx, dy = px - cx[:, None, None], py - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    radius = np.sqrt(((dx * cos + dy * sin) / long[:, None, None]) ** 2
                     + ((dy * cos - dx * sin) / short[:, None, None]) ** 2)
    return ((0.5 + 0.5 * u[5])[:, None, None] / (1 + np.exp(12 * (radius - 1))))[:, None]


def dot_images(latent: np.ndarray, size: int = 32) -> np.ndarray:
    """(n, 3, size, size): a reddish and a bluish dot on black, 2-6 latents.

    Coordinates 0, 1: the reddish dot's centre; 2, 3: the bluish dot's centre; 4: the green in
    the reddish dot; 5: both dots' size. The dots differ in colour, so swapping them draws
    another image.
    """
    u = _features(latent, (0.5, 0.5, 0.3, 0.7, 0.5, 0.5))
    px, py = _grid(size)
    width = 0.06 + 0.05 * u[5]
    first = _blob(px, py, 0.15 + 0.7 * u[0], 0.15 + 0.7 * u[1], width)
    second = _blob(px, py, 0.15 + 0.7 * u[2], 0.15 + 0.7 * u[3], width)
    colour = np.stack([np.ones(len(width)), 0.2 + 0.6 * u[4], np.full(len(width), 0.1)], axis=1)
    bluish = np.array([0.1, 0.3, 1.0])[None, :, None, None]
    return colour[:, :, None, None] * first[:, None] + bluish * second[:, None]


def _soft_step(x: np.ndarray, edge: float) -> np.ndarray:
    """A logistic step from 0 (x << 0) to 1 (x >> 0) over about `edge`."""
    return 1 / (1 + np.exp(-np.clip(x / edge, -50, 50)))


def cross_images(latent: np.ndarray, size: int = 48) -> np.ndarray:
    """(n, 1, size, size): a soft-edged plus sign, 2-6 latents.

    Coordinates 0, 1: the centre; 2: the rotation (0.05 pi to 0.45 pi: a plus sign repeats every
    quarter turn, so no two latents draw the same image); 3: the arms' length; 4: their
    thickness; 5: the brightness.
    """
    u = _features(latent, (0.5, 0.5, 0.5, 0.5, 0.5, 0.5))
    px, py = _grid(size)
    cx, cy, angle = 0.3 + 0.4 * u[0], 0.3 + 0.4 * u[1], np.pi * (0.05 + 0.4 * u[2])
    length, thickness = (0.12 + 0.12 * u[3])[:, None, None], (0.025 + 0.035 * u[4])[:, None, None]
    dx, dy = px - cx[:, None, None], py - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    along, across = np.abs(dx * cos + dy * sin), np.abs(dy * cos - dx * sin)
    first = _soft_step(length - along, 0.01) * _soft_step(thickness - across, 0.01)
    second = _soft_step(length - across, 0.01) * _soft_step(thickness - along, 0.01)
    return ((0.5 + 0.5 * u[5])[:, None, None] * (1 - (1 - first) * (1 - second)))[:, None]


def bar_images(latent: np.ndarray, size: int = 40) -> np.ndarray:
    """(n, 1, size, size): a bright vertical bar crossing a dark horizontal one, 2-6 latents.

    Coordinates 0: the vertical bar's position; 1: the horizontal bar's; 2, 3: their widths;
    4, 5: their intensities (they add where the bars cross).
    """
    u = _features(latent, (0.5, 0.5, 0.5, 0.5, 0.5, 0.5))
    px, py = _grid(size)
    x, y = (0.15 + 0.7 * u[0])[:, None, None], (0.15 + 0.7 * u[1])[:, None, None]
    width_x, width_y = (0.03 + 0.06 * u[2])[:, None, None], (0.03 + 0.06 * u[3])[:, None, None]
    vertical = (0.5 + 0.5 * u[4])[:, None, None] * np.exp(-((px - x) / width_x) ** 2)
    horizontal = (0.4 + 0.4 * u[5])[:, None, None] * np.exp(-((py - y) / width_y) ** 2)
    return (vertical - horizontal)[:, None]


def triangle_images(latent: np.ndarray, size: int = 24) -> np.ndarray:
    """(n, 3, size, size): a soft-edged filled triangle on a tinted ground, 2-6 latents.

    Coordinates 0, 1: the centre; 2: the rotation (0.05 to 0.6 of a third of a turn: an
    equilateral triangle repeats every third, so no two latents draw the same image); 3: the
    size; 4: the triangle's red against green; 5: the ground's blue.
    """
    u = _features(latent, (0.5, 0.5, 0.5, 0.5, 0.5, 0.5))
    px, py = _grid(size)
    cx, cy = (0.35 + 0.3 * u[0])[:, None, None], (0.35 + 0.3 * u[1])[:, None, None]
    angle, inradius = 2 * np.pi / 3 * (0.05 + 0.55 * u[2]), (0.08 + 0.07 * u[3])[:, None, None]
    inside = np.ones((len(angle), size, size))
    for side in range(3):
        normal = angle + 2 * np.pi * side / 3
        distance = ((px - cx) * np.cos(normal)[:, None, None] + (py - cy) * np.sin(normal)[:, None, None])
        inside = inside * _soft_step(inradius - distance, 0.015)
    red = 0.2 + 0.8 * u[4]
    colour = np.stack([red, 1.1 - red, np.full(len(red), 0.1)], axis=1)[:, :, None, None]
    ground = np.zeros((len(red), 3, 1, 1))
    ground[:, 2, 0, 0] = 0.1 + 0.4 * u[5]
    return colour * inside[:, None] + ground * (1 - inside[:, None])


@dataclass(frozen=True)
class ImageFamily:
    """Images rendered from latents: the renderer, its latent range and size, and whether the
    estimators' defaults were chosen on it (`tuned`) or it is held out of that choice.

    `reserved` families are held out of the next choice too: they were written before any change
    to the compression defaults beyond the present ones and are measured only once such a change
    is fixed, so that it is judged on images nobody looked at while making it.
    """

    render: Callable[..., np.ndarray]
    max_latents: int
    size: int
    tuned: bool
    reserved: bool = False


IMAGE_FAMILIES: dict[str, ImageFamily] = {
    "bumps": ImageFamily(bump_images, 4, 16, tuned=True),
    "rectangles": ImageFamily(rectangle_images, 4, 32, tuned=True),
    "two_blobs": ImageFamily(two_blob_images, 6, 32, tuned=False),
    "gratings": ImageFamily(grating_images, 6, 32, tuned=False),
    "colour_bumps": ImageFamily(colour_bump_images, 6, 16, tuned=False),
    "strokes": ImageFamily(stroke_images, 6, 32, tuned=False),
    "rings": ImageFamily(ring_images, 6, 24, tuned=False),
    "ellipses": ImageFamily(ellipse_images, 6, 64, tuned=False),
    "dots": ImageFamily(dot_images, 6, 32, tuned=False),
    "crosses": ImageFamily(cross_images, 6, 48, tuned=False, reserved=True),
    "bars": ImageFamily(bar_images, 6, 40, tuned=False, reserved=True),
    "triangles": ImageFamily(triangle_images, 6, 24, tuned=False, reserved=True),
}


def held_out_families(reserved: bool = False) -> list[str]:
    """The image families the compression defaults were not chosen on; the `reserved` ones only
    when asked for (see `ImageFamily`)."""
    return [name for name, family in IMAGE_FAMILIES.items()
            if not family.tuned and (reserved or not family.reserved)]


def render_images(family: str, latent: np.ndarray, size: int | None = None) -> np.ndarray:
    """Images of `family` (a key of IMAGE_FAMILIES) from (n, m) latents, at its size by default."""
    if family not in IMAGE_FAMILIES:
        raise ValueError(f"unknown image family {family!r}; valid: {', '.join(IMAGE_FAMILIES)}")
    spec = IMAGE_FAMILIES[family]
    return spec.render(latent, spec.size if size is None else size).astype(np.float64)
