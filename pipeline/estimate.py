"""The estimate stage: every estimator entry over every archive cell, on Dask, into estimates.zarr.

    python -m stages.estimate --config configs/szt_tanh.toml [--scheduler tcp://host:8786]
    from pipeline.estimate import main; main(cfg, runs_dir="data/runs")

A task is one (estimator entry, seed, split, layer) over the epochs still missing, so the graph
stays small and the Renyi width smoothing (a chain over epochs) runs in order inside one task.
Workers read activations from the archive by path; only small result vectors travel back. The
client is the single writer of the results store, writing each task's cells as it completes:
a kill loses only the tasks in flight, and a rerun computes exactly the cells not yet done.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from tqdm import tqdm

from pipeline.archive import ArchiveError, ArchiveReader, split_indices
from pipeline.config import ConfigError, ExperimentConfig
from pipeline.estimators import information_plane
from pipeline.provenance import provenance
from pipeline.results import (
    ResultsError,
    ResultsWriter,
    merge_into,
    open_results,
    recover,
    template,
    write_store,
)

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
class Task:
    """One chain of cells: an estimator entry on one seed, split and layer, over `epochs`."""

    estimator: str
    table: dict[str, Any]
    seed: int
    split: str
    layer: str
    epochs: tuple[int, ...]
    sigma_prev: float | None = None

    @property
    def key(self) -> str:
        span = f"{self.epochs[0]}-{self.epochs[-1]}-{len(self.epochs)}"
        return f"estimate-{self.estimator}-s{self.seed}-{self.split}-{self.layer}-e{span}"


def is_chain(table: dict[str, Any]) -> bool:
    """Renyi with a searched width smooths it across successive epochs: order matters."""
    return table["method"] == "renyi" and isinstance(table.get("sigma_t", "alignment"), str)


def run_task(archive_path: str, task: Task) -> dict[str, Any]:
    """Compute one task's cells (runs on a worker). ValueErrors become NaN plus a warning."""
    torch.set_num_threads(1)  # one single-threaded worker per core
    archive = ArchiveReader(archive_path)
    index = split_indices(archive.split, task.split)
    x, y = archive.inputs[index], archive.labels[index]
    params = {k: v for k, v in task.table.items() if k != "method"}
    chain = is_chain(task.table)
    sigma_prev = task.sigma_prev
    values: dict[str, list[float]] = {}
    messages = []
    read = archive.layer_reader(task.seed, task.layer)
    for epoch in task.epochs:
        t = read(epoch)[index]
        kwargs = {**params, "sigma_prev": sigma_prev} if chain else params
        try:
            out = information_plane(x, t, y, task.table["method"], **kwargs)
        except ValueError as err:
            out = {"I_XT": np.nan, "I_TY": np.nan}
            messages.append(f"{task.estimator} seed {task.seed} {task.split} epoch {epoch} "
                            f"{task.layer}: {err}")
        if chain and np.isfinite(out.get("sigma_t", np.nan)):
            sigma_prev = out["sigma_t"]
        for name in ("I_XT", "I_TY", "I_XT_std", "I_TY_std", "sigma_t"):
            values.setdefault(name, []).append(float(out.get(name, np.nan)))
    return {"task": task, "values": {k: np.asarray(v) for k, v in values.items()}, "warnings": messages}


def run_fisher_task(archive_path: str, seed: int, epochs: tuple[int, ...], probe_size: int,
                    label_seeds: int) -> dict[str, Any]:
    """Fisher traces of every layer at `epochs`, from the archived weights (no retraining)."""
    from pipeline.fisher import balanced_probe, fisher_traces
    from pipeline.models import build_model

    torch.set_num_threads(1)
    archive = ArchiveReader(archive_path)
    cfg = archive.config
    train = split_indices(archive.split, "train")
    probe = train[balanced_probe(archive.labels[train], probe_size)]
    inputs = torch.as_tensor(archive.inputs[probe])
    n_classes = archive.layer_shapes["softmax"][0]
    model = build_model(cfg.model, tuple(inputs.shape[1:]), n_classes)
    state = model.state_dict()
    traces = []
    for epoch in epochs:
        weights = archive.weights(seed, epoch)
        for name, values in weights.items():
            state[f"blocks.{name}"] = torch.as_tensor(values)
        model.load_state_dict(state)
        result = fisher_traces(model, inputs, label_seeds)
        traces.append([result.get(layer, np.nan) for layer in archive.layers])
    return {"seed": seed, "epochs": list(epochs), "layers": archive.layers, "traces": np.asarray(traces)}


