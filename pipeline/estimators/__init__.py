"""Mutual-information estimators of the information-plane literature, as pure functions.

    from pipeline.estimators import information_plane, mutual_information
    information_plane(x, t, y, "binning", n_bins=30)    # {"I_XT": ..., "I_TY": ...} bits
    mutual_information(a, b, "ksg", k=5)                # bits; 1-D integer b = labels

Methods: "binning", "kde", "renyi", "ksg", "compression" (one module each). `x`: inputs
(n, ...); `t`: one layer's outputs (n, ...), any trailing shape; `y`: integer labels (n,).
Unknown methods or parameters raise ValueError listing the valid ones; every method's defaults
are the papers' (SCIENCE.md sections 3-7) and documented in its function's docstring.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.estimators._common import as_labels, as_samples, is_discrete, same_length
from pipeline.estimators.binning import binning_information_plane, binning_mutual_information
from pipeline.estimators.compression import (
    compression_information_plane,
    compression_mutual_information,
)
from pipeline.estimators.kde import kde_information_plane
from pipeline.estimators.knn import ksg_mutual_information
from pipeline.estimators.renyi import renyi_information_plane, renyi_mutual_information


def ksg_information_plane(x: np.ndarray, t: np.ndarray, y: np.ndarray, k: int = 5,
                          jitter: float = 1e-10, transform: str = "auto", seed: int = 0,
                          device: str = "cpu", algorithm: str = "auto") -> dict[str, float]:
    """KSG-1 I(X;T) and the discrete-label KSG I(T;Y), in bits (see knn.ksg_mutual_information).

    For a deterministic layer the true I(X;T) is infinite (continuous X) or H(X) (discrete X):
    KSG returns a finite value that saturates near log2(n).
    """
    same_length(x=x, t=t, y=y)
    y = as_labels(y)
    opts = {"k": k, "jitter": jitter, "transform": transform, "seed": seed, "device": device,
            "algorithm": algorithm}
    return {"I_XT": ksg_mutual_information(x, t, **opts), "I_TY": ksg_mutual_information(t, y, **opts)}


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


INFORMATION_PLANE: dict[str, Callable[..., dict[str, float]]] = {
    "binning": binning_information_plane,
    "kde": kde_information_plane,
    "renyi": renyi_information_plane,
    "ksg": ksg_information_plane,
    "compression": compression_information_plane,
}
MUTUAL_INFORMATION: dict[str, Callable[..., float]] = {
    "binning": binning_mutual_information,
    "kde": kde_mutual_information,
    "renyi": renyi_mutual_information,
    "ksg": ksg_mutual_information,
    "compression": compression_mutual_information,
}
METHODS = tuple(INFORMATION_PLANE)


def parameters(method: str, kind: str = "information_plane") -> dict[str, Any]:
    """The parameters of `method` and their defaults."""
    table = INFORMATION_PLANE if kind == "information_plane" else MUTUAL_INFORMATION
    if method not in table:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(table)}")
    signature = inspect.signature(table[method])
    return {name: p.default for name, p in list(signature.parameters.items())
            if p.default is not inspect.Parameter.empty}


def check_parameters(method: str, params: dict[str, Any], kind: str = "information_plane") -> None:
    valid = parameters(method, kind)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for method {method!r}; valid: "
                         + ", ".join(f"{k}={v!r}" for k, v in valid.items()))


def information_plane(x: np.ndarray, t: np.ndarray, y: np.ndarray, method: str,
                      **params: Any) -> dict[str, float]:
    """I(X;T) and I(T;Y) in bits for one layer; some methods add spreads and widths."""
    check_parameters(method, params)
    return INFORMATION_PLANE[method](x, t, y, **params)


def mutual_information(a: np.ndarray, b: np.ndarray, method: str, **params: Any) -> float:
    """I(A;B) in bits; a 1-D integer `b` means discrete labels."""
    check_parameters(method, params, kind="mutual_information")
    return float(MUTUAL_INFORMATION[method](a, b, **params))


__all__ = ["information_plane", "mutual_information", "parameters", "check_parameters", "METHODS",
           "as_labels", "as_samples"]
