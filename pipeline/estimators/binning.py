"""Binning (Shwartz-Ziv & Tishby; Saxe et al.): discretise each unit, count distinct rows.

    from pipeline.estimators.binning import binning_information_plane
    binning_information_plane(x, t, y, n_bins=30)        # {"I_XT": ..., "I_TY": ...} bits

X is uniform over its distinct inputs and T = f(X) is deterministic, so I(X;T) = H(T); it is
computed as H(X) + H(T) - H(X, T) so that repeated inputs are also handled. Plug-in entropies
in bits. The bound I(X;T) <= log2(#distinct inputs) (12 bits on SZT) is what saturation means.
"""

from __future__ import annotations

import builtins

import numpy as np

from pipeline.estimators._common import (
    as_labels,
    as_samples,
    codes_mutual_information,
    discrete_mutual_information,
    is_discrete,
    row_symbols,
    same_length,
    sample_rows,
)

RANGES = ("fixed", "layer")
# `mutual_information(a, b, "binning")` warns when the same samples with their pairing shuffled,
# which carry no information, read at least this share of its value: most of the value is then
# the plug-in's bias from too few samples per occupied bin, not information.
SHUFFLED_SHARE = 0.5


# Values binned at a time, in float64 (32 MiB): a wide layer is binned without a float64 copy of
# it, so a cell needs little more memory than the layer's own array and its one-byte bin indices.
BLOCK_VALUES = 1 << 22