@dataclass(frozen=True)
class Selection:
    """The part of the cells one run computes; the default is all of them.

    `only` names estimator entries ("fisher" for the Fisher traces), `seeds` and `splits`
    restrict those dims, and `every` keeps every k-th epoch row of the store and its last. The
    cells left out stay not done, and a later run computes them.
    """

    only: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    splits: tuple[str, ...] | None = None
    every: int = 1

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"--every must be a positive number of snapshots, got {self.every}")

    @property
    def everything(self) -> bool:
        return self == Selection()

    def check(self, entries: Sequence[str], seeds: Sequence[int], splits: Sequence[str],
              archive_path: Path, config_name: str) -> None:
        """One ConfigError naming what the run's config and archive do not have."""
        if self.only is not None and (unknown := sorted(set(self.only) - set(entries) - {"fisher"})):
            raise ConfigError(f"--only names unknown estimator entries {unknown}; the config "
                              f"{config_name} has {sorted(entries)} (and 'fisher')")
        if self.seeds is not None and (unknown := sorted(set(self.seeds) - set(seeds))):
            raise ConfigError(f"--seeds {unknown} are not in {archive_path} (it holds {list(seeds)})")
        if self.splits is not None and (unknown := sorted(set(self.splits) - set(splits))):
            raise ConfigError(f"--splits {unknown} are not among the config's estimate.splits "
                              f"{list(splits)}")

    def takes(self, entry: str | None = None, seed: int | None = None, split: str | None = None) -> bool:
        """Whether the named entry, seed and split (those given) are selected."""
        return ((entry is None or self.only is None or entry in self.only)
                and (seed is None or self.seeds is None or int(seed) in self.seeds)
                and (split is None or self.splits is None or split in self.splits))

    def rows(self, n_epochs: int) -> np.ndarray:
        """Mask of the store's epoch rows this run computes: every k-th and the last."""
        rows = np.arange(n_epochs)
        return (rows % self.every == 0) | (rows == n_epochs - 1)


def plan(ds, entries: dict[str, dict[str, Any]], committed: dict[int, np.ndarray],
         selection: Selection = Selection()) -> list[Task]:
    """Tasks for every selected cell not done, honouring the width chain of Renyi entries."""
    tasks = []
    done = ds["done"].values
    sigma = ds["sigma_t"].values
    epochs = ds.epoch.values
    chosen_rows = selection.rows(len(epochs))
    for e, name in enumerate(ds.estimator.values):
        table = entries[name]
        if not selection.takes(entry=name):
            continue
        for s, seed in enumerate(ds.seed.values):
            if not selection.takes(seed=seed):
                continue
            available = np.isin(epochs, committed[int(seed)]) & chosen_rows
            for p, split in enumerate(ds.split.values):
                if not selection.takes(split=split):
                    continue
                for l, layer in enumerate(ds.layer.values):
                    missing = available & ~done[e, s, p, :, l]
                    if not missing.any():
                        continue
                    if is_chain(table):  # recompute from the first missing epoch onwards
                        first = int(np.argmax(missing))
                        rows = np.flatnonzero(available & (np.arange(len(epochs)) >= first))
                        before = np.flatnonzero(available[:first])
                        prev = float(sigma[e, s, p, before[-1], l]) if len(before) else None
                    else:
                        rows, prev = np.flatnonzero(missing), None
                    tasks.append(Task(str(name), table, int(seed), str(split), str(layer),
                                      tuple(int(epochs[r]) for r in rows), prev))
    return tasks


