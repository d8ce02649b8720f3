"""Parameter sweeps of a results store, and the figure of each: what a setting changes.

    from pipeline.sweeps import parameter_sweeps, sweep_figure
    for sweep in parameter_sweeps(results):           # e.g. binning at 10, 30 and 100 bins
        sweep_figure(results, sweep, "test")

A sweep is three or more entries of one method whose parameters (defaults filled in, as the
store resolved them) differ in one numeric parameter alone, however they were written (a
`sweep = {...}` table or entries written out); of entries with equal parameters the first in
the store stands for them. Its figure puts that parameter on the x axis:
each layer's I(X;T) and I(T;Y) at the last snapshot and the drop of I(X;T) from its peak, the
numbers the literature's conclusions rest on, so a reader sees at once whether a conclusion
("layer 2 compresses") holds across the settings or belongs to one of them.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from pipeline.figures import (
    METHOD_WORDS,
    QUANTITY,
    SPLIT_WORDS,
    keep_in_view,
    layer_colours,
    styled,
    views_with,
)
from pipeline.findings import compresses, hidden_layers, last_valid_index
from pipeline.results import entry_parameters, holding_values, masked, seed_mean

MIN_ENTRIES = 3  # two settings are a comparison (the comparison figure shows it), three a trend


@dataclass(frozen=True)
class Sweep:
    """Entries of one method that differ only in `parameter`, ordered by its `values`."""

    method: str
    parameter: str
    entries: tuple[str, ...]
    values: tuple[float, ...]

    @property
    def name(self) -> str:
        """For file names: the parameter and the first entry (unique per sweep)."""
        return f"{self.parameter}_{self.entries[0]}"


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def parameter_sweeps(results: xr.Dataset) -> list[Sweep]:
    """Every sweep among the entries holding values (see the module docstring)."""
    held = results.estimator.values[holding_values(masked(results).I_XT, "estimator")]
    tables = {str(e): {**entry_parameters(results, str(e)),
                       "method": str(results.method.sel(estimator=e).values)} for e in held}
    sweeps = []
    for parameter in sorted({p for table in tables.values() for p in table}):
        groups: dict[str, list[tuple[float, str]]] = {}
        for entry, table in tables.items():
            if _number(table.get(parameter)):
                rest = json.dumps({k: v for k, v in table.items() if k != parameter}, sort_keys=True)
                groups.setdefault(rest, []).append((float(table[parameter]), entry))
        for members in groups.values():
            # one entry per value: two with the same resolved parameters are one estimator
            by_value = dict(sorted(reversed(members), key=lambda member: member[0]))
            if len(by_value) >= MIN_ENTRIES:
                sweeps.append(Sweep(tables[next(iter(by_value.values()))]["method"], parameter,
                                    tuple(by_value.values()), tuple(by_value)))
    return sweeps


def disjoint_sweeps(results: xr.Dataset) -> list[Sweep]:
    """The sweeps sharing no entry with an earlier one (a grid of two parameters is swept along
    each): what a text can name once per entry."""
    taken: set[str] = set()
    out = []
    for sweep in parameter_sweeps(results):
        if taken.isdisjoint(sweep.entries):
            out.append(sweep)
            taken.update(sweep.entries)
    return out


def sweep_views(results: xr.Dataset) -> list[tuple[Sweep, str, str]]:
    """(sweep, split, figure file name) for each sweep on each split where it holds values."""
    planes = views_with(results, "I_XT", "I_TY")
    return [(sweep, str(split), f"sweep_{sweep.name}_{split}") for sweep in parameter_sweeps(results)
            for split in results.split.values if (sweep.entries[0], str(split)) in planes]


def sweep_values(results: xr.Dataset, sweep: Sweep, split: str, confidence: float = 0.9) -> dict:
    """Per entry (rows, in the sweep's order) and layer (columns): the seed means and intervals
    of I(X;T) and I(T;Y) at each layer's last snapshot holding a value, the drop of the I(X;T)
    mean from its peak there, and `compresses`' verdict (1, 0, NaN undetermined)."""
    cells = masked(results).sel(estimator=list(sweep.entries), split=split)
    out, bands = {}, {variable: seed_mean(cells, variable, confidence) for variable in ("I_XT", "I_TY")}
    for variable, band in bands.items():
        last = last_valid_index(band["mean"])
        for part in ("mean", "lo", "hi"):
            out[f"{variable}_{part}"] = band[part].isel(epoch=last).transpose("estimator", "layer").values
    mean = bands["I_XT"]["mean"]
    peak = mean.fillna(-np.inf).max("epoch")
    out["drop"] = (peak - mean.isel(epoch=last_valid_index(mean))).transpose("estimator", "layer").values
    verdicts = [compresses(results, entry, split) for entry in sweep.entries]
    out["compresses"] = np.array([v.reindex(layer=results.layer.values).values for v in verdicts])
    return out


@styled
def sweep_figure(results: xr.Dataset, sweep: Sweep, split: str, confidence: float = 0.9) -> Figure:
    """I(X;T) and I(T;Y) at the last snapshot and the drop of I(X;T) from its peak, per layer,
    against the swept parameter (log scale where its values span a factor of 10 or more). On the
    drop panel a filled marker is a compression `pipeline.findings.compresses` calls beyond the
    noise, a hollow one a drop it does not call, a cross one it cannot judge (no interval)."""
    values = sweep_values(results, sweep, split, confidence)
    x = np.array(sweep.values)
    layers = [str(name) for name in results.layer.values]
    colours = layer_colours(len(layers))
    fig, axes = plt.subplots(1, 3, figsize=(7.0, 2.6), layout="constrained")
    for ax, variable in zip(axes[:2], ("I_XT", "I_TY"), strict=True):
        for l, layer in enumerate(layers):
            mean, lo, hi = (values[f"{variable}_{part}"][:, l] for part in ("mean", "lo", "hi"))
            err = np.abs(np.vstack([mean - lo, hi - mean]))
            ax.errorbar(x, mean, yerr=np.nan_to_num(err), color=colours(l), marker="o", ms=3, lw=1,
                        capsize=2, label=layer)
        keep_in_view(ax, "y", values[f"{variable}_mean"])  # intervals cut below zero
        ax.set_ylabel(f"{QUANTITY[variable]} at the last snapshot (bits)")
    drop = axes[2]
    hidden = hidden_layers(results)  # the output layer's drop is not a finding
    for l in [l for l, layer in enumerate(layers) if layer in hidden]:
        called = values["compresses"][:, l]
        drop.plot(x, values["drop"][:, l], "-", color=colours(l), lw=1)
        for mask, style in ((called == 1, {"facecolors": colours(l)}), (called == 0, {"facecolors": "none"})):
            drop.scatter(x[mask], values["drop"][mask, l], s=18, edgecolors=colours(l), **style)
        unknown = np.isnan(called)
        drop.scatter(x[unknown], values["drop"][unknown, l], s=18, marker="x", color=colours(l))
    drop.axhline(0, color="0.6", lw=0.6)
    drop.set_ylabel("drop of I(X;T) from its peak (bits)")
    for ax in axes:
        if (x > 0).all() and x.max() >= 10 * x.min():
            ax.set_xscale("log")
        ax.set_xlabel(sweep.parameter)
        ax.minorticks_off()
        ax.set_xticks(x, [f"{v:g}" for v in x], rotation=45 if len(x) > 4 else 0)  # no overlap
    axes[1].legend(fontsize=6, loc="best")
    method = METHOD_WORDS.get(sweep.method, sweep.method)
    title = (f"{method} over {sweep.parameter} ({', '.join(sweep.entries)}); "
             f"{SPLIT_WORDS.get(split, split)}; seed means with {confidence:.0%} intervals")
    fig.suptitle(textwrap.fill(title, 110), fontsize=8)
    return fig
