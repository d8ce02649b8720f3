"""The results store (`estimates.zarr`): an xarray Dataset filled as tasks finish.

    import xarray as xr
    results = xr.open_zarr("data/runs/szt_tanh/estimates.zarr")
    results.I_XT.sel(estimator="binning_30", split="all").mean("seed")

Dims `estimator`, `seed`, `split`, `epoch`, `layer`; a `done` mask marks computed cells (a NaN
that is done is a real NaN result, e.g. from a diverged seed). When the coordinates grow (a new
estimator entry, seed or epoch), a new store is written aside with the old values copied in and
swapped in by rename: the old store stays intact until the new one is complete.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from scipy.special import stdtrit

from pipeline.errors import KnownFailure
from pipeline.runs import is_results_store

RESULTS_SCHEMA_VERSION = "1.5"  # 1.1: archive_recording, output_layer, outputs; 1.2: intervals; 1.3: flags;
# 1.4: resolved_parameters (every parameter with its default filled in); 1.5: text as zarr `string`
CELL_DIMS = ("estimator", "seed", "split", "epoch", "layer")
CELL_VARIABLES = {  # every store has these; estimators declare more (Estimator.outputs)
    "I_XT": ("I(X;T)", "bits"),
    "I_TY": ("I(T;Y)", "bits"),
}
FISHER_DIMS = ("seed", "epoch", "layer")
# Declared outputs ending so flag a cell its estimator distrusts (1.0): a compressor that lost part
# of a side or a flow that failed on the codes ("_lossy"), KSG beyond its measured rule ("_biased"),
# binning of values outside its fixed range ("_clipped")
TRUST_FLAGS = ("_lossy", "_biased", "_clipped")


class ResultsError(KnownFailure, RuntimeError):
    """The results store is unreadable or of another schema; the message names the fix."""


def cell_variables(ds: xr.Dataset) -> list[str]:
    """The store's per-cell value variables (I_XT, I_TY and the estimators' declared outputs)."""
    return [name for name, var in ds.data_vars.items() if var.dims == CELL_DIMS and name != "done"]


def template(estimators: dict[str, dict[str, Any]], seeds: list[int], splits: list[str],
             epochs: np.ndarray, layers: list[str], layer_widths: list[int],
             attrs: dict[str, Any], outputs: dict[str, tuple[str, str]] | None = None,
             resolved: dict[str, dict[str, Any]] | None = None) -> xr.Dataset:
    """An all-NaN Dataset with every cell not done; `outputs` adds the estimators' variables and
    `resolved` each entry's table with every default filled in (`resolved_parameters`)."""
    shape = (len(estimators), len(seeds), len(splits), len(epochs), len(layers))
    coords = {
        "estimator": list(estimators), "seed": np.asarray(seeds, dtype=np.int64),
        "split": list(splits), "epoch": np.asarray(epochs, dtype=np.int64), "layer": list(layers),
        "layer_width": ("layer", np.asarray(layer_widths, dtype=np.int64)),
        "method": ("estimator", [table["method"] for table in estimators.values()]),
        "parameters": ("estimator", [json.dumps(table, sort_keys=True) for table in estimators.values()]),
    }
    if resolved is not None:
        coords["resolved_parameters"] = ("estimator", [json.dumps(resolved[name], sort_keys=True, default=str)
                                                       for name in estimators])
    data = {}
    for name, (long_name, units) in {**CELL_VARIABLES, **(outputs or {})}.items():
        data[name] = xr.Variable(CELL_DIMS, np.full(shape, np.nan),
                                 {"long_name": long_name, "units": units})
    data["done"] = xr.Variable(CELL_DIMS, np.zeros(shape, dtype=bool),
                               {"long_name": "cell computed (NaN results included)"})
    fisher_shape = (len(seeds), len(epochs), len(layers))
    data["fisher_trace"] = xr.Variable(FISHER_DIMS, np.full(fisher_shape, np.nan),
                                       {"long_name": "trace of the model Fisher information of "
                                        "the layer's parameters", "units": "1"})
    data["fisher_done"] = xr.Variable(FISHER_DIMS, np.zeros(fisher_shape, dtype=bool))
    ds = xr.Dataset(data, coords=coords, attrs={"schema_version": RESULTS_SCHEMA_VERSION, **attrs})
    ds["layer_width"].attrs["long_name"] = "units in the layer (product of its shape)"
    return ds


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    # One chunk per (estimator, seed, split): a task's writes touch one chunk per variable.
    enc = {}
    for name in [*cell_variables(ds), "done"]:
        enc[name] = {"chunks": (1, 1, 1, ds.sizes["epoch"], ds.sizes["layer"])}
    for name in ("fisher_trace", "fisher_done"):
        enc[name] = {"chunks": (1, ds.sizes["epoch"], ds.sizes["layer"])}
    return enc