class _Lock:
    """Refuses a second concurrent `make estimate` on the same run."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise ResultsError(f"another `make estimate` is writing {path.parent}; wait for it to "
                               "finish (results are kept) and run again") from None

    def release(self) -> None:
        os.close(self.fd)


def worker_environ() -> dict[str, Any]:
    """distributed's worker environment without MALLOC_TRIM_THRESHOLD_.

    Setting that variable turns off glibc's dynamic mmap threshold, so every large temporary
    (Gram matrices, distance matrices) becomes a fresh mmap with page faults: one 40-epoch Renyi
    chain of szt_tanh took 7.2 s in a LocalCluster worker with it and 2.2 s without (measured
    once, by hand, on 2 cores). The stage benchmark in docs/benchmarks.md runs without it.
    """
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


def make_client(scheduler: str | None, scheduler_file: str | None, n_workers: int):
    """A Client on an existing cluster, or a LocalCluster of single-threaded worker processes."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler_file:
        return Client(scheduler_file=scheduler_file), None
    if scheduler:
        return Client(scheduler), None
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
        cluster = LocalCluster(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1,
                               processes=True, dashboard_address=":0")
    return Client(cluster), cluster


def main(cfg: ExperimentConfig, runs_dir: str | Path = "data/runs", scheduler: str | None = None,
         scheduler_file: str | None = None, netcdf: bool = False,
         selection: Selection = Selection()) -> int:
    """Compute every missing cell of the run's results store; returns a process exit code.

    `scheduler="synchronous"` runs the tasks in this process, one after another (reference
    results, debugging); otherwise a Dask cluster does. A `selection` restricts this run to part
    of the cells, e.g. an expensive entry on a few seeds; the store keeps its full shape.
    """
    run_dir = Path(runs_dir) / cfg.name
    archive_path = run_dir / "archive.zarr"
    results_path = run_dir / "estimates.zarr"
    archive = ArchiveReader(archive_path)
    if not archive.seeds:
        raise ArchiveError(f"{archive_path} holds no seed yet: let `make train` commit a snapshot")
    run_dir.mkdir(parents=True, exist_ok=True)
    entries = dict(cfg.estimators) or DEFAULT_ESTIMATORS
    selection.check(list(entries), archive.seeds, list(cfg.estimate.splits), archive_path, cfg.name)
    lock = _Lock(run_dir / "estimates.lock")
    try:
        return _estimate(cfg, entries, archive, archive_path, results_path, scheduler, scheduler_file,
                         netcdf, selection)
    finally:
        lock.release()


