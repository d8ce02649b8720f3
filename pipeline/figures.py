"""Figures of a run, from the results store and the archive's metadata only.

    python -m stages.figures --config configs/szt_tanh.toml     # or: make figures
    from pipeline.figures import information_plane_figure       # pure: Dataset in, figure out

Every plotting function takes arrays or a results Dataset and returns a matplotlib Figure; the
stage saves each as PNG and PDF under figures/<run>/ with deterministic names
(pipeline.figure_files, in worker processes while it draws the next), and
pipeline.report_html writes index.html around them. Conventions: titles name the estimator in
words with its main parameter; every time axis and colour bar is in epochs trained (0 = before
training, linear below 1, logarithmic above); layers are told apart by marker shape.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.colors import SymLogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from pipeline.entropy import entropy_of_counts
from pipeline.figure_files import STYLE
from pipeline.results import entry_parameters, holding_values, parameters_key, seed_mean

CMAP = "viridis"  # perceptually uniform
SATURATION_TOL = 1e-6
QUANTITY = {"I_XT": "I(X;T)", "I_TY": "I(T;Y)"}
SPLIT_WORDS = {"all": "all samples", "train": "training samples", "test": "test samples"}
# One epoch convention on every axis and colour bar: epochs trained, 0 = before training (the
# archive's snapshot epochs), on a scale linear below 1 and logarithmic above.
EPOCH_LABEL = "epochs trained (0 = before training)"
METHOD_WORDS = {"binning": "binning", "kde": "KDE", "renyi": "matrix Renyi", "ksg": "KSG",
                "gaussian": "Gaussian", "compression": "compression", "variational": "variational bound"}
MARKERS = "osD^vP<>X*hpd8H"  # the first 15 layers' shapes: matplotlib's filled markers


def layer_marker(layer: int) -> tuple[str, float]:
    """The marker of the layer at position `layer` and its area in points^2: a filled shape
    for the first 15, then the layer's number (1-based) drawn as the marker, so that no two
    layers of a deep network share one (VGG-16 records 16)."""
    if layer < len(MARKERS):
        return MARKERS[layer], 14.0
    return f"${layer + 1}$", 22.0 * len(str(layer + 1))


def _epoch_norm(epochs: np.ndarray) -> SymLogNorm:
    return SymLogNorm(linthresh=1.0, vmin=0.0, vmax=max(1.0, float(epochs.max())), base=10)


def epoch_ticks(last: float) -> list[int]:
    """The labelled epochs of an axis from 0 to `last`: 0, 1, 2, 5, 10, 20, 50 (0, 1, 10, 100, ...
    from 100 epochs on, where 2 and 5 would crowd the labels). The scale's own labels would be
    10^0, 10^1, and a run of a few epochs would get no label past 1."""
    multiples = (1, 2, 5) if last < 100 else (1,)
    ticks, decade = [0], 1
    while decade <= last:
        ticks += [m * decade for m in multiples if m * decade <= last]
        decade *= 10
    return ticks


def epoch_axis(ax, epochs: np.ndarray | None = None) -> None:
    """The x axis in epochs trained: linear from 0 to 1, logarithmic beyond; up to the last of
    `epochs` where given (at least 1, so that one snapshot at epoch 0 still has an axis)."""
    ax.set_xscale("symlog", linthresh=1.0)
    if epochs is not None and len(epochs):
        last = max(1.0, float(np.max(epochs)))
        ax.set_xlim(0, last)
        ticks = epoch_ticks(last)
        ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel(EPOCH_LABEL)


def epoch_colorbar(fig: Figure, mappable, **kwargs):
    """A colour bar of epochs trained (`_epoch_norm`), labelled as `epoch_axis` is."""
    bar = fig.colorbar(mappable, label=EPOCH_LABEL, **kwargs)
    ticks = epoch_ticks(mappable.norm.vmax)
    bar.set_ticks(ticks, labels=[str(t) for t in ticks])
    return bar


def styled(make):
    """Draw under the shared sizes (matplotlib's global settings are left as they were)."""
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return make(*args, **kwargs)
    wrapper.__name__, wrapper.__doc__ = make.__name__, make.__doc__
    return wrapper


def entry_label(results: xr.Dataset, estimator: str) -> str:
    """An estimator entry in words with its main parameter (defaults filled in), for titles.

    The defaults are those the store was computed with (`resolved_parameters`); only a store
    that predates them takes this installation's (and imports the estimators, torch with them).
    """
    method = str(results.method.sel(estimator=estimator).values)
    p = entry_parameters(results, estimator)
    if parameters_key(results) == "parameters":
        from pipeline.estimators import parameters

        try:
            p = {**parameters(method), **p}
        except ValueError:  # an estimator this installation does not know: its table as given
            pass
    words = {
        "binning": lambda: (f"binning, bin size {p['bin_size']}" if p.get("bin_size") else
                            f"binning, {p.get('n_bins')} bins"
                            + (" over each layer's range" if p.get("range") == "layer" else "")),
        "kde": lambda: f"KDE {p.get('bound')} bound, noise variance {p.get('noise_variance')}",
        "renyi": lambda: (f"matrix Renyi{'' if p.get('alpha') == 1.01 else ', alpha ' + str(p.get('alpha'))}"
                          f", widths {p.get('sigma_x')} (input), {p.get('sigma_t')} (layer)"),
        "ksg": lambda: f"KSG, k = {p.get('k')}",
        "compression": lambda: f"compression to {p.get('dim')} dimensions, noise {p.get('noise')}",
    }
    return words[method]() if method in words else f"{method} ({estimator})"


PLANE_TITLE_CHARS = 62  # characters of a title line that fit above a 4.6-inch plane


def plane_title(results: xr.Dataset, estimator: str, split: str, n_seeds: int) -> str:
    seeds = "1 seed" if n_seeds == 1 else f"mean of {n_seeds} seeds"
    return (f"{entry_label(results, estimator)}; {SPLIT_WORDS.get(split, split)}; {seeds}"
            f"{fewer_seeds(results, estimator, split)}")


def fewer_seeds(results: xr.Dataset, estimator: str, split: str) -> str:
    """" (2 at epochs 30-40)" where some snapshots hold fewer seeds than the others (seeds
    recorded for different numbers of epochs), so that no title claims a mean of more seeds
    than a point has; empty where every snapshot has them all."""
    sel = _held(results, estimator, split)
    counts = np.isfinite(sel.I_XT).any("layer").sum("seed").values
    epochs = sel.epoch.values
    parts = []
    for count in sorted(set(counts[counts < counts.max()].tolist()), reverse=True):
        at = np.flatnonzero(counts == count)
        contiguous = at[-1] - at[0] == len(at) - 1 and len(at) > 2
        where = (f"{epochs[at[0]]}-{epochs[at[-1]]}" if contiguous else
                 ", ".join(str(e) for e in epochs[at][:4]) + (", ..." if len(at) > 4 else ""))
        parts.append(f"{count} at epoch{'s' if len(at) > 1 else ''} {where}")
    return f" ({'; '.join(parts)})" if parts else ""


def saturation_limits(n_samples: int, labels: np.ndarray) -> tuple[float, float]:
    """log2(#samples) for I(X;T) and H(Y) for I(T;Y): values there carry no dynamics."""
    return float(np.log2(n_samples)), entropy_of_counts(np.bincount(labels))


def keep_in_view(ax, which: str, means: np.ndarray, ceiling: float | None = None) -> None:
    """Let axis `which` ("x" or "y") run from just below 0 bits (or the lowest mean) to just
    above `ceiling` (or the highest mean), where intervals reach further.

    No MI lies below zero, and a plug-in value cannot pass its ceiling (log2 of the samples,
    H(Y)), yet the t interval of a 2-seed mean (quantile 6.3) often reaches far past both and
    would squeeze the points into a strip; the axis cuts such an interval instead.
    """
    get, set_ = (ax.get_xlim, ax.set_xlim) if which == "x" else (ax.get_ylim, ax.set_ylim)
    low, high = get()
    finite = np.asarray(means)[np.isfinite(means)]
    floor = min(0.0, float(finite.min())) if finite.size else 0.0
    top = None if ceiling is None else max(ceiling, float(finite.max()) if finite.size else ceiling)
    # a margin of the span shown, not of the ceiling: points far below it (7.6 bits of 200
    # samples against a layer's 0.6) would otherwise get an axis reaching far below zero
    margin = 0.04 * max((high if top is None else min(high, top)) - floor, 1e-9)
    set_(max(low, floor - margin), high if top is None else min(high, top + margin))


def draw_plane(ax, i_xt: np.ndarray, i_ty: np.ndarray, epochs: np.ndarray, layers: list[str],
               limits: tuple[float, float] | None = None, intervals: tuple | None = None,
               mark_epoch: int | None = None, flags: np.ndarray | None = None,
               epoch_range: np.ndarray | None = None):
    """One marker per (epoch, layer) coloured by epoch; thin lines join the layers of an epoch.
    `intervals` (xlo, xhi, ylo, yhi, each (epoch, layer)) draw as grey bars through the points.
    Saturated points are hollow: `flags` (the store's saturation flags) or, without them, the
    points at `limits`. `epoch_range`: the epochs the colour scale spans (default `epochs`), so
    that panels of runs of other lengths share one."""
    norm = _epoch_norm(epochs if epoch_range is None else epoch_range)
    cmap = plt.get_cmap(CMAP)
    for e, epoch in enumerate(epochs):
        ax.plot(i_xt[e], i_ty[e], "-", color=cmap(norm(epoch)), lw=0.4, alpha=0.5)
    saturated = np.zeros_like(i_xt, dtype=bool)
    if flags is not None:
        saturated = flags
    elif limits is not None:
        saturated = (i_xt >= limits[0] - SATURATION_TOL) | (i_ty >= limits[1] - SATURATION_TOL)
    sc = None
    for l, name in enumerate(layers):  # one marker shape per layer, named in the legend
        (marker, size), full, hollow = layer_marker(l), ~saturated[:, l], saturated[:, l]
        sc = ax.scatter(i_xt[full, l], i_ty[full, l], c=epochs[full], cmap=CMAP, norm=norm, s=size,
                        marker=marker, edgecolors="none")
        if hollow.any():
            ax.scatter(i_xt[hollow, l], i_ty[hollow, l], s=size + 2, marker=marker, facecolors="none",
                       edgecolors=cmap(norm(epochs[hollow])), linewidths=0.8)
        if np.isfinite(i_xt[:, l]).any():  # a layer left out of a partial run gets no entry
            ax.scatter([], [], marker=marker, color="0.35", s=size, label=str(name))
    if intervals is not None:  # lo..hi as drawn; a bootstrap interval need not hold its point
        xlo, xhi, ylo, yhi = (np.ravel(a) for a in intervals)
        ax.hlines(i_ty.ravel(), xlo, xhi, colors="0.55", lw=0.5, alpha=0.7, zorder=1)
        ax.vlines(i_xt.ravel(), ylo, yhi, colors="0.55", lw=0.5, alpha=0.7, zorder=1)
        keep_in_view(ax, "x", i_xt, None if limits is None else limits[0])
        keep_in_view(ax, "y", i_ty, None if limits is None else limits[1])
    if mark_epoch is not None and mark_epoch in epochs:
        row = int(np.flatnonzero(epochs == mark_epoch)[0])
        ax.plot(i_xt[row], i_ty[row], "-", color="crimson", lw=1.2)
        ax.scatter(i_xt[row], i_ty[row], marker="*", s=60, color="crimson", zorder=5,
                   label=f"early stopping (epoch {mark_epoch})")
    ax.set_xlabel("I(X;T) (bits)")
    ax.set_ylabel("I(T;Y) (bits)")
    return sc, bool(saturated.any())


def _held(results: xr.Dataset, estimator: str, split: str) -> xr.Dataset:
    """One entry and split, on the epochs and seeds that hold values."""
    sel = results.sel(estimator=estimator, split=split)
    return sel.isel(epoch=holding_values(sel.I_XT, "epoch"), seed=holding_values(sel.I_XT, "seed"))


def plane_bands(results: xr.Dataset, estimator: str, split: str, confidence: float = 0.9):
    """(epochs, seed_mean of I(X;T), seed_mean of I(T;Y), seeds) over the epochs and seeds that
    hold values: an entry estimated on part of the cells (`make estimate ARGS="--seeds 0
    --every 3"`) is drawn from those alone. Intervals: `pipeline.results.seed_mean`."""
    sel = _held(results, estimator, split)
    return (sel.epoch.values, seed_mean(sel, "I_XT", confidence), seed_mean(sel, "I_TY", confidence),
            sel.sizes["seed"])


def plane_arrays(results: xr.Dataset, estimator: str, split: str, confidence: float = 0.9):
    """`plane_bands` as arrays: means, (xlo, xhi, ylo, yhi), epochs and the number of seeds."""
    epochs, xt, ty, n_seeds = plane_bands(results, estimator, split, confidence)
    intervals = tuple(band[end].values for band in (xt, ty) for end in ("lo", "hi"))
    return xt["mean"].values, ty["mean"].values, intervals, epochs, n_seeds


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


@styled
def information_plane_figure(results: xr.Dataset, estimator: str, split: str,
                             limits: tuple[float, float] | None = None, intervals: bool = True,
                             mark_epoch: int | None = None, ib: np.ndarray | None = None) -> Figure:
    """Mean over seeds of one estimator entry on one split, each point with its 90% interval
    (`intervals`), the shuffle baselines as grey floors and saturated points hollow."""
    i_xt, i_ty, bands, epochs, n_seeds = plane_arrays(results, estimator, split)
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    if ib is not None:  # beyond its last point the bound stays flat at the best I(T;Y)
        right = max(float(np.nanmax(i_xt)) if np.isfinite(i_xt).any() else 0, ib[-1, 0])
        bound = np.vstack([ib, [right, ib[-1, 1]]])
        ax.plot(bound[:, 0], bound[:, 1], "k--", lw=1, label="IB bound of p(x, y)")
    draw_floors(ax, results, estimator, split)
    sc, saturated = draw_plane(ax, i_xt, i_ty, epochs, list(results.layer.values), limits,
                               bands if intervals else None, mark_epoch,
                               saturation_flags(results, estimator, split))
    epoch_colorbar(fig, sc, ax=ax)
    notes = [interval_note(bands, n_seeds) if intervals else "",
             "hollow: saturated (near H(X) or H(Y))" if saturated else ""]
    notes = "; ".join(n for n in notes if n)
    title = plane_title(results, estimator, split, n_seeds) + (f"\n{notes}" if notes else "")
    # lines wider than the axes are cut at the figure's edge: wrap each at the plane's width
    ax.set_title("\n".join(textwrap.fill(line, PLANE_TITLE_CHARS) for line in title.splitlines()))
    ax.legend(loc="best", ncol=2 if results.sizes["layer"] > 8 else 1)
    fig.tight_layout()
    return fig


def views_with(results: xr.Dataset, *variables: str) -> list[tuple[str, str]]:
    """(entry, split) pairs that hold values of every one of `variables`, entries in store order
    (an archive without labels has I(X;T) and no I(T;Y))."""
    return [(str(e), str(s)) for e in results.estimator.values for s in results.split.values
            if all(np.isfinite(results[v].sel(estimator=e, split=s)).any() for v in variables)]


def plane_views(results: xr.Dataset) -> list[tuple[str, str]]:
    """(entry, split) pairs that can be drawn as a plane: with values of both I(X;T) and I(T;Y)."""
    return views_with(results, "I_XT", "I_TY")


@styled
def comparison_figure(results: xr.Dataset, limits: tuple[float, float] | None = None,
                      columns: int = 3) -> Figure:
    """Every entry and split as one small plane, in a grid as wide as a two-column page
    (7 inches); each panel has its own ranges, named on its axes."""
    panels = plane_views(results) or [(str(results.estimator.values[0]), str(results.split.values[0]))]
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, squeeze=False, layout="constrained",
                             figsize=(7.0, 0.4 + 2.2 * rows))
    sc, any_saturated = None, False
    for ax, (estimator, split) in zip(axes.flat, panels, strict=False):
        i_xt, i_ty, bands, epochs, n_seeds = plane_arrays(results, estimator, split)
        if np.isnan(i_xt).all():
            ax.text(0.5, 0.5, "no values", ha="center", transform=ax.transAxes)
            continue
        draw_floors(ax, results, estimator, split)
        sc, saturated = draw_plane(ax, i_xt, i_ty, epochs, list(results.layer.values), limits, bands,
                                   flags=saturation_flags(results, estimator, split))
        any_saturated |= saturated
        # a panel is about 40 characters wide at this size: longer labels run into the next
        label = textwrap.fill(entry_label(results, estimator), 40)
        ax.set_title(f"{label}\n{SPLIT_WORDS.get(split, split)}, {n_seeds} seed(s), {len(epochs)} epochs",
                     fontsize=6.5)
        ax.set_xlabel("I(X;T) (bits)", fontsize=7)
        ax.set_ylabel("I(T;Y) (bits)", fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    shown = {}  # every panel's layer markers: a partial run may leave a layer out of some
    for ax in axes.flat:
        shown.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    keep = [(shown[name], name) for name in map(str, results.layer.values) if name in shown]
    if keep:
        fig.legend(*zip(*keep, strict=True), loc="outside lower center", ncol=min(8, len(keep)))
    if sc is not None:
        epoch_colorbar(fig, sc, ax=axes, shrink=0.6)
    fig.suptitle("Every estimator entry, each panel on its own ranges (mean over seeds, 90% intervals)"
                 + ("\nhollow: saturated (near H(X) or H(Y))" if any_saturated else ""))
    return fig


LINE_STYLES = [("-", "solid"), ("--", "dashed"), (":", "dotted"), ("-.", "dash-dotted")]


def split_styles(splits: list[str]) -> dict[str, tuple[str, str]]:
    """(matplotlib line style, its name) per split: training samples solid, test dashed, all
    dotted when shown beside them; other splits take the styles left, in order."""
    preferred = {"train": 0, "test": 1, "all": 2 if len(splits) > 1 else 0}
    styles = {s: LINE_STYLES[preferred[s]] for s in splits if s in preferred}
    free = [style for style in LINE_STYLES if style not in styles.values()] or LINE_STYLES
    others = [s for s in splits if s not in styles]
    styles.update({s: free[i % len(free)] for i, s in enumerate(others)})
    return styles


def layer_colours(n_layers: int):
    """A colour per layer index: tab10, or past ten layers (VGG-16 records 16), where tab10
    repeats, a sequential map with the input side dark."""
    if n_layers <= 10:
        return plt.get_cmap("tab10")
    return lambda l: plt.get_cmap("viridis")(l / max(n_layers - 1, 1))


def draw_curves(ax, sel: xr.Dataset, variable: str, style: str, label: str, colours,
                confidence: float = 0.9) -> np.ndarray:
    """One entry and split of `variable` against epochs: each layer's seed mean as a line in
    `style` with its interval as a band, the shuffle baseline (when stored) as a grey floor;
    returns the means drawn. `label` formats a layer's legend entry."""
    epochs = sel.epoch.values
    band = seed_mean(sel, variable, confidence)
    if f"{variable}_null" in sel:
        floor = sel[f"{variable}_null"].mean("seed").max("layer").values
        shown = np.isfinite(floor)
        if shown.any():
            ax.fill_between(epochs[shown], 0, floor[shown], color="0.88", lw=0,
                            label=label.format(layer="shuffle baseline"))
    for l, layer in enumerate(sel.layer.values):
        line = band.sel(layer=layer)
        finite = np.isfinite(line["mean"].values)  # epochs left out of a partial estimate
        ax.plot(epochs[finite], line["mean"].values[finite], style, color=colours(l), lw=1,
                label=label.format(layer=layer), marker="o" if finite.sum() == 1 else None, ms=3)
        ax.fill_between(epochs[finite], line.lo.values[finite], line.hi.values[finite],
                        color=colours(l), alpha=0.15, lw=0)
    return band["mean"].values


def curve_legend(ax, layers: list[str], splits: list[str], styles: dict[str, tuple[str, str]]) -> list:
    """Legend handles of `draw_curves`' lines: with one split, its lines; with several, one
    entry per layer drawn (its colour) and one per split (its line style), since a layer x split
    list overflows the figure for a deep network."""
    drawn = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    if len(splits) < 2:
        return list(drawn.values())
    colours = {}
    for split in splits:
        for layer in layers:
            line = drawn.get(f"{layer} ({split})")
            if line is not None:
                colours.setdefault(layer, line.get_color())
    handles = [Line2D([], [], color=colours[layer], label=layer) for layer in layers if layer in colours]
    handles += [Line2D([], [], color="0.3", ls=styles[s][0], label=SPLIT_WORDS.get(s, s)) for s in splits]
    if any(label.startswith("shuffle baseline") for label in drawn):
        handles.append(Patch(color="0.88", label="shuffle baseline"))
    return handles


@styled
def mi_vs_epoch_figure(results: xr.Dataset, estimator: str, confidence: float = 0.9) -> Figure:
    """I(X;T) and I(T;Y) against epoch per layer (mean over seeds, its interval as a band); one
    line style per split; the shuffle baselines, when stored, as a grey floor."""
    variables = [v for v in ("I_XT", "I_TY") if views_with(results.sel(estimator=[estimator]), v)] or ["I_XT"]
    fig, axes = plt.subplots(1, len(variables), figsize=(7.0, 2.8), squeeze=False)
    axes = axes[0]
    colours = layer_colours(results.sizes["layer"])
    splits = [str(s) for s in results.split.values
              if np.isfinite(results.I_XT.sel(estimator=estimator, split=s)).any()]
    styles = split_styles(splits)
    for ax, variable in zip(axes, variables, strict=True):
        means = [draw_curves(ax, results.sel(estimator=estimator, split=split), variable, styles[split][0],
                             f"{{layer}} ({split})" if len(splits) > 1 else "{layer}", colours, confidence)
                 for split in splits]
        if means:  # set once, from every split's means: set per split, it cut the later ones
            keep_in_view(ax, "y", np.concatenate([m.ravel() for m in means]))
        epoch_axis(ax, results.epoch.values)
        ax.set_ylabel(f"{QUANTITY[variable]} (bits)")
    handles = curve_legend(axes[-1], [str(x) for x in results.layer.values], splits, styles)
    below = 0.0  # inches under the axes that a legend below them takes
    if len(handles) <= 24:  # beside the axes, in one or two columns
        axes[-1].legend(handles=handles, ncol=max(1, math.ceil(len(handles) / 12)), loc="upper left",
                        bbox_to_anchor=(1.02, 1))
    else:  # a deep network's layers: below the axes, six to a row, the figure taller to hold them
        below = 0.16 * math.ceil(len(handles) / 6)
        fig.set_size_inches(7.0, 2.8 + below)
        fig.legend(handles=handles, ncol=6, loc="lower center", fontsize=6)
    lines = (", ".join(f"{styles[s][1]}: {SPLIT_WORDS.get(s, s)}" for s in splits) if len(splits) > 1
             else SPLIT_WORDS.get(splits[0], splits[0]) if splits else "no values")
    n_seeds = max((_held(results, estimator, split).sizes["seed"] for split in splits), default=0)
    fewer = fewer_seeds(results, estimator, splits[0]) if splits else ""
    band = (f"mean of {n_seeds} seeds{fewer}, band: its {confidence:.0%} interval (t over seeds)"
            if n_seeds >= 2 else f"1 seed, band: the cells' own {confidence:.0%} intervals (where stored)")
    # about 100 characters of the title fit across the 7-inch figure: wrap the rest
    fig.suptitle(f"{entry_label(results, estimator)}\n{textwrap.fill(f'{lines}; {band}', 100)}")
    fig.tight_layout(rect=(0, below / fig.get_size_inches()[1], 1, 1))
    return fig


def dpi_violations(i_xt: np.ndarray) -> np.ndarray:
    """(epoch, layer pairs) True where I(X;T_l) < I(X;T_{l+1}) (a DPI violation)."""
    return i_xt[:, :-1] < i_xt[:, 1:] - 1e-9


def dpi_rate(results: xr.Dataset, estimator: str, split: str) -> float:
    """Share of (epoch, adjacent layer pair) cells of the seed mean where the DPI is violated."""
    violations = dpi_violations(results.I_XT.sel(estimator=estimator, split=split).mean("seed").values)
    return float(violations.mean()) if violations.size else 0.0


@styled
def dpi_figure(results: xr.Dataset, estimator: str, split: str) -> Figure:
    """Where I(X;T_l) < I(X;T_l+1) (red), per adjacent layer pair and snapshot; sized by the
    number of pairs (the report states a clean result in words instead of drawing it)."""
    i_xt = results.I_XT.sel(estimator=estimator, split=split).mean("seed").values
    violations = dpi_violations(i_xt)
    layers = list(results.layer.values)
    fig, ax = plt.subplots(figsize=(7.0, 0.9 + 0.16 * len(layers)))
    ax.imshow(violations.T, aspect="auto", cmap="Reds", vmin=0, vmax=1, interpolation="nearest")
    pairs = [f"{a} > {b}" for a, b in zip(layers[:-1], layers[1:], strict=True)]
    ax.set_yticks(range(len(layers) - 1), pairs, fontsize=6)
    ticks = np.linspace(0, len(results.epoch) - 1, min(8, len(results.epoch))).astype(int)
    ax.set_xticks(ticks, results.epoch.values[ticks])
    ax.set_xlabel(f"{EPOCH_LABEL}, one column per snapshot")
    rate = float(violations.mean()) if violations.size else 0.0
    ax.set_title(f"data-processing inequality I(X;T_l) >= I(X;T_l+1), {entry_label(results, estimator)}; "
                 f"{SPLIT_WORDS.get(split, split)}: violated (red) in {rate:.1%} of cells")
    fig.tight_layout()
    return fig


def early_stopping_epoch(loss_test: np.ndarray) -> int | None:
    """Epoch of minimal test loss (None when no test loss was recorded)."""
    return int(np.nanargmin(loss_test)) if np.isfinite(loss_test).any() else None


@styled
def training_figure(histories: list[dict[str, np.ndarray]]) -> tuple[Figure, int | None]:
    """Loss and accuracy on both splits (mean over seeds), the early-stopping epoch marked."""
    length = min(len(h["loss_train"]) for h in histories)
    mean = {k: np.mean([h[k][:length] for h in histories], axis=0) for k in histories[0]}
    stop = early_stopping_epoch(mean["loss_test"])
    epochs = np.arange(length)  # history index = epochs trained
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.8))
    for ax, metric, label in ((axes[0], "loss", "cross-entropy (nats)"), (axes[1], "accuracy", "accuracy")):
        for split in ("train", "test"):
            finite = np.isfinite(mean[f"{metric}_{split}"])  # a recording may log some epochs only
            if finite.any():
                ax.plot(epochs[finite], mean[f"{metric}_{split}"][finite], label=split,
                        marker="o" if finite.sum() == 1 else None, ms=3)
        if stop is not None:
            ax.axvline(stop, color="crimson", lw=0.8, ls="--", label=f"early stopping (epoch {stop})")
        epoch_axis(ax, epochs)
        ax.set_ylabel(label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(f"training curves, mean of {len(histories)} seed(s)")
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


@styled
def gradients_figure(epochs: np.ndarray, grad_mean: np.ndarray, grad_std: np.ndarray,
                     layers: list[str]) -> Figure:
    """Gradient mean and std per layer against epoch (log-log), with the diffusion onset; one
    legend for every panel."""
    columns = min(4, len(layers))
    rows = -(-len(layers) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7.0, 0.6 + 1.9 * rows), sharey=True, squeeze=False,
                             layout="constrained")
    keep = epochs > 0
    for l, layer in enumerate(layers):
        ax = axes.flat[l]
        ax.plot(epochs[keep], grad_mean[keep, l], label="norm of the mean gradient (signal)")
        ax.plot(epochs[keep], grad_std[keep, l], label="std of the gradients (noise)")
        onset = diffusion_onset(grad_mean[keep, l], grad_std[keep, l], epochs[keep])
        if onset is not None:
            ax.axvline(onset, color="crimson", ls="--", lw=0.8)
            ax.text(onset, 0.95, f" diffusion from {onset}", transform=ax.get_xaxis_transform(),
                    fontsize=6, color="crimson", va="top")
        ax.set(xscale="log", yscale="log", title=str(layer))
        ax.set_xlabel("epochs trained", fontsize=7)
    for ax in list(axes.flat)[len(layers):]:
        ax.set_visible(False)
    for r in range(rows):
        axes[r, 0].set_ylabel("gradient norm")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2)
    fig.suptitle("gradient signal and noise per layer (red: signal below noise from then on)")
    return fig


@styled
def fisher_figure(results: xr.Dataset) -> Figure:
    """Trace of the Fisher information of each layer's weights against epoch (mean over seeds)."""
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    trace = results.fisher_trace.mean("seed")
    for layer in results.layer.values:
        ax.plot(results.epoch.values, trace.sel(layer=layer), label=str(layer),
                marker="o" if results.sizes["epoch"] == 1 else None, ms=3)
    epoch_axis(ax, results.epoch.values)
    ax.set(yscale="log", ylabel="trace of the Fisher information",
           title="information in the weights (Achille et al.), mean over seeds")
    ax.legend(ncol=2 if results.sizes["layer"] > 8 else 1)
    fig.tight_layout()
    return fig
