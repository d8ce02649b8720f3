"""Where KSG is biased, by dimension and sample count: the rule behind its `_biased` flags.

    python -m benchmarks.ksg_bias          # about 3 minutes on 2 cores

Dense Gaussian pairs (`gaussian_pair`, random rotations) of 1 to 10 dimensions a side at 0.5,
1.5 and 2.5 bits, and Gaussian class mixtures for the label estimator (4 equiprobable classes,
T | y ~ N(mu_y, I), true I(T;Y) by Monte Carlo on 200000 draws), at n = 500 to 5000. For each n
the table gives the largest dimension up to which every case is within max(0.1 bit, 15%): that
is `knn.KSG_RELIABLE_DIMS`, and a cell beyond it is flagged. The held-out check of the rule
(sparse, transformed and Student-t pairs) is in `benchmarks.families`.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.special import logsumexp

from benchmarks.common import DOCS, machine, table, within, write_section
from pipeline.estimators.knn import KSG_RELIABLE_DIMS, ksg_mutual_information
from pipeline.groundtruth import gaussian_pair
from pipeline.provenance import git_revision

SIZES = (500, 1000, 2000, 5000)
DIMS = (1, 2, 3, 4, 5, 6, 8, 10)
BITS = (0.5, 1.5, 2.5)
CLASSES = 4


def class_means(dim: int, separation: float, seed: int) -> np.ndarray:
    directions = np.random.default_rng(seed).standard_normal((CLASSES, dim))
    return separation * directions / np.linalg.norm(directions, axis=1, keepdims=True)


def mixture(n: int, means: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(CLASSES, size=n)
    return means[labels] + rng.standard_normal((n, means.shape[1])), labels


def mixture_information(means: np.ndarray, draws: int = 200_000) -> float:
    """I(T;Y) in bits = log C + E[log p(y | t)], by Monte Carlo with the exact class posteriors."""
    t, labels = mixture(draws, means, seed=12345)
    logits = -0.5 * ((t[:, None, :] - means[None]) ** 2).sum(axis=2)
    posterior = logits[np.arange(draws), labels] - logsumexp(logits, axis=1)
    return float((np.log(CLASSES) + posterior.mean()) / np.log(2))


def main() -> None:
    pair_rows, label_rows = [], []
    reliable = {}
    for n in SIZES:
        worst_pairs, worst_labels = {}, {}
        for dim in DIMS:
            pair_errors = []
            for bits in BITS:
                a, b = gaussian_pair(n, bits, dim, seed=1000 + 10 * dim + int(bits * 2))
                pair_errors.append((ksg_mutual_information(a, b), bits))
            label_errors = []
            for separation in (1.0, 2.0, 4.0):
                means = class_means(dim, separation, seed=dim)
                t, labels = mixture(n, means, seed=n + dim)
                label_errors.append((ksg_mutual_information(t, labels), mixture_information(means)))
            worst_pairs[dim] = all(within(v, truth) for v, truth in pair_errors)
            worst_labels[dim] = all(within(v, truth) for v, truth in label_errors)
            pair_rows.append([n, dim, *(f"{v:.3f} / {truth}" for v, truth in pair_errors)])
            label_rows.append([n, dim, *(f"{v:.3f} / {truth:.3f}" for v, truth in label_errors)])
            print(pair_rows[-1], label_rows[-1], flush=True)
        reliable[n] = (max([0] + [d for d in DIMS if all(worst_pairs[e] for e in DIMS if e <= d)]),
                       max([0] + [d for d in DIMS if all(worst_labels[e] for e in DIMS if e <= d)]))
    rule_rows = [[n, pairs, labels, KSG_RELIABLE_DIMS.get(n, "-")] for n, (pairs, labels) in reliable.items()]
    body = (
        f"Command: `python -m benchmarks.ksg_bias`; k = 5, default transform; commit {git_revision()}; "
        f"{machine()}. Largest dimension a side up to which every case is within max(0.1 bit, 15%), "
        "and the rule the estimator applies (`knn.KSG_RELIABLE_DIMS`; for labels, the layer's "
        "dimension):\n\n"
        + table(["n", "pairs: reliable up to", "labels: reliable up to", "KSG_RELIABLE_DIMS (pairs, labels)"],
                rule_rows)
        + "\n\nPairs (estimate / truth at 0.5, 1.5, 2.5 bits):\n\n"
        + table(["n", "dims a side", "0.5 bits", "1.5 bits", "2.5 bits"], pair_rows)
        + f"\n\nLabels ({CLASSES} classes at separations 1, 2, 4; estimate / Monte Carlo truth):\n\n"
        + table(["n", "layer dims", "separation 1", "separation 2", "separation 4"], label_rows))
    write_section(DOCS / "estimators.md", "ksg-bias", body)
    print(body)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help
    main()