MASKED = "_masked"  # attribute of a dataset `masked` returned: masking it again changes nothing


def masked(ds: xr.Dataset) -> xr.Dataset:
    """Cell variables with cells not yet computed set to NaN (Fisher variables untouched).

    Idempotent, and a dataset it returned (or a selection of one) comes back as it is: the
    figures and findings mask the results they are handed, hundreds of times in one report.
    """
    if ds.attrs.get(MASKED):
        return ds
    ds = ds.copy()
    for name in cell_variables(ds):
        ds[name] = ds[name].where(ds["done"])
    if "fisher_trace" in ds:
        ds["fisher_trace"] = ds["fisher_trace"].where(ds["fisher_done"])
    ds.attrs[MASKED] = True
    return ds


def holding_values(values: xr.DataArray, dim: str) -> np.ndarray:
    """Boolean mask over `dim`: the entries with at least one finite value.

    An entry estimated on part of the cells (`make estimate ARGS="--seeds 0 --every 3"`) holds
    values on some seeds and epochs only; figures and findings use those alone.
    """
    others = [d for d in values.dims if d != dim]
    return np.isfinite(values).any(others).values


def seed_mean(results: xr.Dataset, variable: str = "I_XT", confidence: float = 0.9) -> xr.Dataset:
    """The mean over seeds of one cell variable with its confidence interval.

    Returns `mean`, `lo`, `hi` and `n_seeds` (seeds holding a value) over the other cell dims.
    Two seeds or more: the t interval of the mean, mean +- t((1 + confidence) / 2, n - 1) s / sqrt(n);
    each seed's value carries its estimator's noise, so the interval holds both the spread of
    training and that of the estimator. One seed: the cell's own interval when the store holds
    one (`<variable>_lo`, `_hi`, from the entry's `uncertainty` option), else NaN. Cells not
    computed yet are left out.
    """
    ds = masked(results) if "done" in results else results
    values = ds[variable]
    axis = values.get_axis_num("seed")
    v = values.values  # numpy: the figures call this hundreds of times a report
    finite = np.isfinite(v)
    n = finite.sum(axis)
    with warnings.catch_warnings():  # no seed holding a value: NaN mean; one seed: no spread, NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, sd = np.nanmean(v, axis), np.nanstd(v, axis, ddof=1)
        half = np.where(n >= 2, stdtrit(np.maximum(n - 1, 1), 0.5 + confidence / 2) * sd / np.sqrt(n), np.nan)
        lo, hi = mean - half, mean + half
        if f"{variable}_lo" in ds:  # one seed: the cell's own interval
            own = [np.nanmean(np.where(finite, ds[f"{variable}_{end}"].transpose(*values.dims).values,
                                       np.nan), axis) for end in ("lo", "hi")]
            lo, hi = np.where(n == 1, own[0], lo), np.where(n == 1, own[1], hi)
    cell = values.isel(seed=0, drop=True)  # the dims and coordinates of the result
    out = xr.Dataset({name: (cell.dims, data) for name, data in
                      (("mean", mean), ("lo", lo), ("hi", hi), ("n_seeds", n))}, coords=cell.coords)
    out.attrs = {"variable": variable, "confidence": confidence,
                 "interval": "t over seeds (2+ seeds); the cell's own interval (1 seed)"}
    return out


