"""Where an image estimate loses its bits: in the code, or in reading MI off the code.

    python -m benchmarks.code_bottleneck               # both parts, about 25 minutes on 2 cores
    python -m benchmarks.code_bottleneck --only warp   # the known warp alone, about 4 minutes

For held-out image families at 4 latents and 1.5 bits (n = 5000, seen families only, never the
reserved ones), two compressors code each side as the default call does (relative noise 1e-3):
the default convolutional autoencoder (code width from the intrinsic dimension) and the dense
autoencoder on 128 principal components (hidden 256, 6000 steps) with 8-wide codes. Then, on
the half of the samples no network below was trained on:

- the flow model and KSG on the codes: what the estimator reads;
- an oracle that knows the latents: a small network regresses each side's latents from its code
  on the other half, and the flow reads the MI of the predicted latents. Its R^2 per latent and
  its MI say how much of the pair's information the code still holds;
- the flow on the true latents of the same rows: the ceiling at this sample size.

The oracle is a diagnostic only (a researcher's layers have no known latents). Where it reads
near the ceiling and the flow on the codes does not, the loss is in reading MI off a warped code,
not in the compression.

The second part (`--only warp`) measures the reading step alone, with no image and no
autoencoder: the flow and KSG on the image cases' latent pairs after a known smooth bijection
that mixes each side's coordinates (`groundtruth.mixing_diffeomorphism`), at 2 and 4 latents,
n = 5000 and 20000. MI is unchanged by the map, so every shortfall is the reader's.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from benchmarks.common import DOCS, table, write_section
from benchmarks.families import N, image_latents, stamp
from pipeline.estimators._common import adam, one_torch_thread, torch_seeded
from pipeline.estimators.compression import add_noise, autoencoder_compress, compress_sides
from pipeline.estimators.flow import flow_mutual_information
from pipeline.estimators.knn import ksg_mutual_information
from pipeline.groundtruth import IMAGE_FAMILIES, gaussian_pair, mixing_diffeomorphism, render_images

LATENTS, BITS = 4, 1.5
FAMILIES = ("two_blobs", "colour_bumps", "gratings", "dots")
COMPRESSORS = {
    "conv autoencoder (default)": {"compressor": "conv_autoencoder", "dim": "auto"},
    "dense autoencoder, 128 PCs, 8 wide": {"compressor": "autoencoder", "dim": 8},
}
DENSE_WIDE = {"pre_dim": 128, "hidden": 256, "steps": 6000}


def regressed_latents(code: np.ndarray, latent: np.ndarray, train: slice, test: slice,
                      steps: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An MLP's prediction of `latent` from the standardised `code`, fitted on the `train` rows
    and read on the `test` rows, with its R^2 per latent there."""
    x = torch.as_tensor((code - code.mean(0)) / code.std(0), dtype=torch.float32)
    y = torch.as_tensor(latent, dtype=torch.float32)
    with torch_seeded(seed):
        net = nn.Sequential(nn.Linear(x.shape[1], 256), nn.SiLU(), nn.Linear(256, 256), nn.SiLU(),
                            nn.Linear(256, y.shape[1]))
        optimizer = adam(net.parameters(), 1e-3)
        x_train, y_train = x[train], y[train]
        for _ in range(steps):
            rows = torch.randint(len(x_train), (256,))
            loss = ((net(x_train[rows]) - y_train[rows]) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        predicted = net(x[test]).double().numpy()
    truth = latent[test]
    return predicted, 1 - ((predicted - truth) ** 2).mean(0) / truth.var(0)


def codes_of(images: tuple[np.ndarray, np.ndarray], options: dict) -> list:
    """Both sides coded at once, with the default call's noise and seeds."""
    rng = np.random.default_rng(0)
    jobs = [dict(a=add_noise(side.reshape(N, -1), 1e-3, "relative", rng), seed=i, device="cpu",
                 sample_shape=side.shape[1:], **options) for i, side in enumerate(images)]
    if options["compressor"] == "autoencoder":  # the wide dense variant: its own settings, both at once
        with one_torch_thread(), ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda job: autoencoder_compress(
                job["a"], job["dim"], seed=job["seed"], return_kept=True, **DENSE_WIDE), jobs))
    return compress_sides(jobs)


