"""The estimate stage: every estimator entry over every archive cell, on Dask, into estimates.zarr.

    python -m stages.estimate --config configs/szt_tanh.toml [--scheduler tcp://host:8786]
    python -m stages.estimate --archive runs/mine/archive.zarr --config estimators.toml
    from pipeline.estimate import main, estimate_archive

A task is one (estimator entry, seed, split, layer) over the epochs still missing, so the graph
stays small and an estimator that carries state from epoch to epoch (Renyi's width smoothing,
declared by its `carry`) runs its epochs in order inside one task.
Workers read activations from the archive by path; only small result vectors travel back. The
client is the single writer of the results store, writing each task's cells as it completes:
a kill loses only the tasks in flight, and a rerun computes exactly the cells not yet done.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import fnmatch
import json
import os
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from tqdm import tqdm

from pipeline.archive import ArchiveError, ArchiveReader
from pipeline.child_process import main_module_hidden
from pipeline.cluster import check_scheduler, check_workers, dashboard_line, make_client, start_worker_server
from pipeline.config import (
    ConfigError,
    EstimateConfig,
    EstimatorsConfig,
    ExperimentConfig,
    estimators_config,
    expand_sweeps,
    load_estimators_config,
    validate_estimate,
)
from pipeline.estimators import BUILTIN_METHODS, get_estimator, plane_defaults
from pipeline.provenance import provenance, version_changes
from pipeline.results import (
    CELL_DIMS,
    TRUST_FLAGS,
    ResultsError,
    ResultsWriter,
    belongs_to,
    cell_variables,
    changed_entries,
    compared_parameters,
    entry_parameters,
    foreign_store,
    lost_blocks,
    merge_into,
    open_results,
    recover,
    template,
    write_store,
)
from pipeline.runs import RunPaths
from pipeline.tasks import (
    FisherTask,
    Task,
    batch_tasks,
    entry_outputs,
    entry_variables,
    run_batch,
    run_fisher_task,
)
from pipeline.uncertainty import row_entropy, saturation_flags, split_options
from pipeline.writer import lock_file

# Used when a config has no [estimators.*] tables: every method with the papers' parameters.
DEFAULT_ESTIMATORS: dict[str, dict[str, Any]] = {
    "binning_30": {"method": "binning", "n_bins": 30},
    "kde_upper": {"method": "kde", "noise_variance": 0.1, "bound": "upper"},
    "kde_lower": {"method": "kde", "noise_variance": 0.1, "bound": "lower"},
    "renyi": {"method": "renyi", "sigma_t": "alignment"},
    "ksg": {"method": "ksg", "k": 5},
    "compression": {"method": "compression"},
}


@dataclass(frozen=True)
class Selection:
    """The part of the cells one run computes; the default is all of them.

    `only` names estimator entries (names or patterns, `binning_*`; "fisher" for the Fisher
    traces), `seeds` and `splits`
    restrict those dims, `layers` (names or shell-style patterns, `conv*`) the layers of the
    estimator entries (the Fisher traces take every layer in one pass), and `every` keeps every
    k-th epoch row of the store and its last. The cells left out stay not done, and a later run
    computes them.
    """

    only: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    splits: tuple[str, ...] | None = None
    every: int = 1
    layers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"--every must be a positive number of snapshots, got {self.every}")

    @property
    def everything(self) -> bool:
        return self == Selection()

    def check(self, entries: Sequence[str], seeds: Sequence[int], splits: Sequence[str],
              archive_path: Path, config_name: str, layers: Sequence[str] = ()) -> None:
        """One ConfigError naming what the run's config and archive do not have."""
        if self.layers is not None and (unknown := [p for p in self.layers
                                                    if not any(fnmatch.fnmatchcase(n, p) for n in layers)]):
            raise ConfigError(f"--layers {unknown} match no layer of {archive_path} (it records "
                              f"{list(layers)})")
        if self.only is not None and (unknown := sorted(p for p in self.only if not any(
                fnmatch.fnmatchcase(n, p) for n in [*entries, "fisher"]))):
            raise ConfigError(f"--only names unknown estimator entries {unknown}; the config "
                              f"{config_name} has {sorted(entries)} (and 'fisher')")
        if self.seeds is not None and (unknown := sorted(set(self.seeds) - set(seeds))):
            raise ConfigError(f"--seeds {unknown} are not in {archive_path} (it holds {list(seeds)})")
        if self.splits is not None and (unknown := sorted(set(self.splits) - set(splits))):
            raise ConfigError(f"--splits {unknown} are not among the config's estimate.splits "
                              f"{list(splits)}")

    def takes(self, entry: str | None = None, seed: int | None = None, split: str | None = None,
              layer: str | None = None) -> bool:
        """Whether the named entry, seed, split and layer (those given) are selected."""
        return ((entry is None or self.only is None or any(fnmatch.fnmatchcase(entry, p) for p in self.only))
                and (seed is None or self.seeds is None or int(seed) in self.seeds)
                and (split is None or self.splits is None or split in self.splits)
                and (layer is None or self.layers is None
                     or any(fnmatch.fnmatchcase(str(layer), p) for p in self.layers)))

    def rows(self, n_epochs: int) -> np.ndarray:
        """Mask of the store's epoch rows this run computes: every k-th and the last."""
        rows = np.arange(n_epochs)
        return (rows % self.every == 0) | (rows == n_epochs - 1)


