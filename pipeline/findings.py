"""Numeric checks of the papers' findings, as functions of a results Dataset.

    import xarray as xr
    from pipeline.findings import compression_phase
    results = xr.open_zarr("data/runs/szt_tanh/estimates.zarr").load()
    compression_phase(results, "binning_30")       # per layer: epoch of max I(X;T), drop to the end

Each returns an xarray object with the parameters of the estimate in its attributes, so the
numbers in docs/results.md can be recomputed from anyone's results.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from pipeline.entropy import entropy_of_counts
from pipeline.results import TRUST_FLAGS, holding_values, masked, seed_mean


def _valid(results: xr.Dataset) -> xr.Dataset:
    return masked(results) if "done" in results else results


def last_valid_index(values: xr.DataArray, dim: str = "epoch") -> xr.DataArray:
    """The index along `dim` of the last finite value (0 where there is none)."""
    finite = np.isfinite(values)
    return (values.sizes[dim] - 1 - finite.isel({dim: slice(None, None, -1)}).argmax(dim))


def last_valid(values: xr.DataArray, dim: str = "epoch") -> xr.DataArray:
    """The last finite value along `dim` (a run still being estimated ends in NaN cells)."""
    def pick(a: np.ndarray) -> np.ndarray:
        finite = np.isfinite(a)
        index = a.shape[-1] - 1 - np.argmax(finite[..., ::-1], axis=-1)
        out = np.take_along_axis(a, index[..., None], axis=-1)[..., 0]
        return np.where(finite.any(-1), out, np.nan)
    return xr.apply_ufunc(pick, values, input_core_dims=[[dim]])


def compression_phase(results: xr.Dataset, estimator: str, split: str = "all") -> xr.Dataset:
    """Per seed and layer: the epoch of maximal I(X;T) and the drop from that maximum to the end.

    A fitting phase then a compression phase shows as a maximum before the last epoch and a
    positive drop. Returned per seed, with mean and std over seeds; seeds without any value of
    this entry (estimated on part of the seeds) are left out.
    """
    i_xt = _valid(results).I_XT.sel(estimator=estimator, split=split)
    i_xt = i_xt.isel(seed=holding_values(i_xt, "seed"))
    peak_index = i_xt.fillna(-np.inf).argmax("epoch")
    peak_epoch = np.where(np.isfinite(i_xt).any("epoch").values,
                          results.epoch.values[peak_index.values], np.nan)
    final = last_valid(i_xt)
    drop = i_xt.max("epoch") - final
    out = xr.Dataset({
        "peak_epoch": (("seed", "layer"), peak_epoch),
        "drop_bits": drop.transpose("seed", "layer"),
        "final_bits": final.transpose("seed", "layer"),
    })
    out["peak_epoch_mean"] = out.peak_epoch.mean("seed")
    out["drop_mean"], out["drop_std"] = out.drop_bits.mean("seed"), out.drop_bits.std("seed")
    out.attrs = {"estimator": estimator, "split": split,
                 "parameters": str(results.parameters.sel(estimator=estimator).values)}
    return out


def output_layer(results: xr.Dataset) -> str:
    """The archive's output layer, as the store records it (stores without it: the last layer)."""
    return str(results.attrs.get("output_layer", results.layer.values[-1]))


def hidden_layers(results: xr.Dataset) -> list[str]:
    return [str(name) for name in results.layer.values if name != output_layer(results)]


def output_information(results: xr.Dataset, estimator: str, labels: np.ndarray,
                       split: str = "all", layer: str | None = None) -> dict[str, float]:
    """Final I(T;Y) of the output layer (mean and std over seeds) against H(Y) of the labels."""
    layer = layer or output_layer(results)
    final = last_valid(_valid(results).I_TY.sel(estimator=estimator, split=split, layer=layer))
    return {"final_mean": float(final.mean()), "final_std": float(final.std()),
            "H_Y": entropy_of_counts(np.bincount(labels))}


