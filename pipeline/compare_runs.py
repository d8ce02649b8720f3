"""Runs side by side: each estimator entry's plane in every run, on shared axes.

    python -m stages.figures --compare data/runs/szt_tanh/archive.zarr data/runs/szt_relu/archive.zarr
    python -m stages.figures --compare runs/a/archive.zarr mine/b_estimates.zarr   # an archive or a store
    from pipeline.compare_runs import compare_runs, runs_plane_figure

A comparison across runs (tanh against ReLU, two widths, two optimisers) is only fair on the
same axes and epoch colours: `runs_plane_figure` draws one panel per run with shared ranges and
one colour bar. `compare_runs` writes a figure per (entry, split) that every run holds into
`figures/<run>_vs_<run>.../`, with index.html: the figures and, per entry and split, the
findings' compression verdict for each run's hidden layers.
"""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from pipeline import figures as F
from pipeline.config import ConfigError
from pipeline.figure_files import FORMATS, FigureFiles, checked_formats
from pipeline.findings import compresses
from pipeline.report_html import CSS
from pipeline.results import changed_entries, masked, open_results
from pipeline.runs import RunPaths, store_attributes


def common_views(runs: dict[str, xr.Dataset]) -> list[tuple[str, str]]:
    """(entry, split) pairs holding a plane in every run, with the same parameters in each (as
    the estimate stage compares a store's entries: defaults included where both stores hold
    them), in the first run's order."""
    first, *others = runs.values()
    differ = {entry for other in others for entry in changed_entries(first, other)}
    views = [set(F.plane_views(other)) for other in others]
    return [(entry, split) for entry, split in F.plane_views(first)
            if entry not in differ and all((entry, split) in v for v in views)]


@F.styled
def runs_plane_figure(runs: dict[str, xr.Dataset], estimator: str, split: str) -> Figure:
    """One panel per run of one entry and split (seed means, intervals, saturated points hollow),
    on shared axes and one epoch colour scale."""
    arrays = {name: F.plane_arrays(results, estimator, split) for name, results in runs.items()}
    epochs = np.concatenate([a[3] for a in arrays.values()])
    fig, axes = plt.subplots(1, len(runs), figsize=(2.6 * len(runs) + 1.0, 3.0), sharex=True,
                             sharey=True, squeeze=False, layout="constrained")
    sc = None
    for ax, (name, results), (i_xt, i_ty, bands, own_epochs, n_seeds) in zip(
            axes[0], runs.items(), arrays.values(), strict=True):
        sc, _ = F.draw_plane(ax, i_xt, i_ty, own_epochs, [str(x) for x in results.layer.values],
                             intervals=bands, flags=F.saturation_flags(results, estimator, split),
                             epoch_range=epochs)
        seeds = "1 seed" if n_seeds == 1 else f"{n_seeds} seeds"
        ax.set_title(f"{name} ({seeds})", fontsize=8)
        ax.legend(fontsize=6, loc="best")
    # every run's means in view (set once: each panel's own limits would be the last one's);
    # intervals reaching past them are cut, as in a run's own planes
    for set_limits, index in ((axes[0, 0].set_xlim, 0), (axes[0, 0].set_ylim, 1)):
        set_limits(*_span(np.concatenate([a[index].ravel() for a in arrays.values()])))
    F.epoch_colorbar(fig, sc, ax=axes[0].tolist())
    fig.suptitle(f"{F.entry_label(next(iter(runs.values())), estimator)}; "
                 f"{F.SPLIT_WORDS.get(split, split)}; shared axes", fontsize=9)
    return fig


def _span(values: np.ndarray) -> tuple[float, float]:
    """From 0 bits (or the lowest value) to the highest, with a margin of 5% of the span."""
    finite = values[np.isfinite(values)]
    low, high = (min(0.0, float(finite.min())), float(finite.max())) if finite.size else (0.0, 1.0)
    margin = 0.05 * max(high - low, 1e-9)
    return low - margin, high + margin


def compression_rows(runs: dict[str, xr.Dataset], estimator: str, split: str) -> list[list[str]]:
    """Per run and hidden layer: the findings' verdict (`compresses`, interval rule) in words."""
    words = {1.0: "yes", 0.0: "no"}
    rows = []
    for name, results in runs.items():
        verdict = compresses(results, estimator, split)
        for layer, value in zip(verdict.layer.values, verdict.values, strict=True):
            rows.append([name, str(layer), words.get(float(value), "undetermined")])
    return rows


def run_store(path: str | Path) -> tuple[str, Path]:
    """The run name and results store of one run to compare, given by its archive (the store
    where the estimate stage writes it by default) or by its results store (one written with
    `--results`, away from its archive): the run is then named after the archive it records."""
    attrs = store_attributes(path)
    if "archive_recording" in attrs:  # only a results store names the recording it holds
        return RunPaths.from_archive(attrs.get("archive_path", path)).name, Path(path)
    paths = RunPaths.from_archive(path)
    return paths.name, paths.results


def load_runs(archives: list[str | Path]) -> dict[str, xr.Dataset]:
    """Each run's results store (an archive or a store, `run_store`), by run name; one
    ConfigError line for what is missing."""
    if len(archives) < 2:
        raise ConfigError("--compare: give two archives or more")
    runs = {}
    for archive in archives:
        name, store = run_store(archive)
        results = open_results(store)
        if results is None:
            raise ConfigError(f"--compare: {store} does not exist; run `make estimate "
                              f"ARCHIVE={archive}` first (or name the results store it wrote)")
        if name in runs:
            raise ConfigError(f"--compare: two runs are named {name!r}; compare runs of "
                              "different names")
        runs[name] = masked(results)
    return runs


def compare_runs(archives: list[str | Path], figures_dir: str | Path = "figures",
                 formats: str | tuple[str, ...] = FORMATS) -> int:
    """Every (entry, split) plane all the runs hold, side by side, into figures/<a>_vs_<b>/."""
    try:
        formats = checked_formats(formats)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    runs = load_runs(archives)
    views = common_views(runs)
    if not views:
        raise ConfigError(f"--compare: the runs {list(runs)} share no estimator entry (same name and "
                          "parameters) and split with values; estimate them with the same entries")
    out = Path(figures_dir) / "_vs_".join(runs)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>infoplane: "
             f"{html.escape(' vs '.join(runs))}</title><style>{CSS}</style></head><body>",
             f"<h1>infoplane: {html.escape(' vs '.join(runs))}</h1><p>Each entry and split every run "
             "holds, one panel per run on shared axes (seed means with their 90% intervals; hollow: "
             "saturated). Below each, whether each hidden layer compresses beyond the noise "
             "(pipeline.findings.compresses; undetermined without intervals).</p>"]
    with FigureFiles(out, progress="figures " + " vs ".join(runs), formats=formats) as files:
        for estimator, split in views:
            name = f"plane_{estimator}_{split}"
            files.save(runs_plane_figure(runs, estimator, split), name)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                           for row in compression_rows(runs, estimator, split))
            parts.append(f"<figure id='{name}'><h3>{html.escape(name)}</h3><img src='{name}.png' "
                         f"alt='{name}'><table><tr><th>run</th><th>layer</th><th>compresses beyond "
                         f"the noise</th></tr>{rows}</table></figure>")
    (out / "index.html").write_text("\n".join(parts) + "</body></html>")
    print(f"wrote {len(files.names)} figures and {out / 'index.html'}")
    return 0
