"""Why compression misses 4-latent images: the section "compression limits" of docs/estimators.md.

    python -m benchmarks.compression_limits      # about 2 minutes on 2 cores

For images of 4 latents (16x16 bumps, 32x32 rectangles; 1.5 and 3 bits, n = 5000) it compares
KSG on the true latents (no compressor: the kNN estimator's own ceiling), on PCA codes and on
autoencoder codes, and asks how well each code resolves each latent: the share of a latent's
variance explained by the mean over a sample's 5 code neighbours (normal scores per code
coordinate, as KSG sees them).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.spatial import cKDTree

from benchmarks.common import DOCS, table, write_section
from pipeline.estimators.compression import autoencoder_compress, pca_compress
from pipeline.estimators.knn import ksg_mutual_information, normal_scores
from pipeline.groundtruth import bump_images, gaussian_pair, rectangle_images

N = 5000


def neighbour_r2(code: np.ndarray, latent: np.ndarray, k: int = 5) -> np.ndarray:
    """Per latent coordinate: 1 - MSE of the mean over the k code neighbours / variance."""
    points = normal_scores(code)
    neighbours = cKDTree(points).query(points, k=k + 1)[1][:, 1:]
    predicted = latent[neighbours].mean(axis=1)
    return 1 - ((predicted - latent) ** 2).mean(axis=0) / latent.var(axis=0)


def main() -> None:
    rows = []
    for render, size in ((bump_images, 16), (rectangle_images, 32)):
        for mi in (1.5, 3.0):
            a, b = gaussian_pair(N, mi, 4, seed=40 + int(10 * mi), rotate=False)
            images_a, images_b = render(a, size).reshape(N, -1), render(b, size).reshape(N, -1)
            codes = {
                "true latents": (a, b),
                "pca 4": (pca_compress(images_a, 4), pca_compress(images_b, 4)),
                "autoencoder 4": (autoencoder_compress(images_a, 4, seed=0),
                                  autoencoder_compress(images_b, 4, seed=1)),
            }
            for name, (code_a, code_b) in codes.items():
                r2 = neighbour_r2(code_a, a)
                rows.append([f"{render.__name__.split('_')[0]} {size}x{size}", mi, name,
                             f"{ksg_mutual_information(code_a, code_b, k=5):.3f}",
                             f"{ksg_mutual_information(code_a, code_b, k=3):.3f}",
                             " / ".join(f"{v:.2f}" for v in r2)])
                print(rows[-1], flush=True)
    body = (
        f"Command: `python -m benchmarks.compression_limits`; images of 4 latents, n = {N}, no "
        "noise. Last column: share of each latent's variance (centre x, centre y, width or "
        "size, brightness or height) explained by the mean of its 5 neighbours in the code.\n\n"
        + table(["images", "true MI", "code", "KSG k=5", "KSG k=3", "neighbour R^2 per latent"], rows)
    )
    write_section(DOCS / "estimators.md", "compression-limits", body)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help
    main()