def plan(ds, entries: dict[str, dict[str, Any]], committed: dict[int, np.ndarray],
         selection: Selection = Selection()) -> list[Task]:
    """Tasks for every selected cell not done; a chained entry recomputes a layer's epochs from
    its first missing one on, starting from the state stored at the epoch before."""
    tasks = []
    done = ds["done"].values
    epochs = ds.epoch.values
    chosen_rows = selection.rows(len(epochs))
    for e, name in enumerate(ds.estimator.values):
        if name not in entries or not selection.takes(entry=name):
            continue  # an entry the store keeps from an earlier config
        table = entries[name]
        definition = get_estimator(table["method"])
        chain = definition.is_chain(split_options(table)[0])
        for s, seed in enumerate(ds.seed.values):
            if not selection.takes(seed=seed):
                continue
            available = np.isin(epochs, committed[int(seed)]) & chosen_rows
            for p, split in enumerate(ds.split.values):
                if not selection.takes(split=split):
                    continue
                for l, layer in enumerate(ds.layer.values):
                    missing = available & ~done[e, s, p, :, l]
                    if not missing.any() or not selection.takes(layer=layer):
                        continue
                    rows, carried = np.flatnonzero(missing), ()
                    if chain:
                        first = int(np.argmax(missing))
                        rows = np.flatnonzero(available & (np.arange(len(epochs)) >= first))
                        before = np.flatnonzero(available[:first])
                        if len(before):
                            carried = tuple((param, float(ds[output].values[e, s, p, before[-1], l]))
                                            for output, param in definition.carry.items())
                    tasks.append(Task(str(name), table, definition, int(seed), str(split), str(layer),
                                      tuple(int(epochs[r]) for r in rows), carried))
    return tasks


def fisher_plan(ds, committed: dict[int, np.ndarray], settings: EstimateConfig,
                selection: Selection = Selection(), per_task: int = 25) -> list[FisherTask]:
    """Fisher tasks over the selected epochs not done, `per_task` epochs each."""
    tasks = []
    done = ds["fisher_done"].values
    chosen_rows = selection.rows(len(ds.epoch))
    for s, seed in enumerate(ds.seed.values):
        if not selection.takes(seed=seed):
            continue
        rows = [r for r, ep in enumerate(ds.epoch.values)
                if ep in committed[int(seed)] and not done[s, r].all() and chosen_rows[r]]
        for start in range(0, len(rows), per_task):
            epochs = tuple(int(ds.epoch.values[r]) for r in rows[start:start + per_task])
            tasks.append(FisherTask(int(seed), epochs, settings.fisher_probe_size,
                                    settings.fisher_label_seeds))
    return tasks


def main(cfg: ExperimentConfig, runs_dir: str | Path = "data/runs", scheduler: str | None = None,
         scheduler_file: str | None = None, netcdf: bool = False,
         selection: Selection = Selection()) -> int:
    """Compute every missing cell of a built-in run's results store; returns an exit code."""
    return estimate_archive(RunPaths.of(runs_dir, cfg.name), EstimatorsConfig(cfg.estimate, cfg.estimators),
                            scheduler, scheduler_file, netcdf, selection)