def dpi_share(results: xr.Dataset, estimator: str, split: str = "all") -> float:
    """Share of (seed, epoch, adjacent layer pair) cells where I(X;T_l) >= I(X;T_l+1) holds."""
    i_xt = _valid(results).I_XT.sel(estimator=estimator, split=split)
    i_xt = i_xt.transpose("seed", "epoch", "layer").values
    holds = i_xt[..., :-1] >= i_xt[..., 1:] - 1e-9
    valid = np.isfinite(i_xt[..., :-1]) & np.isfinite(i_xt[..., 1:])
    return float(holds[valid].mean()) if valid.any() else float("nan")


RULES = ("interval", "fraction")
COMPRESSION_RULES = ("held_out", *RULES)


def held_out_peak(mean: np.ndarray) -> int:
    """The snapshot after the peak of `mean` (1-D over epochs) located on every other snapshot
    that holds a value (the first, third, ... before the last); -1 with fewer than 3 such
    snapshots. The noise that lifts the highest of many snapshots does not lift the next one
    when the estimator's noise is fresh at every snapshot."""
    valid = np.flatnonzero(np.isfinite(mean))
    if valid.size < 3:
        return -1
    candidates = valid[:-1][::2]
    peak = candidates[np.argmax(mean[candidates])]
    return int(valid[np.searchsorted(valid, peak) + 1])


def compresses(results: xr.Dataset, estimator: str, split: str = "all", rule: str = "held_out",
               min_drop: float = 0.05, confidence: float = 0.9) -> xr.DataArray:
    """Per hidden layer: does I(X;T) (mean over seeds) fall from its peak to the last epoch?

    1.0 yes, 0.0 no, NaN undetermined. `rule`:

    - "held_out" (default): the seed mean's interval at the peak (`pipeline.results.seed_mean`
      at `confidence`: t over seeds, or one seed's own cell interval) lies wholly above its
      interval at the last epoch, the peak located on every other snapshot and its interval
      read on the snapshot after it (`held_out_peak`). The highest of many noisy snapshots is
      high partly by its own noise; read on the next snapshot, noise that is fresh at every
      snapshot is not counted as a drop. docs/estimators.md ("How often each rule calls
      compression") gives each rule's false calls and power on curves of known shape.
    - "interval": the same test at the peak of the seed mean itself.
    - "fraction": the mean falls by more than `min_drop` of its maximum (no test of the noise).

    The interval rules give NaN where there is no interval (one seed, estimated without
    `uncertainty`), with fewer than 3 snapshots ("held_out"), and where every seed's cell is
    flagged saturated (`I_XT_saturated`) at both epochs: a move within 1% of the estimator's
    ceiling is its resolution, not the layer's (30 bins on SZT's wide layers: 12.000 to 11.997
    bits, a spread over seeds of 0.002, would otherwise count).
    """
    if rule not in COMPRESSION_RULES:
        raise ValueError(f"rule must be one of {COMPRESSION_RULES}, got {rule!r}")
    cells = _valid(results).sel(estimator=estimator, split=split)
    band = seed_mean(cells, "I_XT", confidence)
    peak_index, final_index = compared_indices(band["mean"], rule)
    at = lambda name, index: band[name].isel(epoch=index)  # noqa: E731
    if rule == "fraction":
        peak, final = at("mean", peak_index), at("mean", final_index)
        called = ((peak - final) > min_drop * peak.where(peak > 0)).astype(float)
    else:
        lo, hi = at("lo", peak_index.clip(0)), at("hi", final_index)
        called = (lo > hi).astype(float).where(np.isfinite(lo) & np.isfinite(hi) & (peak_index >= 0))
        called = called.where(~_saturated_at(cells, peak_index, final_index))
    called = called.where(np.isfinite(band["mean"]).any("epoch"))
    called.attrs = {"estimator": estimator, "split": split, "rule": rule, "min_drop": min_drop,
                    "confidence": confidence}
    return called.sel(layer=hidden_layers(results))


def compared_indices(mean: xr.DataArray, rule: str = "held_out") -> tuple[xr.DataArray, xr.DataArray]:
    """The epoch indices whose values `compresses` compares under `rule`, per layer: the peak
    (for "held_out" the snapshot after the peak located on every other one, -1 where there are
    too few; otherwise the argmax of `mean`) and the last epoch holding a value."""
    if rule == "held_out":
        peak = xr.apply_ufunc(held_out_peak, mean, input_core_dims=[["epoch"]], vectorize=True)
    else:
        peak = mean.fillna(-np.inf).argmax("epoch")
    return peak, last_valid_index(mean)


