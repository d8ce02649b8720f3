"""Per-cell intervals, shuffle baselines and saturation flags around any estimator.

    from pipeline.uncertainty import cell_estimate
    cell_estimate(estimator, x, t, y, {"n_bins": 30}, {"uncertainty": "bootstrap", "null": True})
    # {"I_XT": ..., "I_XT_lo": ..., "I_XT_hi": ..., "I_TY_null": ..., "I_XT_saturated": 0.0, ...}

Cell options (keys of an `[estimators.<entry>]` table beside the estimator's own parameters):

- `uncertainty`: "none" (default); "bootstrap": the samples resampled with replacement,
  `n_resamples` times, and the percentile interval of the estimates; "subsample": subsamples of
  m = n - d rows drawn without replacement, d = n / 10 left out (`subsample_size`), for
  estimators that duplicates break (kNN: a repeated point is its own neighbour at distance 0).
  For a smooth estimator a subsample's estimate varies about the full sample's with variance
  (1/m - 1/n) sigma^2 = d / (m n) sigma^2, so its spread times sqrt(m / d) is the full sample's
  (the delete-d jackknife, Shao and Wu 1989); the estimator's bias depends on n, so the interval
  is the estimate plus the rescaled centred percentiles of the subsample estimates.
  "batches": Renyi's own B batches, estimate +- t(B - 1) quantile x s / sqrt(B) (s: the sample
  standard deviation of the batch estimates; `batch_interval`).
- `n_resamples` (default 20): resamples per cell; the cost of a cell grows by that factor.
  The 5% and 95% quantiles of R draws sit inside the distribution's own: for normal draws
  the interval's expected width is 0.63, 0.79, 0.87, 0.93 and 0.97 of the true one at R = 5,
  10, 20, 40 and 100 (`percentile_width_factor`); 20 is the smallest R within 15%.
- `confidence` (default 0.9): the interval's level.
- `null` (default false): the same estimator on a random permutation of the labels
  (`I_TY_null`) and, for estimators that use the input values, of the inputs (`I_XT_null`):
  the estimate of zero information, the estimator's bias floor.

Every cell also gets `I_XT_saturated` and `I_TY_saturated` (1.0 or 0.0): the value is within
`SATURATION_TOLERANCE` (1%) of its ceiling, H(X) of the inputs (Renyi: at most log2 of the batch
size) for I(X;T) and H(Y) for I(T;Y) (Renyi: the mean of its batches' label entropies): such
values carry no dynamics. The I(X;T) ceiling is
H(X) of the recorded input rows (log2 of their number when all differ, as on SZT).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from scipy.special import ndtri, stdtrit

from pipeline.entropy import entropy_of_counts
from pipeline.estimators.domains import ParameterError, check, choice, integer, number
from pipeline.estimators.renyi import BATCH_SIZE, N_BATCHES, batch_count

SATURATION_TOLERANCE = 0.01
RESAMPLING = ("bootstrap", "subsample")  # the schemes that run the estimator again per resample
# Share of the rows a subsample leaves out. Estimates near their ceiling log2 n (KDE, binning:
# a deficit that is n times a mean over pairs) shrink with the subsample, their spread by about
# m / n: half-samples gave 0.55-0.66 of the spread over data sets there (docs/estimators.md,
# calibration on Gaussian pairs). At d = n / 10 that shrink is 10%, and d still grows with n,
# as the delete-d jackknife needs for estimators that are not smooth (Shao and Wu 1989).
SUBSAMPLE_LEFT_OUT = 0.1
SCHEMES = ("none", *RESAMPLING, "batches")
OPTIONS = {"uncertainty": choice(*SCHEMES), "n_resamples": integer(2),
           "confidence": number(0, high=0.999), "null": choice(True, False)}
DEFAULTS = {"uncertainty": "none", "n_resamples": 20, "confidence": 0.9, "null": False}
OUTPUTS = {
    "I_XT_lo": ("lower end of the interval of I(X;T)", "bits"),
    "I_XT_hi": ("upper end of the interval of I(X;T)", "bits"),
    "I_TY_lo": ("lower end of the interval of I(T;Y)", "bits"),
    "I_TY_hi": ("upper end of the interval of I(T;Y)", "bits"),
    "I_XT_null": ("I(X;T) with the inputs shuffled: the estimate of zero information", "bits"),
    "I_TY_null": ("I(T;Y) with the labels shuffled: the estimate of zero information", "bits"),
    "I_XT_saturated": ("1 where I(X;T) is within 1% of its ceiling (H(X) of the inputs)", "1"),
    "I_TY_saturated": ("1 where I(T;Y) is within 1% of H(Y)", "1"),
}


def split_options(table: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An estimator entry's table -> (the estimator's parameters, the cell options)."""
    params = {k: v for k, v in table.items() if k != "method" and k not in OPTIONS}
    return params, {**DEFAULTS, **{k: v for k, v in table.items() if k in OPTIONS}}


