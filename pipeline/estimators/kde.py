"""KDE bounds (Kolchinsky & Tracey, used by Saxe et al.): T = h(X) + N(0, s2 I).

    from pipeline.estimators.kde import kde_information_plane, kde_information_planes
    kde_information_plane(x, t, y, noise_variance=0.1, bound="upper")
    kde_information_planes(x, t, y, [{"noise_variance": 0.1}, {"bound": "lower"}], [all_rows, train_rows])

The entropy of the Gaussian mixture (1/P) sum_j N(h_j, s2 I) is bounded above by the pairwise-KL
estimate and below by the Bhattacharyya one (docs/science.md, section 4). I(X;T) = H(T) - H(T|X);
I(T;Y) = H(T) - sum_y p(y) H(T|Y=y) with the same bound inside each class, which makes it a
difference of bounds, not itself a bound. Computed in nats, returned in bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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


TILE = 512  # rows per tile: memory is O(threads x TILE^2 + n), not O(n^2)
NEGLIGIBLE = 30.0  # a term below exp(-(ln n + 30)) of the largest changes no sum by 1e-13
# From this width on, tiles are screened in float32 and the rows are not widened: on 4096 tanh
# rows (2 cores) the screen cost 34 ms against 18 ms without it at 32 dims, and saved time at 64
# (32 against 36 ms), where the product is most of a tile's cost and far tiles are common.
SCREEN_MIN_DIMS = 64
FLOAT32_UNIT = 2.0**-24
# Exponents are raised to this floor before exp where a tile can hold lower ones: numpy's exp
# takes 5x longer on inputs below -745 and 20x on the subnormal results between -745 and -708
# (2 cores, 512 x 512 tiles: 2.2 ms against 0.44 ms with the floor). A raised term is below
# e^-700 < 1e-304 and each row's sum holds its own term w_u^2 >= 1, so no sum changes.
EXP_FLOOR = -700.0


def mixture_components(t: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (row, class) pairs of the samples, sorted by class: rows, classes, weights.

    Identical rows of one class (saturated units, discrete inputs) are one mixture component
    weighted by their count: the sums below run over components, with the same value as over
    all samples. Sorting by class makes each class a run of consecutive components.
    """
    symbols = row_symbols(t)
    key = labels.astype(np.int64) * (int(symbols.max()) + 1) + symbols
    _, first, weights = np.unique(key, return_index=True, return_counts=True)
    return t[first], labels[first], weights.astype(np.float64)