def estimate_archive(paths: RunPaths | str | Path, settings: EstimatorsConfig | None = None,
                     scheduler: str | None = None, scheduler_file: str | None = None,
                     netcdf: bool = False, selection: Selection = Selection(),
                     estimators: dict[str, dict[str, Any]] | None = None,
                     results: str | Path | None = None) -> int:
    """Compute every missing cell of the results store beside an archive (or at `results`: the
    archive's folder is then only read); returns an exit code.

    `settings` holds the [estimate] and [estimators.*] tables (default: every method with its
    papers' parameters); `estimators` alone replaces the entries this run computes, e.g.
    `estimators={"binning": {"method": "binning", "n_bins": 30}}`. Entries the store already
    holds and this run leaves out keep their cells.

    `scheduler="synchronous"` runs the tasks in this process, one after another (reference
    results, debugging); otherwise a Dask cluster does. A `selection` restricts this run to part
    of the cells, e.g. an expensive entry on a few seeds; the store keeps its full shape.
    """
    check_scheduler(scheduler, scheduler_file)
    if scheduler is None and scheduler_file is None:
        start_worker_server()  # its imports overlap the checks and planning below
    paths = paths if isinstance(paths, RunPaths) else RunPaths.from_archive(paths, results)
    settings = settings or EstimatorsConfig()
    if estimators is not None:
        estimators = expand_sweeps(estimators)
        validate_estimate(settings.estimate, estimators)
        settings = EstimatorsConfig(settings.estimate, estimators)
    archive = ArchiveReader(paths.archive)
    if not archive.seeds:
        raise ArchiveError(f"{paths.archive} holds no seed yet: let training commit a snapshot")
    entries = dict(settings.estimators) or DEFAULT_ESTIMATORS
    if scheduler_file is None and scheduler in (None, "synchronous"):  # the tasks run on this machine
        check_devices_here(entries)
    splits, notes = usable_splits(archive, settings.estimate)
    selection.check(list(entries), archive.seeds, splits, paths.archive, archive.name, archive.layers)
    lock = lock_file(paths.results.parent, paths.results.stem, wait=False, error=ResultsError,
                     busy=f"another `make estimate` is writing {paths.results}; wait for it to finish "
                     "(results are kept) and run again")
    try:
        code = _estimate(archive, paths, entries, settings.estimate, splits, notes, scheduler,
                         scheduler_file, selection)
        if netcdf:  # a store that had nothing left to compute is exported too
            export_netcdf(paths.results)
        return code
    finally:
        os.close(lock)


def archive_settings(config: str | Path | None, overrides: list[str]) -> EstimatorsConfig | None:
    """What `--archive` runs with: the `[estimate]` and `[estimators.*]` tables of `config`, or
    without one the default entries (`DEFAULT_ESTIMATORS`); `--set` overrides apply to either.
    None where there is neither a config nor an override: `estimate_archive`'s defaults."""
    if config is not None:
        return load_estimators_config(config, overrides)
    if not overrides:
        return None
    return estimators_config({"estimators": copy.deepcopy(DEFAULT_ESTIMATORS)}, overrides)


def check_devices_here(entries: dict[str, dict[str, Any]]) -> None:
    """One line before any work for an entry asking for a CUDA device on a machine without one
    (each of its tasks would otherwise fail with torch's message after its retries). A cluster
    reached by address is not checked: its workers may have GPUs this machine lacks."""
    import torch

    if torch.cuda.is_available():
        return
    for name, table in entries.items():
        if str(table.get("device", "cpu")).startswith("cuda"):
            raise ConfigError(f"estimators.{name}.device: {table['device']!r}, but this machine has no CUDA "
                              "device; set device = \"cpu\", or run on a Dask cluster whose workers have "
                              "GPUs (--scheduler ADDRESS)")