def measure(family: str) -> list[list[object]]:
    a, b = image_latents(LATENTS, BITS)
    images = (render_images(family, a), render_images(family, b))
    train, test = slice(0, N // 2), slice(N // 2, N)
    ceiling = flow_mutual_information(a[test], b[test])
    rows = []
    for name, options in COMPRESSORS.items():
        code_a, code_b = codes_of(images, options)
        predicted_a, r2_a = regressed_latents(code_a.values, a, train, test)
        predicted_b, r2_b = regressed_latents(code_b.values, b, train, test)
        rows.append([family, name, code_a.values.shape[1], f"{min(code_a.kept, code_b.kept):.4f}",
                     " / ".join(f"{v:.2f}" for v in np.minimum(r2_a, r2_b)),
                     f"{flow_mutual_information(code_a.values[test], code_b.values[test]):.3f}",
                     f"{ksg_mutual_information(code_a.values[test], code_b.values[test]):.3f}",
                     f"{flow_mutual_information(predicted_a, predicted_b):.3f}", f"{ceiling:.3f}"])
        print(rows[-1], flush=True)
    return rows


def measure_codes() -> None:
    if any(IMAGE_FAMILIES[family].tuned or IMAGE_FAMILIES[family].reserved for family in FAMILIES):
        raise ValueError("the bottleneck is measured on seen held-out families only")
    rows = [row for family in FAMILIES for row in measure(family)]
    run = stamp()
    body = (
        f"Command: `python -m benchmarks.code_bottleneck`; {', '.join(FAMILIES)} at {LATENTS} latents "
        f"and {BITS} bits, n = {N}; every MI on the {N // 2} samples the regressions were not fitted "
        f"on; {run['commit'][:7]}, {run['date']}, {run['machine']}. R^2 per latent: the smaller of "
        "the two sides'.\n\n"
        + table(["family", "code", "width (side a)", "least kept share", "oracle R^2 per latent",
                 "flow on the codes", "KSG on the codes", "flow on the oracle's latents",
                 "flow on the true latents"], rows))
    write_section(DOCS / "estimators.md", "code-bottleneck", body)


def warped_pair(m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The latent pair (the image cases' own at n = N) before the warp."""
    return image_latents(m, BITS) if n == N else gaussian_pair(n, BITS, m, seed=777, rotate=False)


def measure_known_warp() -> None:
    rows = []
    for m in (2, 4):
        for n in (N, 4 * N):
            a, b = warped_pair(m, n)
            warped_a, warped_b = mixing_diffeomorphism(a, seed=1), mixing_diffeomorphism(b, seed=2)
            start = time.perf_counter()
            flow = flow_mutual_information(warped_a, warped_b)
            rows.append([m, n, BITS, f"{flow_mutual_information(a, b):.3f}",
                         f"{ksg_mutual_information(warped_a, warped_b):.3f}", f"{flow:.3f}",
                         f"{time.perf_counter() - start:.0f}"])
            print(rows[-1], flush=True)
    run = stamp()
    body = (
        f"Command: `python -m benchmarks.code_bottleneck --only warp`; each side's latents through "
        f"`mixing_diffeomorphism` (seed 1 for a, 2 for b), the default flow and KSG (k = 5); at n = "
        f"{N} the image cases' latent pairs, at {4 * N} `gaussian_pair(n, {BITS}, m, seed=777, "
        f"rotate=False)`; {run['commit'][:7]}, {run['date']}, {run['machine']}.\n\n"
        + table(["latents a side", "n", "true MI", "flow on the latents", "KSG on the warped pair",
                 "flow on the warped pair", "seconds (flow on the warped pair)"], rows))
    write_section(DOCS / "estimators.md", "known-warp", body)


def main(only: tuple[str, ...] = ("codes", "warp")) -> None:
    if "codes" in only:
        measure_codes()
    if "warp" in only:
        measure_known_warp()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="codes,warp", help="comma-separated parts: codes, warp")
    main(tuple(parser.parse_args().only.split(",")))
