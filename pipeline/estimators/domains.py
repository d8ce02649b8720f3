"""Parameter domains of the built-in estimators, checked when a config loads.

    from pipeline.estimators.domains import integer, number
    register_estimator("mine", domains={"k": integer(1), "scale": number(0)})(fn)

A domain is (description, predicate); a value outside it is a `ParameterError` naming the
parameter, so `make estimate` refuses `n_bins = 0` before computing anything, instead of storing
NaN in every cell.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Domain = tuple[str, Callable[[Any], bool]]


class ParameterError(ValueError):
    """A parameter value outside its domain; `parameter` names it."""

    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter} {message}")
        self.parameter, self.reason = parameter, message


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v  # not NaN


def integer(low: int) -> Domain:
    return f"an integer >= {low}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def number(low: float, inclusive: bool = False, high: float | None = None) -> Domain:
    text = f"a number {'>=' if inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
    return text, lambda v: (_is_number(v) and (v >= low if inclusive else v > low)
                            and (high is None or v <= high))


def choice(*values: Any) -> Domain:
    return f"one of {', '.join(map(repr, values))}", lambda v: v in values


def either(*domains: Domain) -> Domain:
    return " or ".join(d[0] for d in domains), lambda v: any(d[1](v) for d in domains)


def optional(domain: Domain) -> Domain:
    return f"{domain[0]} (or absent)", lambda v: v is None or domain[1](v)


def check(domains: dict[str, Domain], params: dict[str, Any]) -> None:
    for name, value in params.items():
        if name in domains and not domains[name][1](value):
            raise ParameterError(name, f"must be {domains[name][0]}, got {value!r}")


DEVICE = choice("cpu", "cuda")
SEED = integer(0)
BUILTIN: dict[str, dict[str, Domain]] = {
    "binning": {"n_bins": integer(2), "range": choice("fixed", "layer"), "bin_size": optional(number(0)),
                "low": number(float("-inf")), "high": number(float("-inf"))},
    "kde": {"noise_variance": number(0), "bound": choice("upper", "lower"), "device": DEVICE},
    "renyi": {"alpha": number(0), "sigma_x": number(0),
              "sigma_t": either(number(0), choice("alignment", "silverman")),
              "sigma_convention": choice("gaussian", "wickstrom"), "sigma_prev": optional(number(0)),
              "smoothing": number(0, inclusive=True, high=1), "n_candidates": integer(2),
              "silverman_gamma": optional(number(0)), "batch_size": integer(2), "n_batches": integer(1),
              "seed": SEED, "device": DEVICE},
    "ksg": {"k": integer(1), "jitter": number(0, inclusive=True),
            "transform": choice("auto", "normal_scores", "standardise"), "seed": SEED, "device": DEVICE,
            "algorithm": choice("auto", "tree", "brute")},
    "gaussian": {"copula": choice(True, False)},
    "variational": {"bound": choice("smile", "infonce", "nwj"), "steps": integer(1),
                    "batch_size": integer(2), "hidden": integer(1), "embedding": integer(1),
                    "lr": number(0), "clip": number(0), "holdout": number(0, high=1),
                    "check_every": integer(1), "seed": SEED,
                    "device": DEVICE},
    "compression": {"noise": number(0, inclusive=True), "noise_mode": choice("relative", "absolute"),
                    "dim": either(integer(1), choice("auto")),
                    "input_dim": optional(either(integer(1), choice("auto"))), "k": integer(1),
                    "compressor": choice("auto", "pca", "autoencoder", "conv_autoencoder", "none"),
                    "input_compressor": choice("auto", "pca", "autoencoder", "conv_autoencoder", "none"),
                    "entropy": choice("auto", "ksg", "flow", "kl", "wkl"),
                    "ae_steps": optional(integer(1)), "ae_candidates": optional(integer(1)),
                    "seed": SEED, "device": DEVICE},
}
