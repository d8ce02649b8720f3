"""Estimator accuracy on samples with known MI: the table and figure of docs/estimators.md.

    python -m benchmarks.accuracy              # also part of `make bench` (about 35 min on 2 cores)

KSG: Gaussian pairs (MI spread over all coordinate pairs by random rotations) and the same
after injective maps of each coordinate, n = 5000. Compression: 16x16 Gaussian-bump and 32x32
rectangle images rendered from 2- to 4-dimensional latents, n = 5000. Tolerances are those of
the estimators issue: KSG max(0.1 bit, 15%) for 1-3 dimensions a side, max(0.1 bit, 25%) for
4-5; compression max(0.15 bit, 20%).
"""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import DOCS, machine, table, write_section  # noqa: E402
from pipeline.estimators import mutual_information  # noqa: E402
from pipeline.groundtruth import INJECTIVE_MAPS, apply_map, bump_images, gaussian_pair, rectangle_images  # noqa: E402

N = 5000


def ksg_cases(transform: str) -> list[dict]:
    out = []
    for dim in (1, 2, 3, 4, 5):
        for mi in (0.1, 0.5, 1.0, 2.0, 3.0):
            a, b = gaussian_pair(N, mi, dim, seed=100 * dim + int(10 * mi))
            for name in INJECTIVE_MAPS:
                est = mutual_information(apply_map(name, a, 1), apply_map(name, b, 2), "ksg",
                                         transform=transform)
                tol = max(0.1, (0.15 if dim <= 3 else 0.25) * mi)
                out.append({"dim": dim, "mi": mi, "map": name, "est": est, "ok": abs(est - mi) <= tol})
    return out


def compression_cases(dims: tuple[int, ...] = (2, 3, 4), **params) -> list[dict]:
    out = []
    for render, size in ((bump_images, 16), (rectangle_images, 32)):
        for dim in dims:
            for mi in (0.5, 1.5, 3.0):
                a, b = gaussian_pair(N, mi, dim, seed=10 * dim + int(10 * mi), rotate=False)
                start = time.perf_counter()
                est = mutual_information(render(a, size), render(b, size), "compression", **params)
                out.append({"images": f"{render.__name__.split('_')[0]} {size}x{size}", "dim": dim,
                            "mi": mi, "est": est, "ok": abs(est - mi) <= max(0.15, 0.2 * mi),
                            "seconds": time.perf_counter() - start})
    return out


def summarise_ksg(cases: list[dict]) -> list[list]:
    rows = []
    for dim in (1, 2, 3, 4, 5):
        sel = [c for c in cases if c["dim"] == dim]
        rel = [abs(c["est"] - c["mi"]) / c["mi"] for c in sel]
        worst = max(sel, key=lambda c: abs(c["est"] - c["mi"]))
        rows.append([dim, len(sel), sum(c["ok"] for c in sel), f"{np.median(rel):.1%}",
                     f"{worst['map']} at {worst['mi']} bits: {worst['est']:.3f}"])
    return rows


def main() -> None:
    """Writes the accuracy section of docs/estimators.md and its figure."""
    ksg = ksg_cases("auto")
    ksg_std = ksg_cases("standardise")
    comp = compression_cases()
    comp_ksg = compression_cases(compressor="autoencoder", entropy="ksg")
    comp_pca = compression_cases(compressor="pca")
    comp_kl = compression_cases(compressor="pca", entropy="kl")
    (DOCS / "figures").mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for dim in (1, 2, 3, 4, 5):
        sel = [c for c in ksg if c["dim"] == dim]
        axes[0].scatter([c["mi"] for c in sel], [c["est"] for c in sel], s=12, label=f"{dim} dim/side")
    for label, cases, marker in (("conv autoencoder + flow (default)", comp, "o"),
                                 ("dense autoencoder + ksg", comp_ksg, "^"), ("pca + ksg", comp_pca, "s"),
                                 ("pca + kl", comp_kl, "x")):
        axes[1].scatter([c["mi"] for c in cases], [c["est"] for c in cases], marker=marker, s=18,
                        label=label, facecolors="none" if marker == "s" else None)
    for ax, title in zip(axes, ("ksg: Gaussian pairs, 5 injective maps", "compression: images of latents"),
                         strict=True):
        ax.plot([0, 3.2], [0, 3.2], "k--", lw=0.8)
        ax.set(xlabel="true MI (bits)", ylabel="estimated MI (bits)", title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "figures" / "estimator_accuracy.png", dpi=110)
    ksg_rows = summarise_ksg(ksg)
    std_rows = summarise_ksg(ksg_std)
    columns = (comp, comp_ksg, comp_pca, comp_kl)
    def cells(case: dict) -> list[str]:
        return [f"{case['est']:.3f}", "yes" if case["ok"] else "**no**"]

    comp_rows = [[row[0]["images"], row[0]["dim"], row[0]["mi"], *cells(row[0]), *cells(row[1]),
                  *cells(row[2]), f"{row[3]['est']:.3f}"] for row in zip(*columns, strict=True)]
    n_ok = [sum(c["ok"] for c in cases) for cases in columns]
    seconds = [np.mean([c["seconds"] for c in cases]) for cases in columns]
    body = (
        f"Command: `python -m benchmarks.accuracy` (part of `make bench`); n = {N} per case.\n\n"
        "![true vs estimated](figures/estimator_accuracy.png)\n\n"
        "**ksg** (default `transform=\"auto\"`: normal scores per coordinate), 25 Gaussian pairs "
        "(0.1-3 bits) x 5 maps (identity, normal CDF, asinh, x|x|^0.5, random rotation) per "
        "dimension:\n\n"
        + table(["dim per side", "cases", "within tolerance", "median rel. error", "worst case"], ksg_rows)
        + "\n\nThe same with `transform=\"standardise\"` (SCIENCE.md's wording), for comparison:\n\n"
        + table(["dim per side", "cases", "within tolerance", "median rel. error", "worst case"], std_rows)
        + "\n\n**compression**, relative noise 1e-3, 4 dimensions, k = 5. Defaults: "
        "`compressor=\"auto\"` (the convolutional autoencoder for images, 1500 steps) and "
        "`entropy=\"auto\"` (the flow model on two autoencoder codes); then the dense autoencoder "
        "(`compressor=\"autoencoder\"`, 3000 steps) with `entropy=\"ksg\"`, "
        "`compressor=\"pca\"` (the default for dense layers, with KSG), and PCA with the "
        "Kozachenko-Leonenko route `entropy=\"kl\"`. Cases within max(0.15 bit, 20%): "
        f"{n_ok[0]}, {n_ok[1]}, {n_ok[2]} and {n_ok[3]} of {len(comp)}; seconds a case: "
        + ", ".join(f"{sec:.0f}" for sec in seconds) + f" ({machine()}).\n\n"
        + table(["images", "latent dim", "true MI", "default (conv + flow)", "within",
                 "dense autoencoder + ksg", "within",
                 "pca", "within", "pca + kl"], comp_rows)
    )
    write_section(DOCS / "estimators.md", "accuracy", body)
    print(body)


if __name__ == "__main__":
    main()
