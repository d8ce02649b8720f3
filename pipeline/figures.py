"""Figures and the HTML report, from the results store and the archive's metadata only.

    python -m stages.figures --config configs/szt_tanh.toml     # or: make figures
    from pipeline.figures import information_plane_figure       # pure: Dataset in, figure out

Every plotting function takes arrays or a results Dataset and returns a matplotlib Figure; the
stage saves each as PNG and PDF under figures/<run>/ with deterministic names, and writes
index.html showing every figure beside the config, estimator parameters and provenance.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from pipeline.results import holding_values, seed_mean

CMAP = "viridis"  # perceptually uniform
SATURATION_TOL = 1e-6
QUANTITY = {"I_XT": "I(X;T)", "I_TY": "I(T;Y)"}


def _epoch_norm(epochs: np.ndarray) -> LogNorm:
    return LogNorm(vmin=max(1, epochs.min() + 1), vmax=epochs.max() + 1)


def saturation_limits(n_samples: int, labels: np.ndarray) -> tuple[float, float]:
    """log2(#samples) for I(X;T) and H(Y) for I(T;Y): values there carry no dynamics."""
    p = np.bincount(labels) / len(labels)
    p = p[p > 0]
    return float(np.log2(n_samples)), float(-(p * np.log2(p)).sum())


def draw_plane(ax, i_xt: np.ndarray, i_ty: np.ndarray, epochs: np.ndarray, layers: list[str],
               limits: tuple[float, float] | None = None, intervals: tuple | None = None,
               mark_epoch: int | None = None, flags: np.ndarray | None = None):
    """One marker per (epoch, layer) coloured by epoch; thin lines join the layers of an epoch.
    `intervals` (xlo, xhi, ylo, yhi, each (epoch, layer)) draw as grey bars through the points.
    Saturated points are hollow: `flags` (the store's saturation flags) or, without them, the
    points at `limits`."""
    norm = _epoch_norm(epochs)
    cmap = plt.get_cmap(CMAP)
    for e, epoch in enumerate(epochs):
        ax.plot(i_xt[e], i_ty[e], "-", color=cmap(norm(epoch + 1)), lw=0.4, alpha=0.5)
    colours = np.repeat(epochs[:, None] + 1, len(layers), axis=1)
    saturated = np.zeros_like(i_xt, dtype=bool)
    if flags is not None:
        saturated = flags
    elif limits is not None:
        saturated = (i_xt >= limits[0] - SATURATION_TOL) | (i_ty >= limits[1] - SATURATION_TOL)
    sc = ax.scatter(i_xt[~saturated], i_ty[~saturated], c=colours[~saturated], cmap=CMAP, norm=norm,
                    s=14, edgecolors="none")
    if saturated.any():
        ax.scatter(i_xt[saturated], i_ty[saturated], s=16, facecolors="none",
                   edgecolors=plt.get_cmap(CMAP)(norm(colours[saturated])), linewidths=0.8)
    if intervals is not None:  # lo..hi as drawn; a bootstrap interval need not hold its point
        xlo, xhi, ylo, yhi = (np.ravel(a) for a in intervals)
        ax.hlines(i_ty.ravel(), xlo, xhi, colors="0.55", lw=0.5, alpha=0.7, zorder=1)
        ax.vlines(i_xt.ravel(), ylo, yhi, colors="0.55", lw=0.5, alpha=0.7, zorder=1)
    if mark_epoch is not None and mark_epoch in epochs:
        row = int(np.flatnonzero(epochs == mark_epoch)[0])
        ax.plot(i_xt[row], i_ty[row], "-", color="crimson", lw=1.2)
        ax.scatter(i_xt[row], i_ty[row], marker="*", s=60, color="crimson", zorder=5,
                   label=f"early stopping (epoch {mark_epoch})")
    for l, name in enumerate(layers):  # label each layer at its last epoch
        ax.annotate(name, (i_xt[-1, l], i_ty[-1, l]), fontsize=6, alpha=0.7,
                    xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("I(X;T) (bits)")
    ax.set_ylabel("I(T;Y) (bits)")
    return sc, bool(saturated.any())


def _held(results: xr.Dataset, estimator: str, split: str) -> xr.Dataset:
    """One entry and split, on the epochs and seeds that hold values."""
    sel = results.sel(estimator=estimator, split=split)
    return sel.isel(epoch=holding_values(sel.I_XT, "epoch"), seed=holding_values(sel.I_XT, "seed"))


def _plane_arrays(results: xr.Dataset, estimator: str, split: str, confidence: float = 0.9):
    """Seed means with their intervals over the epochs and seeds that hold values: an entry
    estimated on part of the cells (`make estimate ARGS="--seeds 0 --every 3"`) is drawn from
    those alone. Intervals: `pipeline.results.seed_mean` at `confidence`."""
    sel = _held(results, estimator, split)
    xt, ty = seed_mean(sel, "I_XT", confidence), seed_mean(sel, "I_TY", confidence)
    intervals = tuple(band[end].values for band in (xt, ty) for end in ("lo", "hi"))
    return xt["mean"].values, ty["mean"].values, intervals, sel.epoch.values, sel.sizes["seed"]


def null_floor(results: xr.Dataset, estimator: str, split: str, variable: str) -> float | None:
    """The highest shuffle baseline (`<variable>_null`, mean over seeds) of one entry and split:
    values below it are within the estimator's bias at zero information (None if not stored)."""
    name = f"{variable}_null"
    if name not in results:
        return None
    values = _held(results, estimator, split)[name].mean("seed").values
    return float(np.nanmax(values)) if np.isfinite(values).any() else None


def interval_note(intervals: tuple, n_seeds: int, confidence: float = 0.9) -> str:
    """Which interval the bars show, in words (empty when there are none)."""
    if not any(np.isfinite(a).any() for a in intervals):
        return ""
    source = "t over seeds" if n_seeds >= 2 else "the cells' own intervals"
    return f"bars: {confidence:.0%} intervals ({source})"


def draw_floors(ax, results: xr.Dataset, estimator: str, split: str) -> bool:
    """Grey bands below the shuffle baselines of I(X;T) and I(T;Y), when stored."""
    drawn = False
    for variable, span in (("I_XT", ax.axvspan), ("I_TY", ax.axhspan)):
        floor = null_floor(results, estimator, split, variable)
        if floor is not None and floor > 0:
            span(0, floor, color="0.9", zorder=0,
                 label=f"{QUANTITY[variable]} shuffle baseline <= {floor:.3f} bits")
            drawn = True
    return drawn


def saturation_flags(results: xr.Dataset, estimator: str, split: str) -> np.ndarray | None:
    """(epoch, layer): saturated in more than half the seeds, from the store's flags (None if it has none)."""
    if "I_XT_saturated" not in results:
        return None
    sel = _held(results, estimator, split)
    flags = np.fmax(sel.I_XT_saturated, sel.I_TY_saturated).mean("seed").values
    return np.nan_to_num(flags) > 0.5


def information_plane_figure(results: xr.Dataset, estimator: str, split: str,
                             limits: tuple[float, float] | None = None, intervals: bool = True,
                             mark_epoch: int | None = None, ib: np.ndarray | None = None) -> Figure:
    """Mean over seeds of one estimator entry on one split, each point with its 90% interval
    (`intervals`), the shuffle baselines as grey floors and saturated points hollow."""
    i_xt, i_ty, bands, epochs, n_seeds = _plane_arrays(results, estimator, split)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    if ib is not None:  # beyond its last point the bound stays flat at the best I(T;Y)
        right = max(float(np.nanmax(i_xt)) if np.isfinite(i_xt).any() else 0, ib[-1, 0])
        bound = np.vstack([ib, [right, ib[-1, 1]]])
        ax.plot(bound[:, 0], bound[:, 1], "k--", lw=1, label="IB bound of p(x, y)")
    floors = draw_floors(ax, results, estimator, split)
    sc, saturated = draw_plane(ax, i_xt, i_ty, epochs, list(results.layer.values), limits,
                               bands if intervals else None, mark_epoch,
                               saturation_flags(results, estimator, split))
    fig.colorbar(sc, ax=ax, label="epoch + 1")
    params = str(results.parameters.sel(estimator=estimator).values)
    ax.set_title(f"{estimator} ({split}), mean of {n_seeds} seed(s)\n{params}", fontsize=7)
    notes = [interval_note(bands, n_seeds) if intervals else "",
             "hollow: saturated (near H(X) or H(Y))" if saturated else ""]
    notes = "; ".join(n for n in notes if n)
    if notes:
        ax.text(0.01, 0.01, notes, transform=ax.transAxes, fontsize=6)
    if ib is not None or mark_epoch is not None or floors:
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return fig


def comparison_figure(results: xr.Dataset, limits: tuple[float, float] | None = None) -> Figure:
    """Rows: estimator entries; columns: splits holding values. Axes shared within a method."""
    estimators = list(results.estimator.values)
    splits = [s for s in results.split.values if np.isfinite(results.I_XT.sel(split=s)).any()]
    fig, axes = plt.subplots(len(estimators), len(splits), squeeze=False, layout="constrained",
                             figsize=(3.4 * len(splits) + 1.2, 2.9 * len(estimators)))
    sc = None
    for r, estimator in enumerate(estimators):
        for c, split in enumerate(splits):
            ax = axes[r, c]
            i_xt, i_ty, bands, epochs, n_seeds = _plane_arrays(results, estimator, split)
            if np.isnan(i_xt).all():
                ax.text(0.5, 0.5, "no values", ha="center", transform=ax.transAxes)
                continue
            draw_floors(ax, results, estimator, split)
            sc, _ = draw_plane(ax, i_xt, i_ty, epochs, list(results.layer.values), limits, bands)
            ax.set_title(f"{estimator} / {split} ({n_seeds} seed(s), {len(epochs)} epochs)", fontsize=8)
        method = str(results.method.sel(estimator=estimator).values)
        same = [i for i, e in enumerate(estimators) if str(results.method.sel(estimator=e).values) == method]
        if same[0] != r:  # share axes with the first entry of the same method
            for c in range(len(splits)):
                axes[r, c].sharex(axes[same[0], c])
                axes[r, c].sharey(axes[same[0], c])
    if sc is not None:
        fig.colorbar(sc, ax=axes, label="epoch + 1", shrink=0.6)
    return fig


def mi_vs_epoch_figure(results: xr.Dataset, estimator: str, confidence: float = 0.9) -> Figure:
    """I(X;T) and I(T;Y) against epoch per layer (mean over seeds, its interval as a band); one
    line style per split; the shuffle baselines, when stored, as a grey floor."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    epochs = results.epoch.values + 1
    styles = {"all": "-", "train": "-", "test": "--"}
    n_layers = results.sizes["layer"]
    # tab10 repeats after ten layers (VGG-16 records 16): a sequential map then, input side dark
    colours = (plt.get_cmap("tab10") if n_layers <= 10 else
               lambda l: plt.get_cmap("viridis")(l / max(n_layers - 1, 1)))
    for v, variable in enumerate(("I_XT", "I_TY")):
        for split in results.split.values:
            sel = results.sel(estimator=estimator, split=split)
            band = seed_mean(sel, variable, confidence)
            if f"{variable}_null" in sel:
                floor = sel[f"{variable}_null"].mean("seed").max("layer").values
                shown = np.isfinite(floor)
                axes[v].fill_between(epochs[shown], 0, floor[shown], color="0.88", lw=0,
                                     label=f"shuffle baseline ({split})")
            for l, layer in enumerate(results.layer.values):
                line = band.sel(layer=layer)
                finite = np.isfinite(line["mean"].values)  # epochs left out of a partial estimate
                axes[v].plot(epochs[finite], line["mean"].values[finite], styles.get(str(split), ":"),
                             color=colours(l), lw=1, label=f"{layer} ({split})")
                axes[v].fill_between(epochs[finite], line.lo.values[finite], line.hi.values[finite],
                                     color=colours(l), alpha=0.15, lw=0)
        axes[v].set(xscale="log", xlabel="epoch + 1", ylabel=f"{QUANTITY[variable]} (bits)")
    axes[1].legend(fontsize=6, ncol=2 if n_layers > 8 else 1, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"{estimator}: solid train (or all), dashed test; bands: {confidence:.0%} interval "
                 "of the mean over seeds", fontsize=9)
    fig.tight_layout()
    return fig


def dpi_violations(i_xt: np.ndarray) -> np.ndarray:
    """(epoch, layer pairs) True where I(X;T_l) < I(X;T_{l+1}) (a DPI violation)."""
    return i_xt[:, :-1] < i_xt[:, 1:] - 1e-9


def dpi_figure(results: xr.Dataset, estimator: str, split: str) -> Figure:
    i_xt = results.I_XT.sel(estimator=estimator, split=split).mean("seed").values
    violations = dpi_violations(i_xt)
    rate = float(violations.mean()) if violations.size else 0.0
    layers = list(results.layer.values)
    fig, ax = plt.subplots(figsize=(6, 2.5 + 0.2 * len(layers)))
    ax.imshow(violations.T, aspect="auto", cmap="Reds", vmin=0, vmax=1, interpolation="nearest")
    pairs = [f"{a} > {b}" for a, b in zip(layers[:-1], layers[1:], strict=True)]
    ax.set_yticks(range(len(layers) - 1), pairs, fontsize=6)
    ticks = np.linspace(0, len(results.epoch) - 1, min(8, len(results.epoch))).astype(int)
    ax.set_xticks(ticks, results.epoch.values[ticks])
    ax.set_xlabel("epoch")
    ax.set_title(f"DPI I(X;T_l) >= I(X;T_l+1), {estimator} ({split}): violated in {rate:.1%} "
                 "of cells (red)", fontsize=8)
    fig.tight_layout()
    return fig


def early_stopping_epoch(loss_test: np.ndarray) -> int | None:
    """Epoch of minimal test loss (None when no test loss was recorded)."""
    return int(np.nanargmin(loss_test)) if np.isfinite(loss_test).any() else None


def training_figure(histories: list[dict[str, np.ndarray]]) -> tuple[Figure, int | None]:
    """Loss and accuracy on both splits (mean over seeds), the early-stopping epoch marked."""
    length = min(len(h["loss_train"]) for h in histories)
    mean = {k: np.mean([h[k][:length] for h in histories], axis=0) for k in histories[0]}
    stop = early_stopping_epoch(mean["loss_test"])
    epochs = np.arange(length) + 1
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric, label in ((axes[0], "loss", "cross-entropy (nats)"), (axes[1], "accuracy", "accuracy")):
        for split in ("train", "test"):
            finite = np.isfinite(mean[f"{metric}_{split}"])  # a recording may log some epochs only
            if finite.any():
                ax.plot(epochs[finite], mean[f"{metric}_{split}"][finite], label=split)
        if stop is not None:
            ax.axvline(stop + 1, color="crimson", lw=0.8, ls="--", label=f"early stopping (epoch {stop})")
        ax.set(xscale="log", xlabel="epoch + 1", ylabel=label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"training curves, mean of {len(histories)} seed(s)", fontsize=9)
    fig.tight_layout()
    return fig, stop


def diffusion_onset(mean: np.ndarray, std: np.ndarray, epochs: np.ndarray) -> int | None:
    """First epoch after which the gradient SNR (mean / std) stays below 1: drift -> diffusion."""
    snr = mean / np.where(std > 0, std, np.nan)
    below = snr < 1
    for i in range(len(below)):
        if below[i:].all() and np.isfinite(snr[i:]).all():
            return int(epochs[i])
    return None


def gradients_figure(epochs: np.ndarray, grad_mean: np.ndarray, grad_std: np.ndarray,
                     layers: list[str]) -> Figure:
    """Gradient mean and std per layer against epoch (log-log), with the diffusion onset."""
    fig, axes = plt.subplots(1, len(layers), figsize=(2.4 * len(layers), 2.8), sharey=True, squeeze=False)
    keep = epochs > 0
    for l, layer in enumerate(layers):
        ax = axes[0, l]
        ax.plot(epochs[keep], grad_mean[keep, l], label="mean")
        ax.plot(epochs[keep], grad_std[keep, l], label="std")
        onset = diffusion_onset(grad_mean[keep, l], grad_std[keep, l], epochs[keep])
        if onset is not None:
            ax.axvline(onset, color="crimson", ls="--", lw=0.8, label=f"diffusion from {onset}")
        ax.set(xscale="log", yscale="log", xlabel="epoch", title=layer)
        ax.legend(fontsize=5)
    axes[0, 0].set_ylabel("gradient norm")
    fig.suptitle("gradient signal (norm of the mean) and noise (std) per layer", fontsize=9)
    fig.tight_layout()
    return fig


def fisher_figure(results: xr.Dataset) -> Figure:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    trace = results.fisher_trace.mean("seed")
    for layer in results.layer.values:
        ax.plot(results.epoch.values + 1, trace.sel(layer=layer), label=str(layer))
    ax.set(xscale="log", yscale="log", xlabel="epoch + 1", ylabel="trace of Fisher information",
           title="information in the weights (Achille et al.)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def save(fig: Figure, out_dir: Path, name: str, saved: list[str]) -> None:
    for ext in ("png", "pdf"):
        fig.savefig(out_dir / f"{name}.{ext}", dpi=130, metadata={"CreationDate": None}
                    if ext == "pdf" else None)
    plt.close(fig)
    saved.append(name)


def write_report(out_dir: Path, run: str, figures: list[str], config: dict[str, Any],
                 results_attrs: dict[str, Any], estimators: dict[str, str], messages: list[str]) -> Path:
    """index.html: every figure, with the config, estimator parameters and provenance beside it."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>infoplane: {html.escape(run)}"
             "</title><style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
             "img{max-width:100%}pre{background:#f4f4f4;padding:8px;overflow:auto;font-size:11px}"
             "</style></head><body>", f"<h1>infoplane report: {html.escape(run)}</h1>"]
    if messages:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in messages) + "</ul>")
    parts.append("<h2>Figures</h2>")
    for name in figures:
        parts.append(f"<h3>{html.escape(name)}</h3><a href='{name}.pdf'><img src='{name}.png' "
                     f"alt='{html.escape(name)}'></a>")
    parts.append("<h2>Estimator entries</h2><pre>" + html.escape(json.dumps(estimators, indent=2)) + "</pre>")
    parts.append("<h2>Config</h2><pre>" + html.escape(json.dumps(config, indent=2)) + "</pre>")
    parts.append("<h2>Provenance</h2><pre>" + html.escape(json.dumps(results_attrs, indent=2, default=str))
                 + "</pre></body></html>")
    path = out_dir / "index.html"
    path.write_text("\n".join(parts))
    return path