def saturated_at_both_ends(results: xr.Dataset, estimator: str, split: str = "all",
                           rule: str = "held_out") -> xr.DataArray:
    """Per layer: every seed holding a value has its I(X;T) flagged saturated (`I_XT_saturated`)
    at both epochs `compresses` compares under `rule` (`compared_indices`; False for a store
    without flags)."""
    cells = _valid(results).sel(estimator=estimator, split=split)
    return _saturated_at(cells, *compared_indices(cells.I_XT.mean("seed"), rule))


def _saturated_at(cells: xr.Dataset, peak: xr.DataArray, final: xr.DataArray) -> xr.DataArray:
    """Per layer: every seed holding a value is flagged saturated at epoch index `peak` (-1 read
    as 0) and at `final`; False for cells without flags."""
    if "I_XT_saturated" not in cells:
        return xr.zeros_like(peak, dtype=bool)
    flags = cells.I_XT_saturated.where(np.isfinite(cells.I_XT))
    every_seed = (flags.fillna(1) == 1).all("seed") & flags.notnull().any("seed")
    return every_seed.isel(epoch=peak.clip(0)) & every_seed.isel(epoch=final)


def compression_table(results: xr.Dataset, split: str = "all", rule: str = "held_out",
                      min_drop: float = 0.05, confidence: float = 0.9) -> dict[str, float]:
    """Per estimator entry: the share of hidden layers that compress, among those `compresses`
    can decide (NaN when it decides none)."""
    shares = {}
    for e in results.estimator.values:
        called = compresses(results, str(e), split, rule, min_drop, confidence).values
        decided = called[np.isfinite(called)]
        shares[str(e)] = float(decided.mean()) if decided.size else float("nan")
    return shares


def count_phases(series: np.ndarray, min_change: float = 0.02, lo: np.ndarray | None = None,
                 hi: np.ndarray | None = None, persist: int = 1) -> int:
    """Alternating rising (fitting) and falling (compression) phases of a curve.

    A phase counts once the curve has moved in one direction since the last turning point by
    more than the noise on `persist` consecutive points: with `lo` and `hi` (an interval per
    point), when their intervals and the turning point's no longer overlap; without them, by at
    least `min_change` (a fraction of the curve's range). Small wiggles are not phases. The
    turning point is the running extreme, high or low partly by its own noise, and a curve of
    many points dips past any fixed margin somewhere: `persist` > 1 asks the move to hold
    (docs/estimators.md, "How often each rule calls compression").
    """
    if persist < 1:
        raise ValueError(f"persist must be at least 1, got {persist}")
    values = np.asarray(series, dtype=float)
    if lo is None or hi is None:
        finite = values[np.isfinite(values)]
        spread = float(finite.max() - finite.min()) if finite.size else 0.0
        half = min_change * (spread or 1.0) / 2
        lo, hi = values - half, values + half
    keep = np.isfinite(values) & np.isfinite(lo) & np.isfinite(hi)
    values, lo, hi = values[keep], np.asarray(lo, float)[keep], np.asarray(hi, float)[keep]
    phases, direction, anchor = 0, 0, 0
    for i in range(1, len(values) - persist + 1):
        held = slice(i, i + persist)
        if direction >= 0 and (hi[held] < lo[anchor]).all():
            direction, phases, anchor = -1, phases + 1, i
        elif direction <= 0 and (lo[held] > hi[anchor]).all():
            direction, phases, anchor = 1, phases + 1, i
        elif (direction > 0 and values[i] > values[anchor]) or (direction < 0 and values[i] < values[anchor]):
            anchor = i
    return phases