def usable_splits(archive: ArchiveReader, settings: EstimateConfig) -> tuple[list[str], list[str]]:
    """The archive's splits the configured names or patterns match, in the config's order, and
    one note for the names and patterns that match none."""
    splits, skipped = [], []
    for pattern in settings.splits:
        matched = fnmatch.filter(archive.splits, pattern)
        splits += [split for split in matched if split not in splits]
        skipped += [] if matched else [pattern]
    if not splits:
        raise ConfigError(f"estimate.splits {list(settings.splits)}: none is in {archive.path} "
                          f"(it has {archive.splits}); set estimate.splits accordingly")
    notes = [f"splits {skipped} are not in the archive (it has {archive.splits}): skipped"] if skipped else []
    return splits, notes


def fisher_skipped(archive: ArchiveReader, settings: EstimateConfig) -> str | None:
    """Why the Fisher traces cannot be computed for this archive, or None if they can."""
    if not settings.fisher:
        return None
    missing = [what for what, ok in (("weights", archive.parts["weights"]),
                                     ("labels", archive.parts["labels"]),
                                     ("model factory", archive.attrs.get("model") is not None)) if not ok]
    if missing:
        return (f"Fisher information skipped: the archive records no {', no '.join(missing)} "
                "(Recorder(weights=True, model_spec=...) records them)")
    return None


FLAGS = ("I_XT_saturated", "I_TY_saturated")


def split_ceiling_inputs(archive: ArchiveReader, splits) -> dict[str, tuple[float, np.ndarray]]:
    """Per split: H(X) of its input rows and its labels, what the saturation ceilings depend on."""
    inputs, out = archive.inputs, {}
    for split in map(str, splits):
        index = archive.split_index(split)
        out[split] = (row_entropy(inputs[index]), archive.split_labels(index))
    return out


def fill_saturation(ds, entry: str, table: dict[str, Any],
                    splits: dict[str, tuple[float, np.ndarray]]) -> None:
    """The saturation flags of an entry's done cells, from their stored values (no re-estimate).
    `splits`: `split_ceiling_inputs` of the archive."""
    estimator, params = get_estimator(table["method"]), split_options(table)[0]
    for split in ds.split.values:
        cells = ds.sel(estimator=entry, split=split)
        flags = saturation_flags(estimator, params, cells.I_XT.values, cells.I_TY.values, *splits[str(split)])
        for name in FLAGS:
            ds[name].loc[{"estimator": entry, "split": split}] = np.where(cells.done.values, flags[name],
                                                                         np.nan)


def _unmark_unusable(old, entries: dict[str, dict[str, Any]], results_path: Path):
    """Mark not done, in the old store, the cells it cannot supply: entries lacking variables
    (a store of an older release) and blocks whose files are gone; returns the lost blocks.
    Saturation flags alone are never missed: every run derives them from the stored values."""
    for e, name in enumerate(old.estimator.values):
        table = entries.get(str(name))
        absent = set() if table is None else set(entry_outputs(
            get_estimator(table["method"]), split_options(table)[1])) - set(old.data_vars) - set(FLAGS)
        if absent and bool(old["done"][e].any()):
            print(f"note: recomputing {name}: the store has no {sorted(absent)} for it")
            old["done"][e] = False
    lost = lost_blocks(results_path, old)
    for e, s, p in lost:
        name = str(old.estimator.values[e])
        then = "recomputing them" if name in entries else f"name {name} in the config to recompute them"
        print(f"note: results of {name}, seed {old.seed.values[s]}, split "
              f"{old.split.values[p]} are marked done but their files are gone: {then}")
        old["done"][e, s, p] = False
    return lost


def note_changed_entries(old, target) -> None:
    """Say which entries' done cells are replaced because their parameters (defaults included)
    or cell options differ from those the store holds them for: they are computed again."""
    key = compared_parameters(old, target)
    for name in changed_entries(old, target):
        was, now = (entry_parameters(ds, name, key) for ds in (old, target))
        changes = ", ".join(f"{k} {json.dumps(was.get(k, '(unset)'))} -> {json.dumps(now.get(k, '(unset)'))}"
                            for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k))
        done = int(old["done"].sel(estimator=name).sum())
        scope = " (parameters with their defaults)" if key == "resolved_parameters" else " (its table)"
        if done:
            print(f"note: recomputing the {done} stored cells of {name}: {changes}{scope}; give the "
                  "new table another entry name to keep both")


def resolved_table(table: dict[str, Any]) -> dict[str, Any]:
    """An entry's table with every parameter of its method and every cell option filled in."""
    params, options = split_options(table)
    return {"method": table["method"], **plane_defaults(table["method"]), **params, **options}


