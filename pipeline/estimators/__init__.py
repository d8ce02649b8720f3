"""Mutual-information estimators of the information-plane literature, as pure functions.

    from pipeline.estimators import information_plane, mutual_information
    information_plane(x, t, y, "binning", n_bins=30)    # {"I_XT": ..., "I_TY": ...} bits
    mutual_information(a, b, "ksg", k=5)                # bits; 1-D integer b = labels

Methods: "binning", "kde", "renyi", "ksg", "gaussian", "compression", "variational" (one module
each), registered with `register_estimator`; a method of one's own is registered the same way,
or named in a config as an entry point `method = "package.module:function"`. `x`: inputs
(n, ...); `t`: one layer's outputs (n, ...), any trailing shape; `y`: integer labels (n,).
Unknown methods or parameters raise ValueError listing the valid ones; every method's defaults
are the papers' (docs/science.md, sections 3-7) and documented in its function's docstring.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.arrays import as_numpy
from pipeline.entropy import entropy_of_counts
from pipeline.estimators._common import EstimateWarning, as_labels, as_samples, is_discrete, same_length
from pipeline.estimators.binning import (
    SHUFFLED_SHARE,
    binning_information_plane,
    binning_mutual_information,
    binning_resampler,
    binning_shuffled_mutual_information,
    clipped_extremes,
)
from pipeline.estimators.compression import (
    MIN_KEPT,
    compression_information_plane,
    compression_mutual_information,
)
from pipeline.estimators.domains import BUILTIN, Domain, ParameterError
from pipeline.estimators.domains import check as check_domains
from pipeline.estimators.gaussian import gaussian_information_plane, gaussian_mutual_information
from pipeline.estimators.kde import SETTINGS as KDE_SETTINGS
from pipeline.estimators.kde import kde_information_plane, kde_information_planes
from pipeline.estimators.knn import ksg_biased, ksg_mutual_information
from pipeline.estimators.renyi import label_ceiling as renyi_label_ceiling
from pipeline.estimators.renyi import renyi_information_plane, renyi_mutual_information
from pipeline.estimators.variational import variational_information_plane, variational_mutual_information
from pipeline.registry import check_new_name, resolve_entry_point


def ksg_information_plane(x: np.ndarray, t: np.ndarray, y: np.ndarray, k: int = 5,
                          jitter: float = 1e-10, transform: str = "auto", seed: int = 0,
                          device: str = "cpu", algorithm: str = "auto") -> dict[str, float]:
    """KSG-1 I(X;T) and the discrete-label KSG I(T;Y), in bits (see knn.ksg_mutual_information).

    `I_XT_biased` and `I_TY_biased` are 1.0 where the sample count and dimensions lie beyond
    the measured rule `knn.KSG_RELIABLE_DIMS` (`knn.ksg_biased`): KSG reads low there.

    For a deterministic layer the true I(X;T) is infinite (continuous X) or H(X) (discrete X):
    KSG returns a finite value that saturates near log2(n).
    """
    n = same_length(x=x, t=t, y=y)
    y = as_labels(y)
    opts = {"k": k, "jitter": jitter, "transform": transform, "seed": seed, "device": device,
            "algorithm": algorithm}
    dim_x, dim_t = int(np.prod(np.shape(x)[1:])), int(np.prod(np.shape(t)[1:]))
    return {"I_XT": ksg_mutual_information(x, t, **opts), "I_TY": ksg_mutual_information(t, y, **opts),
            "I_XT_biased": float(ksg_biased(n, dim_x, dim_t)), "I_TY_biased": float(ksg_biased(n, dim_t))}


def kde_mutual_information(a: np.ndarray, b: np.ndarray, noise_variance: float = 0.1,
                           bound: str = "upper", device: str = "cpu") -> float:
    """KDE bound on I(A + N(0, s2 I); B) in bits.

    Labels `b`: the I(T;Y) of kde_information_plane. Continuous `b`: each row of `b` is taken as
    one distinct input with A = f(B) deterministic, giving the I(X;T) bound.
    """
    n = same_length(a=a, b=b)
    if is_discrete(b):
        return kde_information_plane(np.zeros((n, 1)), a, b, noise_variance, bound, device)["I_TY"]
    as_samples(b, "b")
    out = kde_information_plane(np.zeros((n, 1)), a, np.zeros(n, dtype=np.int64), noise_variance,
                                bound, device)
    return out["I_XT"]


@dataclass(frozen=True)
class Estimator:
    """A registered estimator: its functions and what the estimate stage stores of it.

    `outputs` maps each extra value the information-plane function returns (beyond I_XT and
    I_TY) to its (long name, units): the stage stores one results variable per output. `carry`
    maps an output to the parameter that receives it at the next epoch: with it, a layer's epochs
    run in order as one chain (Renyi's smoothed kernel width), when `chained(params)` holds.
    """

    name: str
    information_plane: Callable[..., dict[str, float]]
    mutual_information: Callable[..., float] | None = None
    outputs: dict[str, tuple[str, str]] = field(default_factory=dict)
    carry: dict[str, str] = field(default_factory=dict)
    chained: Callable[[dict[str, Any]], bool] | None = None
    domains: dict[str, Domain] = field(default_factory=dict)  # checked when a config loads
    # pipeline.uncertainty: the interval schemes it allows, whether its I(X;T) uses the input
    # values (then shuffling them gives a null), and the ceilings of its I(X;T) given H(X) and
    # of its I(T;Y) given the labels
    schemes: tuple[str, ...] = ("bootstrap", "subsample")
    uses_inputs: bool = True
    xt_ceiling: Callable[[dict[str, Any], float], float] = lambda params, input_entropy: input_entropy
    ty_ceiling: Callable[[dict[str, Any], np.ndarray], float] = \
        lambda params, y: entropy_of_counts(np.bincount(y))
    # the time of one cell relative to binning's (about 7 ms on 4096 x 10, 2 cores): the stage
    # starts the longest tasks first, so no worker idles at the end behind one long chain
    cost: float = 10.0
    # optional: (x, t, y, **params) -> estimate(rows, label_rows=None) equal to the plane of those
    # rows, computed from work done once (or None where the parameters do not allow it)
    resampler: Callable[..., Callable[..., dict[str, float]] | None] | None = None
    # optional: (x, t, y, settings, subsets) -> out[i][j], the plane of parameters settings[i]
    # on rows subsets[j], sharing work between them (KDE); the stage runs an estimator's tasks
    # of one seed, layer and epochs through it when they differ only in `batched_over`
    batched: Callable[..., list[list[dict[str, float]]]] | None = None
    batched_over: tuple[str, ...] = ()

    def is_chain(self, params: dict[str, Any]) -> bool:
        return bool(self.carry) and (self.chained is None or self.chained(params))


ESTIMATORS: dict[str, Estimator] = {}
BUILTIN_METHODS: tuple[str, ...] = ()  # set once the built-ins below are registered


def register_estimator(name: str, *, outputs: dict[str, tuple[str, str]] | None = None,
                       carry: dict[str, str] | None = None,
                       chained: Callable[[dict[str, Any]], bool] | None = None,
                       mutual_information: Callable[..., float] | None = None,
                       domains: dict[str, Domain] | None = None, **uncertainty: Any):
    """Decorator: register an information-plane function `(x, t, y, **params) -> {"I_XT", "I_TY",
    ...}` under `name`, so `method = name` in a config runs it like the built-ins."""
    def add(fn: Callable[..., dict[str, float]]) -> Callable[..., dict[str, float]]:
        check_new_name("estimator", name, BUILTIN_METHODS)
        estimator = Estimator(name, fn, mutual_information, dict(outputs or {}), dict(carry or {}), chained,
                              dict(domains or {}), **uncertainty)
        ESTIMATORS[name] = estimator
        fn.infoplane_estimator = estimator  # an entry point naming `fn` finds its declaration
        return fn
    return add


def get_estimator(method: str) -> Estimator:
    """A registered estimator, or the function an entry point `package.module:function` names."""
    if ":" in method:
        fn = resolve_entry_point(method)
        return getattr(fn, "infoplane_estimator", None) or Estimator(method, fn)
    if method not in ESTIMATORS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(ESTIMATORS)} "
                         "(or an entry point 'package.module:function')")
    return ESTIMATORS[method]


_SPREADS = {"I_XT_std": ("standard deviation (ddof 0) of I(X;T) over batches", "bits"),
            "I_TY_std": ("standard deviation (ddof 0) of I(T;Y) over batches", "bits")}
# Binning and KDE compute I(X;T) as H(T) - H(T|X) of the layer alone: shuffling X changes
# nothing. Duplicated rows (a bootstrap) would be separate, coinciding KDE components.
_CLIPPED = {"I_XT_clipped": ("1 where values of T lie outside binning's fixed range (clipped)", "1"),
            "I_TY_clipped": ("1 where values of T lie outside binning's fixed range (clipped)", "1")}
register_estimator("binning", mutual_information=binning_mutual_information,
                   domains=BUILTIN["binning"], uses_inputs=False, cost=1.0, outputs=_CLIPPED,
                   resampler=binning_resampler)(binning_information_plane)
register_estimator("kde", mutual_information=kde_mutual_information, domains=BUILTIN["kde"],
                   schemes=("subsample",), uses_inputs=False, cost=30.0, batched=kde_information_planes,
                   batched_over=KDE_SETTINGS)(kde_information_plane)
register_estimator(
    "renyi", mutual_information=renyi_mutual_information, domains=BUILTIN["renyi"],
    outputs={**_SPREADS, "sigma_t": ("kernel width used for the layer (Renyi)", "1")},
    carry={"sigma_t": "sigma_prev"},  # the searched width is smoothed from epoch to epoch
    chained=lambda params: isinstance(params.get("sigma_t", "alignment"), str),
    schemes=("batches", "subsample"),  # entropies of batches: at most log2(batch size) bits
    xt_ceiling=lambda params, h_x: min(math.log2(params.get("batch_size", 100)), h_x),
    ty_ceiling=renyi_label_ceiling,
    cost=10.0,
)(renyi_information_plane)
# kNN: a repeated point is its own neighbour, hence subsamples, not the bootstrap
_BIASED = {"I_XT_biased": ("1 where n and the dimensions of X and T lie beyond KSG's measured rule", "1"),
           "I_TY_biased": ("1 where n and the dimension of T lie beyond KSG's measured rule", "1")}
register_estimator("ksg", mutual_information=ksg_mutual_information, domains=BUILTIN["ksg"],
                   schemes=("subsample",), outputs=_BIASED, cost=60.0)(ksg_information_plane)
register_estimator("gaussian", mutual_information=gaussian_mutual_information,
                   domains=BUILTIN["gaussian"], cost=1.0)(gaussian_information_plane)
_KEPT = {"T_kept": ("share of the noised layer's variance its code reconstructs (compression)", "1"),
         "X_kept": ("share of the inputs' variance their code reconstructs (compression)", "1"),
         "I_XT_lossy": (f"1 where a code of X or T kept less than {MIN_KEPT} of its variance, or the "
                        "flow read far below KSG on the codes", "1"),
         "I_TY_lossy": (f"1 where the code of T kept less than {MIN_KEPT} of its variance", "1")}
register_estimator("compression", mutual_information=compression_mutual_information,
                   domains=BUILTIN["compression"], schemes=("subsample",), outputs=_KEPT,
                   cost=1000.0)(compression_information_plane)
register_estimator("variational", mutual_information=variational_mutual_information,
                   domains=BUILTIN["variational"], schemes=("subsample",),
                   cost=500.0)(variational_information_plane)
METHODS = BUILTIN_METHODS = tuple(ESTIMATORS)


def _function(method: str, kind: str) -> Callable[..., Any]:
    estimator = get_estimator(method)
    fn = estimator.information_plane if kind == "information_plane" else estimator.mutual_information
    if fn is None:
        raise ValueError(f"method {method!r} has no mutual_information function; use information_plane")
    return fn


def parameters(method: str, kind: str = "information_plane") -> dict[str, Any]:
    """The parameters of `method` and their defaults."""
    signature = inspect.signature(_function(method, kind))
    return {name: p.default for name, p in list(signature.parameters.items())
            if p.default is not inspect.Parameter.empty}


def _takes_any_keyword(fn: Callable[..., Any]) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def plane_defaults(method: str) -> dict[str, Any]:
    """The defaults a call of `method`'s information-plane function runs with: its keyword
    defaults, or where it takes **params and hands them on (variational), those of its
    mutual_information function."""
    estimator = get_estimator(method)
    if _takes_any_keyword(estimator.information_plane) and estimator.mutual_information is not None:
        return {**parameters(method, "mutual_information"), **parameters(method)}
    return parameters(method)


def check_parameters(method: str, params: dict[str, Any], kind: str = "information_plane") -> None:
    if _takes_any_keyword(_function(method, kind)):
        return  # a function taking **params checks them itself
    valid = parameters(method, kind)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for method {method!r}; valid: "
                         + ", ".join(f"{k}={v!r}" for k, v in valid.items()))
    check_domains(get_estimator(method).domains, params)


def information_plane(x: np.ndarray, t: np.ndarray, y: np.ndarray, method: str,
                      **params: Any) -> dict[str, float]:
    """I(X;T) and I(T;Y) in bits for one layer; some methods add spreads and widths."""
    check_parameters(method, params)
    return get_estimator(method).information_plane(as_numpy(x), as_numpy(t), as_numpy(y), **params)


def mutual_information(a: np.ndarray, b: np.ndarray, method: str, **params: Any) -> float:
    """I(A;B) in bits; a 1-D integer `b` means discrete labels.

    Warns (`EstimateWarning`) where the method is known to read wrong: KSG where n and the
    dimensions lie beyond its measured rule (`knn.ksg_biased`: it reads low); binning of two
    continuous sides within 1% of log2(n), the most n samples can show, and binning whose value
    the same samples with their pairing shuffled read at least half of
    (`binning.SHUFFLED_SHARE`: mostly bias). `compression` checks its own codes
    (`CompressionWarning`). The estimate stage stores the KSG and saturation judgements as flags
    and, with `null = true`, the shuffled reading of every cell.
    """
    check_parameters(method, params, kind="mutual_information")
    a, b = as_numpy(a), as_numpy(b)
    value = float(_function(method, "mutual_information")(a, b, **params))
    reason = _known_wrong(method, a, b, value, params)
    if reason:
        warnings.warn(reason, EstimateWarning, stacklevel=2)
    return value


def _known_wrong(method: str, a: np.ndarray, b: np.ndarray, value: float,
                 params: dict[str, Any]) -> str | None:
    """Why `value` is known to be wrong for this method and these samples, or None."""
    from pipeline.uncertainty import SATURATION_TOLERANCE  # it imports this package

    n, labels = len(a), is_discrete(b)
    if method == "ksg":
        dims = (math.prod(a.shape[1:]), None if labels else math.prod(b.shape[1:]))
        if ksg_biased(n, *dims):
            sides = f"{dims[0]} dimensions and labels" if labels else f"{dims[0]} + {dims[1]} dimensions"
            return (f"KSG on {n} samples of {sides} lies beyond its measured rule: it reads low "
                    "here; give it more samples or fewer dimensions (docs/estimators.md, 'Where KSG "
                    "is biased', has the rule and what the other methods read)")
    if method == "binning" and n > 1:
        clipped = _clipped_sides(a, b, labels, params)
        if clipped:
            low, high = params.get("low", -1.0), params.get("high", 1.0)
            return (f"binning clipped {clipped} into the end bins of its fixed range [{low}, {high}]: "
                    "the value reads low; range='layer' (or bin_size) bins unbounded values (ReLU, "
                    "logits) over their own span")
        if not labels and value >= (1 - SATURATION_TOLERANCE) * math.log2(n):
            return (f"binning read {value:.3f} bits, within {SATURATION_TOLERANCE:.0%} of log2(n) = "
                    f"{math.log2(n):.3f}, the most {n} samples can show (nearly every binned pattern "
                    "is distinct): the value says nothing about the MI; fewer bins, or another method")
        shuffled = binning_shuffled_mutual_information(a, b, **params)
        if shuffled > 0 and shuffled >= SHUFFLED_SHARE * value:
            return (f"binning read {value:.3f} bits, and {shuffled:.3f} on the same samples with their "
                    f"pairing shuffled, which carry no information: at least {SHUFFLED_SHARE:.0%} of "
                    "the value is the plug-in's bias from too few samples per bin; fewer bins or "
                    "dimensions, more samples, or another method (docs/estimators.md, 'Diagnostics')")
    return None


def _clipped_sides(a: np.ndarray, b: np.ndarray, labels: bool, params: dict[str, Any]) -> str:
    """The sides whose values binning's fixed range clipped, in words ("" where none)."""
    options = {key: params[key] for key in ("range", "low", "high", "bin_size") if key in params}
    sides = [f"{name}'s values (they span [{span[0]:.4g}, {span[1]:.4g}])" for name, values in
             (("a", a), ("b", None if labels else b)) if values is not None
             and (span := clipped_extremes(values, **options)) is not None]
    return " and ".join(sides)


__all__ = ["information_plane", "mutual_information", "parameters", "plane_defaults", "check_parameters",
           "METHODS", "BUILTIN_METHODS",
           "Estimator", "ESTIMATORS", "register_estimator", "get_estimator", "ParameterError", "as_labels",
           "as_samples", "EstimateWarning"]