def class_runs(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The starts of the runs of equal values in a sorted array, and each run's value."""
    starts = np.flatnonzero(np.r_[True, classes[1:] != classes[:-1]])
    return starts, classes[starts]


# A kernel whose scale 1 / (2 variance) is an integer m (2 to MAX_POWER) times another's in the
# same call is that kernel to the m-th power, in floor(log2 m) squarings and a product per further
# set bit of m, instead of a scaling and an exp (the lower and upper bounds of one noise variance
# are 4 apart, noise variances a decade apart 10): 512 x 512 tiles on 1 thread, 0.05-0.06 ms a
# product against 0.4-0.5 ms for scaling, floor and exp.
MAX_POWER = 16


def power_plan(scales: Sequence[float]) -> list[tuple[int, int] | None]:
    """For each kernel scale, (j, m) when it is m times the smaller scale j (the least such m,
    2 <= m <= MAX_POWER, exact to 1e-12), else None."""
    plan: list[tuple[int, int] | None] = []
    for s in scales:
        best = None
        for j, base in enumerate(scales):
            m = round(s / base)
            whole = base < s and 2 <= m <= MAX_POWER and abs(s / base - m) <= 1e-12 * m
            if whole and (best is None or m < best[1]):
                best = (j, m)
        plan.append(best)
    return plan


def _power(base: np.ndarray, m: int, out: np.ndarray) -> None:
    """out = base ** m (m >= 2): square and multiply from the leading bit of m."""
    np.multiply(base, base, out=out)
    for i, bit in enumerate(bin(m)[3:]):
        if i:
            np.multiply(out, out, out=out)
        if bit == "1":
            np.multiply(out, base, out=out)


class TileSums:
    """S_k[u, c] = sum over components v of class c of w_v exp(-s_k |h_u - h_v|^2), for every
    kernel scale s_k = 1 / (2 variance_k) of the call.

    A tile of rows U and columns V first holds G_uv = -|h_u - h_v|^2 = 2 h_u.h_v - |h_u|^2 -
    |h_v|^2, once for all kernels: below SCREEN_MIN_DIMS dimensions one matrix product of rows
    augmented with -|h|^2 and 1; from there on (where the product is most of a tile's cost) the
    norms are added to the product in place, and no widened copy of the rows is made. Each
    kernel's K = exp(s_k G) is then a power of an earlier kernel's (`power_plan`) where the
    tile's exponents allow it, else scaled and exponentiated; F = w_u w_v K (weights of merged
    identical rows, multiplied in only where a weight is not 1). F is symmetric, so each
    off-diagonal tile is computed once and gives both its rows' sums (over runs of column
    classes) and its columns' (over runs of row classes); dividing by w_u at the end leaves S.

    With one kernel, its scale and the log weights are folded into the product, which gives the
    exponents of F directly. Exponents below EXP_FLOOR are raised to it (terms under 1e-304 next
    to a row's own term of at least 1) in the tiles where the rows' norms allow them: small
    noise variances, spread layers. A power is taken only where they do not, so every power is
    a normal float.

    A kernel's tile whose every squared distance exceeds (ln n + NEGLIGIBLE) / s_k is skipped:
    each row's sum holds its own component (exp(0) w_u >= 1 times w_u), and the skipped terms
    add up to less than exp(-NEGLIGIBLE) < 1e-13 of it. From SCREEN_MIN_DIMS dimensions the
    distances are first screened in float32 with the rounding bound 4 (d + 2) u32 (|h_u|^2 +
    |h_v|^2) subtracted, so no tile is skipped on a rounding error.

    `h` should be centred on its mean (component_sums does it): distances do not change, and the
    products lose less to cancellation.
    """

    def __init__(self, h: np.ndarray, classes: np.ndarray, weights: np.ndarray,
                 variances: float | Sequence[float], tile: int = TILE) -> None:
        variances = [variances] if np.isscalar(variances) else list(variances)
        self.scales = [0.5 / v for v in variances]
        self.order = sorted(range(len(self.scales)), key=lambda k: self.scales[k])  # bases first
        self.plan = power_plan(self.scales)
        # One kernel: its scale and the log weights go into the product, which then gives the
        # exponents z = s G + ln w_u + ln w_v of F itself (no scaling or weighting passes).
        self.folded = len(self.scales) == 1
        scale = self.scales[0] if self.folded else 1.0
        sq = np.einsum("ij,ij->i", h, h)
        self.norms = np.sqrt(sq)
        self.log_w = np.log(weights)
        bias = -scale * sq + (self.log_w if self.folded else 0.0)
        self.bias, self.scale = torch.from_numpy(bias), scale
        self.h = torch.from_numpy(h)
        self.augmented = h.shape[1] < SCREEN_MIN_DIMS
        if self.augmented:
            ones = np.ones((len(h), 1))
            self.left = torch.from_numpy(np.hstack([2.0 * scale * h, bias[:, None], ones]))
            self.right = torch.from_numpy(np.hstack([h, ones, bias[:, None]]))
        else:  # the screen's lower bounds on |h_u|^2, less its rounding
            self.low = torch.from_numpy(sq - 4.0 * (h.shape[1] + 2) * FLOAT32_UNIT * sq).float()
        self.classes, self.weights, self.tile = classes, weights, tile
        self.unit = weights == 1.0
        self.n_classes = int(classes.max()) + 1
        self.cuts = [(math.log(weights.sum()) + NEGLIGIBLE) / s for s in self.scales]

    def nearest(self, rows: slice, cols: slice, rows32: torch.Tensor | None = None) -> float:
        """A lower bound on the tile's squared distances, from the float32 screen."""
        rows32 = self.h[rows].float() if rows32 is None else rows32
        d2 = torch.addmm(self.low[None, cols], rows32, self.h[cols].float().T, alpha=-2.0)
        return float(d2.add_(self.low[rows, None]).min())

    def distances(self, rows: slice, cols: slice, out: torch.Tensor) -> None:
        """G = -|h_u - h_v|^2 of the tile (rows, cols) into `out` (folded: z = s G + ln w_u + ln w_v)."""
        if self.augmented:
            torch.mm(self.left[rows], self.right[cols].T, out=out)
        else:
            torch.mm(self.h[rows], self.h[cols].T, out=out)
            out.mul_(2.0 * self.scale).add_(self.bias[rows, None]).add_(self.bias[None, cols])

    def reach(self, rows: slice, cols: slice) -> float:
        """A bound on the tile's squared distances, (max |h_u| + max |h_v|)^2."""
        return (float(self.norms[rows].max()) + float(self.norms[cols].max())) ** 2

    def kernel(self, k: int, g: np.ndarray, reach: float, kernels: list[np.ndarray],
               done: set[int]) -> np.ndarray:
        """K_k = exp(s_k G) of the tile into kernels[k] (folded: F = exp(z) into g), from G and
        the kernels in `done`; exponents below EXP_FLOOR raised to it where `reach` allows them
        (the log weights are not negative), and a power taken only where it does not."""
        s, plan = self.scales[k], self.plan[k]
        exact = s * reach <= -EXP_FLOOR  # no exponent below the floor
        if self.folded:
            out = g
        elif plan is not None and plan[0] in done and exact:
            _power(kernels[plan[0]], plan[1], kernels[k])
            return kernels[k]
        else:
            out = np.multiply(g, s, out=kernels[k])
        if not exact:
            np.maximum(out, EXP_FLOOR, out=out)
        return np.exp(out, out=out)

    def weighted(self, kernel: np.ndarray, rows: slice, cols: slice, scratch: np.ndarray) -> np.ndarray:
        """F = w_u w_v K of the tile (K itself where every weight is 1)."""
        if not self.unit[rows].all():
            kernel = np.multiply(kernel, self.weights[rows, None], out=scratch)
        if not self.unit[cols].all():
            kernel = np.multiply(kernel, self.weights[None, cols], out=scratch)
        return kernel

    def add_row_tile(self, a: int, outs: list[np.ndarray], buffers: list[np.ndarray]) -> None:
        """Adds the tiles (a, b >= a) of row tile `a` to every kernel's `outs` (rows and columns)."""
        m, tile = len(self.h), self.tile
        rows = slice(a, min(a + tile, m))
        row_starts, row_classes = class_runs(self.classes[rows])
        row_ends = np.r_[row_starts[1:], rows.stop - a]
        rows32 = None if self.augmented else self.h[rows].float()
        for b in range(a, m, tile):
            cols = slice(b, min(b + tile, m))
            nearest = -np.inf if rows32 is None or a == b else self.nearest(rows, cols, rows32)
            live = [k for k in self.order if nearest <= self.cuts[k]]
            if not live:
                continue
            shape = (rows.stop - a, cols.stop - b)
            g, scratch, *kernels = (buffer[: shape[0] * shape[1]].reshape(shape) for buffer in buffers)
            self.distances(rows, cols, torch.from_numpy(g))
            reach = self.reach(rows, cols)
            col_starts, col_classes = class_runs(self.classes[cols])
            done: set[int] = set()
            for k in live:
                kernel = self.kernel(k, g, reach, kernels, done)
                done.add(k)
                if a == b:  # d = 0 exactly
                    np.fill_diagonal(kernel, np.exp(2.0 * self.log_w[rows]) if self.folded else 1.0)
                weighted = kernel if self.folded else self.weighted(kernel, rows, cols, scratch)
                outs[k][rows, col_classes] += np.add.reduceat(weighted, col_starts, axis=1)
                if a != b:
                    for start, end, c in zip(row_starts, row_ends, row_classes, strict=True):
                        outs[k][cols, c] += weighted[start:end].sum(0)

    def sums(self) -> list[np.ndarray]:
        """S_k (components, classes) of every kernel, the row tiles spread over torch's threads.

        Each thread owns accumulators and a fixed share of the row tiles, balanced by their
        tile counts; the shares are summed in a fixed order, so the result does not depend on
        timing.
        """
        m, tile = len(self.h), self.tile
        starts = list(range(0, m, tile))
        n_threads = max(1, min(torch.get_num_threads(), len(starts)))
        shares = [starts[k::2 * n_threads] + starts[2 * n_threads - 1 - k::2 * n_threads]
                  for k in range(n_threads)]  # snake order: long and short row tiles paired

        def run(share: list[int]) -> list[np.ndarray]:
            outs = [np.zeros((m, self.n_classes)) for _ in self.scales]
            size = min(tile, m) ** 2
            buffers = [np.empty(size) for _ in range(2 + (0 if self.folded else len(self.scales)))]
            for a in share:
                self.add_row_tile(a, outs, buffers)
            return outs

        if n_threads == 1:
            totals = run(starts)
        else:
            with ThreadPoolExecutor(n_threads) as pool:
                parts = list(pool.map(run, shares))
            totals = [sum(part[k] for part in parts) for k in range(len(self.scales))]
        return [total / self.weights[:, None] for total in totals]


def class_kernel_sums(h: torch.Tensor, counts: torch.Tensor, variance: float,
                      tile: int = 1024) -> torch.Tensor:
    """S[u, c] = sum_v exp(-|h_u - h_v|^2 / (2 variance)) counts[v, c], in torch, tile by tile.

    The path for `device="cuda"` (TileSums is the CPU path): each off-diagonal tile is
    exponentiated once and serves both its rows and its columns. The diagonal term is
    exp(0) = 1, the largest of each row, so the sums can neither overflow nor vanish.
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


def component_sums(t: np.ndarray, labels: np.ndarray, variances: Sequence[float], device: str = "cpu",
                   ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The mixture components of (t, labels) and their kernel sums per class for each kernel
    variance: ([S], classes, w). S has a column for every label up to the largest."""
    rows, classes, weights = mixture_components(t, labels)  # rows: a new array (fancy indexing)
    if torch.device(device).type == "cpu":
        rows -= rows.mean(0)
        return TileSums(rows, classes, weights, variances).sums(), classes, weights
    counts = np.zeros((len(rows), int(classes.max()) + 1))
    counts[np.arange(len(rows)), classes] = weights
    h = torch.as_tensor(rows, dtype=torch.float64, device=device)
    class_counts = torch.as_tensor(counts, device=device)
    sums = [class_kernel_sums(h, class_counts, v).cpu().numpy() for v in variances]
    return sums, classes, weights


def mean_log_mixture(weights: np.ndarray, mass: np.ndarray, size: np.ndarray | int) -> float:
    """sum_u w_u log(mass_u / size_u) / sum_u w_u, nats: the mean over samples of the log of
    their mixture density's sum, each component standing for its `weights` samples."""
    return float((weights * np.log(mass / size)).sum() / weights.sum())


def kde_entropy(t: np.ndarray, noise_variance: float = 0.1, bound: str = "upper",
                device: str = "cpu") -> float:
    """Bound on H(T) in bits of the mixture of N(t_i, noise_variance I) over the rows of `t`."""
    variance = kernel_variance(noise_variance, bound)
    rows = as_samples(t, "t")
    [sums], _, weights = component_sums(rows, np.zeros(len(rows), dtype=np.int64), [variance], device)
    # -mean_i log[(1/P) sum_j exp(-d2_ij / (2 variance))] plus the per-component entropy.
    mean_log = mean_log_mixture(weights, sums[:, 0], len(rows))
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
    setting = {"noise_variance": noise_variance, "bound": bound, "device": device}
    return kde_information_planes(x, t, y, [setting])[0][0]


SETTINGS = ("noise_variance", "bound", "device")


def kde_information_planes(x: np.ndarray, t: np.ndarray, y: np.ndarray, settings: Sequence[dict[str, Any]],
                           subsets: Sequence[np.ndarray] | None = None) -> list[list[dict[str, float]]]:
    """`kde_information_plane` of one layer for several settings and row subsets, sharing work.

    ``out[i][j]`` is ``kde_information_plane(x[s], t[s], y[s], **settings[i])`` with
    ``s = subsets[j]`` (default: one subset, every row), to rounding: the terms of each sum are
    the same, added in another order. A subset whose rows all lie in a larger one (a training
    split inside "all") is computed in the larger one's pass over the pairs of rows, its sums
    kept apart by giving each mixture component a bin per (part, class), where the parts are
    the rows' patterns of membership. The settings of one device share the pass: the squared
    distances of a tile once, and each kernel variance's exponentials or, where its scale is an
    integer multiple of another's, powers (`TileSums`). With one setting and one subset of
    every row it is the single-cell computation itself.

    Parameters
    ----------
    x, t, y : as in `kde_information_plane`, every row.
    settings : dicts of `noise_variance`, `bound` and `device` (defaults as there).
    subsets : row indices, each without repeats.
    """
    n = same_length(x=x, t=t, y=y)
    as_samples(x, "x")
    t, labels = as_samples(t, "t"), as_labels(y)
    subsets = [np.arange(n)] if subsets is None else [_subset(s, n) for s in subsets]
    kernels: dict[str, dict[float, list[int]]] = {}  # device -> kernel variance -> settings
    for i, setting in enumerate(settings):
        unknown = sorted(set(setting) - set(SETTINGS))
        if unknown:
            raise ValueError(f"unknown KDE setting(s) {unknown}; valid: {list(SETTINGS)}")
        variance = kernel_variance(setting.get("noise_variance", 0.1), setting.get("bound", "upper"))
        kernels.setdefault(setting.get("device", "cpu"), {}).setdefault(variance, []).append(i)
    out: list[list[dict[str, float]]] = [[{} for _ in subsets] for _ in settings]
    for members in shared_passes(subsets):
        rows = subsets[members[0]]
        inside = np.zeros((len(members), n), dtype=bool)
        for q, j in enumerate(members):
            inside[q, subsets[j]] = True
        patterns, part = np.unique(inside[:, rows].T, axis=0, return_inverse=True)
        n_classes = int(labels[rows].max()) + 1
        for device, chosen in kernels.items():
            all_sums, bins, weights = component_sums(t[rows], part.ravel() * n_classes + labels[rows],
                                                     list(chosen), device)
            for sums, settings_of in zip(all_sums, chosen.values(), strict=True):
                for q, j in enumerate(members):
                    plane = _subset_plane(sums, bins, weights, patterns[:, q], n_classes, len(subsets[j]))
                    for i in settings_of:
                        out[i][j] = dict(plane)
    return out


def _subset(rows: np.ndarray, n: int) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or not len(rows):
        raise ValueError("each subset must be a non-empty 1-D array of row indices")
    if rows.min() < -n or rows.max() >= n or len(np.unique(rows % n)) != len(rows):
        raise ValueError(f"a subset's indices must lie in [0, {n}) without repeats")
    return rows % n


def shared_passes(subsets: Sequence[np.ndarray]) -> list[list[int]]:
    """The subsets grouped into passes over pairs: largest first, each subset joins the first
    pass whose leading (largest) subset holds all its rows, or leads a new pass."""
    passes: list[list[int]] = []
    for j in sorted(range(len(subsets)), key=lambda j: -len(subsets[j])):
        home = next((p for p in passes if np.isin(subsets[j], subsets[p[0]]).all()), None)
        if home is None:
            passes.append([j])
        else:
            home.append(j)
    return passes


def _subset_plane(sums: np.ndarray, bins: np.ndarray, weights: np.ndarray, in_subset: np.ndarray,
                  n_classes: int, size: int) -> dict[str, float]:
    """I(X;T) and I(T;Y) in bits of one subset from the kernel sums of a pass: `in_subset` says
    which parts (membership patterns) lie in the subset; component bins are part x n_classes +
    class."""
    n_bins = len(in_subset) * n_classes
    sums = np.pad(sums, ((0, 0), (0, n_bins - sums.shape[1]))).reshape(len(sums), len(in_subset), n_classes)
    part, classes = np.divmod(bins, n_classes)
    mine = in_subset[part]
    sums, classes, weights = sums[mine][:, in_subset], classes[mine], weights[mine]
    # H(T) - H(T|X): the per-component entropy (d/2)(ln 2 pi s2 + 1) cancels; each component
    # stands for its samples, whose kernel mass is the sum over the subset's parts and classes.
    i_xt = -mean_log_mixture(weights, sums.sum((1, 2)), size)
    # sum_y p(y) H(T|Y=y) with the bound inside each class: the mean over all samples of the
    # log mixture over the sample's own class.
    class_sizes = np.bincount(classes, weights=weights, minlength=n_classes)
    own = sums[np.arange(len(classes)), :, classes].sum(1)
    h_t_given_y = -mean_log_mixture(weights, own, class_sizes[classes])
    return {"I_XT": i_xt / LOG2, "I_TY": (i_xt - h_t_given_y) / LOG2}