def phase_counts(results: xr.Dataset, estimator: str, split: str = "test", variable: str = "I_XT",
                 min_change: float = 0.02, rule: str = "interval", persist: int = 3) -> xr.DataArray:
    """Per seed and layer: the number of alternating fitting/compression phases of one curve
    (`count_phases` on `variable` against epoch; Butakov et al. report several on MNIST).

    `rule` "interval" (default) uses each cell's own interval (`<variable>_lo`, `_hi`: the entry
    needs `uncertainty`; without them the counts are NaN), a move counting once `persist`
    consecutive snapshots lie beyond the turning point's interval (3: the fewest that keep
    false phases on flat curves with calibrated intervals to at most 5% of curves,
    docs/estimators.md); "fraction" the `min_change` rule, on single snapshots as the papers.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    sel = _valid(results).sel(estimator=estimator, split=split)
    curves = sel[variable]
    if rule == "fraction":
        counts = xr.apply_ufunc(count_phases, curves, input_core_dims=[["epoch"]], vectorize=True,
                                kwargs={"min_change": min_change})
    elif f"{variable}_lo" not in sel:
        counts = xr.full_like(curves.isel(epoch=0, drop=True), np.nan, dtype=float)
    else:
        counts = xr.apply_ufunc(lambda v, lo, hi: count_phases(v, lo=lo, hi=hi, persist=persist), curves,
                                sel[f"{variable}_lo"], sel[f"{variable}_hi"],
                                input_core_dims=[["epoch"]] * 3, vectorize=True)
    counts.attrs = {"estimator": estimator, "split": split, "variable": variable, "rule": rule,
                    "min_change": min_change, "persist": persist if rule == "interval" else 1}
    return counts.transpose("seed", "layer")


def fisher_peak(results: xr.Dataset) -> xr.Dataset:
    """Per layer: the epoch of maximal Fisher trace (mean over seeds) and final / maximum."""
    trace = _valid(results).fisher_trace.mean("seed")
    peak = results.epoch.values[trace.fillna(-np.inf).argmax("epoch").values]
    ratio = last_valid(trace) / trace.max("epoch")
    return xr.Dataset({"peak_epoch": ("layer", peak), "final_over_peak": ratio})


def early_stopping_vs_compression(results: xr.Dataset, estimator: str, loss_test: np.ndarray,
                                  split: str = "train") -> dict[str, object]:
    """The early-stopping epoch (minimum test loss) against each layer's compression onset."""
    onset = compression_phase(results, estimator, split).peak_epoch_mean
    stop = int(np.nanargmin(loss_test))
    return {"early_stopping_epoch": stop,
            "compression_onset": {str(k): float(v) for k, v in zip(onset.layer.values, onset.values,
                                                                   strict=True)}}


def run_summary(results: xr.Dataset) -> dict[str, object]:
    """What the report opens with, per estimator entry and split holding values.

    `layers`: per (entry, split, hidden layer) the compression verdicts (the default held-out
    interval rule, NaN when undetermined, `saturated` True where that is because the cells are
    saturated at both compared epochs; 5% rule) and the drop from the peak (mean and std over
    seeds); `entries`:
    per (entry, split) the share of cells where the DPI holds, where values saturate (from the
    stored flags; NaN without them), that the estimator distrusts, and whose I(X;T) and I(T;Y)
    do not clear their shuffle baselines (`at_null_share`; NaN without baselines);
    `disagreements`: per (split, hidden layer) the entries that call compression and those that
    do not, where both exist (each entry by its verdict beyond the noise, by the 5% rule where
    that is undetermined). An entry whose estimator flagged every cell of the layer
    (`distrusted_layers`) casts no vote there and is listed under `distrusted`; `abstained`:
    the entries that cast no vote on some layer.
    """
    ds = _valid(results)
    layers, entries, calls, distrusted = [], [], {}, {}
    for e in ds.estimator.values:
        for split in ds.split.values:
            e, split = str(e), str(split)
            if not np.isfinite(ds.I_XT.sel(estimator=e, split=split)).any():
                continue
            phase = compression_phase(ds, e, split)
            noise, fraction = compresses(ds, e, split), compresses(ds, e, split, rule="fraction")
            saturated = saturated_at_both_ends(ds, e, split)
            flagged = distrusted_layers(ds, e, split)
            for layer in noise.layer.values:
                verdict = float(noise.sel(layer=layer))
                decided = fraction if np.isnan(verdict) else noise
                if str(layer) in flagged:
                    distrusted.setdefault((split, str(layer)), []).append(e)
                else:
                    calls.setdefault((split, str(layer)), {})[e] = bool(decided.sel(layer=layer))
                layers.append({"entry": e, "split": split, "layer": str(layer), "beyond_noise": verdict,
                               "saturated": bool(saturated.sel(layer=layer)),
                               "fraction": float(fraction.sel(layer=layer)),
                               "drop_mean": float(phase.drop_mean.sel(layer=layer)),
                               "drop_std": float(phase.drop_std.sel(layer=layer))})
            entries.append({"entry": e, "split": split, "dpi_holds": dpi_share(ds, e, split),
                            "saturated": _saturated_share(ds, e, split),
                            "distrusted": distrusted_share(ds, e, split),
                            "at_null_xt": at_null_share(ds, e, split, "I_XT"),
                            "at_null_ty": at_null_share(ds, e, split, "I_TY")})
    disagreements = [{"split": split, "layer": layer,
                      "compress": sorted(k for k, v in votes.items() if v),
                      "do_not": sorted(k for k, v in votes.items() if not v),
                      "distrusted": sorted(distrusted.get((split, layer), []))}
                     for (split, layer), votes in calls.items() if len(set(votes.values())) > 1]
    abstained = sorted({e for entries_left_out in distrusted.values() for e in entries_left_out})
    return {"layers": layers, "entries": entries, "disagreements": disagreements, "abstained": abstained}