def open_results(path: str | Path) -> xr.Dataset | None:
    """The store loaded in memory, or None if there is none."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        if path.is_dir() and not any(path.iterdir()) or not path.exists():
            return None  # a new store (an empty folder too)
        raise ResultsError(f"{path} exists and is not a results store: give --results a new path (e.g. "
                           f"{path.with_name(path.name + '_estimates.zarr')}) or an existing store; its "
                           "files are left as they are")
    if not is_results_store(path):
        what = "an archive" if (path / "inputs").is_dir() else "not a results store (no `done` mask)"
        raise ResultsError(f"{path} is {what}: give --results a new path or an existing results store; "
                           "it is left as it is")
    try:
        # read straight into numpy: through dask, a store of thousands of small chunks (one per
        # task's cells) took four times as long
        ds = _fixed_width_text(xr.open_zarr(path, consolidated=False, chunks=None).load())
    except Exception as err:
        raise ResultsError(f"results store {path} cannot be read ({err}); move it away and run "
                           "`make estimate` again to recompute") from None
    version = ds.attrs.get("schema_version", "?")
    if version.split(".")[0] != RESULTS_SCHEMA_VERSION.split(".")[0]:
        raise ResultsError(f"{path} has results schema {version}, this infoplane writes "
                           f"{RESULTS_SCHEMA_VERSION}: move it away to recompute")
    return ds


def belongs_to(attrs: dict[str, Any], identity: str, training_hash: str | None) -> bool:
    """Whether results with root `attrs` were computed from the archive of this identity
    (`ArchiveReader.identity`); stores written before `archive_recording` existed compare the
    training hash."""
    if "archive_recording" in attrs:
        return attrs["archive_recording"] == identity
    return attrs.get("archive_training_hash") == training_hash


def foreign_store(path: Path, attrs: dict[str, Any], archive: Path, rerun: str) -> ResultsError:
    """The error for a store `belongs_to` refuses: whose results it holds, and the fix (`rerun`:
    what computes this archive's results once the store is moved away)."""
    written_for = attrs.get("archive_path")
    whose = ("an earlier recording at this path (retrained or recorded again)"
             if written_for in (None, str(Path(archive).resolve())) else f"the archive {written_for}")
    return ResultsError(f"{path} holds the results of {whose}, not of {archive}: move it away and "
                        f"{rerun}, or give this archive's results their own store (--results PATH)")


def parameters_key(ds: xr.Dataset) -> str:
    """The coordinate holding a store's entry parameters most fully: every parameter with its
    default (`resolved_parameters`), or the tables where the store predates that (schema < 1.4)."""
    return "resolved_parameters" if "resolved_parameters" in ds.coords else "parameters"


def entry_parameters(ds: xr.Dataset, entry: str, key: str | None = None) -> dict[str, Any]:
    """One entry's parameters as the store holds them (`key`, default `parameters_key`)."""
    return json.loads(str(ds[key or parameters_key(ds)].sel(estimator=entry).values))


def compared_parameters(old: xr.Dataset, target: xr.Dataset) -> str:
    """The coordinate two stores' entries are compared by: the fuller one where both hold it (so a
    changed default recomputes the cells), else the tables."""
    both = parameters_key(old) == parameters_key(target) == "resolved_parameters"
    return "resolved_parameters" if both else "parameters"


def changed_entries(old: xr.Dataset, target: xr.Dataset) -> list[str]:
    """Entries of both stores whose parameters (defaults included where both stores hold them)
    or cell options differ."""
    key = compared_parameters(old, target)
    both = [e for e in target.estimator.values if e in old.estimator.values]
    return [str(e) for e in both if str(old[key].sel(estimator=e).values) !=
            str(target[key].sel(estimator=e).values)]


def merge_into(target: xr.Dataset, old: xr.Dataset | None) -> xr.Dataset:
    """Copy done cells of `old` whose estimator parameters are unchanged into `target`."""
    if old is None:
        return target
    changed = changed_entries(old, target)
    same = [e for e in target.estimator.values if e in old.estimator.values and e not in changed]
    common = {
        "estimator": same,
        "seed": np.intersect1d(target.seed, old.seed),
        "split": [s for s in target.split.values if s in old.split.values],
        "epoch": np.intersect1d(target.epoch, old.epoch),
        "layer": [name for name in target.layer.values if name in old.layer.values],
    }
    if all(len(v) for v in common.values()):
        for name in [*cell_variables(target), "done"]:
            if name in old:
                target[name].loc[common] = old[name].sel(common).values
    fisher_common = {k: common[k] for k in FISHER_DIMS}
    if all(len(v) for v in fisher_common.values()):
        for name in ("fisher_trace", "fisher_done"):
            target[name].loc[fisher_common] = old[name].sel(fisher_common).values
    return target


def _variable_length_text(ds: xr.Dataset) -> xr.Dataset:
    """Text (entry, split and layer names, parameter tables) as zarr v3's variable-length UTF-8
    `string`. numpy's fixed-width text would be stored as zarr-python's `fixed_length_utf32`,
    which has no Zarr v3 specification: zarr-python warns that its representation may change
    and that other Zarr libraries may not read it."""
    return _text_converted(ds, "U", lambda var: var.astype(object))


def _fixed_width_text(ds: xr.Dataset) -> xr.Dataset:
    """Text read from a store as numpy's fixed-width str, whichever way the store holds it
    (`string` from 1.5, `fixed_length_utf32` before), so that every reader sees one dtype."""
    return _text_converted(ds, "OT", lambda var: var.copy(data=np.array(var.values.tolist(), dtype=str)))


def _text_converted(ds: xr.Dataset, kinds: str, convert) -> xr.Dataset:
    """`ds` with `convert` applied to each variable whose dtype kind is in `kinds`."""
    text = {name: convert(ds[name]) for name, var in ds.variables.items() if var.dtype.kind in kinds}
    return ds.assign_coords({k: v for k, v in text.items() if k in ds.coords}).assign(
        {k: v for k, v in text.items() if k in ds.data_vars})


# The swap's two names beside a store: names a researcher would not give a folder of their own
# (a store moved away by hand as `estimates.zarr.old` is theirs, never taken back or deleted)
SWAP_NEW, SWAP_OLD = ".infoplane-partial", ".infoplane-replaced"


def write_store(ds: xr.Dataset, path: Path) -> None:
    """Write `ds` aside, then swap it in by rename: the old store stays whole until then."""
    partial = path.with_name(path.name + SWAP_NEW)
    shutil.rmtree(partial, ignore_errors=True)
    ds = _variable_length_text(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata is not in the v3 spec yet
        # the done cells' chunks copied in go to disk even where every value is NaN (no labels)
        ds.to_zarr(partial, mode="w", encoding=_encoding(ds), zarr_format=3, consolidated=False,
                   write_empty_chunks=True)
        # consolidated from the start: `xr.open_zarr` warns on a store without, and a run that
        # ends early (nothing to compute, interrupted) would leave it so
        zarr.consolidate_metadata(str(partial))
    backup = path.with_name(path.name + SWAP_OLD)
    if path.exists():
        shutil.rmtree(backup, ignore_errors=True)
        path.rename(backup)
    partial.rename(path)
    shutil.rmtree(backup, ignore_errors=True)


def recover(path: Path) -> None:
    """Finish a swap interrupted between its two renames."""
    backup = path.with_name(path.name + SWAP_OLD)
    if backup.exists() and not path.exists():
        backup.rename(path)
    elif backup.exists():  # the swap completed; only the old store's deletion was cut short
        shutil.rmtree(backup, ignore_errors=True)
    shutil.rmtree(path.with_name(path.name + SWAP_NEW), ignore_errors=True)


def lost_blocks(path: Path, ds: xr.Dataset) -> list[tuple[int, int, int]]:
    """(estimator, seed, split) positions whose cells are marked done but whose I_XT or I_TY
    chunk file is gone: their values would read as NaN, so they are not done."""
    done = ds["done"].values.any(axis=(3, 4))
    lost = []
    for e, s, p in zip(*np.nonzero(done), strict=True):
        chunk = Path("c", str(e), str(s), str(p), "0", "0")
        if any(not (path / name / chunk).is_file() for name in CELL_VARIABLES):
            lost.append((int(e), int(s), int(p)))
    return lost


def verify_results(path: Path) -> list[str]:
    """Damage in a results store: done cells whose values are gone (one line each)."""
    ds = open_results(path)
    if ds is None:
        raise ResultsError(f"no results store at {path}")
    return [f"{path}: cells of estimator {ds.estimator.values[e]}, seed {ds.seed.values[s]}, split "
            f"{ds.split.values[p]} are marked done but their values are gone: run `make estimate` "
            "again to recompute them" for e, s, p in lost_blocks(path, ds)]


FLUSH_S = 30.0  # received results wait at most this long in memory before they are written


class ResultsWriter:
    """Writes task results into the store; `done` is written after the values.

    A chunk holds one (estimator, seed, split): every epoch and layer. With `tasks_per_chunk`
    (the number of tasks this run sends to each chunk) results gather in memory and each chunk is
    written once, whole, when its last task arrives, instead of being read and rewritten by
    every task; `flush` writes the held chunks with results not yet written, and a write
    flushes once FLUSH_S seconds have passed since the last flush, so a killed run loses at most
    that much.
    Without it every task's cells are written as they come.
    """

    def __init__(self, path: Path, ds: xr.Dataset,
                 tasks_per_chunk: dict[tuple[str, int, str], int] | None = None):
        # Every written chunk goes to disk, NaN ones too: a missing chunk then means lost data.
        # zarr reads this setting when an array is opened, so it is set around the opening.
        with zarr.config.set({"array.write_empty_chunks": True}):
            self.root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
            self.arrays = dict(self.root.arrays())  # opened once: a lookup by name reads metadata
        self.index = {dim: {v.item() if hasattr(v, "item") else v: i
                            for i, v in enumerate(ds[dim].values)} for dim in CELL_DIMS}
        self.remaining = dict(tasks_per_chunk or {})
        self.held: dict[tuple[str, int, str], dict[str, np.ndarray]] = {}
        self.unwritten: set[tuple[str, int, str]] = set()  # held chunks changed since written
        self.flushed_at = time.monotonic()

    def write_cells(self, estimator: str, seed: int, split: str, layer: str,
                    epochs: list[int], values: dict[str, np.ndarray]) -> None:
        key = (estimator, seed, split)
        chunk = self._chunk_with(self.held.pop(key, None) or self._read_chunk(key, values),
                                 layer, epochs, values)
        left = self.remaining.pop(key, 1) - 1  # a chunk outside the plan: written at once
        if left:
            self.held[key], self.remaining[key] = chunk, left
            self.unwritten.add(key)
        else:
            self.unwritten.discard(key)
            self._write_chunk(key, chunk)
        if time.monotonic() - self.flushed_at > FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write every held chunk with results not yet written (their values, then `done`)."""
        for key in sorted(self.unwritten, key=str):
            self._write_chunk(key, self.held[key])
        self.unwritten.clear()
        self.flushed_at = time.monotonic()

    def _position(self, key: tuple[str, int, str]) -> tuple[int, int, int]:
        estimator, seed, split = key
        return self.index["estimator"][estimator], self.index["seed"][seed], self.index["split"][split]

    def _read_chunk(self, key: tuple[str, int, str], values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        e, s, p = self._position(key)
        return {name: self.arrays[name][e, s, p] for name in [*values, "done"] if name in self.arrays}

    def _chunk_with(self, chunk: dict[str, np.ndarray], layer: str, epochs: list[int],
                    values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, column = [self.index["epoch"][ep] for ep in epochs], self.index["layer"][layer]
        for name, block in chunk.items():
            block[rows, column] = True if name == "done" else values[name]
        return chunk

    def _write_chunk(self, key: tuple[str, int, str], chunk: dict[str, np.ndarray]) -> None:
        e, s, p = self._position(key)
        for name in [n for n in chunk if n != "done"] + ["done"]:  # values first, then done
            self.arrays[name][e, s, p] = chunk[name]

    def write_fisher(self, seed: int, epochs: list[int], layers: list[str], traces: np.ndarray) -> None:
        s = self.index["seed"][seed]
        rows = [self.index["epoch"][ep] for ep in epochs]
        cols = [self.index["layer"][name] for name in layers]
        values = self.root["fisher_trace"][s]
        done = self.root["fisher_done"][s]
        values[np.ix_(rows, cols)] = traces
        done[np.ix_(rows, cols)] = True
        self.root["fisher_trace"][s] = values
        self.root["fisher_done"][s] = done

    def set_attrs(self, **attrs: Any) -> None:
        self.root.attrs.put({**self.root.attrs.asdict(), **attrs})  # one write, not one a key