def kept_entries(old, entries: dict[str, dict[str, Any]]) -> tuple[dict, dict, dict]:
    """The entries of a store that this run's `entries` lack, kept as stored and not computed in
    this run: their tables, their resolved tables, and every variable the store holds (name ->
    (long name, units)). A config that leaves an entry out never deletes its results."""
    names = [str(name) for name in old.estimator.values if str(name) not in entries]
    if not names:
        return {}, {}, {}
    print(f"note: keeping the stored cells of {', '.join(names)}: not among this run's entries "
          "(or left out by --only), so not computed now (name them in the config to extend them)")
    tables = {name: entry_parameters(old, name, "parameters") for name in names}
    variables = {name: (old[name].attrs.get("long_name", name), old[name].attrs.get("units", "1"))
                 for name in cell_variables(old)}
    return tables, {name: _stored_resolution(old, name, tables[name]) for name in names}, variables


def kept_splits(old, splits: list[str], archive_splits: list[str]) -> list[str]:
    """The splits a store holds that this run's `estimate.splits` leave out: kept as stored
    (a config that names fewer splits never deletes results), and not computed."""
    names = [str(s) for s in old.split.values if str(s) not in splits and str(s) in archive_splits]
    if names:
        print(f"note: keeping the stored cells of splits {names}: not among this run's estimate.splits "
              f"{splits}, so not computed now")
    return names


def _stored_resolution(old, name: str, table: dict[str, Any]) -> dict[str, Any]:
    """A kept entry's resolved table as stored; for a store older than 1.4 (tables only), its
    table resolved with this infoplane's defaults, as such a store's named entries are (the table
    itself where its method is not registered in this process)."""
    if "resolved_parameters" in old.coords:
        return entry_parameters(old, name, "resolved_parameters")
    try:
        return resolved_table(table)
    except ValueError:  # an unknown method or entry point (RegistryError is one)
        return table


def _prepare_store(archive: ArchiveReader, paths: RunPaths, entries: dict[str, dict[str, Any]],
                   splits: list[str], selection: Selection = Selection()):
    """The results template merged with the done cells of an existing store, written if new; the
    archive's committed epochs per seed; the packages whose versions differ from the store's.
    A stored entry that `selection` leaves out keeps its cells and parameters, even where the
    config's table differs: it is not this run's (it would be reset, and not computed again)."""
    recover(paths.results)
    committed = {seed: archive.committed_epochs(seed) for seed in archive.seeds}
    epochs = np.unique(np.concatenate(list(committed.values())))
    widths = [int(np.prod(archive.layer_shapes[name])) for name in archive.layers]
    old = open_results(paths.results)
    if old is not None and not belongs_to(old.attrs, archive.identity, archive.attrs.get("training_hash")):
        raise foreign_store(paths.results, old.attrs, paths.archive, "run the estimate again")
    if old is not None:
        entries = {name: table for name, table in entries.items()
                   if selection.takes(entry=name) or name not in old.estimator.values}
        splits = [*splits, *kept_splits(old, splits, archive.splits)]
    kept, kept_resolved, outputs = kept_entries(old, entries) if old is not None else ({}, {}, {})
    for table in entries.values():
        outputs.update(entry_variables(get_estimator(table["method"]), split_options(table)[1]))
    prov = provenance()
    attrs = {"archive_path": str(paths.archive.resolve()), "archive_recording": archive.identity,
             "config_name": archive.name, "output_layer": archive.output_layer,
             "versions": json.dumps(prov["versions"]), "git_revision": prov["git_revision"]}
    if "training_hash" in archive.attrs:
        attrs["archive_training_hash"] = archive.attrs["training_hash"]
    resolved = {**{name: resolved_table(table) for name, table in entries.items()}, **kept_resolved}
    target = template({**entries, **kept}, archive.seeds, splits, epochs, archive.layers, widths, attrs,
                      outputs, resolved)
    lost = _unmark_unusable(old, entries, paths.results) if old is not None else []
    if old is not None:
        note_changed_entries(old, target)
    target = merge_into(target, old)
    # every stored entry of this run gets its flags from its values again: a store written by an
    # earlier release then holds this release's ceilings (Renyi's I(T;Y): its batches' labels)
    stored = [] if old is None else [str(e) for e in old.estimator.values if str(e) in entries]
    if stored:
        ceilings = split_ceiling_inputs(archive, target.split.values)
        for name in stored:
            fill_saturation(target, name, entries[name], ceilings)
    if old is not None:
        target.attrs["history"] = old.attrs.get("history", "")
        target.attrs["warnings"] = old.attrs.get("warnings", "[]")
        changed = version_changes(json.loads(old.attrs.get("versions", "{}")), prov["versions"])
    else:
        changed = ""
    if old is None or lost or any(not old[dim].equals(target[dim]) for dim in CELL_DIMS) or \
            not old.parameters.equals(target.parameters) or "resolved_parameters" not in old.coords or \
            not old.resolved_parameters.equals(target.resolved_parameters) or \
            set(cell_variables(old)) != set(cell_variables(target)) or \
            any(flag not in old or not old[flag].equals(target[flag]) for flag in FLAGS):
        write_store(target, paths.results)
    return target, committed, changed