def _index_dtype(lo: int, hi: int) -> np.dtype:
    """The smallest integer type holding bin indices lo..hi: rows compare faster when shorter."""
    for dtype in (np.int8, np.int16, np.int32):
        if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _bin_indices(values: np.ndarray, extremes: np.ndarray, index_of) -> np.ndarray:
    """`index_of` (monotone non-decreasing, on float64) of every value, block by block of rows.
    Its value at the `extremes` (the values' minimum and maximum) bounds every index, which sets
    the output type before binning."""
    lo, hi = index_of(extremes)
    out = np.empty(values.shape, dtype=_index_dtype(int(lo), int(hi)))
    rows = max(1, BLOCK_VALUES // values.shape[1])
    for start in builtins.range(0, len(values), rows):
        out[start:start + rows] = index_of(values[start:start + rows].astype(np.float64))
    return out


def discretise(t: np.ndarray, n_bins: int = 30, range: str = "fixed", low: float = -1.0,
               high: float = 1.0, bin_size: float | None = None) -> np.ndarray:
    """Bin index of every unit of every sample (n, features), in the smallest integer type.

    Parameters
    ----------
    t : (n, ...) array
    n_bins : int
        Equal-width bins between `low` and `high`; values outside fall into the end bins.
        The original code's ``np.digitize(t, linspace(-1, 1, 30))`` amounts to ``n_bins=29``.
    range : {"fixed", "layer"}
        "fixed": `low` and `high` as given (tanh: -1, 1); "layer": the layer's own minimum and
        maximum over these samples (ReLU, Saxe et al.), which never clips; values outside a
        fixed range are clipped into its end bins (`clipped_extremes` tells).
    bin_size : float, optional
        Saxe et al.'s floor(t / bin_size), unbounded; overrides `n_bins` and `range`.
    """
    return _discretised(t, n_bins, range, low, high, bin_size)[0]


def _discretised(t: np.ndarray, n_bins: int, range: str, low: float, high: float,
                 bin_size: float | None) -> tuple[np.ndarray, bool]:
    """`discretise`'s bin indices, and whether values outside the fixed range were clipped."""
    values = sample_rows(t, "t", min_samples=1)
    extremes = np.array([values.min(), values.max()], dtype=np.float64)
    if bin_size is not None:
        if bin_size <= 0:
            raise ValueError(f"bin_size must be positive, got {bin_size}")
        return _bin_indices(values, extremes, lambda v: np.floor(v / bin_size)), False
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if range not in RANGES:
        raise ValueError(f"range must be one of {RANGES}, got {range!r}")
    if range == "layer":
        low, high = float(extremes[0]), float(extremes[1])
    clipped = bool(extremes[0] < low or extremes[1] > high)
    if not high > low:
        return np.zeros(values.shape, dtype=np.int8), clipped  # a constant layer: one bin
    return _bin_indices(values, extremes, lambda v: np.clip(np.floor((v - low) / (high - low) * n_bins),
                                                            0, n_bins - 1)), clipped


def binning_mutual_information(a: np.ndarray, b: np.ndarray, n_bins: int = 30, range: str = "fixed",
                               low: float = -1.0, high: float = 1.0,
                               bin_size: float | None = None) -> float:
    """Plug-in I(A;B) in bits with both sides binned alike; a 1-D integer `b` is taken as labels."""
    same_length(a=a, b=b)
    sym_a = row_symbols(discretise(a, n_bins, range, low, high, bin_size))
    if is_discrete(b):
        sym_b = as_labels(b)
    else:
        sym_b = row_symbols(discretise(b, n_bins, range, low, high, bin_size))
    return discrete_mutual_information(sym_a, sym_b)


def binning_shuffled_mutual_information(a: np.ndarray, b: np.ndarray, **params) -> float:
    """`binning_mutual_information` of `a` with the rows of `b` in a fixed random order: what the
    plug-in reads on these samples without information (seeded; the global RNG is untouched)."""
    order = np.random.default_rng(0).permutation(len(b))
    return binning_mutual_information(a, np.asarray(b)[order], **params)


def clipped_extremes(t: np.ndarray, range: str = "fixed", low: float = -1.0, high: float = 1.0,
                     bin_size: float | None = None) -> tuple[float, float] | None:
    """The minimum and maximum of `t` where some of its values lie outside the fixed range
    [low, high] and were merged into the end bins (ReLU or logits binned over tanh's [-1, 1]);
    None where nothing was clipped (always for `range="layer"` and `bin_size`)."""
    if range != "fixed" or bin_size is not None:
        return None
    values = sample_rows(t, "t", min_samples=1)
    lowest, highest = float(values.min()), float(values.max())
    return (lowest, highest) if lowest < low or highest > high else None


def binning_information_plane(x: np.ndarray, t: np.ndarray, y: np.ndarray, n_bins: int = 30,
                              range: str = "fixed", low: float = -1.0, high: float = 1.0,
                              bin_size: float | None = None) -> dict[str, float]:
    """I(X;T) and I(T;Y) in bits by binning T; X is identified by its distinct rows.

    Parameters are those of `discretise` (defaults: 30 bins over [-1, 1]). `I_XT_clipped` and
    `I_TY_clipped` are 1.0 where values of T lie outside the fixed range (`clipped_extremes`):
    those samples share the end bins, and both estimates read low.
    """
    same_length(x=x, t=t, y=y)
    x_symbols = row_symbols(as_samples(x, "x", min_samples=1))
    indices, clipped = _discretised(t, n_bins, range, low, high, bin_size)
    t_symbols = row_symbols(indices)
    labels = as_labels(y)
    return {"I_XT": discrete_mutual_information(x_symbols, t_symbols),
            "I_TY": discrete_mutual_information(t_symbols, labels),
            "I_XT_clipped": float(clipped), "I_TY_clipped": float(clipped)}


def binning_resampler(x: np.ndarray, t: np.ndarray, y: np.ndarray, n_bins: int = 30, range: str = "fixed",
                      low: float = -1.0, high: float = 1.0, bin_size: float | None = None):
    """`binning_information_plane` on rows of one sample, from its symbols computed once.

    Returns `estimate(rows, label_rows=None)`, equal to the plane of (x[rows], t[rows],
    y[label_rows or rows]) (a subset's distinct rows are the full sample's, in the same order);
    the intervals and shuffle baselines of pipeline.uncertainty call it instead of re-binning.
    None for `range="layer"`, whose bin edges depend on the rows drawn.
    """
    if range == "layer" and bin_size is None:
        return None
    same_length(x=x, t=t, y=y)
    x_symbols = row_symbols(as_samples(x, "x", min_samples=1))
    t_symbols = row_symbols(discretise(t, n_bins, range, low, high, bin_size))
    labels = as_labels(y)

    def estimate(rows: np.ndarray, label_rows: np.ndarray | None = None) -> dict[str, float]:
        label_rows = rows if label_rows is None else label_rows
        # the symbols are codes already: a subset's counts in the same order, with empty ones
        return {"I_XT": codes_mutual_information(x_symbols[rows], t_symbols[rows]),
                "I_TY": codes_mutual_information(t_symbols[rows], labels[label_rows])}
    return estimate