def _trust_flags(ds: xr.Dataset, estimator: str, split: str) -> xr.DataArray | None:
    """Per cell: 1 where any of its estimator's diagnostics (`*_lossy`, `*_biased`) flagged it,
    0 where none did, -1 where the entry stores none; None where the store holds no diagnostic."""
    names = [name for name in ds.data_vars if str(name).endswith(TRUST_FLAGS)]
    if not names:
        return None
    return xr.concat([ds[name].sel(estimator=estimator, split=split).fillna(-1) for name in names],
                     "flag").max("flag")


def _flagged(flags: np.ndarray) -> np.ndarray:
    return flags[flags >= 0]  # the cells holding a flag of this entry


def distrusted_share(ds: xr.Dataset, estimator: str, split: str) -> float:
    """The share of an entry's cells its estimator flagged (`*_lossy`, `*_biased`); NaN if none can be."""
    flags = _trust_flags(ds, estimator, split)
    flagged = np.empty(0) if flags is None else _flagged(flags.values)
    return float(flagged.mean()) if flagged.size else float("nan")


def distrusted_layers(ds: xr.Dataset, estimator: str, split: str) -> set[str]:
    """The layers of which the estimator flagged every cell holding a flag: its values there
    are known to be wrong (KSG beyond its rule, a code that lost the layer)."""
    flags = _trust_flags(ds, estimator, split)
    if flags is None:
        return set()
    return {str(layer) for layer in flags.layer.values
            if (flagged := _flagged(flags.sel(layer=layer).values)).size and flagged.min() == 1}


def at_null_share(ds: xr.Dataset, estimator: str, split: str, variable: str = "I_TY") -> float:
    """The share of an entry's cells whose `variable` does not clear its shuffle baseline.

    A cell clears it when its interval's lower end (its value, where the cell has no interval)
    lies above `<variable>_null`, the same estimator on shuffled labels (or inputs): a cell that
    does not is within what the estimator reads at zero information (binning on SZT's wide
    layers: I(T;Y) of any labels is H(Y), docs/estimators.md). NaN where the entry stores no
    baseline.
    """
    null = f"{variable}_null"
    if null not in ds:
        return float("nan")
    cells = _valid(ds).sel(estimator=estimator, split=split)
    value = cells[variable].values
    low = cells[f"{variable}_lo"].values if f"{variable}_lo" in cells else value
    low = np.where(np.isfinite(low), low, value)
    base = cells[null].values
    kept = np.isfinite(value) & np.isfinite(low) & np.isfinite(base)
    return float((low[kept] <= base[kept]).mean()) if kept.any() else float("nan")


def _saturated_share(ds: xr.Dataset, estimator: str, split: str) -> float:
    if "I_XT_saturated" not in ds:
        return float("nan")
    flags = np.fmax(ds.I_XT_saturated, ds.I_TY_saturated).sel(estimator=estimator, split=split).values
    flags = flags[np.isfinite(flags)]
    return float(flags.mean()) if flags.size else float("nan")