MAX_WARNINGS = 200  # NaN messages a store keeps, the latest


def earlier_warnings(stored: str, tasks: list[Task]) -> list[str]:
    """The store's NaN messages ("<entry> seed <s> <split> epoch <e> <layer>: <reason>") of cells
    this run does not compute again; those it computes get this run's messages instead."""
    redone = {t.cell_label(epoch) for t in tasks for epoch in t.epochs}
    return [message for message in json.loads(stored) if message.split(": ", 1)[0] not in redone]


def nan_summary(messages: list[str]) -> str:
    """One table of the NaN cells: per estimator entry, the count and its first message."""
    groups: dict[str, list[str]] = {}
    for message in messages:  # "<entry> seed <s> <split> epoch <e> <layer>: <reason>"
        entry, _, cell = message.partition(" ")
        groups.setdefault(entry, []).append(cell)
    rows = [f"  {entry}: {len(cells)} cell(s), e.g. {cells[0]}" for entry, cells in groups.items()]
    return (f"NaN stored in {len(messages)} cell(s) (all listed in the store's `warnings` attribute):\n"
            + "\n".join(rows))


FLAG_REASONS = {"_lossy": "a code kept less than 99% of its side's variance, or the flow read far below "
                          "KSG on the codes: the estimate may be low; raise `dim` or read "
                          "it as a lower bound",
                "_biased": "n and the dimensions lie beyond KSG's measured rule: KSG reads low there",
                "_clipped": "the layer's values lie outside binning's fixed range and share its end bins: "
                            "the estimates read low; set range = \"layer\" (or bin_size) for unbounded "
                            "layers (ReLU, logits)"}


def flag_summary(counts: dict[tuple[str, str], list[int]]) -> str:
    """One line per flagged (entry, variable): how many cells of how many, and why."""
    rows = [f"  {entry} {name}: {hit} of {total} cell(s); "
            + FLAG_REASONS[next(s for s in TRUST_FLAGS if name.endswith(s))]
            for (entry, name), (hit, total) in counts.items() if hit]
    return ("cells flagged by their estimator (stored beside the values; docs/estimators.md, "
            "\"Diagnostics\"):\n" + "\n".join(rows))


def count_flags(counts: dict[tuple[str, str], list[int]], entry: str, values: dict[str, np.ndarray]) -> None:
    for name, column in values.items():
        if name.endswith(TRUST_FLAGS):
            tally = counts.setdefault((entry, name), [0, 0])
            tally[0] += int(np.nansum(column))
            tally[1] += int(np.isfinite(column).sum())