def check_options(options: dict[str, Any], schemes: tuple[str, ...]) -> None:
    """Domains of the cell options; `schemes` are the uncertainty schemes the estimator allows."""
    check(OPTIONS, options)
    if options.get("uncertainty", "none") not in ("none", *schemes):
        raise ParameterError("uncertainty", f"must be one of {['none', *schemes]} for this method, got "
                             f"{options['uncertainty']!r}")


def cell_estimate(estimator, x: np.ndarray, t: np.ndarray, y: np.ndarray, params: dict[str, Any],
                  options: dict[str, Any], seed: int = 0,
                  input_entropy: float | None = None) -> dict[str, float]:
    """The estimator's outputs on one cell, with its interval, shuffle baseline and saturation.
    `input_entropy`: H(X) of the input rows in bits, when the caller knows it (else counted)."""
    out = checked_plane(estimator, estimator.information_plane(x, t, y, **params))
    scheme = options["uncertainty"]
    if scheme in RESAMPLING or options["null"]:  # the cell's rows drawn again
        rows = rows_estimate(estimator, x, t, y, params)
    rng = np.random.default_rng(seed)
    if scheme in RESAMPLING:
        out.update(resampled_interval(rows, len(y), out, scheme, options, rng))
    elif scheme == "batches":
        out.update(batch_interval(out, params, options["confidence"], len(y)))
    if options["null"]:
        everything = np.arange(len(y))
        out["I_TY_null"] = float(rows(everything, rng.permutation(len(y)))["I_TY"])
        if estimator.uses_inputs:
            out["I_XT_null"] = float(estimator.information_plane(x[rng.permutation(len(x))], t, y,
                                                                 **params)["I_XT"])
    if input_entropy is None:
        input_entropy = row_entropy(x)
    out.update(saturation(estimator, out, input_entropy, y, params))
    return out


class EstimatorOutputError(TypeError):
    """An estimator returned what the results store cannot take (see checked_plane)."""


def checked_plane(estimator, out: Any) -> dict[str, float]:
    """An information-plane function's result, refused (EstimatorOutputError: the task fails, its
    cells stay to compute once the function is mended) unless it is a mapping holding I_XT, I_TY
    and every output the estimator declares; values it returns beyond those are not stored."""
    name = estimator.name
    if not isinstance(out, Mapping):
        raise EstimatorOutputError(f"estimator {name!r} returned {type(out).__name__}, not a dict "
                                   "{'I_XT': bits, 'I_TY': bits, ...}")
    missing = [output for output in ("I_XT", "I_TY", *estimator.outputs) if output not in out]
    if missing:
        returned = ", ".join(map(str, out)) or "nothing"
        raise EstimatorOutputError(f"estimator {name!r} returned no {', '.join(missing)} (it returned "
                                   f"{returned}): return I_XT, I_TY and each declared output")
    if odd := [f"{key} = {out[key]!r:.60}" for key in ("I_XT", "I_TY", *estimator.outputs)
               if not _is_number(out[key])]:
        raise EstimatorOutputError(f"estimator {name!r} returned {', '.join(odd)}: return each as one "
                                   "number (a float; NaN where it does not exist)")
    return dict(out)


def _is_number(value: Any) -> bool:
    """A Python, numpy or one-element torch scalar (no string, bool or array of several)."""
    if isinstance(value, str | bytes | bool | np.bool_) or getattr(value, "ndim", 0) != 0:
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def rows_estimate(estimator, x, t, y, params: dict[str, Any]) -> Callable[..., dict[str, float]]:
    """estimate(rows, label_rows=None): the estimator on x[rows], t[rows], y[label_rows or rows],
    through its `resampler` (work done once for every resample) where it has one."""
    fast = estimator.resampler(x, t, y, **params) if estimator.resampler is not None else None
    if fast is not None:
        return fast

    def estimate(rows: np.ndarray, label_rows: np.ndarray | None = None) -> dict[str, float]:
        labels = y[rows if label_rows is None else label_rows]
        return estimator.information_plane(x[rows], t[rows], labels, **params)
    return estimate


def percentile_width_factor(n_resamples: int, confidence: float = 0.9, draws: int = 100_000,
                            seed: int = 0) -> float:
    """Expected width of the percentile interval of `n_resamples` centred standard normal draws
    (numpy's linear quantiles, as `resampled_interval` takes them) over the true interval's."""
    x = np.random.default_rng(seed).standard_normal((draws, n_resamples))
    x -= x.mean(1, keepdims=True)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(x, [alpha, 1 - alpha], axis=1)
    return float((hi - lo).mean() / (2 * ndtri(1 - alpha)))


