"""Estimator accuracy on samples with known MI: the table and figure of docs/estimators.md.

    python -m benchmarks.accuracy                          # every column (about 100 min on 2 cores)
    python -m benchmarks.accuracy --only compression       # re-measure one column, keep the others

KSG: Gaussian pairs (MI spread over all coordinate pairs by random rotations) and the same
after injective maps of each coordinate, n = 5000. Compression: 16x16 Gaussian-bump and 32x32
rectangle images rendered from 2- to 4-dimensional latents, n = 5000. Tolerances are those of
the estimators issue: KSG max(0.1 bit, 15%) for 1-3 dimensions a side, max(0.1 bit, 25%) for
4-5; compression max(0.15 bit, 20%).

Every case's estimate is kept in docs/accuracy_cases.json with the column's parameters, commit,
date and machine, so one column can be re-measured after a change (the default compression
column alone took 86 min on 2 cores) while the table still shows where each column came from.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks.common import DOCS, machine, table, write_section  # noqa: E402
from pipeline.estimators import mutual_information  # noqa: E402
from pipeline.groundtruth import INJECTIVE_MAPS, apply_map, bump_images, gaussian_pair, rectangle_images  # noqa: E402
from pipeline.provenance import git_revision  # noqa: E402

N = 5000
RECORD = DOCS / "accuracy_cases.json"


def ksg_cases(label: str = "ksg", **params) -> list[dict]:
    out, bar = [], tqdm(total=5 * 5 * len(INJECTIVE_MAPS), unit="case", desc=label)
    for dim in (1, 2, 3, 4, 5):
        for mi in (0.1, 0.5, 1.0, 2.0, 3.0):
            a, b = gaussian_pair(N, mi, dim, seed=100 * dim + int(10 * mi))
            for name in INJECTIVE_MAPS:
                est = mutual_information(apply_map(name, a, 1), apply_map(name, b, 2), "ksg", **params)
                tol = max(0.1, (0.15 if dim <= 3 else 0.25) * mi)
                out.append({"dim": dim, "mi": mi, "map": name, "est": est, "ok": bool(abs(est - mi) <= tol)})
                bar.update()
    bar.close()
    return out


def compression_cases(dims: tuple[int, ...] = (2, 3, 4), label: str = "compression", **params) -> list[dict]:
    out, bar = [], tqdm(total=2 * 3 * len(dims), unit="case", desc=label)
    for render, size in ((bump_images, 16), (rectangle_images, 32)):
        for dim in dims:
            for mi in (0.5, 1.5, 3.0):
                a, b = gaussian_pair(N, mi, dim, seed=10 * dim + int(10 * mi), rotate=False)
                case_start = time.perf_counter()
                est = mutual_information(render(a, size), render(b, size), "compression", **params)
                out.append({"images": f"{render.__name__.split('_')[0]} {size}x{size}", "dim": dim,
                            "mi": mi, "est": est, "ok": bool(abs(est - mi) <= max(0.15, 0.2 * mi)),
                            "seconds": time.perf_counter() - case_start})
                bar.write(f"[{label}] {out[-1]['images']} dim={dim} mi={mi}: {est:.3f}")
                bar.update()
    bar.close()
    return out


# column name -> (family, the estimator parameters it passes beside the defaults)
COLUMNS: dict[str, tuple[str, dict]] = {
    "ksg": ("ksg", {"transform": "auto"}),
    "ksg_standardise": ("ksg", {"transform": "standardise"}),
    "compression": ("compression", {}),
    "compression_dense_ksg": ("compression", {"compressor": "autoencoder", "entropy": "ksg"}),
    "compression_pca": ("compression", {"compressor": "pca"}),
    "compression_pca_kl": ("compression", {"compressor": "pca", "entropy": "kl"}),
}


def measure(columns: list[str]) -> dict:
    """Run `columns` and store them in the record (after each column, so an interrupted run keeps them)."""
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    for name in columns:
        family, params = COLUMNS[name]
        start = time.perf_counter()
        cases = (ksg_cases if family == "ksg" else compression_cases)(label=name, **params)
        record[name] = {"params": params, "commit": git_revision(paths=("pipeline",)),
                        "date": datetime.date.today().isoformat(),
                        "machine": machine(), "minutes": round((time.perf_counter() - start) / 60, 1),
                        "cases": cases}
        RECORD.write_text(json.dumps(record, indent=1) + "\n")
    return record


def summarise_ksg(cases: list[dict]) -> list[list]:
    rows = []
    for dim in (1, 2, 3, 4, 5):
        sel = [c for c in cases if c["dim"] == dim]
        rel = [abs(c["est"] - c["mi"]) / c["mi"] for c in sel]
        worst = max(sel, key=lambda c: abs(c["est"] - c["mi"]))
        rows.append([dim, len(sel), sum(c["ok"] for c in sel), f"{np.median(rel):.1%}",
                     f"{worst['map']} at {worst['mi']} bits: {worst['est']:.3f}"])
    return rows


def provenance(record: dict) -> str:
    rows = [[f"`{name}`", f"`{json.dumps(entry['params'])}`", entry["commit"], entry["date"],
             entry["minutes"], entry["machine"]] for name, entry in record.items()]
    return table(["column", "parameters", "commit", "date", "minutes", "machine"], rows)


def render(record: dict) -> str:
    """The figure and the markdown section, from the record alone."""
    missing = [name for name in COLUMNS if name not in record]
    if missing:
        raise ValueError(f"{RECORD} lacks columns {missing}; run `python -m benchmarks.accuracy --only "
                         f"{','.join(missing)}`")
    ksg, ksg_std = record["ksg"]["cases"], record["ksg_standardise"]["cases"]
    columns = [record[name]["cases"] for name in
               ("compression", "compression_dense_ksg", "compression_pca", "compression_pca_kl")]
    (DOCS / "figures").mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for dim in (1, 2, 3, 4, 5):
        sel = [c for c in ksg if c["dim"] == dim]
        axes[0].scatter([c["mi"] for c in sel], [c["est"] for c in sel], s=12, label=f"{dim} dim/side")
    for label, cases, marker in zip(("conv autoencoder, flow or ksg (default)", "dense autoencoder + ksg",
                                     "pca + ksg", "pca + kl"), columns, "o^sx", strict=True):
        axes[1].scatter([c["mi"] for c in cases], [c["est"] for c in cases], marker=marker, s=18,
                        label=label, facecolors="none" if marker == "s" else None)
    for ax, title in zip(axes, ("ksg: Gaussian pairs, 5 injective maps", "compression: images of latents"),
                         strict=True):
        ax.plot([0, 3.2], [0, 3.2], "k--", lw=0.8)
        ax.set(xlabel="true MI (bits)", ylabel="estimated MI (bits)", title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "figures" / "estimator_accuracy.png", dpi=110)
    plt.close(fig)

    def cells(case: dict) -> list[str]:
        return [f"{case['est']:.3f}", "yes" if case["ok"] else "**no**"]

    comp_rows = [[row[0]["images"], row[0]["dim"], row[0]["mi"], *cells(row[0]), *cells(row[1]),
                  *cells(row[2]), f"{row[3]['est']:.3f}"] for row in zip(*columns, strict=True)]
    n_ok = [sum(c["ok"] for c in cases) for cases in columns]
    seconds = [np.mean([c["seconds"] for c in cases]) for cases in columns]
    return (
        "Command: `python -m benchmarks.accuracy` (part of `make bench`; `--only COLUMN` re-measures "
        f"one column); n = {N} per case. Every estimate is in `docs/accuracy_cases.json`. Where each "
        "column was measured:\n\n" + provenance(record) + "\n\n"
        "![true vs estimated](figures/estimator_accuracy.png)\n\n"
        "**ksg** (default `transform=\"auto\"`: normal scores per coordinate), 25 Gaussian pairs "
        "(0.1-3 bits) x 5 maps (identity, normal CDF, asinh, x|x|^0.5, random rotation) per "
        "dimension:\n\n"
        + table(["dim per side", "cases", "within tolerance", "median rel. error", "worst case"],
                summarise_ksg(ksg))
        + "\n\nThe same with `transform=\"standardise\"` (the papers' wording), for comparison:\n\n"
        + table(["dim per side", "cases", "within tolerance", "median rel. error", "worst case"],
                summarise_ksg(ksg_std))
        + "\n\n**compression**, relative noise 1e-3, k = 5, seed 0. Defaults: "
        "`compressor=\"auto\"` (the convolutional autoencoder for images, 16 channels: 3 candidates for "
        "750 steps, the best finishing 1500), `dim=\"auto\"` (codes as wide as each side's intrinsic "
        "dimension) and `entropy=\"auto\"` (on two autoencoder codes the larger of the flow model's "
        "MI, with noise of 3% of each code coordinate's spread, and KSG's); then, in 4 dimensions, "
        "the dense autoencoder (`compressor=\"autoencoder\"`, 3000 steps) with `entropy=\"ksg\"`, "
        "`compressor=\"pca\"` (the default for dense layers, with KSG), and PCA with the "
        "Kozachenko-Leonenko route `entropy=\"kl\"`. Cases within max(0.15 bit, 20%): "
        f"{n_ok[0]}, {n_ok[1]}, {n_ok[2]} and {n_ok[3]} of {len(columns[0])}; seconds a case: "
        + ", ".join(f"{sec:.0f}" for sec in seconds) + ".\n\n"
        + table(["images", "latent dim", "true MI", "default (conv, flow or KSG)", "within",
                 "dense autoencoder + ksg", "within",
                 "pca", "within", "pca + kl"], comp_rows)
    )


def main(columns: list[str] | None = None) -> None:
    """Measure `columns` (all by default), then write the accuracy section of docs/estimators.md."""
    columns = list(COLUMNS) if columns is None else columns
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise SystemExit(f"unknown accuracy columns {unknown}; valid: {', '.join(COLUMNS)}")
    body = render(measure(columns))
    write_section(DOCS / "estimators.md", "accuracy", body)
    print(body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated columns, of: {', '.join(COLUMNS)}")
    args = parser.parse_args()
    main(args.only.split(",") if args.only else None)
