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

from pipeline.results import holding_values, masked


def _valid(results: xr.Dataset) -> xr.Dataset:
    return masked(results) if "done" in results else results


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
    p = np.bincount(labels) / len(labels)
    p = p[p > 0]
    return {"final_mean": float(final.mean()), "final_std": float(final.std()),
            "H_Y": float(-(p * np.log2(p)).sum())}


def dpi_share(results: xr.Dataset, estimator: str, split: str = "all") -> float:
    """Share of (seed, epoch, adjacent layer pair) cells where I(X;T_l) >= I(X;T_l+1) holds."""
    i_xt = _valid(results).I_XT.sel(estimator=estimator, split=split)
    i_xt = i_xt.transpose("seed", "epoch", "layer").values
    holds = i_xt[..., :-1] >= i_xt[..., 1:] - 1e-9
    valid = np.isfinite(i_xt[..., :-1]) & np.isfinite(i_xt[..., 1:])
    return float(holds[valid].mean()) if valid.any() else float("nan")


def compresses(results: xr.Dataset, estimator: str, split: str = "all",
               min_drop: float = 0.05) -> xr.DataArray:
    """Per hidden layer: does the mean over seeds of I(X;T) fall by more than `min_drop` (a
    fraction of its maximum) between its peak and the last epoch?"""
    i_xt = _valid(results).I_XT.sel(estimator=estimator, split=split).mean("seed")
    peak = i_xt.max("epoch")
    final = last_valid(i_xt)
    return ((peak - final) > min_drop * peak.where(peak > 0)).sel(layer=hidden_layers(results))


def compression_table(results: xr.Dataset, split: str = "all", min_drop: float = 0.05) -> dict[str, float]:
    """Per estimator entry: the share of hidden layers that compress (see `compresses`)."""
    return {str(e): float(compresses(results, str(e), split, min_drop).mean())
            for e in results.estimator.values}


def count_phases(series: np.ndarray, min_change: float = 0.02) -> int:
    """Alternating rising (fitting) and falling (compression) phases of a curve.

    A phase counts once the curve has moved at least `min_change` (a fraction of its range)
    in one direction since the last turning point: small wiggles are not phases.
    """
    values = np.asarray(series, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return 0
    threshold = min_change * (values.max() - values.min() or 1.0)
    phases, direction, anchor = 0, 0, values[0]
    for v in values[1:]:
        if direction >= 0 and v < anchor - threshold:
            direction, phases, anchor = -1, phases + 1, v
        elif direction <= 0 and v > anchor + threshold:
            direction, phases, anchor = 1, phases + 1, v
        elif (direction > 0 and v > anchor) or (direction < 0 and v < anchor):
            anchor = v
    return phases


def phase_counts(results: xr.Dataset, estimator: str, split: str = "test", variable: str = "I_XT",
                 min_change: float = 0.02) -> xr.DataArray:
    """Per seed and layer: the number of alternating fitting/compression phases of one curve
    (`count_phases` on `variable` against epoch; Butakov et al. report several on MNIST)."""
    curves = _valid(results)[variable].sel(estimator=estimator, split=split)
    counts = xr.apply_ufunc(count_phases, curves, input_core_dims=[["epoch"]], vectorize=True,
                            kwargs={"min_change": min_change})
    counts.attrs = {"estimator": estimator, "split": split, "variable": variable,
                    "min_change": min_change}
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