def _estimate(cfg: ExperimentConfig, entries: dict[str, dict[str, Any]], archive: ArchiveReader,
              archive_path: Path, results_path: Path,
              scheduler: str | None, scheduler_file: str | None, netcdf: bool,
              selection: Selection) -> int:
    recover(results_path)
    committed = {seed: archive.committed_epochs(seed) for seed in archive.seeds}
    epochs = np.unique(np.concatenate(list(committed.values())))
    widths = [int(np.prod(archive.layer_shapes[name])) for name in archive.layers]
    prov = provenance()
    attrs = {"archive_path": str(archive_path.resolve()), "archive_training_hash":
             archive.attrs["training_hash"], "config_name": cfg.name,
             "versions": json.dumps(prov["versions"]), "git_revision": prov["git_revision"]}
    target = template(entries, archive.seeds, list(cfg.estimate.splits), epochs, archive.layers,
                      widths, attrs)
    old = open_results(results_path)
    if old is not None and old.attrs.get("archive_training_hash") != attrs["archive_training_hash"]:
        raise ResultsError(f"{results_path} belongs to another archive (retrained?): move it away "
                           "to recompute from the current archive")
    target = merge_into(target, old)
    if old is not None:
        target.attrs["history"] = old.attrs.get("history", "")
    if old is None or any(not old[dim].equals(target[dim]) for dim in
                          ("estimator", "seed", "split", "epoch", "layer")) or \
            not old.parameters.equals(target.parameters):
        write_store(target, results_path)
    tasks = plan(target, entries, committed, selection)
    fisher_tasks = []
    if cfg.estimate.fisher and archive.attrs["config"]["archive"]["store_weights"] and \
            selection.takes(entry="fisher"):
        fdone = target["fisher_done"].values
        chosen_rows = selection.rows(len(target.epoch))
        for s, seed in enumerate(target.seed.values):
            if not selection.takes(seed=seed):
                continue
            rows = [r for r, ep in enumerate(target.epoch.values)
                    if ep in committed[int(seed)] and not fdone[s, r].all()
                    and chosen_rows[r]]
            for start in range(0, len(rows), 25):
                fisher_tasks.append((int(seed), tuple(int(target.epoch.values[r])
                                                      for r in rows[start:start + 25])))
    n_cells = sum(len(t.epochs) for t in tasks)
    if not tasks and not fisher_tasks:
        selected = "" if selection.everything else " selected"
        print(f"nothing to do: {results_path} has every{selected} cell of {len(entries)} estimator(s) x "
              f"{len(archive.seeds)} seed(s) x {len(target.split)} split(s) x {len(epochs)} "
              f"epoch(s) x {len(archive.layers)} layer(s)")
        return 0
    print(f"estimating {cfg.name}: {len(tasks)} tasks ({n_cells} cells) + {len(fisher_tasks)} "
          f"Fisher tasks -> {results_path}", flush=True)
    writer = ResultsWriter(results_path, target)
    messages: list[str] = []
    failures: list[str] = []
    started = time.perf_counter()

    def handle(result: dict[str, Any]) -> None:
        if "task" in result:
            t = result["task"]
            writer.write_cells(t.estimator, t.seed, t.split, t.layer, list(t.epochs), result["values"])
            messages.extend(result["warnings"])
        else:
            writer.write_fisher(result["seed"], result["epochs"], result["layers"], result["traces"])

    path = str(archive_path.resolve())
    bar = tqdm(total=len(tasks) + len(fisher_tasks), unit="task", desc=f"estimate {cfg.name}",
               mininterval=1.0, dynamic_ncols=True)
    if scheduler == "synchronous":
        for task in tasks:
            handle(run_task(path, task))
            bar.update(1)
        for seed, eps in fisher_tasks:
            handle(run_fisher_task(path, seed, eps, cfg.estimate.fisher_probe_size,
                                   cfg.estimate.fisher_label_seeds))
            bar.update(1)
    else:
        failures = _run_on_dask(cfg, path, tasks, fisher_tasks, scheduler, scheduler_file, handle, bar)
    bar.close()
    for message in messages:
        warnings.warn(f"NaN stored: {message}", stacklevel=1)
    elapsed = time.perf_counter() - started
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    line = (f"{stamp} estimate: {len(tasks)} tasks, {n_cells} cells, {len(fisher_tasks)} Fisher "
            f"tasks in {elapsed:.1f}s, {len(failures)} failed (git {attrs['git_revision']})")
    history = "\n".join(filter(None, [target.attrs.get("history", ""), line]))
    writer.set_attrs(history=history, warnings=json.dumps(messages[-200:]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata is not in the v3 spec yet
        zarr.consolidate_metadata(str(results_path))
    print(line)
    if netcdf:
        export_netcdf(results_path)
    for failure in failures:
        print(f"error: {failure}")
    return 1 if failures else 0


def _run_on_dask(cfg, path, tasks, fisher_tasks, scheduler, scheduler_file, handle, bar) -> list[str]:
    from distributed import as_completed

    client, cluster = make_client(scheduler, scheduler_file, cfg.estimate.n_workers)
    print(f"dask dashboard: {client.dashboard_link}", flush=True)
    failures = []
    try:
        futures = [client.submit(run_task, path, task, key=task.key, retries=cfg.estimate.retries,
                                 pure=False) for task in tasks]
        futures += [client.submit(run_fisher_task, path, seed, eps, cfg.estimate.fisher_probe_size,
                                  cfg.estimate.fisher_label_seeds, key=f"fisher-s{seed}-e{eps[0]}-{len(eps)}",
                                  retries=cfg.estimate.retries, pure=False)
                    for seed, eps in fisher_tasks]
        for future in as_completed(futures):
            try:
                handle(future.result())
            except Exception as err:  # kept going: other cells are still written
                failures.append(f"task {future.key} failed after {cfg.estimate.retries} retries: {err}")
            bar.update(1)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return failures


def export_netcdf(results_path: Path) -> Path:
    import xarray as xr

    target = results_path.with_suffix(".nc")
    ds = xr.open_zarr(results_path, consolidated=False).load()
    ds.to_netcdf(target)
    print(f"wrote {target}")
    return target