def subsample_size(n: int) -> int:
    """Rows in each subsample of n: all but d = n / 10 (rounded, at least 1)."""
    return n - max(1, round(SUBSAMPLE_LEFT_OUT * n))


def resampled_interval(estimate: Callable[..., dict[str, float]], n: int, full: dict[str, float],
                       scheme: str, options: dict[str, Any], rng: np.random.Generator) -> dict[str, float]:
    """Percentile interval of `n_resamples` bootstrap or subsample estimates (see the module)."""
    m = subsample_size(n)
    draws = {"I_XT": [], "I_TY": []}
    for _ in range(options["n_resamples"]):
        index = rng.integers(0, n, n) if scheme == "bootstrap" else np.sort(rng.choice(n, m, replace=False))
        value = estimate(index)
        for name in draws:
            draws[name].append(float(value[name]))
    alpha = (1 - options["confidence"]) / 2
    out = {}
    for name, values in draws.items():
        values = np.asarray(values)
        if scheme == "subsample":  # centred and rescaled: the subsamples' spread, not their bias
            centred = np.quantile(values - values.mean(), [alpha, 1 - alpha])
            lo, hi = full[name] + math.sqrt(m / (n - m)) * centred
        else:
            lo, hi = np.quantile(values, [alpha, 1 - alpha])
        out[f"{name}_lo"], out[f"{name}_hi"] = float(lo), float(hi)
    return out


def batch_interval(estimate: dict[str, float], params: dict[str, Any], confidence: float,
                   n_samples: int) -> dict[str, float]:
    """Renyi averages the estimates of B disjoint batches: the t interval of that mean,
    estimate +- t(B - 1) x s / sqrt(B), with s the batches' sample standard deviation (the
    estimator returns the population one, sqrt((B - 1) / B) s). B is the number of batches the
    estimator drew from `n_samples` (fewer than `n_batches` where they do not fit); no interval
    from a single batch."""
    count = batch_count(n_samples, int(params.get("batch_size", BATCH_SIZE)),
                        int(params.get("n_batches", N_BATCHES)))
    if count < 2:
        return {}
    # t x s / sqrt(B) with s = sqrt(B / (B - 1)) x the population deviation: t / sqrt(B - 1) of it
    half = stdtrit(count - 1, 0.5 + confidence / 2) / math.sqrt(count - 1)
    out = {}
    for name in ("I_XT", "I_TY"):
        spread = estimate.get(f"{name}_std", float("nan"))
        out[f"{name}_lo"] = estimate[name] - half * spread
        out[f"{name}_hi"] = estimate[name] + half * spread
    return out


def row_entropy(x: np.ndarray) -> float:
    """H(X) in bits of the empirical distribution of the input rows (log2 n if all differ)."""
    return entropy_of_counts(np.unique(x.reshape(len(x), -1), axis=0, return_counts=True)[1])


def saturation(estimator, estimate: dict[str, float], input_entropy: float, y: np.ndarray,
               params: dict[str, Any]) -> dict[str, float]:
    """1.0 where a value is within 1% of its ceiling, 0.0 elsewhere (NaN where it is NaN)."""
    flags = saturation_flags(estimator, params, np.float64(estimate.get("I_XT", np.nan)),
                             np.float64(estimate.get("I_TY", np.nan)), input_entropy, y)
    return {name: float(value) for name, value in flags.items()}


def saturation_flags(estimator, params: dict[str, Any], i_xt: np.ndarray, i_ty: np.ndarray,
                     input_entropy: float, y: np.ndarray) -> dict[str, np.ndarray]:
    """The flags of arrays of values (any shape) against the ceilings of one split."""
    ceilings = {"I_XT": estimator.xt_ceiling(params, input_entropy), "I_TY": estimator.ty_ceiling(params, y)}
    out = {}
    for name, values in (("I_XT", i_xt), ("I_TY", i_ty)):
        ceiling = ceilings[name]
        flag = (values >= (1 - SATURATION_TOLERANCE) * ceiling) & (ceiling > 0)
        out[f"{name}_saturated"] = np.where(np.isfinite(values), flag.astype(float), np.nan)
    return out


def option_outputs(options: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The results variables an entry with these cell options fills."""
    names = ["I_XT_saturated", "I_TY_saturated"]
    if options["uncertainty"] != "none":
        names += ["I_XT_lo", "I_XT_hi", "I_TY_lo", "I_TY_hi"]
    if options["null"]:
        names += ["I_XT_null", "I_TY_null"]
    return {name: OUTPUTS[name] for name in names}