def _estimate(archive: ArchiveReader, paths: RunPaths, entries: dict[str, dict[str, Any]],
              settings: EstimateConfig, splits: list[str], notes: list[str],
              scheduler: str | None, scheduler_file: str | None, selection: Selection) -> int:
    started = time.perf_counter()  # the stage's own time: store, plan, cluster, tasks, writes
    target, committed, changed_versions = _prepare_store(archive, paths, entries, splits, selection)
    if len(target.split) > len(splits):  # splits the store keeps are not this run's to compute
        ours = tuple(split for split in splits if selection.takes(split=split))
        selection = dataclasses.replace(selection, splits=ours)
    tasks = plan(target, entries, committed, selection)
    fisher_note = fisher_skipped(archive, settings)
    fisher_tasks = []
    if settings.fisher and fisher_note is None and selection.takes(entry="fisher"):
        fisher_tasks = fisher_plan(target, committed, settings, selection)
    if fisher_tasks:
        from pipeline.fisher import check_rebuilt_model  # late: torch.func

        check_rebuilt_model(archive)
    for note in notes + ([fisher_note] if fisher_note else []):
        print(f"note: {note}")
    if archive.labels is None:
        print("note: the archive has no labels: I(T;Y) is stored as NaN")
    n_cells = sum(len(t.epochs) for t in tasks)
    if not tasks and not fisher_tasks:
        selected = "" if selection.everything else " selected"
        print(f"nothing to do: {paths.results} has every{selected} cell of {len(entries)} estimator(s) x "
              f"{len(archive.seeds)} seed(s) x {len(target.split)} split(s) x {target.sizes['epoch']} "
              f"epoch(s) x {len(archive.layers)} layer(s)")
        return 0
    print(f"estimating {archive.name}: {len(tasks)} tasks ({n_cells} cells) + {len(fisher_tasks)} "
          f"Fisher tasks -> {paths.results}", flush=True)
    writer = ResultsWriter(paths.results, target, Counter((t.estimator, t.seed, t.split) for t in tasks))
    messages: list[str] = []
    flags: dict[tuple[str, str], list[int]] = {}

    def handle(result: dict[str, Any]) -> None:
        if "task" in result:
            t = result["task"]
            writer.write_cells(t.estimator, t.seed, t.split, t.layer, list(t.epochs), result["values"])
            messages.extend(result["warnings"])
            count_flags(flags, t.estimator, result["values"])
        else:
            writer.write_fisher(result["seed"], result["epochs"], result["layers"], result["traces"])

    # the local cluster's workers, started or restarted, never rerun the caller's script
    local_cluster = scheduler is None and scheduler_file is None
    try:
        with main_module_hidden() if local_cluster else contextlib.nullcontext():
            failures = _execute(settings, str(paths.archive.resolve()), tasks, fisher_tasks, scheduler,
                                scheduler_file, handle, f"estimate {archive.name}")
    except OSError:  # a write failed (disk full): writing the rest would fail the same way
        raise
    except BaseException:  # interrupted, or a task's error: what arrived is kept
        writer.flush()
        raise
    writer.flush()  # the chunks of tasks that failed after their retries
    if messages:
        warnings.warn(nan_summary(messages), stacklevel=1)
    if any(hit for hit, _ in flags.values()):
        warnings.warn(flag_summary(flags), stacklevel=1)
    elapsed = time.perf_counter() - started
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    changed = f"; versions changed since the previous run: {changed_versions}" if changed_versions else ""
    line = (f"{stamp} estimate: {len(tasks)} tasks, {n_cells} cells, {len(fisher_tasks)} Fisher "
            f"tasks in {elapsed:.1f}s, {sum(f['tasks'] for f in failures)} failed "
            f"(git {target.attrs['git_revision']}{changed})")
    history = "\n".join(filter(None, [target.attrs.get("history", ""), line]))
    listed = [*earlier_warnings(target.attrs.get("warnings", "[]"), tasks), *messages]
    # a store that was not rewritten still has the previous run's provenance at its root
    writer.set_attrs(history=history, warnings=json.dumps(listed[-MAX_WARNINGS:]),
                     git_revision=target.attrs["git_revision"], versions=target.attrs["versions"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata is not in the v3 spec yet
        zarr.consolidate_metadata(str(paths.results))
    print(line)
    for report_line in failure_report(failures):
        print(report_line)
    return 1 if failures else 0


ETA_AFTER = 5  # tasks completed before a time left is shown: the first ones say little


def _progress(total: int, desc: str) -> tqdm:
    """A bar whose time left is the mean rate since the start, shown once a few tasks are done."""
    return tqdm(total=total, unit="task", desc=desc, mininterval=1.0, dynamic_ncols=True, smoothing=0,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, time left shown after "
                           f"{ETA_AFTER} tasks]")


def _advance(bar: tqdm, tasks: int = 1) -> None:
    before = bar.n
    bar.update(tasks)
    if before < ETA_AFTER <= bar.n:
        bar.bar_format = None  # tqdm's default: elapsed<remaining, rate


def _execute(settings: EstimateConfig, path: str, tasks: list[Task], fisher_tasks: list[FisherTask],
             scheduler: str | None, scheduler_file: str | None, handle, desc: str) -> list[dict[str, Any]]:
    """Run every task (in this process, or on Dask), handing each result to `handle` as it comes;
    returns the failures (`failure_report`): units whose estimator raised, and units that failed
    after their retries."""
    client = cluster = None
    if scheduler != "synchronous":  # connect first: its messages come before the bar
        client, cluster = _checked_client(settings, tasks, scheduler, scheduler_file)
    bar = _progress(len(tasks) + len(fisher_tasks), desc)
    failures: list[dict[str, Any]] = []
    try:  # the bar is closed before any error line, so that line is the last one printed
        units = batch_tasks(tasks)
        if client is None:
            for unit in units:
                _take(run_batch(path, unit), handle, failures)
                _advance(bar, len(unit.tasks))
            for ftask in fisher_tasks:
                _take([run_fisher_task(path, ftask)], handle, failures)
                _advance(bar)
            return failures
        from distributed import as_completed

        # longest first: a long chain started last keeps one worker busy while the others idle
        futures = {client.submit(run_batch, path, unit, key=unit.key, retries=settings.retries,
                                 pure=False, priority=round(unit.cost)): len(unit.tasks) for unit in units}
        futures.update({client.submit(run_fisher_task, path, task, key=task.key, retries=settings.retries,
                                      pure=False): 1 for task in fisher_tasks})
        for future in as_completed(list(futures)):
            try:
                result = future.result()
            except Exception as err:  # kept going: other cells are still written
                failures.append({"failure": f"failed after {settings.retries} retries: {err}",
                                 "cell": future.key, "tasks": futures[future]})
            else:  # a failed write (disk full) stops the run: nothing more can be stored
                _take(result if isinstance(result, list) else [result], handle, failures)
            _advance(bar, futures[future])
        return failures
    finally:
        bar.close()
        _close(client, cluster)


def _take(results: list[dict[str, Any]], handle, failures: list[dict[str, Any]]) -> None:
    """Hand a unit's results to `handle`; an estimator's failure (`tasks.failure_result`) is listed."""
    for result in results:
        if "failure" in result:
            failures.append(result)
        else:
            handle(result)


def failure_report(failures: list[dict[str, Any]]) -> list[str]:
    """The lines that end a run with failed tasks: the first failure's traceback, where one came
    back, then one `error:` line per distinct problem with the tasks it failed and its first cell."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for failure in failures:
        grouped.setdefault(failure["failure"], []).append(failure)
    first = next((f for f in failures if f.get("traceback")), None)
    lines = [f"traceback of the first failure ({first['cell']}):\n{first['traceback'].rstrip()}"
             ] if first else []
    for problem, group in grouped.items():
        tasks = sum(f["tasks"] for f in group)
        lines.append(f"error: {tasks} task(s) failed, the first at {group[0]['cell']}: {problem}")
    return lines


def _checked_client(settings: EstimateConfig, tasks: list[Task], scheduler: str | None,
                    scheduler_file: str | None):
    """The run's client and its own cluster (None on an existing one), once every worker has
    shown it can run the tasks (`check_workers`); warns of workers that run other code."""
    client, cluster = make_client(scheduler, scheduler_file, settings.n_workers)
    print(dashboard_line(client.dashboard_link), flush=True)
    definitions = {task.definition.name: task.definition for task in tasks}
    own = {name: d for name, d in definitions.items() if name not in BUILTIN_METHODS}
    try:
        differing = check_workers(client, own, scheduler or scheduler_file or "the local cluster")
    except BaseException:
        _close(client, cluster)
        raise
    for line in differing:
        warnings.warn(line, stacklevel=1)
    return client, cluster


def _close(client, cluster) -> None:
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()


def export_netcdf(results_path: Path) -> Path:
    target = results_path.with_suffix(".nc")
    open_results(results_path).to_netcdf(target)
    print(f"wrote {target}")
    return target
